"""``edgeagent quantize``: static QDQ int8 quantization of an ONNX model, with a report.

The recipe is the one measured in research/quantized-inference.md (sections 1.1-1.2, 3) and
used for the bundled model: ``quant_pre_process`` (graph optimization folds MatMul + Add into
Gemm so biases become int32; symbolic shape inference is skipped because it needs sympy),
then ``quantize_static`` in QDQ format with int8 weights. QDQ + int8 weights is the fast and
portable choice (QOperator S8S8 ran at 0.16-0.36x of fp32 speed); int8 activations are
onnxruntime's recommendation for ARM CPUs, uint8 is offered for runtimes that want it.

The report compares the two models on the calibration samples: accuracy (argmax of the first
output against labels, when there are labels), argmax agreement, file sizes, batch-1 latency
and batch throughput, in onnxruntime sessions with the agent's own options (one thread, no
spinning), so the numbers are the ones the agent will see.

``onnx`` (which onnxruntime's quantizer imports) and Pillow (for image folders) are optional:
the ``quantize`` extra. Everything that needs them imports them lazily.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from edgeagent.infer.ort import session_options

if TYPE_CHECKING:
    import onnx

__all__ = [
    "Activations",
    "Method",
    "QuantizeError",
    "QuantizeFailed",
    "QuantizeOptions",
    "QuantizeReport",
    "VariantReport",
    "format_report",
    "parse_channel_values",
    "quantize_model",
]

Activations = Literal["int8", "uint8"]
Method = Literal["minmax", "entropy", "percentile"]

INSTALL_HINT = "pip install 'edgeagent[quantize]'"
DEFAULT_SAMPLES = 256
SEED = 0  # the calibration subset is a seeded choice, so reruns give the same model
BATCH = 32  # calibration and evaluation batch when the model's batch dimension is dynamic
THROUGHPUT_BATCH = 64
TIMING_BUDGET_S = 0.5  # per model and batch size; at least MIN_RUNS runs even if slower
MIN_RUNS = 5
MAX_RUNS = 1000
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


class QuantizeError(ValueError):
    """Bad input (model, data, labels, paths, options): the message names the problem."""


class QuantizeFailed(RuntimeError):
    """onnxruntime could not quantize or run a model that passed our checks."""


@dataclass(frozen=True)
class QuantizeOptions:
    per_channel: bool = False
    activations: Activations = "int8"
    method: Method = "minmax"
    samples: int = DEFAULT_SAMPLES
    labels: Path | None = None  # int labels for .npy data
    # Image folders only: (pixel / 255 - mean) / std per channel; None: 0 and 1.
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


@dataclass(frozen=True)
class VariantReport:
    path: str
    size_bytes: int
    accuracy: float | None  # None without labels
    latency_ms: float  # median, at the report's latency_batch
    throughput_per_s: float  # samples per second at the report's throughput_batch


@dataclass(frozen=True)
class QuantizeReport:
    calibration: str
    samples: int  # calibration samples, also the ones the models are compared on
    labeled: bool
    per_channel: bool
    activations: Activations
    method: Method
    qdq_nodes: int  # QuantizeLinear + DequantizeLinear in OUT; 0 means nothing was quantized
    agreement: float  # fraction of samples where both models' argmax agree
    size_ratio: float  # fp32 size / int8 size
    latency_batch: int
    throughput_batch: int
    fp32: VariantReport
    int8: VariantReport

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


@dataclass(frozen=True)
class _Input:
    """The model's one input as onnxruntime declares it (ints: fixed dims)."""

    name: str
    shape: tuple[int | str | None, ...]

    @property
    def batch(self) -> int | None:
        """A fixed batch size (1 for many exported CNNs), or None when it is dynamic."""
        first = self.shape[0]
        return first if isinstance(first, int) and first > 0 else None

    def describe(self) -> str:
        return "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"


@dataclass(frozen=True)
class _Data:
    x: npt.NDArray[Any]  # (n, *input.shape[1:]), numbers; a .npy stays memory-mapped
    y: IntArray | None


