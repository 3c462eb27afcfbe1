"""The bundled digits models and the runtime the workers use to run them."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import pytest

from edgeagent.infer.bundled import bundled_model_path, load_bundled_samples
from edgeagent.infer.classifier import DigitsClassifier
from edgeagent.infer.litert import TfliteModel, interpreter_class
from edgeagent.infer.model import Quantization, load_model
from edgeagent.infer.ort import OnnxModel, session_options

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("fp32", "int8")
SCORE_LINE = re.compile(r"^(fp32 accuracy|int8 accuracy|int8/fp32 agreement): "
                        r"([0-9.]+) \((\d+)/(\d+)\)$", re.MULTILINE)

Samples = tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]


@pytest.fixture(scope="module")
def samples() -> Samples:
    return load_bundled_samples()


@pytest.fixture(scope="module")
def classifiers() -> dict[str, DigitsClassifier]:
    return {v: DigitsClassifier.load(f"digits-{v}") for v in VARIANTS}


def scores(text: str) -> dict[str, tuple[int, int]]:
    """{"fp32 accuracy": (correct, n), ...} from the script's output or the model card."""
    return {m[1]: (int(m[3]), int(m[4])) for m in SCORE_LINE.finditer(text)}


def test_bundled_samples_are_the_raw_test_set(samples: Samples) -> None:
    x, y = samples
    assert x.dtype == np.uint8 and x.ndim == 2 and x.shape[1] == 64
    assert y.dtype == np.int64 and y.shape == (len(x),)
    assert len(x) == 540  # 30 % of load_digits' 1,797
    assert x.min() >= 0 and x.max() == 16
    assert set(np.unique(y).tolist()) == set(range(10))


@pytest.mark.parametrize("variant", VARIANTS)
def test_bundled_model_is_accurate(variant: str, samples: Samples,
                                   classifiers: dict[str, DigitsClassifier]) -> None:
    x, y = samples
    labels, _ = classifiers[variant].classify(x)
    assert labels.shape == (len(x), 1)
    assert np.mean(labels[:, 0] == y) >= 0.95


def test_int8_agrees_with_fp32(samples: Samples,
                               classifiers: dict[str, DigitsClassifier]) -> None:
    x, _ = samples
    fp32, _ = classifiers["fp32"].classify(x)
    int8, _ = classifiers["int8"].classify(x)
    assert np.mean(fp32[:, 0] == int8[:, 0]) >= 0.98


@pytest.mark.parametrize("variant", VARIANTS)
def test_model_files_match_the_spec(variant: str) -> None:
    """IR 8 and opset 17 keep onnxruntime 1.16 (newest for older boards' Pythons) able to load."""
    model = onnx.load(str(bundled_model_path(f"digits-{variant}")))
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == 8
    assert {(o.domain, o.version) for o in model.opset_import} == {("", 17)}
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "pixels" and out.name == "logits"
    for value, width in ((inp, 64), (out, 10)):
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        dims = value.type.tensor_type.shape.dim
        assert len(dims) == 2 and dims[0].dim_param and dims[1].dim_value == width
    assert not {"Softmax", "ArgMax", "ZipMap"} & {n.op_type for n in model.graph.node}


def test_int8_file_really_is_qdq_int8() -> None:
    model = onnx.load(str(bundled_model_path("digits-int8")))
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    inits = {t.name: t for t in model.graph.initializer}
    produced_by = {o: n for n in model.graph.node for o in n.output}
    compute = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm")]
    assert len(compute) == 3
    for node in compute:
        # Every weight is an int8 initializer dequantized per output channel.
        dq = produced_by[node.input[1]]
        assert dq.op_type == "DequantizeLinear"
        weight = inits[dq.input[0]]
        assert weight.data_type == onnx.TensorProto.INT8
        scale = onnx.numpy_helper.to_array(inits[dq.input[1]])
        assert scale.shape == (weight.dims[1],)
    # No float weight matrix is left anywhere: float initializers are scales only.
    for t in model.graph.initializer:
        if t.data_type == onnx.TensorProto.FLOAT:
            assert len(t.dims) <= 1 and t.name.endswith("scale"), t.name


def test_int8_file_is_smaller() -> None:
    int8, fp32 = bundled_model_path("digits-int8"), bundled_model_path("digits-fp32")
    assert int8.stat().st_size < fp32.stat().st_size


