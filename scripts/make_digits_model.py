"""Train, export and int8-quantize the bundled digits classifier, offline and deterministically.

Data: scikit-learn's copy of the UCI "Optical Recognition of Handwritten Digits" data set
(8x8 images, pixel values 0..16, CC BY 4.0), so no network and no model hub are needed.
Model: MLPClassifier(64, 32) exported as a hand-built ONNX graph (MatMul -> Add -> Relu chain,
raw logits out: the agent does softmax + top-k in its own kernel), then static QDQ int8
quantization with per-channel S8 weights (research/quantized-inference.md, sections 1.1-1.2, 3).

    pip install numpy onnxruntime "scikit-learn>=1.3" "onnx>=1.15"
    python scripts/make_digits_model.py --out edgeagent/infer/models

Writes digits_fp32.onnx, digits_int8.onnx, digits_test.npz and README.md (the model card).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import sklearn
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from threadpoolctl import threadpool_limits

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "edgeagent" / "infer" / "models"
REGENERATE = "python scripts/make_digits_model.py --out edgeagent/infer/models"

SEED = 0
HIDDEN = (64, 32)
MAX_ITER = 500  # adam stops on its tolerance at ~234 epochs; 500 leaves headroom
PIXEL_MAX = 16.0  # load_digits pixels are counts 0..16 (4x4 blocks of a 32x32 bitmap)
N_FEATURES = 64
N_CLASSES = 10
OPSET = 17
IR_VERSION = 8  # onnxruntime 1.16 (the newest for cp38 boards) reads IR <= 9
CALIBRATION_BATCH = 128

# A fixed timestamp for the .npz members: numpy's savez stamps "now", which breaks reproducibility.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Split:
    x_train: FloatArray  # scaled to [0, 1]
    y_train: npt.NDArray[np.int64]
    x_test_raw: npt.NDArray[np.uint8]  # 0..16, as the agent receives them
    y_test: npt.NDArray[np.int64]


@dataclass(frozen=True)
class Scores:
    fp32_correct: int
    int8_correct: int
    agree: int
    n: int

    def lines(self) -> list[str]:
        n = self.n
        return [f"fp32 accuracy: {self.fp32_correct / n:.4f} ({self.fp32_correct}/{n})",
                f"int8 accuracy: {self.int8_correct / n:.4f} ({self.int8_correct}/{n})",
                f"int8/fp32 agreement: {self.agree / n:.4f} ({self.agree}/{n})"]


def load_split() -> Split:
    digits = load_digits()
    raw = digits.data.astype(np.uint8)
    y = digits.target.astype(np.int64)
    r_train, r_test, y_train, y_test = train_test_split(
        raw, y, test_size=0.3, random_state=SEED, stratify=y)
    return Split(scale(r_train), y_train, r_test, y_test)


def scale(raw: npt.NDArray[np.uint8]) -> FloatArray:
    """The same scaling the runtime applies: the graph takes [0, 1] floats."""
    return (raw.astype(np.float32) / np.float32(PIXEL_MAX)).astype(np.float32)


def train(split: Split) -> MLPClassifier:
    # One BLAS thread: a threaded reduction order could change the last bits of the weights.
    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # an unconverged model is a bug here
        model = MLPClassifier(hidden_layer_sizes=HIDDEN, random_state=SEED, max_iter=MAX_ITER)
        model.fit(split.x_train.astype(np.float64), split.y_train)
    return model


def export_fp32(model: MLPClassifier) -> onnx.ModelProto:
    """MatMul -> Add -> Relu per hidden layer, MatMul -> Add for the logits; 1-D biases.

    Hand-built rather than skl2onnx: no Softmax/ArgMax/ZipMap tail, and 1-D biases, which
    per-channel QDQ quantization needs (onnxruntime issue #24815 crashes on [1, N] biases).
    """
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    x = "pixels"
    layers = list(zip(model.coefs_, model.intercepts_, strict=True))
    for i, (w, b) in enumerate(layers):
        last = i == len(layers) - 1
        inits += [numpy_helper.from_array(np.asarray(w, np.float32), f"W{i}"),
                  numpy_helper.from_array(np.asarray(b, np.float32), f"B{i}")]
        nodes += [helper.make_node("MatMul", [x, f"W{i}"], [f"mm{i}"], name=f"MatMul{i}"),
                  helper.make_node("Add", [f"mm{i}", f"B{i}"],
                                   ["logits" if last else f"z{i}"], name=f"Add{i}")]
        if not last:
            nodes.append(helper.make_node("Relu", [f"z{i}"], [f"h{i}"], name=f"Relu{i}"))
            x = f"h{i}"
    graph = helper.make_graph(
        nodes, "digits_mlp",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", N_FEATURES])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", N_CLASSES])],
        initializer=inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="edgeagent/scripts/make_digits_model.py",
                              doc_string="Digits MLP: pixels/16 in [0,1] -> logits (no softmax)")
    proto.ir_version = IR_VERSION
    onnx.checker.check_model(proto, full_check=True)
    return proto


class TrainingSamples(CalibrationDataReader):  # type: ignore[misc]  # untyped base
    """Feeds every training sample (in fixed batches) so MinMax sees the full activation range."""

    def __init__(self, x: FloatArray) -> None:
        self._x = x
        self._batches: Iterator[FloatArray] = iter(())
        self.rewind()

    def get_next(self) -> dict[str, FloatArray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {"pixels": batch}

    def rewind(self) -> None:
        self._batches = (self._x[i:i + CALIBRATION_BATCH]
                         for i in range(0, len(self._x), CALIBRATION_BATCH))


def quantize_int8(fp32_path: Path, x_calib: FloatArray) -> onnx.ModelProto:
    """Pre-process, then static QDQ with S8 activations and per-channel S8 weights.

    Pre-processing (onnxruntime's basic graph optimizations) folds MatMul + Add into Gemm, so the
    bias becomes int32 at the weight scale and onnxruntime fuses the whole model into
    Quantize -> 3 QGemm (ReLU absorbed) -> Dequantize. Quantizing the raw MatMul/Add chain
    instead gives int8 biases and leaves 11 Q/DQ nodes unfused: measured 1.9x slower at batch
    540 than this, and 1.4x slower than fp32. Symbolic shape inference is skipped: it needs
    sympy and the graph's shapes are already fully declared.

    QDQ + S8 weights is the fast, portable format (QOperator S8S8 ran 0.16-0.36x of fp32 speed);
    S8 activations are onnxruntime's recommendation for ARM CPUs (Pi, Jetson). QUInt8
    activations measured the same accuracy, agreement and speed here, so nothing favours them.
    """
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_static's advice to run symbolic shape inference
    try:
        with tempfile.TemporaryDirectory() as tmp:
            pre_path, int8_path = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
            quant_pre_process(str(fp32_path), str(pre_path), skip_symbolic_shape=True)
            quantize_static(
                str(pre_path), str(int8_path), TrainingSamples(x_calib),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                calibrate_method=CalibrationMethod.MinMax,
            )
            proto = onnx.load(str(int8_path))
    finally:
        root.setLevel(level)
    # The optimizer declares every domain it knows (training, aten, ...); keep the used ones so
    # older onnxruntime builds do not trip over a domain version they lack.
    used = {node.domain for node in proto.graph.node} | {""}
    kept = [op for op in proto.opset_import if op.domain in used]
    del proto.opset_import[:]
    proto.opset_import.extend(kept)
    proto.ir_version = IR_VERSION  # in case the quantizer raised it
    onnx.checker.check_model(proto, full_check=True)
    return proto


def logits(path: Path, x: FloatArray) -> FloatArray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    out = sess.run(["logits"], {"pixels": x})[0]
    return np.asarray(out, dtype=np.float32)


def evaluate(fp32_path: Path, int8_path: Path, split: Split) -> Scores:
    x = scale(split.x_test_raw)
    p32 = logits(fp32_path, x).argmax(axis=1)
    p8 = logits(int8_path, x).argmax(axis=1)
    return Scores(int((p32 == split.y_test).sum()), int((p8 == split.y_test).sum()),
                  int((p32 == p8).sum()), len(split.y_test))


def write_npz(path: Path, **arrays: npt.NDArray[np.generic]) -> None:
    """Like np.savez_compressed, but with fixed member timestamps so the bytes are reproducible."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compresslevel=9)


def model_card(out: Path, model: MLPClassifier, split: Split, scores: Scores) -> str:
    sizes = {name: (out / name).stat().st_size
             for name in ("digits_fp32.onnx", "digits_int8.onnx", "digits_test.npz")}
    n_params = sum(w.size + b.size for w, b in zip(model.coefs_, model.intercepts_, strict=True))
    dims = " -> ".join(str(d) for d in (N_FEATURES, *HIDDEN, N_CLASSES))
    size_rows = "\n".join(
        f"| `{name}` | {size:,} B | `{hashlib.sha256((out / name).read_bytes()).hexdigest()}` |"
        for name, size in sizes.items())
    return f"""# Bundled model: handwritten digits, fp32 and int8 ONNX

Generated by `scripts/make_digits_model.py`; do not edit by hand. Regenerate with

    {REGENERATE}

(needs numpy, onnxruntime, scikit-learn and onnx; no network). Training is seeded and runs on one
BLAS thread, and the script fixes the .npz timestamps, so a rerun with the same library versions
on the same kind of CPU reproduces these files byte for byte (sha256 below). Other BLAS builds
or library versions may change the last bits of the weights, and with them the hashes.

## Data

UCI "Optical Recognition of Handwritten Digits" (E. Alpaydin, C. Kaynak, Bogazici University,
1998; https://archive.ics.uci.edu/dataset/80), licensed CC BY 4.0, as shipped inside
scikit-learn (`sklearn.datasets.load_digits`, a copy of the UCI test part): 1,797 images of
8x8 pixels, each the count 0..16 of set pixels in a 4x4 block of a 32x32 bitmap, 10 classes.
Stratified split `train_test_split(test_size=0.3, random_state=0)`: {len(split.y_train)}
training / {len(split.y_test)} test samples.

`digits_test.npz` holds the held-out test set: `x` uint8 raw pixel counts 0..16, shape
[{len(split.y_test)}, 64]; `y` int64 labels. The agent uses it as its workload and to score
accuracy.

## Model

`MLPClassifier(hidden_layer_sizes={HIDDEN}, random_state={SEED}, max_iter={MAX_ITER})`
(ReLU, adam; stopped on its tolerance after {model.n_iter_} epochs), {dims}, {n_params:,}
parameters, scikit-learn {sklearn.__version__}.

- `digits_fp32.onnx`: hand-built graph, MatMul -> Add -> Relu x2, MatMul -> Add. Input `pixels`
  float32 [N, 64] = raw pixels / 16 (in [0, 1]); output `logits` float32 [N, 10]. No softmax:
  the agent applies softmax + top-k itself. Opset {OPSET}, IR version {IR_VERSION} (loads in
  onnxruntime >= 1.16), `onnx.checker` clean.
- `digits_int8.onnx`: `quant_pre_process(skip_symbolic_shape=True)` (folds MatMul + Add into
  Gemm, so biases become int32) then `quantize_static` (onnxruntime {ort.__version__}): QDQ
  format, int8 activations, per-channel int8 weights, int32 biases, MinMax calibration over all
  {len(split.y_train)} training samples. Same input and output. onnxruntime fuses it into
  Quantize -> 3 QGemm -> Dequantize. int8 activations are onnxruntime's recommendation for ARM
  CPUs; uint8 activations measured the same accuracy and speed here. At this size (6.6 k
  parameters) int8 buys file size more than speed: the per-call overhead dominates.

## Measured (test set, onnxruntime {ort.__version__}, CPU)

```
{chr(10).join(scores.lines())}
```

| file | size | sha256 |
|---|---|---|
{size_rows}
"""


def build(out: Path) -> Scores:
    out.mkdir(parents=True, exist_ok=True)
    split = load_split()
    model = train(split)
    fp32_path, int8_path = out / "digits_fp32.onnx", out / "digits_int8.onnx"
    fp32_path.write_bytes(export_fp32(model).SerializeToString(deterministic=True))
    int8_path.write_bytes(quantize_int8(fp32_path, split.x_train).SerializeToString(
        deterministic=True))
    write_npz(out / "digits_test.npz", x=split.x_test_raw, y=split.y_test)
    scores = evaluate(fp32_path, int8_path, split)
    (out / "README.md").write_text(model_card(out, model, split, scores), encoding="utf-8")
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"output directory (default: {DEFAULT_OUT})")
    args = parser.parse_args()
    scores = build(args.out)
    for line in scores.lines():
        print(line)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