def quantize_model(source: Path, dest: Path, data: Path,
                   options: QuantizeOptions = QuantizeOptions()) -> QuantizeReport:
    """Quantize ``source`` to ``dest`` with calibration ``data`` and measure both models.

    ``dest`` appears only complete: the model is built and measured in a temporary directory,
    then written next to ``dest`` and renamed over it. QuantizeError for bad input (nothing is
    written), QuantizeFailed if onnxruntime fails on a model that passed the checks.
    """
    _require_onnx()
    if options.samples < 1:
        raise QuantizeError(f"--samples must be >= 1, got {options.samples}")
    _check_model(source, dest)
    fp32 = _session(source)
    spec = _input_spec(source, fp32)
    full = _load_data(data, spec, options)
    if full.y is not None:
        _check_labels_fit(full.y, fp32, source)
    # (An image folder is subset as it is read, so only the chosen files are decoded; this
    # then keeps them all.)
    picked = _subset(len(full.x), options.samples, spec.batch)
    x = np.ascontiguousarray(full.x[picked], dtype=np.float32)
    if not np.isfinite(x).all():
        raise QuantizeError(f"calibration data {data} contains NaN or infinity")
    y = None if full.y is None else full.y[picked]

    with tempfile.TemporaryDirectory(prefix="edgeagent-quantize-") as tmp:
        int8_path = Path(tmp) / "int8.onnx"
        _quantize(source, int8_path, spec, x, options)
        int8 = _session(int8_path)
        qdq_nodes = _count_qdq(int8_path)
        latency_batch = spec.batch or 1
        throughput_batch = spec.batch or min(len(x), THROUGHPUT_BATCH)
        pred32, pred8 = (_argmax(s, spec, x) for s in (fp32, int8))
        size32, size8 = source.stat().st_size, int8_path.stat().st_size
        reports = [
            VariantReport(path=str(path), size_bytes=size,
                          accuracy=None if y is None else float(np.mean(pred == y)),
                          latency_ms=1e3 * _median_s(s, spec.name, x[:latency_batch]),
                          throughput_per_s=throughput_batch / _median_s(
                              s, spec.name, x[:throughput_batch]))
            for path, size, pred, s in ((source, size32, pred32, fp32),
                                        (dest, size8, pred8, int8))]
        _publish(int8_path, dest)
    return QuantizeReport(
        calibration=str(data), samples=len(x), labeled=y is not None,
        per_channel=options.per_channel, activations=options.activations,
        method=options.method, qdq_nodes=qdq_nodes,
        agreement=float(np.mean(pred32 == pred8)), size_ratio=size32 / size8,
        latency_batch=latency_batch, throughput_batch=throughput_batch,
        fp32=reports[0], int8=reports[1])


def parse_channel_values(text: str | None, flag: str) -> tuple[float, ...] | None:
    """``"0.485,0.456,0.406"`` -> a tuple for --mean/--std (None stays None).

    Images are normalized as ``(pixel / 255 - mean) / std`` per channel.
    """
    if text is None:
        return None
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError as exc:
        raise QuantizeError(f"{flag} takes numbers separated by commas, got {text!r}") from exc
    if not all(math.isfinite(v) for v in values) or (flag == "--std" and min(values) <= 0):
        raise QuantizeError(f"{flag} must be finite{' and positive' * (flag == '--std')}, "
                            f"got {text!r}")
    return values


def format_report(report: QuantizeReport) -> str:
    """A short table for people; ``to_dict`` is the machine form."""
    f32, i8 = report.fp32, report.int8
    weights = "per-channel" if report.per_channel else "per-tensor"
    lines = [
        f"{f32.path} -> {i8.path}",
        f"QDQ, int8 weights ({weights}), {report.activations} activations, {report.method} "
        f"calibration on {report.samples} samples of {report.calibration}",
        "",
        f"{'':<20}{'fp32':>12}{'int8':>12}",
        f"{'size':<20}{_kib(f32.size_bytes):>12}{_kib(i8.size_bytes):>12}"
        f"   {report.size_ratio:.2f}x smaller",
    ]
    if f32.accuracy is not None and i8.accuracy is not None:
        lines.append(f"{'accuracy':<20}{f32.accuracy:>12.2%}{i8.accuracy:>12.2%}"
                     f"   {100 * (i8.accuracy - f32.accuracy):+.2f} pt")
    lines += [
        f"{f'latency (batch {report.latency_batch})':<20}{_ms(f32.latency_ms):>12}"
        f"{_ms(i8.latency_ms):>12}   {f32.latency_ms / i8.latency_ms:.2f}x speed",
        f"{f'throughput (b {report.throughput_batch})':<20}{_rate(f32.throughput_per_s):>12}"
        f"{_rate(i8.throughput_per_s):>12}"
        f"   {i8.throughput_per_s / f32.throughput_per_s:.2f}x speed",
        f"{'argmax agreement':<20}{'':>12}{report.agreement:>12.2%}",
        "(scored on the calibration samples: for unseen data, `edgeagent bench --data`)",
    ]
    if report.qdq_nodes == 0:
        lines.append("warning: onnxruntime quantized no operator of this model")
    return "\n".join(lines)


