"""ONNX Runtime inference for the agent's workers, tuned for small solar-powered boards.

Sessions run on the CPU with one intra-op thread and thread spinning off by default: on an
agent-like duty cycle, ORT's default spinning burned 4-7.5x more CPU-seconds per inference for
a 1.4-1.7x latency gain (research/quantized-inference.md section 1.5). The worker pool scales
by adding workers, not threads per session.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from edgeagent.kernels import softmax_topk

__all__ = [
    "N_CLASSES",
    "N_PIXELS",
    "PIXEL_MAX",
    "DigitsClassifier",
    "OnnxModel",
    "Variant",
    "bundled_model_path",
    "load_bundled_samples",
    "session_options",
]

Variant = Literal["fp32", "int8"]
VARIANTS: tuple[str, ...] = get_args(Variant)

N_PIXELS = 64  # 8x8 image, flattened row-major
N_CLASSES = 10
PIXEL_MAX = 16  # raw pixels count the set bits of a 4x4 block: 0..16

_REGENERATE = "python scripts/make_digits_model.py --out edgeagent/infer/models"


def session_options(threads: int = 1) -> ort.SessionOptions:
    """Options for a board that also runs the agent: few threads, blocking instead of spinning."""
    if threads < 1:
        # 0 would mean "one per physical core" to ORT: exactly what a small board must not get.
        raise ValueError(f"threads must be >= 1, got {threads}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # ENABLE_ALL fuses the int8 model's QDQ pairs into QGemm; unfused it is slower than fp32.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return opts


class OnnxModel:
    """One float32-in, float32-out ONNX model in a CPU session with small-board options."""

    def __init__(self, path: str | os.PathLike[str], *, threads: int = 1) -> None:
        self._path = Path(path)
        if not self._path.is_file():
            raise FileNotFoundError(f"no ONNX model at {self._path}")
        self._session = ort.InferenceSession(str(self._path), sess_options=session_options(threads),
                                             providers=["CPUExecutionProvider"])
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or inputs[0].type != "tensor(float)":
            raise ValueError(f"{self._path}: expected one float32 input, got "
                             f"{[(i.name, i.type) for i in inputs]}")
        self._input_name: str = inputs[0].name
        self._output_name: str = outputs[0].name
        # Static dims (ints) are checked in run(); symbolic ones such as the batch are not.
        self._input_shape: tuple[int | str | None, ...] = tuple(inputs[0].shape)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def input_name(self) -> str:
        return self._input_name

    @property
    def output_name(self) -> str:
        return self._output_name

    @property
    def input_shape(self) -> tuple[int | str | None, ...]:
        """As declared in the model: ints for fixed dims, names or None for dynamic ones."""
        return self._input_shape

    def run(self, batch: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Run one batch; shape errors are raised here as ValueError, not as ORT tracebacks."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        expected = self._input_shape
        if x.ndim != len(expected) or any(isinstance(want, int) and got != want
                                          for got, want in zip(x.shape, expected, strict=True)):
            raise ValueError(f"{self._path.name}: input {self._input_name!r} expects shape "
                             f"{list(expected)}, got {list(x.shape)}")
        out = self._session.run([self._output_name], {self._input_name: x})[0]
        return np.asarray(out, dtype=np.float32)

    def __repr__(self) -> str:
        return f"OnnxModel({str(self._path)!r})"


class DigitsClassifier:
    """The bundled 8x8 digits model: raw pixel counts in, top-k classes and probabilities out.

    Scaling to [0, 1] happens here, and softmax + top-k in the agent's kernel rather than in
    the graph, so the fp32 and int8 models share one pre- and post-processing path.
    """

    def __init__(self, model: OnnxModel) -> None:
        self._model = model

    @classmethod
    def bundled(cls, variant: Variant = "int8", threads: int = 1) -> DigitsClassifier:
        """The model shipped with the package; int8 is the default workload."""
        return cls(OnnxModel(bundled_model_path(variant), threads=threads))

    @property
    def model(self) -> OnnxModel:
        return self._model

    def logits(self, pixels_raw: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Raw logits, shape (batch, 10) or (10,) for a single image of shape (64,)."""
        x = np.asarray(pixels_raw)
        if x.ndim not in (1, 2) or x.shape[-1] != N_PIXELS:
            raise ValueError(f"expected raw pixels of shape ({N_PIXELS},) or (batch, {N_PIXELS}), "
                             f"got shape {x.shape}")
        if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
            raise ValueError(f"expected numeric pixel counts 0..{PIXEL_MAX}, got dtype {x.dtype}")
        # The same arithmetic as the training script: float32(raw) / 16 (exact, a power of 2).
        scaled = x.reshape(-1, N_PIXELS).astype(np.float32) / np.float32(PIXEL_MAX)
        out = self._model.run(scaled)
        return out[0] if x.ndim == 1 else out

    def classify(self, pixels_raw: npt.ArrayLike, k: int = 1
                 ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """Top-k classes (descending) and their softmax probabilities.

        ``pixels_raw``: counts 0..16, shape (batch, 64) -> results (batch, k); shape (64,) ->
        results (k,).
        """
        if not 1 <= k <= N_CLASSES:
            raise ValueError(f"k must be in 1..{N_CLASSES}, got {k}")
        logits = self.logits(pixels_raw)
        if logits.shape[0] == 0:  # empty batch: nothing for the kernel to do
            return np.empty((0, k), np.int64), np.empty((0, k), np.float32)
        indices, probs = softmax_topk(logits, k)
        return indices, probs

    def __repr__(self) -> str:
        return f"DigitsClassifier({self._model!r})"


def _resource(name: str) -> Path:
    resource = files("edgeagent.infer") / "models" / name
    if not isinstance(resource, Path):
        # onnxruntime needs a real file; setup.py installs package data as plain files.
        raise RuntimeError(f"edgeagent.infer must be installed as files, not zipped: {resource}")
    if not resource.is_file():
        raise FileNotFoundError(f"bundled file {resource} is missing; regenerate with "
                                f"`{_REGENERATE}`")
    return resource


def bundled_model_path(variant: Variant = "int8") -> Path:
    """Path of the bundled ``digits_<variant>.onnx``."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown model variant {variant!r}; expected one of {VARIANTS}")
    return _resource(f"digits_{variant}.onnx")


def load_bundled_samples() -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """The held-out test set: raw pixels uint8 (n, 64) in 0..16 and int64 labels (n,)."""
    with np.load(_resource("digits_test.npz"), allow_pickle=False) as npz:
        x = np.asarray(npz["x"], dtype=np.uint8)
        y = np.asarray(npz["y"], dtype=np.int64)
    if x.ndim != 2 or x.shape[1] != N_PIXELS or y.shape != (x.shape[0],):
        raise ValueError(f"digits_test.npz is malformed: x {x.shape}, y {y.shape}")
    return x, y