@pytest.mark.parametrize("variant", VARIANTS)
def test_top3_is_sorted_and_consistent_with_logits(
        variant: str, samples: Samples,
        classifiers: dict[str, DigitsClassifier]) -> None:
    x, _ = samples
    clf = classifiers[variant]
    indices, probs = clf.classify(x, k=3)
    assert indices.shape == probs.shape == (len(x), 3)
    assert indices.dtype == np.int64 and probs.dtype == np.float32
    assert np.all(np.diff(probs, axis=1) <= 0)
    assert np.all(probs > 0) and np.all(probs <= 1)
    assert np.all(probs.sum(axis=1) <= 1 + 1e-5)
    assert np.all((indices >= 0) & (indices < 10))
    assert all(len(set(row)) == 3 for row in indices.tolist())
    np.testing.assert_array_equal(indices[:, 0], clf.logits(x).argmax(axis=1))


@pytest.mark.parametrize("variant", VARIANTS)
def test_batch_of_one_and_batch_of_many_agree(
        variant: str, samples: Samples,
        classifiers: dict[str, DigitsClassifier]) -> None:
    x, _ = samples
    clf = classifiers[variant]
    many_idx, many_p = clf.classify(x, k=3)
    for i in range(0, len(x), 7):
        one_idx, one_p = clf.classify(x[i:i + 1], k=3)
        np.testing.assert_array_equal(one_idx[0], many_idx[i])
        np.testing.assert_allclose(one_p[0], many_p[i], rtol=1e-5, atol=1e-7)
        # A single image of shape (64,) gives results of shape (k,).
        flat_idx, flat_p = clf.classify(x[i], k=3)
        assert flat_idx.shape == flat_p.shape == (3,)
        np.testing.assert_array_equal(flat_idx, many_idx[i])
        np.testing.assert_allclose(flat_p, many_p[i], rtol=1e-5, atol=1e-7)


def test_classify_accepts_any_numeric_pixels(samples: Samples,
                                             classifiers: dict[str, DigitsClassifier]) -> None:
    x, _ = samples
    clf = classifiers["int8"]
    reference, _ = clf.classify(x[:50])
    for as_type in (np.int64, np.float64, np.float32):
        got, _ = clf.classify(x[:50].astype(as_type))
        np.testing.assert_array_equal(got, reference)
    got, _ = clf.classify(x[:50].tolist())
    np.testing.assert_array_equal(got, reference)


def test_empty_batch_gives_empty_results(classifiers: dict[str, DigitsClassifier]) -> None:
    indices, probs = classifiers["int8"].classify(np.zeros((0, 64), np.uint8), k=2)
    assert indices.shape == probs.shape == (0, 2)


@pytest.mark.parametrize("shape", [(63,), (10, 63), (10, 65), (2, 8, 8), (1, 1, 64), ()])
def test_wrong_shape_is_a_clear_value_error(
        shape: tuple[int, ...], classifiers: dict[str, DigitsClassifier]) -> None:
    with pytest.raises(ValueError, match=r"shape \(64,\) or \(batch, 64\)"):
        classifiers["int8"].classify(np.zeros(shape, np.uint8))


@pytest.mark.parametrize("k", [0, -1, 11])
def test_k_out_of_range_is_a_value_error(
        k: int, classifiers: dict[str, DigitsClassifier]) -> None:
    with pytest.raises(ValueError, match=r"k must be in 1\.\.10"):
        classifiers["int8"].classify(np.zeros((1, 64), np.uint8), k=k)


def test_onnx_model_checks_shapes_and_reports_names() -> None:
    model = OnnxModel(bundled_model_path("digits-fp32"))
    assert (model.input.name, model.output.name) == ("pixels", "logits")
    assert model.path == bundled_model_path("digits-fp32")
    assert model.run(np.zeros((4, 64), np.float32)).shape == (4, 10)
    with pytest.raises(ValueError, match=r"expects shape \['N', 64\], got \[4, 63\]"):
        model.run(np.zeros((4, 63), np.float32))
    with pytest.raises(FileNotFoundError):
        OnnxModel(ROOT / "no-such-model.onnx")


def test_session_options_suit_small_boards() -> None:
    opts = session_options()
    assert opts.intra_op_num_threads == 1
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert session_options(threads=2).intra_op_num_threads == 2
    with pytest.raises(ValueError, match="threads"):
        session_options(threads=0)


