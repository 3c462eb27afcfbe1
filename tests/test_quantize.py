"""``edgeagent quantize``: real models built here with onnx.helper, real onnxruntime quantization.

The MLP is trained on scikit-learn's digits (offline, in the wheel) so accuracy means
something, and it ends in a Gemm with a [1, N] bias: the shape that crashes per-channel
quantization in onnxruntime (issue #24815) unless the tool reshapes it first.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

from conftest import edgeagent_command
from edgeagent import cli
from edgeagent.infer.bundled import bundled_model_path, load_bundled_samples
from edgeagent.infer.quantize import (
    QuantizeError,
    QuantizeOptions,
    _flatten_gemm_biases,
    format_report,
    quantize_model,
)

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Mlp:
    path: Path
    x_test: F32
    y_test: npt.NDArray[np.int64]
    fp32_predictions: npt.NDArray[np.int64]  # the float model's argmax, computed in NumPy


def _model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], x_shape: list[Any],
           out_shape: list[Any]) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "test", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_shape)],
        initializer=inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.checker.check_model(proto, full_check=True)
    return proto


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> Mlp:
    """64 -> 32 (MatMul, Add, Relu) -> 10 (Gemm with a [1, 10] bias), trained on digits."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target.astype(np.int64), test_size=0.3, random_state=0,
        stratify=digits.target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = MLPClassifier(hidden_layer_sizes=(32,), max_iter=200, random_state=0)
        clf.fit(x_train, y_train)
    (w0, w1), (b0, b1) = [np.asarray(w, np.float32) for w in clf.coefs_], \
        [np.asarray(b, np.float32) for b in clf.intercepts_]
    inits = [numpy_helper.from_array(w0, "W0"), numpy_helper.from_array(b0, "B0"),
             numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(b1[None, :], "B1")]
    nodes = [helper.make_node("MatMul", ["x", "W0"], ["m0"]),
             helper.make_node("Add", ["m0", "B0"], ["a0"]),
             helper.make_node("Relu", ["a0"], ["h0"]),
             helper.make_node("Gemm", ["h0", "W1", "B1"], ["logits"])]
    path = tmp_path_factory.mktemp("mlp") / "mlp.onnx"
    onnx.save(_model(nodes, inits, ["N", 64], ["N", 10]), str(path))
    logits = np.maximum(x_test @ w0 + b0, 0) @ w1 + b1
    return Mlp(path, x_test, y_test, logits.argmax(axis=1))


