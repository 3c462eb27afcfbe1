"""The bundled models are what their model card says, and the .tflite writer emits valid int8.

The card (edgeagent/infer/models/README.md) is generated with the files; these tests recompute
its claims from the packaged files: accuracies (onnxruntime and LiteRT), sizes, hashes,
parameter counts, the .tflite int8 contract. Speed is not asserted here (it is measured by
scripts/bench_bundled_models.py and recorded in the card); the card must only say which files
it measured, so stale numbers cannot ride along with regenerated models.
"""

from __future__ import annotations

import ast
import fnmatch
import hashlib
import importlib.util
import re
import sys
from importlib.resources import files
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
from ai_edge_litert import schema_py_generated as tfl
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from edgeagent.infer.ort import session_options

ROOT = Path(__file__).resolve().parent.parent
MODELS = files("edgeagent.infer.models")
STEMS = ("digits", "digits_large")
ONNX_FILES = tuple(f"{s}_{v}.onnx" for s in STEMS for v in ("fp32", "int8"))
TFLITE_FILES = tuple(f"{s}_int8.tflite" for s in STEMS)
BUNDLED = (*ONNX_FILES, *TFLITE_FILES, "digits_test.npz")
# The documented .tflite input: scale 1/16 on raw/16, zero point 0, so q is the raw count.
INPUT_SCALE, INPUT_ZERO_POINT = 1 / 16, 0

FILE_ROW = re.compile(
    r"^\| `(?P<name>[^`]+)` \| [^|]+ \| (?P<params>[\d,]+|-) \| (?P<size>[\d,]+) B \| "
    r"(?:(?P<ok>\d+)/(?P<n>\d+) \([^)]*\)|-) \| `(?P<sha>[0-9a-f]{64})` \|$", re.M)
QUANT_ROW = re.compile(r"^\| `(?P<name>[\w.]+\.tflite)` \| (?P<cells>.+) \|$", re.M)
BENCH = re.compile(r"<!-- benchmark:begin -->(.*?)<!-- benchmark:end -->", re.S)

Raw = npt.NDArray[np.uint8]