def _kib(size: int) -> str:
    return f"{size / 1024:.1f} KiB" if size < 1024 ** 2 else f"{size / 1024 ** 2:.2f} MiB"


def _ms(ms: float) -> str:
    return f"{ms * 1e3:.1f} us" if ms < 1 else f"{ms:.2f} ms"


def _rate(per_s: float) -> str:
    if per_s >= 1e6:
        return f"{per_s / 1e6:.2f} M/s"
    return f"{per_s / 1e3:.1f} k/s" if per_s >= 1e3 else f"{per_s:.1f} /s"


def _require_onnx() -> None:
    """Fail first, with the fix, when the optional quantizer dependencies are missing."""
    try:
        import onnx  # noqa: F401
        import onnxruntime.quantization  # noqa: F401  (it imports onnx and ml_dtypes)
    except ImportError as exc:
        raise QuantizeError(f"quantizing needs the onnx package ({exc}): {INSTALL_HINT}"
                            ) from exc


def _check_model(source: Path, dest: Path) -> None:
    """Refuse before any work: a missing or non-ONNX IN, an already quantized one, a bad OUT."""
    import onnx

    if not source.is_file():
        raise QuantizeError(f"model {source} does not exist")
    if dest.resolve() == source.resolve() or (dest.exists() and dest.samefile(source)):
        raise QuantizeError(f"OUT {dest} is the input model: choose another file name")
    if dest.is_dir():
        raise QuantizeError(f"OUT {dest} is a directory: give the int8 model's file name")
    if not dest.parent.is_dir():
        raise QuantizeError(f"OUT's directory {dest.parent} does not exist")
    try:
        proto = onnx.load(str(source))
    except Exception as exc:  # protobuf's DecodeError and friends share no useful base
        raise QuantizeError(f"{source} is not an ONNX model: {exc}") from exc
    if not proto.graph.node:
        raise QuantizeError(f"{source} is not an ONNX model (it has no graph)")
    if any(node.op_type in QDQ_OPS for node in proto.graph.node):
        raise QuantizeError(f"{source} is quantized already (it has QuantizeLinear/"
                            "DequantizeLinear nodes): start from the float model")


def _session(path: Path) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), sess_options=session_options(1),
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped Fail/InvalidGraph errors
        raise QuantizeError(f"onnxruntime cannot load {path}: {exc}") from exc


def _input_spec(source: Path, session: ort.InferenceSession) -> _Input:
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise QuantizeError(f"{source}: quantize supports models with one input, this one has "
                            f"{len(inputs)}: {[i.name for i in inputs]}")
    if inputs[0].type != "tensor(float)":
        raise QuantizeError(f"{source}: input {inputs[0].name!r} is {inputs[0].type}; "
                            "quantize needs a float32 input")
    shape = tuple(inputs[0].shape)
    if not shape:
        raise QuantizeError(f"{source}: input {inputs[0].name!r} is a scalar; quantize needs "
                            "a batch axis first")
    return _Input(inputs[0].name, shape)


def _check_labels_fit(y: IntArray, session: ort.InferenceSession, source: Path) -> None:
    """Labels beyond the model's classes are a wrong label file, not an accuracy of 0."""
    out = session.get_outputs()[0]
    classes = 1
    for dim in out.shape[1:]:
        if not isinstance(dim, int):
            return  # a dynamic output size: nothing to check against
        classes *= dim
    if len(y) and int(y.max()) >= classes:
        raise QuantizeError(f"labels go up to {int(y.max())} but {source}'s output "
                            f"{out.name!r} has {classes} classes")


def _subset(n: int, samples: int, batch: int | None) -> IntArray:
    """A seeded choice of at most ``samples``, in data order; a multiple of a fixed batch."""
    count = min(n, samples)
    if batch is not None:
        if count < batch:
            raise QuantizeError(f"the model takes batches of exactly {batch} samples, "
                                f"but only {count} are available")
        count -= count % batch
    if count == n:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(SEED)
    return np.sort(rng.choice(n, size=count, replace=False)).astype(np.int64)