@pytest.fixture(scope="module")
def mlp_npz(mlp: Mlp, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "digits.npz"
    np.savez(path, x=mlp.x_test, y=mlp.y_test)
    return path


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _weight_scales(path: Path) -> list[tuple[int, ...]]:
    """Shapes of the scales of every DequantizeLinear that reads an int8 initializer."""
    graph = onnx.load(str(path)).graph
    inits = {t.name: t for t in graph.initializer}
    return [tuple(inits[n.input[1]].dims) for n in graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in inits
            and inits[n.input[0]].data_type == TensorProto.INT8]


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*edgeagent_command(), "quantize", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


# --- end to end -------------------------------------------------------------------------------


def test_cli_quantizes_the_bundled_model_with_a_small_accuracy_drop(tmp_path: Path) -> None:
    raw, labels = load_bundled_samples()
    data = tmp_path / "digits.npz"
    np.savez(data, x=(raw / 16.0).astype(np.float32), y=labels)
    out = tmp_path / "digits_int8.onnx"
    result = _run(bundled_model_path("digits-fp32"), out, "--calibration", data,
                  "--per-channel", "--samples", "1000", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["samples"] == len(raw) and report["labeled"] is True
    assert report["per_channel"] is True and report["activations"] == "int8"
    assert report["method"] == "minmax" and report["qdq_nodes"] > 0
    fp32, int8 = report["fp32"], report["int8"]
    assert fp32["accuracy"] > 0.95
    assert int8["accuracy"] >= fp32["accuracy"] - 0.01  # at most ~5 of 540 samples lost
    assert report["agreement"] >= 0.98
    assert int8["path"] == str(out) and int8["size_bytes"] == out.stat().st_size
    assert report["size_ratio"] == pytest.approx(fp32["size_bytes"] / int8["size_bytes"])
    assert report["size_ratio"] > 2
    for variant in (fp32, int8):
        assert variant["latency_ms"] > 0 and variant["throughput_per_s"] > 0
    assert (report["latency_batch"], report["throughput_batch"]) == (1, 64)
    # OUT is a QDQ model with int8 weights and one scale per output channel, and it runs.
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert sorted(_weight_scales(out)) == [(10,), (32,), (64,)]
    logits = _session(out).run(None, {"pixels": (raw[:5] / 16.0).astype(np.float32)})[0]
    assert logits.shape == (5, 10)
    assert sorted(p.name for p in tmp_path.iterdir()) == [data.name, out.name]  # no temp left


def test_human_report(mlp: Mlp, mlp_npz: Path, tmp_path: Path,
                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "int8.onnx"
    assert cli.main(["quantize", str(mlp.path), str(out), "--calibration", str(mlp_npz)]) == 0
    text = capsys.readouterr().out
    assert f"{mlp.path} -> {out}" in text
    assert "per-tensor" in text and "minmax calibration on 256 samples" in text
    for row in ("size", "accuracy", "latency (batch 1)", "throughput (b 64)",
                "argmax agreement"):
        assert row in text


# --- quantization itself ----------------------------------------------------------------------


@pytest.mark.parametrize("per_channel", [False, True])
def test_gemm_with_a_2d_bias_quantizes(mlp: Mlp, mlp_npz: Path, tmp_path: Path,
                                       per_channel: bool) -> None:
    """Per-channel used to crash on the [1, 10] bias (onnxruntime #24815)."""
    out = tmp_path / "int8.onnx"
    report = quantize_model(mlp.path, out, mlp_npz,
                            QuantizeOptions(per_channel=per_channel, samples=10_000))
    assert report.samples == len(mlp.x_test)
    # The accuracy the report gives is the float model's own, computed independently here.
    assert report.fp32.accuracy == pytest.approx(np.mean(mlp.fp32_predictions == mlp.y_test))
    assert report.int8.accuracy is not None and report.fp32.accuracy is not None
    assert report.int8.accuracy >= report.fp32.accuracy - 0.02
    assert report.agreement >= 0.97
    scales = _weight_scales(out)
    assert sorted(scales) == ([(10,), (32,)] if per_channel else [(), ()])
    # The int8 model computes what the report says it computes.
    int8 = _session(out).run(None, {"x": mlp.x_test})[0].argmax(axis=1)
    assert np.mean(int8 == mlp.y_test) == pytest.approx(report.int8.accuracy)
    # The source model is untouched (the workaround reshapes a copy).
    src = {t.name: tuple(t.dims) for t in onnx.load(str(mlp.path)).graph.initializer}
    assert src["B1"] == (1, 10)


@pytest.mark.parametrize(("activations", "method", "zero_point_type"), [
    ("uint8", "minmax", TensorProto.UINT8),
    ("int8", "entropy", TensorProto.INT8),
    ("int8", "percentile", TensorProto.INT8),
])
def test_activation_types_and_methods(mlp: Mlp, mlp_npz: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str], activations: str,
                                      method: str, zero_point_type: int) -> None:
    out = tmp_path / "int8.onnx"
    # 100 samples: the histogram methods must cope with a short last batch (onnxruntime
    # #18792), and their progress prints must not reach stdout, which holds the JSON.
    assert cli.main(["quantize", str(mlp.path), str(out), "--calibration", str(mlp_npz),
                     "--activations", activations, "--method", method, "--samples", "100",
                     "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["activations"], report["method"], report["samples"]) == (
        activations, method, 100)
    graph = onnx.load(str(out)).graph
    inits = {t.name: t for t in graph.initializer}
    quantize_nodes = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    assert quantize_nodes
    assert {inits[n.input[2]].data_type for n in quantize_nodes} == {zero_point_type}
    assert report["agreement"] >= 0.9


def test_npy_with_labels_and_a_seeded_subset(mlp: Mlp, tmp_path: Path) -> None:
    x, y = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(x, mlp.x_test)
    np.save(y, mlp.y_test.astype(np.int32))
    reports = [quantize_model(mlp.path, tmp_path / f"{i}.onnx", x,
                              QuantizeOptions(samples=50, labels=y)) for i in range(2)]
    assert reports[0].samples == 50 and reports[0].labeled
    assert (tmp_path / "0.onnx").read_bytes() == (tmp_path / "1.onnx").read_bytes()
    unlabeled = quantize_model(mlp.path, tmp_path / "u.onnx", x, QuantizeOptions(samples=50))
    assert not unlabeled.labeled and unlabeled.fp32.accuracy is None
    assert "accuracy" not in format_report(unlabeled)


def test_flatten_gemm_biases_only_touches_gemm_only_biases() -> None:
    shared = numpy_helper.from_array(np.ones((1, 4), np.float32), "shared")
    own = numpy_helper.from_array(np.ones((1, 4), np.float32), "own")
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "W")
    nodes = [helper.make_node("Gemm", ["x", "W", "own"], ["g1"]),
             helper.make_node("Gemm", ["g1", "W", "shared"], ["g2"]),
             helper.make_node("Add", ["g2", "shared"], ["logits"])]
    model = _model(nodes, [shared, own, w], ["N", 4], ["N", 4])
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    before = _session_from(model).run(None, {"x": x})[0]
    assert _flatten_gemm_biases(model) == ["own"]
    dims = {t.name: tuple(t.dims) for t in model.graph.initializer}
    assert dims == {"shared": (1, 4), "own": (4,), "W": (4, 4)}
    onnx.checker.check_model(model, full_check=True)
    np.testing.assert_array_equal(_session_from(model).run(None, {"x": x})[0], before)


def _session_from(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


# --- image folders ----------------------------------------------------------------------------


def _conv_model(path: Path, layout: str, channels: int, head: list[list[float]]) -> Path:
    """x -> Conv 3x3 (identity on each channel) -> GlobalAveragePool -> Gemm(head).

    So the logits are ``head``-weighted channel means of the normalized image: a classifier
    whose right answer the test knows. NCHW with a fixed batch of 1 (as exported CNNs often
    are), or NHWC with a dynamic batch and a Transpose in front.
    """
    kernel = np.zeros((channels, channels, 3, 3), np.float32)
    for c in range(channels):
        kernel[c, c, 1, 1] = 1.0
    first = "x"
    nodes = []
    if layout == "nhwc":
        nodes.append(helper.make_node("Transpose", ["x"], ["nchw"], perm=[0, 3, 1, 2]))
        first = "nchw"
    nodes += [helper.make_node("Conv", [first, "K", "KB"], ["conv"], pads=[1, 1, 1, 1]),
              helper.make_node("GlobalAveragePool", ["conv"], ["pool"]),
              helper.make_node("Flatten", ["pool"], ["flat"]),
              helper.make_node("Gemm", ["flat", "W", "B"], ["logits"])]
    inits = [numpy_helper.from_array(kernel, "K"),
             numpy_helper.from_array(np.zeros(channels, np.float32), "KB"),
             numpy_helper.from_array(np.asarray(head, np.float32), "W"),
             numpy_helper.from_array(np.zeros(2, np.float32), "B")]
    x_shape = [1, channels, 8, 8] if layout == "nchw" else ["N", 8, 8, channels]
    onnx.save(_model(nodes, inits, x_shape, [x_shape[0], 2]), str(path))
    return path


def _images(folder: Path, color: tuple[int, int, int], count: int, seed: int) -> None:
    """``count`` noisy images around ``color``, of assorted sizes and formats."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(count):
        h, w = 10 + 3 * i, 12 + 2 * i
        noise = rng.integers(-30, 31, size=(h, w, 3))
        pixels = np.clip(np.asarray(color) + noise, 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels)
        if i % 3 == 1:
            image.save(folder / f"{i}.JPG", quality=95)
        elif i % 3 == 2:
            image.convert("RGBA").save(folder / f"{i}.png")  # converted back on reading
        else:
            image.save(folder / f"{i}.png")


@pytest.fixture(scope="module")
def colors(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ImageFolder layout: blue (label 0) and red (label 1), 6 images each, plus a stray file."""
    root = tmp_path_factory.mktemp("colors")
    _images(root / "blue", (40, 60, 200), 6, seed=1)
    _images(root / "red", (200, 50, 40), 6, seed=2)
    (root / "red" / "notes.txt").write_text("not an image, ignored")
    return root


def test_image_folder_with_classes_nchw(colors: Path, tmp_path: Path) -> None:
    # logits = (B - R, R - B) of the channel means: blue is class 0, red class 1.
    model = _conv_model(tmp_path / "rgb.onnx", "nchw", 3,
                        [[-1, 1], [0, 0], [1, -1]])
    out = tmp_path / "int8.onnx"
    report = quantize_model(model, out, colors, QuantizeOptions(per_channel=True))
    assert report.labeled and report.samples == 12
    assert report.fp32.accuracy == 1.0 and report.int8.accuracy == 1.0
    assert report.latency_batch == report.throughput_batch == 1  # the model's fixed batch
    assert {"QuantizeLinear", "DequantizeLinear"} <= {
        n.op_type for n in onnx.load(str(out)).graph.node}


def test_image_folder_nhwc_grayscale_with_mean_and_std(tmp_path: Path) -> None:
    """Unlabeled, then labeled: bright (0) vs dark (1) around 0, so only a normalization that
    centres the pixels separates them; --mean/--std are what does it."""
    model = _conv_model(tmp_path / "gray.onnx", "nhwc", 1, [[1, -1]])
    _images(tmp_path / "data" / "bright", (220, 220, 220), 5, seed=3)
    _images(tmp_path / "data" / "dark", (30, 30, 30), 5, seed=4)
    plain = quantize_model(model, tmp_path / "a.onnx", tmp_path / "data")
    assert plain.fp32.accuracy == 0.5  # everything is >= 0: all "bright"
    centred = quantize_model(model, tmp_path / "b.onnx", tmp_path / "data",
                             QuantizeOptions(mean=(0.5,), std=(0.25,)))
    assert centred.fp32.accuracy == 1.0 and centred.int8.accuracy == 1.0
    assert centred.throughput_batch == 10  # dynamic batch: all samples, up to 64
    loose = quantize_model(model, tmp_path / "c.onnx", tmp_path / "data" / "dark")
    assert not loose.labeled and loose.samples == 5


def test_image_folder_refusals(colors: Path, mlp: Mlp, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    model = _conv_model(tmp_path / "rgb.onnx", "nchw", 3, [[-1, 1], [0, 0], [1, -1]])
    mixed = tmp_path / "mixed"
    _images(mixed / "sub", (0, 0, 0), 1, seed=5)
    (mixed / "top.png").write_bytes((mixed / "sub" / "0.png").read_bytes())
    (tmp_path / "empty").mkdir()
    broken = tmp_path / "broken"
    _images(broken, (0, 0, 0), 2, seed=7)
    (broken / "0.png").write_bytes(b"\x89PNG but not really")
    out = tmp_path / "out.onnx"
    cases = {
        "mixed": ([str(model), str(out), "--calibration", str(mixed)], "both images and"),
        "empty": ([str(model), str(out), "--calibration", str(tmp_path / "empty")],
                  "holds no images"),
        "broken": ([str(model), str(out), "--calibration", str(broken)],
                   f"cannot read calibration image {broken / '0.png'}"),
        "not an image model": ([str(mlp.path), str(out), "--calibration", str(colors)],
                               "[N, C, H, W] or [N, H, W, C]"),
        "mean count": ([str(model), str(out), "--calibration", str(colors), "--mean", "1,2"],
                       "--mean takes 1 or 3 values"),
        "labels": ([str(model), str(out), "--calibration", str(colors), "--labels",
                    str(tmp_path / "y.npy")], "class subfolders"),
    }
    for name, (args, words) in cases.items():
        assert cli.main(["quantize", *args]) == cli.EXIT_INVALID, name
        err = capsys.readouterr().err
        assert words in err, (name, err)
        assert not out.exists(), name


def test_missing_pillow_says_what_to_install(colors: Path, tmp_path: Path) -> None:
    model = _conv_model(tmp_path / "rgb.onnx", "nchw", 3, [[-1, 1], [0, 0], [1, -1]])
    code = ("import sys; sys.modules['PIL'] = None; from edgeagent.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", code, "quantize", str(model),
                             str(tmp_path / "out.onnx"), "--calibration", str(colors)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == cli.EXIT_INVALID
    assert "Pillow" in result.stderr and "pip install 'edgeagent[quantize]'" in result.stderr


# --- refusals: exit 2, the problem named, OUT not created --------------------------------------


def _bad_inputs(tmp: Path, mlp: Mlp) -> dict[str, tuple[list[str], str]]:
    """name -> (arguments after `quantize`, words the error must contain)."""
    good_x = tmp / "x.npy"
    np.save(good_x, mlp.x_test[:20])
    (tmp / "garbage.onnx").write_bytes(b"this is not a model\x00\xff" * 10)
    np.save(tmp / "wrong_shape.npy", np.zeros((20, 63), np.float32))
    np.save(tmp / "wrong_rank.npy", np.zeros((20, 8, 8), np.float32))
    np.save(tmp / "empty.npy", np.zeros((0, 64), np.float32))
    np.save(tmp / "nan.npy", np.full((4, 64), np.nan, np.float32))
    np.save(tmp / "strings.npy", np.array([["a"] * 64]))
    (tmp / "corrupt.npy").write_bytes(b"\x93NUMPY garbage")
    (tmp / "corrupt.npz").write_bytes(b"PK\x03\x04 not a zip")
    np.savez(tmp / "no_x.npz", inputs=mlp.x_test[:4])
    np.savez(tmp / "bad_y.npz", x=mlp.x_test[:4], y=np.zeros(3, np.int64))
    np.save(tmp / "short_labels.npy", np.zeros(19, np.int64))
    np.save(tmp / "float_labels.npy", np.zeros(20, np.float32))
    np.save(tmp / "big_labels.npy", np.full(20, 10, np.int64))
    (tmp / "data.csv").write_text("1,2,3\n")
    model, out = str(mlp.path), str(tmp / "out.onnx")
    cal = ["--calibration", str(good_x)]
    return {
        "IN missing": ([str(tmp / "nope.onnx"), out, *cal], "does not exist"),
        "IN not ONNX": ([str(tmp / "garbage.onnx"), out, *cal], "not an ONNX model"),
        "OUT == IN": ([model, model, *cal], "is the input model"),
        "OUT dir missing": ([model, str(tmp / "no" / "out.onnx"), *cal], "does not exist"),
        "data missing": ([model, out, "--calibration", str(tmp / "nope.npy")],
                         "does not exist"),
        "wrong shape": ([model, out, "--calibration", str(tmp / "wrong_shape.npy")],
                        "samples have shape [63]"),
        "wrong rank": ([model, out, "--calibration", str(tmp / "wrong_rank.npy")],
                       "is [N, 64]"),
        "empty": ([model, out, "--calibration", str(tmp / "empty.npy")], "no samples"),
        "NaN": ([model, out, "--calibration", str(tmp / "nan.npy")], "NaN"),
        "not numbers": ([model, out, "--calibration", str(tmp / "strings.npy")],
                        "not numbers"),
        "corrupt npy": ([model, out, "--calibration", str(tmp / "corrupt.npy")],
                        "cannot read"),
        "corrupt npz": ([model, out, "--calibration", str(tmp / "corrupt.npz")],
                        "cannot read"),
        "npz without x": ([model, out, "--calibration", str(tmp / "no_x.npz")],
                          "no array 'x'"),
        "npz labels mismatch": ([model, out, "--calibration", str(tmp / "bad_y.npz")],
                                "3 labels for 4 samples"),
        "labels mismatch": ([model, out, *cal, "--labels", str(tmp / "short_labels.npy")],
                            "19 labels for 20 samples"),
        "labels not ints": ([model, out, *cal, "--labels", str(tmp / "float_labels.npy")],
                            "integers"),
        "labels too big": ([model, out, *cal, "--labels", str(tmp / "big_labels.npy")],
                           "10 classes"),
        "labels missing": ([model, out, *cal, "--labels", str(tmp / "nope.npy")],
                           "does not exist"),
        "unknown format": ([model, out, "--calibration", str(tmp / "data.csv")],
                           ".npy file, a .npz file or a folder"),
        "mean on arrays": ([model, out, *cal, "--mean", "0.5"], "--mean/--std"),
        "bad mean": ([model, out, *cal, "--mean", "half"], "--mean takes numbers"),
        "zero std": ([model, out, *cal, "--std", "0"], "positive"),
        "no samples": ([model, out, *cal, "--samples", "0"], "--samples"),
    }


def test_bad_input_exits_2_naming_the_problem(mlp: Mlp, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    for name, (args, words) in _bad_inputs(tmp_path, mlp).items():
        before = sorted(p.name for p in tmp_path.rglob("*"))
        assert cli.main(["quantize", *args]) == cli.EXIT_INVALID, name
        err = capsys.readouterr().err
        assert err.startswith("edgeagent quantize: ") and words in err, (name, err)
        assert sorted(p.name for p in tmp_path.rglob("*")) == before, name  # nothing written


def test_a_quantized_model_is_refused(mlp: Mlp, mlp_npz: Path, tmp_path: Path) -> None:
    int8 = tmp_path / "int8.onnx"
    quantize_model(mlp.path, int8, mlp_npz, QuantizeOptions(samples=20))
    with pytest.raises(QuantizeError, match="quantized already"):
        quantize_model(int8, tmp_path / "again.onnx", mlp_npz)


def test_failed_run_keeps_the_old_out(mlp: Mlp, tmp_path: Path) -> None:
    out = tmp_path / "int8.onnx"
    out.write_bytes(b"previous model")
    np.save(tmp_path / "bad.npy", np.zeros((5, 3), np.float32))
    result = _run(mlp.path, out, "--calibration", tmp_path / "bad.npy")
    assert result.returncode == cli.EXIT_INVALID and "samples have shape" in result.stderr
    assert out.read_bytes() == b"previous model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npy", "int8.onnx"]


def test_missing_onnx_says_what_to_install(mlp: Mlp, mlp_npz: Path, tmp_path: Path) -> None:
    code = ("import sys; sys.modules['onnx'] = None; from edgeagent.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    out = tmp_path / "int8.onnx"
    result = subprocess.run([sys.executable, "-c", code, "quantize", str(mlp.path), str(out),
                             "--calibration", str(mlp_npz)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == cli.EXIT_INVALID
    assert "pip install 'edgeagent[quantize]'" in result.stderr
    assert not out.exists()