def _load_writer() -> ModuleType:
    """scripts/ is not a package: import the writer by path (registered first: dataclasses
    look their module up in sys.modules)."""
    spec = importlib.util.spec_from_file_location("tflite_writer",
                                                  ROOT / "scripts" / "tflite_writer.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


tw = _load_writer()


def model_path(name: str) -> Path:
    return Path(str(MODELS / name))


@pytest.fixture(scope="module")
def card() -> str:
    return model_path("README.md").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def rows(card: str) -> dict[str, dict[str, str | None]]:
    return {m["name"]: m.groupdict() for m in FILE_ROW.finditer(card)}


@pytest.fixture(scope="module")
def test_set() -> tuple[Raw, npt.NDArray[np.int64]]:
    with np.load(model_path("digits_test.npz"), allow_pickle=False) as npz:
        return npz["x"], npz["y"]


def onnx_logits(name: str, raw: Raw) -> npt.NDArray[np.float32]:
    sess = ort.InferenceSession(str(model_path(name)), sess_options=session_options(threads=1),
                                providers=["CPUExecutionProvider"])
    x = (raw.astype(np.float32) / np.float32(16)).astype(np.float32)
    return np.asarray(sess.run(["logits"], {"pixels": x})[0])


def litert(content: bytes | Path, batch: int,
           resolver: Any = OpResolverType.AUTO) -> Interpreter:
    kwargs: dict[str, Any] = ({"model_path": str(content)} if isinstance(content, Path)
                              else {"model_content": content})
    interp = Interpreter(num_threads=1, experimental_op_resolver_type=resolver, **kwargs)
    if batch != 1:
        inp = interp.get_input_details()[0]
        interp.resize_tensor_input(inp["index"], [batch, *inp["shape"][1:]])
    interp.allocate_tensors()
    return interp


def run(interp: Interpreter, q: npt.NDArray[np.int8]) -> npt.NDArray[np.int8]:
    interp.set_tensor(interp.get_input_details()[0]["index"], q)
    interp.invoke()
    return np.asarray(interp.get_tensor(interp.get_output_details()[0]["index"]))


def tflite_logits(name: str, raw: Raw) -> npt.NDArray[np.int8]:
    return run(litert(model_path(name), len(raw)), (raw.astype(np.int16) + INPUT_ZERO_POINT)
               .astype(np.int8))


def onnx_params(name: str) -> int:
    graph = onnx.load(str(model_path(name))).graph
    return sum(int(np.prod(init.dims)) for init in graph.initializer)


def tflite_params(data: bytes) -> int:
    """Elements of the constant (weight and bias) tensors."""
    model = tfl.Model.GetRootAs(data, 0)
    tensors = [model.Subgraphs(0).Tensors(i) for i in range(model.Subgraphs(0).TensorsLength())]
    return sum(int(np.prod(t.ShapeAsNumpy())) for t in tensors
               if model.Buffers(t.Buffer()).DataLength() > 0)


# --- the bundled files and their card ---------------------------------------------------------

def package_data_globs() -> list[str]:
    """The patterns setup.py installs under edgeagent/infer/models."""
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "edgeagent.infer.models":
                    return [ast.literal_eval(v) for v in value.elts]  # type: ignore[attr-defined]
    raise AssertionError("setup.py has no package_data for edgeagent.infer.models")


def test_every_bundled_file_is_packaged_and_described_by_the_card(
        rows: dict[str, dict[str, str | None]]) -> None:
    assert set(rows) == set(BUNDLED)
    globs = package_data_globs()
    for name in (*BUNDLED, "README.md"):
        path = model_path(name)
        assert path.is_file(), f"{name} is not in the installed package"
        assert any(fnmatch.fnmatch(name, g) for g in globs), f"setup.py does not package {name}"
    for name, row in rows.items():
        data = model_path(name).read_bytes()
        assert int(str(row["size"]).replace(",", "")) == len(data), name
        assert row["sha"] == hashlib.sha256(data).hexdigest(), f"{name} changed; regenerate"


@pytest.mark.parametrize("name", [*ONNX_FILES, *TFLITE_FILES])
def test_accuracy_matches_the_card(name: str, rows: dict[str, dict[str, str | None]],
                                   test_set: tuple[Raw, npt.NDArray[np.int64]]) -> None:
    raw, y = test_set
    logits = tflite_logits(name, raw) if name.endswith(".tflite") else onnx_logits(name, raw)
    correct = int((logits.argmax(axis=1) == y).sum())
    row = rows[name]
    assert int(str(row["n"])) == len(y) == 540
    assert abs(correct - int(str(row["ok"]))) <= 1, (name, correct, row["ok"])
    assert correct / len(y) >= 0.95, name  # either way, a working classifier


def test_large_model_has_1_to_2_million_parameters_in_every_format(
        rows: dict[str, dict[str, str | None]]) -> None:
    fp32 = onnx_params("digits_large_fp32.onnx")
    assert 1_000_000 <= fp32 <= 2_000_000
    for stem in STEMS:
        n = onnx_params(f"{stem}_fp32.onnx")
        assert tflite_params(model_path(f"{stem}_int8.tflite").read_bytes()) == n
        for suffix in ("fp32.onnx", "int8.onnx", "int8.tflite"):
            assert int(str(rows[f"{stem}_{suffix}"]["params"]).replace(",", "")) == n


def test_large_int8_files_are_at_least_3_5x_smaller_than_fp32() -> None:
    fp32 = model_path("digits_large_fp32.onnx").stat().st_size
    for name in ("digits_large_int8.onnx", "digits_large_int8.tflite"):
        assert fp32 / model_path(name).stat().st_size >= 3.5, name


@pytest.mark.parametrize("name", TFLITE_FILES)
def test_tflite_io_is_int8_with_the_documented_quantization(
        name: str, card: str, test_set: tuple[Raw, npt.NDArray[np.int64]]) -> None:
    documented = {m["name"]: [tuple(c.split(" / ")) for c in m["cells"].split(" | ")]
                  for m in QUANT_ROW.finditer(card)}[name]
    interp = litert(model_path(name), 1)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    assert (inp["name"], inp["dtype"], list(inp["shape"])) == ("pixels", np.int8, [1, 64])
    assert (out["name"], out["dtype"], list(out["shape"])) == ("logits", np.int8, [1, 10])
    assert list(inp["shape_signature"]) == [-1, 64]
    assert inp["quantization"] == pytest.approx((INPUT_SCALE, INPUT_ZERO_POINT))
    assert (float(documented[0][0]), int(documented[0][1])) == inp["quantization"]
    assert float(documented[-1][0]) == pytest.approx(out["quantization"][0], rel=1e-8)
    assert int(documented[-1][1]) == out["quantization"][1]
    # Raw counts 0..16 are exact: quantizing raw/16 with these parameters gives q = raw.
    counts = np.arange(17)
    assert np.array_equal(np.rint(counts / 16 / INPUT_SCALE) + INPUT_ZERO_POINT, counts)
    # Resizable: a batch gives the logits of the rows one at a time, to one step of the output
    # scale (XNNPACK's aarch64 kernels round some batched sums differently) and the same class.
    raw, _ = test_set
    q = (raw[:25].astype(np.int16) + INPUT_ZERO_POINT).astype(np.int8)
    batched = run(litert(model_path(name), len(q)), q)
    assert batched.shape == (25, 10) and batched.dtype == np.int8
    single = np.concatenate([run(interp, q[i:i + 1]) for i in range(len(q))])
    assert np.abs(batched.astype(np.int16) - single).max() <= 1
    assert np.array_equal(batched.argmax(axis=1), single.argmax(axis=1))


@pytest.mark.parametrize("stem", STEMS)
def test_tflite_int8_agrees_with_onnx_int8(stem: str,
                                           test_set: tuple[Raw, npt.NDArray[np.int64]]) -> None:
    raw, _ = test_set
    tflite = tflite_logits(f"{stem}_int8.tflite", raw).argmax(axis=1)
    onnx8 = onnx_logits(f"{stem}_int8.onnx", raw).argmax(axis=1)
    assert np.mean(tflite == onnx8) >= 0.99


@pytest.mark.parametrize("stem", STEMS)
def test_onnx_int8_fuses_into_one_qgemm_per_layer(stem: str, tmp_path: Path) -> None:
    """Unfused Q/DQ chains are the usual reason int8 runs slower than fp32 (research note 1.2)."""
    opts = session_options(threads=1)
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(model_path(f"{stem}_int8.onnx")), sess_options=opts,
                         providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node]
    n_layers = sum(1 for n in onnx.load(str(model_path(f"{stem}_fp32.onnx"))).graph.node
                   if n.op_type == "MatMul")
    assert sorted(ops) == sorted(["QuantizeLinear", *["QGemm"] * n_layers, "DequantizeLinear"])