# --- calibration data -------------------------------------------------------------------------


def _load_data(path: Path, spec: _Input, options: QuantizeOptions) -> _Data:
    if not path.exists():
        raise QuantizeError(f"calibration data {path} does not exist")
    if path.is_dir():
        if options.labels is not None:
            raise QuantizeError("--labels is for .npy calibration data; an image folder "
                                "takes its labels from its class subfolders")
        return _load_images(path, spec, options)
    if options.mean is not None or options.std is not None:
        raise QuantizeError("--mean/--std normalize images; .npy/.npz calibration data "
                            "must already be what the model takes")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        x = _read_npy(path, "calibration data")
        y = None if options.labels is None else _load_labels(options.labels, len(x))
    elif suffix == ".npz":
        if options.labels is not None:
            raise QuantizeError("--labels is for .npy calibration data; a .npz carries its "
                                "labels under the key 'y'")
        x, y = _read_npz(path)
    else:
        raise QuantizeError(f"calibration data {path} must be a .npy file, a .npz file or a "
                            "folder of images")
    return _Data(_check_samples(x, spec, str(path)), y)


def _read_npy(path: Path, what: str) -> npt.NDArray[Any]:
    """Memory-mapped: only the chosen samples of a large calibration array are read."""
    try:
        return np.asarray(np.load(path, mmap_mode="r", allow_pickle=False))
    except FileNotFoundError as exc:
        raise QuantizeError(f"{what} {path} does not exist") from exc
    except (OSError, ValueError, EOFError) as exc:
        raise QuantizeError(f"cannot read {what} {path} as .npy: {exc}") from exc


def _read_npz(path: Path) -> tuple[npt.NDArray[Any], IntArray | None]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise QuantizeError(f"calibration data {path} is a .npy, not a .npz archive")
            if "x" not in npz.files:
                raise QuantizeError(f"calibration data {path} has no array 'x' (it has "
                                    f"{sorted(npz.files) or 'none'})")
            x = np.asarray(npz["x"])
            y = np.asarray(npz["y"]) if "y" in npz.files else None
    except QuantizeError:
        raise
    except Exception as exc:  # a corrupt zip raises BadZipFile, OSError, ValueError, ...
        raise QuantizeError(f"cannot read calibration data {path} as .npz: {exc}") from exc
    return x, None if y is None else _check_labels(y, len(x), f"{path} ['y']")


def _load_labels(path: Path, n: int) -> IntArray:
    return _check_labels(_read_npy(path, "labels"), n, str(path))


def _check_labels(y: npt.NDArray[Any], n: int, what: str) -> IntArray:
    if y.dtype.kind not in "iu" or y.ndim != 1:
        raise QuantizeError(f"labels {what} must be a 1-D array of integers, got "
                            f"{y.dtype} with shape {list(y.shape)}")
    if len(y) != n:
        raise QuantizeError(f"labels {what} has {len(y)} labels for {n} samples")
    if len(y) and int(y.min()) < 0:
        raise QuantizeError(f"labels {what} has negative labels")
    return y.astype(np.int64)


def _check_samples(x: npt.NDArray[Any], spec: _Input, what: str) -> npt.NDArray[Any]:
    """Type and shape against the model input; the float32 copy waits for the subset."""
    if x.dtype.kind not in "iuf":
        raise QuantizeError(f"calibration data {what} holds {x.dtype}, not numbers")
    if x.ndim == 0 or len(x) == 0:
        raise QuantizeError(f"calibration data {what} holds no samples")
    want = spec.shape[1:]
    if x.ndim != len(spec.shape) or any(
            isinstance(w, int) and g != w for g, w in zip(x.shape[1:], want, strict=True)):
        raise QuantizeError(
            f"calibration data {what}: samples have shape {list(x.shape[1:])}, but the "
            f"model input {spec.name!r} is {spec.describe()} (first axis: samples)")
    return x


