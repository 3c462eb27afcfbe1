"""onnxruntime sessions tuned for small solar-powered boards.

Sessions run on the CPU with one intra-op thread and thread spinning off by default: on an
agent-like duty cycle, ORT's default spinning burned 4-7.5x more CPU-seconds per inference for
a 1.4-1.7x latency gain (research/quantized-inference.md section 1.5). The worker pool scales
by adding workers, not threads per session.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from edgeagent.infer.model import Precision, Runtime, TensorSpec

# Op types that only appear in quantized graphs (QDQ, QOperator or dynamic quantization).
# They are plain strings in the protobuf, so finding them needs no onnx package on the board.
_INT8_OPS = (b"QuantizeLinear", b"QLinear", b"MatMulInteger", b"ConvInteger",
             b"DynamicQuantize", b"QGemm")


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
    """One ONNX model with a float32 input in a CPU session with small-board options.

    QDQ int8 models keep float32 inputs and outputs (the quantization is inside the graph), so
    no conversion happens here; ``precision`` tells them apart.
    """

    runtime: Runtime = "onnxruntime"

    def __init__(self, path: str | os.PathLike[str], *, threads: int = 1) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no ONNX model at {self.path}")
        try:
            self._session = ort.InferenceSession(
                str(self.path), sess_options=session_options(threads),
                providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
            raise ValueError(f"{self.path}: onnxruntime cannot load it: {exc}") from exc
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or inputs[0].type != "tensor(float)":
            raise ValueError(f"{self.path}: expected one float32 input, got "
                             f"{[(i.name, i.type) for i in inputs]}")
        self.input: TensorSpec = TensorSpec(inputs[0].name, tuple(inputs[0].shape), "float32")
        self.output: TensorSpec = TensorSpec(outputs[0].name, tuple(outputs[0].shape),
                                  outputs[0].type.removeprefix("tensor(").removesuffix(")"))
        blob = self.path.read_bytes()
        self.precision: Precision = "int8" if any(op in blob for op in _INT8_OPS) else "fp32"

    def run(self, batch: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Run one batch; shape errors are raised here as ValueError, not as ORT tracebacks."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        self.input.check(x, self.path.name)
        out = self._session.run([self.output.name], {self.input.name: x})[0]
        return np.asarray(out, dtype=np.float32)

    def __repr__(self) -> str:
        return f"OnnxModel({str(self.path)!r})"
