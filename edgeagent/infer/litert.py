"""TFLite models through LiteRT (``ai-edge-litert``), or ``tflite-runtime`` where the board has
only that.

LiteRT is preferred: it works with NumPy 2 and its default XNNPACK delegate ran our int8 model
6.6x faster than tflite-runtime 2.14, which is built against NumPy 1 and fails at
``Interpreter(...)`` under NumPy 2 (research/quantized-inference.md section 2). Integer input
and output tensors are quantized and dequantized here with the tensors' own parameters, by the
agent's kernels, so a fully-int8 model takes and returns float32 like every other model.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeagent.infer.model import Precision, Quantization, Runtime, TensorSpec
from edgeagent.kernels import dequantize, quantize

INSTALL_HINT = "pip install 'edgeagent[tflite]' (ai-edge-litert)"
_INTERPRETER_MODULES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter")


def interpreter_class() -> tuple[Any, str]:
    """The Interpreter class and the package it came from; ImportError says what to install."""
    failures = []
    for name in _INTERPRETER_MODULES:
        try:
            return importlib.import_module(name).Interpreter, name.split(".")[0]
        except ImportError as exc:
            failures.append(f"{name}: {exc}")
    raise ImportError(f"no TFLite runtime: {INSTALL_HINT}; tried " + "; ".join(failures))


def _spec(detail: dict[str, Any]) -> TensorSpec:
    dtype = np.dtype(detail["dtype"]).name
    quantization = None
    params = detail.get("quantization_parameters") or {}
    scales = np.asarray(params.get("scales", ()), dtype=np.float64)
    if dtype in ("int8", "uint8") and scales.size:
        zero_points = np.asarray(params.get("zero_points", ()), dtype=np.int64)
        quantization = Quantization(
            tuple(float(s) for s in scales), tuple(int(z) for z in zero_points),
            int(params.get("quantized_dimension", 0)) if scales.size > 1 else None)
    signature = detail.get("shape_signature")
    dims = signature if signature is not None and len(signature) else detail["shape"]
    shape = tuple(None if int(d) < 0 else int(d) for d in dims)
    return TensorSpec(str(detail["name"]), shape, dtype, quantization)


class TfliteModel:
    """One TFLite model; the batch size follows the input (the interpreter is resized).

    ``package`` says which runtime the board has: ``ai_edge_litert`` or ``tflite_runtime``.
    """

    runtime: Runtime = "litert"

    def __init__(self, path: str | os.PathLike[str], *, threads: int = 1) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no TFLite model at {self.path}")
        interpreter, self.package = interpreter_class()
        try:
            self._interpreter = interpreter(model_path=str(self.path), num_threads=threads)
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ValueError(f"{self.path}: {self.package} cannot load it: {exc}") from exc
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        if len(inputs) != 1:
            raise ValueError(f"{self.path}: expected one input, got {len(inputs)}")
        self._input_index = int(inputs[0]["index"])
        self._output_index = int(outputs[0]["index"])
        self.input: TensorSpec = _spec(inputs[0])
        self.output: TensorSpec = _spec(outputs[0])
        for spec in (self.input, self.output):
            q = spec.quantization
            if spec.dtype not in ("float32", "int8", "uint8") or (
                    spec.dtype != "float32" and (q is None or not q.per_tensor)):
                raise ValueError(f"{self.path}: tensor {spec.name!r} is {spec.dtype} "
                                 f"{'per-channel' if q else 'without quantization'}; "
                                 f"supported: float32, or int8/uint8 quantized per tensor")
        # Integer weights anywhere make it an int8 model, even with float input and output.
        integer = any(np.dtype(t["dtype"]) in (np.int8, np.uint8)
                      for t in self._interpreter.get_tensor_details())
        self.precision: Precision = "int8" if integer else "fp32"
        self._batch = int(inputs[0]["shape"][0])

    def run(self, batch: npt.ArrayLike) -> npt.NDArray[np.float32]:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        self.input.check(x, self.path.name, any_batch=True)
        n = x.shape[0]
        if n == 0:
            dims = [d if isinstance(d, int) else 0 for d in self.output.shape[1:]]
            return np.empty([0, *dims], np.float32)
        if n != self._batch:
            self._interpreter.resize_tensor_input(self._input_index, [n, *x.shape[1:]])
            self._interpreter.allocate_tensors()
            self._batch = n
        self._interpreter.set_tensor(self._input_index, _to_tensor(x, self.input))
        self._interpreter.invoke()
        return _from_tensor(self._interpreter.get_tensor(self._output_index), self.output)

    def __repr__(self) -> str:
        return f"TfliteModel({str(self.path)!r})"


def _to_tensor(x: npt.NDArray[np.float32], spec: TensorSpec) -> npt.NDArray[Any]:
    q = spec.quantization
    if q is None:
        return x
    if spec.dtype == "int8":
        return quantize(x, q.scale[0], q.zero_point[0])
    # uint8 (older TFLite models): the same affine rule, saturating to [0, 255].
    with np.errstate(invalid="ignore"):
        v = np.rint(x / np.float32(q.scale[0])) + np.float32(q.zero_point[0])
    clipped: npt.NDArray[np.float32] = np.clip(np.nan_to_num(v, nan=q.zero_point[0]), 0, 255)
    return clipped.astype(np.uint8)


def _from_tensor(t: npt.NDArray[Any], spec: TensorSpec) -> npt.NDArray[np.float32]:
    q = spec.quantization
    if q is None:
        return np.asarray(t, dtype=np.float32)
    if spec.dtype == "int8":
        return dequantize(t, q.scale[0], q.zero_point[0])
    return ((t.astype(np.float32) - np.float32(q.zero_point[0]))
            * np.float32(q.scale[0])).astype(np.float32)