def _load_images(folder: Path, spec: _Input, options: QuantizeOptions) -> _Data:
    """Images directly in ``folder`` (unlabeled) or one subfolder per class (ImageFolder)."""
    try:
        from PIL import Image
    except ImportError as exc:
        raise QuantizeError(f"reading calibration images needs Pillow: {INSTALL_HINT}"
                            ) from exc
    from edgeagent.kernels import resize_normalize

    layout, channels, height, width = _image_layout(spec)
    extensions = set(Image.registered_extensions())

    def images(directory: Path, recursive: bool) -> list[Path]:
        found = directory.rglob("*") if recursive else directory.iterdir()
        return sorted(p for p in found if p.is_file() and p.suffix.lower() in extensions
                      and not p.name.startswith("."))

    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = images(folder, recursive=False)
    if classes and loose:
        raise QuantizeError(f"{folder} holds both images and subfolders: put every image in "
                            "a class subfolder (labeled) or none (unlabeled)")
    # (path, label): the label is the class folder's index in sorted order, as ImageFolder does.
    files = [(p, -1) for p in loose] or [(p, label) for label, c in enumerate(classes)
                                         for p in images(c, recursive=True)]
    if not files:
        raise QuantizeError(f"calibration folder {folder} holds no images")
    picked = [files[int(i)] for i in _subset(len(files), options.samples, spec.batch)]
    # Always per channel: the kernel's defaults are for 3 channels.
    mean = _per_channel(options.mean or (0.0,), channels, "--mean")
    std = _per_channel(options.std or (1.0,), channels, "--std")
    mode = "RGB" if channels == 3 else "L"
    rows = []
    for path, _ in picked:
        try:
            with Image.open(path) as img:
                pixels = np.asarray(img.convert(mode), dtype=np.uint8)
        except Exception as exc:  # Pillow raises UnidentifiedImageError, OSError, SyntaxError
            raise QuantizeError(f"cannot read calibration image {path}: {exc}") from exc
        hwc = pixels.reshape(pixels.shape[0], pixels.shape[1], channels)  # "L" comes as (h, w)
        rows.append(resize_normalize(hwc, height, width, mean=mean, std=std, layout=layout))
    y = None if loose else np.array([label for _, label in picked], dtype=np.int64)
    return _Data(np.stack(rows).astype(np.float32, copy=False), y)


def _image_layout(spec: _Input) -> tuple[Literal["chw", "hwc"], int, int, int]:
    """NCHW or NHWC from the model input's fixed dims: the channel axis is the one of size 1/3.

    Returns the layout, channels, height and width.
    """
    if len(spec.shape) == 4:
        dims = [d if isinstance(d, int) else None for d in spec.shape]
        c, h, w = dims[1], dims[2], dims[3]
        if c in (1, 3) and h is not None and w is not None:
            return "chw", c, h, w
        h, w, c = dims[1], dims[2], dims[3]
        if c in (1, 3) and h is not None and w is not None:
            return "hwc", c, h, w
    raise QuantizeError(f"calibration images need a model input [N, C, H, W] or [N, H, W, C] "
                        f"with 1 or 3 channels and a fixed size; {spec.name!r} is "
                        f"{spec.describe()}: pass a .npy/.npz instead")


def _per_channel(values: Sequence[float], channels: int, flag: str) -> tuple[float, ...]:
    if len(values) == 1:
        return tuple(values) * channels
    if len(values) != channels:
        raise QuantizeError(f"{flag} takes 1 or {channels} values (one per channel), got "
                            f"{len(values)}")
    return tuple(values)


# --- quantization ------------------------------------------------------------------------------