def test_the_speed_section_measured_the_bundled_files(card: str) -> None:
    section = BENCH.search(card)
    assert section is not None
    measured = dict(re.findall(r"`([\w.]+)` sha256 `([0-9a-f]{64})`", section[1]))
    assert set(measured) >= {"digits_large_fp32.onnx", "digits_large_int8.onnx"}, (
        "run scripts/bench_bundled_models.py --update-card")
    for name, digest in measured.items():
        assert hashlib.sha256(model_path(name).read_bytes()).hexdigest() == digest, name
    for claim in ("throughput at batch 64", "batch-1 latency", "accuracy", "smaller"):
        assert claim in section[1]


# --- the .tflite writer -----------------------------------------------------------------------

def integer_reference(mlp: Any, q: npt.NDArray[np.int8]) -> npt.NDArray[np.int8]:
    """TFLite's int8 FULLY_CONNECTED, written out: int32 accumulate of (q - zp_in) * w plus the
    bias, rescale by s_in * s_w / s_out, round, add zp_out, clamp (ReLU clamps at zp_out)."""
    h, zp, s_in = q.astype(np.int64), mlp.input.zero_point, np.float32(mlp.input.scale)
    for layer in mlp.layers:
        acc = (h - zp) @ layer.weights.astype(np.int64).T + layer.bias.astype(np.int64)
        mult = (np.float64(s_in) * layer.weight_scales.astype(np.float64)
                / np.float64(np.float32(layer.output.scale)))
        y = np.rint(acc * mult) + layer.output.zero_point
        h = np.clip(y, layer.output.zero_point if layer.relu else -128, 127).astype(np.int64)
        zp, s_in = layer.output.zero_point, np.float32(layer.output.scale)
    return h.astype(np.int8)