def test_unknown_variant_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown bundled model 'fp16'; bundled: digits-fp32"):
        bundled_model_path("fp16")


def test_regeneration_script_reproduces_the_model_card(tmp_path: Path) -> None:
    """The README's numbers are what the script measures, and what its files really score."""
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_digits_model.py"),
                           "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr
    printed = scores(done.stdout)
    card_path = bundled_model_path("digits-int8").with_name("README.md")
    card = scores(card_path.read_text(encoding="utf-8"))
    assert set(printed) == {"fp32 accuracy", "int8 accuracy", "int8/fp32 agreement"}
    assert printed == card
    assert scores((tmp_path / "README.md").read_text(encoding="utf-8")) == card
    for name in ("digits_fp32.onnx", "digits_int8.onnx", "digits_test.npz"):
        assert (tmp_path / name).is_file()
    # Score the regenerated files through the runtime, on the regenerated test set.
    with np.load(tmp_path / "digits_test.npz", allow_pickle=False) as npz:
        x, y = npz["x"], npz["y"]
    preds = {v: DigitsClassifier(OnnxModel(tmp_path / f"digits_{v}.onnx")).classify(x)[0][:, 0]
             for v in VARIANTS}
    assert printed["fp32 accuracy"] == (int(np.sum(preds["fp32"] == y)), len(y))
    assert printed["int8 accuracy"] == (int(np.sum(preds["int8"] == y)), len(y))
    assert printed["int8/fp32 agreement"] == (int(np.sum(preds["fp32"] == preds["int8"])), len(y))


@pytest.mark.parametrize("family", ["digits", "digits-large"])
def test_a_fully_int8_tflite_model_runs_behind_the_same_interface(
        family: str, samples: Samples) -> None:
    """LiteRT gets int8 in and out; the runtime quantizes and dequantizes with the tensors'
    own parameters, so the classifier cannot tell it from the ONNX model it was built from."""
    x, _ = samples
    tflite = DigitsClassifier.load(f"{family}-int8-tflite")
    model = tflite.model
    assert isinstance(model, TfliteModel) and model.runtime == "litert"
    assert model.precision == "int8" and model.package == "ai_edge_litert"
    assert (model.input.dtype, model.output.dtype) == ("int8", "int8")
    assert model.input.quantization == Quantization((1 / 16,), (0,))  # raw pixels, exactly
    assert model.input.shape[1:] == (64,) and model.output.shape[1:] == (10,)
    onnx_int8 = DigitsClassifier.load(f"{family}-int8")
    many = tflite.classify(x, k=3)[0]
    assert np.mean(many[:, 0] == onnx_int8.classify(x)[0][:, 0]) >= 0.99
    for i in (0, 17, 539):  # batch 1 after batch 540: the interpreter is resized back
        np.testing.assert_array_equal(tflite.classify(x[i], k=3)[0], many[i])
    assert tflite.classify(np.zeros((0, 64), np.uint8))[0].shape == (0, 1)


def test_load_model_picks_the_runtime_by_suffix(tmp_path: Path) -> None:
    assert isinstance(load_model(bundled_model_path("digits-int8")), OnnxModel)
    assert isinstance(load_model(bundled_model_path("digits-int8-tflite")), TfliteModel)
    with pytest.raises(ValueError, match=r"unknown model format '\.pt'"):
        load_model(tmp_path / "model.pt")
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"\0" * 64)
    with pytest.raises(ValueError, match="cannot load it"):
        load_model(garbage)
    garbage_onnx = tmp_path / "garbage.onnx"
    garbage_onnx.write_bytes(b"not a protobuf")
    with pytest.raises(ValueError, match="onnxruntime cannot load it"):
        load_model(garbage_onnx)


def test_a_model_that_does_not_take_digits_is_refused_by_the_workload(tmp_path: Path) -> None:
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 3])])
    path = tmp_path / "three.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)],
                                     ir_version=8), str(path))
    with pytest.raises(ValueError, match=r"the digits workload needs \[N, 64\]"):
        DigitsClassifier.load(str(path))


def test_without_litert_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = importlib.import_module

    def no_tflite(name: str, package: str | None = None) -> Any:
        if name.split(".")[0] in ("ai_edge_litert", "tflite_runtime"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, package)

    monkeypatch.setattr(importlib, "import_module", no_tflite)
    with pytest.raises(ImportError, match=r"pip install 'edgeagent\[tflite\]'"):
        interpreter_class()
