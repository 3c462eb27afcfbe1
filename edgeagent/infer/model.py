"""The one model interface every runtime implements, and ``load_model`` that picks the runtime.

A model takes a float32 batch and returns a float32 batch, whatever its tensors hold inside:
for a fully-int8 TFLite model the runtime quantizes the input and dequantizes the output with
the tensors' own parameters (through ``edgeagent.kernels``), so fp32 and int8 variants are
interchangeable behind this interface and the governor can swap one for the other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

Runtime = Literal["onnxruntime", "litert"]
RUNTIMES: tuple[Runtime, ...] = ("onnxruntime", "litert")
Precision = Literal["fp32", "int8"]


@dataclass(frozen=True)
class Quantization:
    """Affine parameters of an integer tensor: ``real = scale * (q - zero_point)``.

    One value each for a per-tensor tensor; one per slice along ``axis`` for per-channel.
    """

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int | None = None

    @property
    def per_tensor(self) -> bool:
        return len(self.scale) == 1


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output as the model declares it.

    ``shape``: ints for fixed dimensions, a name or None for dynamic ones (usually the batch).
    ``dtype``: the element type inside the model ("float32", "int8", "uint8", ...), which is
    not what ``Model.run`` takes or returns (always float32). ``quantization`` is set for
    integer tensors.
    """

    name: str
    shape: tuple[int | str | None, ...]
    dtype: str
    quantization: Quantization | None = None

    def check(self, x: npt.NDArray[np.float32], model: str, *, any_batch: bool = False) -> None:
        """ValueError naming the model and tensor when ``x`` cannot be this tensor.

        ``any_batch``: the first dimension may differ from a fixed declared one (TFLite
        declares batch 1 and resizes).
        """
        skip = 1 if any_batch else 0
        if x.ndim != len(self.shape) or any(
                isinstance(want, int) and got != want
                for got, want in zip(x.shape[skip:], self.shape[skip:], strict=True)):
            raise ValueError(f"{model}: input {self.name!r} expects shape {list(self.shape)}, "
                             f"got {list(x.shape)}")


class Model(Protocol):
    """A loaded model with one input and one output (further outputs are ignored)."""

    path: Path
    runtime: Runtime
    precision: Precision
    input: TensorSpec
    output: TensorSpec

    def run(self, batch: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """One batch through the model: float32 in (batch first), float32 out."""
        ...


def runtime_for(path: Path) -> Runtime:
    """The runtime a file needs, by its suffix (``.onnx`` or ``.tflite``)."""
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "onnxruntime"
    if suffix == ".tflite":
        return "litert"
    raise ValueError(f"{path}: unknown model format {suffix or '(no suffix)'!r}; "
                     f"expected .onnx (onnxruntime) or .tflite (LiteRT)")


def load_model(path: str | os.PathLike[str], *, threads: int = 1) -> Model:
    """Load an ONNX or TFLite model with the small-board settings of its runtime.

    Each worker thread loads its own: neither runtime's session is meant to be shared by
    threads that run at the same time.
    """
    p = Path(path)
    runtime = runtime_for(p)
    if runtime == "onnxruntime":
        from edgeagent.infer.ort import OnnxModel

        return OnnxModel(p, threads=threads)
    from edgeagent.infer.litert import TfliteModel

    return TfliteModel(p, threads=threads)