def random_mlp(seed: int, dead_unit: bool = False) -> tuple[Any, list[npt.NDArray[np.float32]],
                                                          list[npt.NDArray[np.float32]],
                                                          npt.NDArray[np.float32]]:
    rng = np.random.default_rng(seed)
    weights = [rng.normal(0, 0.5, (12, 9)).astype(np.float32),
               rng.normal(0, 0.5, (9, 5)).astype(np.float32)]
    biases = [rng.normal(0, 0.2, 9).astype(np.float32), rng.normal(0, 0.2, 5).astype(np.float32)]
    if dead_unit:  # what adam leaves of a dead ReLU unit: ~0 weights, a real negative bias
        weights[0][:, 3] = 1e-9
        biases[0][3] = -0.3
    x = rng.uniform(-1, 1, (64, 12)).astype(np.float32)
    mlp = tw.quantize_mlp(weights, biases, input_quant=tw.Quant(2 / 255, -1), calibration=x)
    return mlp, weights, biases, x


@pytest.mark.parametrize("dead_unit", [False, True])
@pytest.mark.parametrize("resolver", [OpResolverType.AUTO, OpResolverType.BUILTIN_REF],
                         ids=["xnnpack", "reference"])
def test_writer_output_matches_the_integer_reference(resolver: Any, dead_unit: bool) -> None:
    mlp, weights, biases, x = random_mlp(7, dead_unit)
    data = tw.serialize(mlp)
    q = mlp.input.quantize(x)
    expected = integer_reference(mlp, q)
    for batch in (1, len(q)):
        interp = litert(data, batch, resolver)
        got = np.concatenate([run(interp, q[i:i + batch]) for i in range(0, len(q), batch)])
        assert got.dtype == np.int8 and got.shape == (len(q), 5)
        assert np.abs(got.astype(np.int16) - expected).max() <= 1
    # And the integer model approximates the float one it was quantized from.
    float_out = tw.forward_float(weights, biases, x)[-1]
    approx = mlp.output.dequantize(expected)
    assert np.abs(approx - float_out).max() <= 4 * mlp.output.scale


def test_writer_follows_the_serialization_rules() -> None:
    mlp, *_ = random_mlp(3)
    data = tw.serialize(mlp, description="tiny")
    assert data[4:8] == b"TFL3"
    model = tfl.Model.GetRootAs(data, 0)
    assert model.Version() == 3 and model.Description() == b"tiny"
    assert model.Buffers(0).DataLength() == 0  # the empty sentinel
    base = np.frombuffer(data, np.uint8).ctypes.data
    constants = [model.Buffers(i) for i in range(1, model.BuffersLength())]
    assert len(constants) == 2 * len(mlp.layers)
    for buf in constants:
        assert buf.DataLength() > 0
        assert (buf.DataAsNumpy().ctypes.data - base) % 16 == 0
    code = model.OperatorCodes(0)
    assert code.BuiltinCode() == code.DeprecatedBuiltinCode() == tfl.BuiltinOperator.FULLY_CONNECTED
    graph = model.Subgraphs(0)
    for i in range(graph.TensorsLength()):
        t = graph.Tensors(i)
        if t.Type() == tfl.TensorType.INT8 and model.Buffers(t.Buffer()).DataLength():
            quant = t.Quantization()  # weights: symmetric, one scale per output channel
            assert quant.QuantizedDimension() == 0
            assert quant.ScaleLength() == t.Shape(0) and not quant.ZeroPointAsNumpy().any()
    assert tflite_params(data) == mlp.n_params


def test_quant_covers_its_range_and_keeps_zero_exact() -> None:
    q = tw.Quant.from_range(0.0, 6.0)  # a ReLU output
    assert q.zero_point == -128 and q.dequantize(q.quantize(0.0)) == 0.0
    q = tw.Quant.from_range(-3.0, 5.0)
    assert q.dequantize(q.quantize(0.0)) == 0.0
    assert q.dequantize(q.quantize([-3.0, 5.0])) == pytest.approx([-3.0, 5.0], abs=q.scale)
    with pytest.raises(ValueError, match="zero point"):
        tw.Quant(0.1, 200)