def _quantize(source: Path, dest: Path, spec: _Input, x: FloatArray,
              options: QuantizeOptions) -> None:
    """Pre-process, work around #24815, quantize_static; ``dest``'s directory is scratch."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):  # type: ignore[misc]  # untyped base
        def __init__(self) -> None:
            self._batches: Iterator[FloatArray] = iter(())
            self.rewind()

        def get_next(self) -> dict[str, FloatArray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {spec.name: batch}

        def rewind(self) -> None:
            self._batches = (x[i:i + step] for i in range(0, len(x), step))

    # The histogram calibrators (entropy, percentile) stack every batch's activations into one
    # array, which fails on a shorter last batch (onnxruntime issue #18792): one sample at a
    # time gives them equal shapes and the same histogram.
    step = spec.batch or (BATCH if options.method == "minmax" else 1)

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    pre, fixed = dest.with_name("pre.onnx"), dest.with_name("fixed.onnx")
    with _quiet():
        try:
            quant_pre_process(str(source), str(pre), skip_symbolic_shape=True)
            model = onnx.load(str(pre))
            _flatten_gemm_biases(model)
            onnx.save(model, str(fixed))
            quantize_static(
                str(fixed), str(dest), Batches(),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8 if options.activations == "int8"
                else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=options.per_channel,
                calibrate_method=methods[options.method])
        except Exception as exc:
            raise QuantizeFailed(f"onnxruntime could not quantize {source}: "
                                 f"{type(exc).__name__}: {exc}") from exc
    result = onnx.load(str(dest))
    # The optimizer declares every domain it knows (training, aten, ...); keep the used ones so
    # older onnxruntime builds on the boards do not trip over a domain version they lack.
    used = {node.domain for node in result.graph.node} | {""}
    kept = [op for op in result.opset_import if op.domain in used]
    del result.opset_import[:]
    result.opset_import.extend(kept)
    onnx.save(result, str(dest))


def _count_qdq(path: Path) -> int:
    import onnx

    return sum(node.op_type in QDQ_OPS for node in onnx.load(str(path)).graph.node)


def _flatten_gemm_biases(model: onnx.ModelProto) -> list[str]:
    """Reshape Gemm bias initializers of shape [1, N] to [N]; returns the names changed.

    Per-channel QDQ quantization crashes on them ("truth value of an array ... is ambiguous",
    onnxruntime issue #24815); skl2onnx and MatMul + Add fusion both produce them. Gemm
    broadcasts [N] and [1, N] over [M, N] the same way, so the model computes the same thing.
    Only initializers that nothing but Gemm's third input reads are changed, and none that a
    graph input could override.
    """
    uses: dict[str, set[tuple[str, int]]] = {}
    for node in _all_nodes(model.graph):
        for position, name in enumerate(node.input):
            uses.setdefault(name, set()).add((node.op_type, position))
    overridable = {i.name for i in model.graph.input}
    changed = []
    for init in model.graph.initializer:
        if (len(init.dims) == 2 and init.dims[0] == 1 and init.name not in overridable
                and uses.get(init.name) == {("Gemm", 2)}):
            n = init.dims[1]
            del init.dims[:]
            init.dims.append(n)  # row-major data: the same bytes are the 1-D vector
            changed.append(init.name)
    stale = [vi for vi in model.graph.value_info if vi.name in changed]
    for vi in stale:
        model.graph.value_info.remove(vi)
    return changed


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Nodes of the graph and of its subgraphs (If/Loop/Scan bodies may read outer names)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _all_nodes(attr.g)
            for sub in attr.graphs:
                yield from _all_nodes(sub)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the quantizer's advice (logged: symbolic shape inference, which we skip on
    purpose) and progress (printed by the histogram calibrators, it would corrupt --json)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def _publish(built: Path, dest: Path) -> None:
    """Copy to a temporary file beside ``dest`` and rename: ``dest`` is never half-written."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(built.read_bytes())
            out.flush()
            os.fsync(out.fileno())
        tmp.chmod(0o644)
        tmp.replace(dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --- measurement -------------------------------------------------------------------------------


def _argmax(session: ort.InferenceSession, spec: _Input, x: FloatArray) -> IntArray:
    """Argmax of the first output per sample (flattened), in the model's batch size."""
    step = spec.batch or BATCH
    output = session.get_outputs()[0].name
    out = [np.asarray(session.run([output], {spec.name: x[i:i + step]})[0])
           for i in range(0, len(x), step)]
    logits = np.concatenate(out)
    if len(logits) != len(x):
        raise QuantizeFailed(f"the first output has {len(logits)} rows for {len(x)} samples: "
                             "its first axis is not the batch")
    return np.asarray(logits.reshape(len(x), -1).argmax(axis=1), dtype=np.int64)


def _median_s(session: ort.InferenceSession, name: str, batch: FloatArray) -> float:
    """Median seconds per run: at least MIN_RUNS, then until the time budget is spent."""
    output, feed = [session.get_outputs()[0].name], {name: batch}

    def run() -> None:
        session.run(output, feed)

    run()  # warm-up: the first run allocates
    times: list[float] = []
    deadline = time.perf_counter() + TIMING_BUDGET_S
    while len(times) < MIN_RUNS or (len(times) < MAX_RUNS and time.perf_counter() < deadline):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
