"""Quantize a float MLP to int8 and write it as a fully-int8 .tflite, without TensorFlow.

The converter that normally writes .tflite files ships only with TensorFlow (hundreds of MB, no
wheels for every board Python). An MLP needs one op, so this module emits the flatbuffer itself
with the object API in ``ai_edge_litert.schema_py_generated`` (research/quantized-inference.md
section 2.3). The arithmetic follows TFLite's int8 spec, which the runtime checks on load:

- activations (input, hidden, output) are asymmetric int8 per tensor: real = s * (q - zp);
- weights are symmetric int8 per output channel (zero point 0, ``quantized_dimension`` 0),
  stored [out, in] as FULLY_CONNECTED wants;
- biases are int32 at scale s_in * s_w[c] (zero point 0), so they add straight into the
  int32 accumulator;
- ReLU is fused into FULLY_CONNECTED; the output is int8 logits (no softmax).

Serialization rules the runtimes enforce or rely on: buffer 0 is the empty sentinel that
activations point at, constant data is 16-byte aligned, every OperatorCode carries both
``deprecated_builtin_code`` and ``builtin_code``, model version 3, file identifier ``TFL3``.

    mlp = quantize_mlp(weights, biases, input_quant=Quant(1 / 16, 0), calibration=x_train)
    Path("model.tflite").write_bytes(serialize(mlp, description="..."))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import flatbuffers
import numpy as np
import numpy.typing as npt
from ai_edge_litert import schema_py_generated as tfl

__all__ = ["QMLP", "QDense", "Quant", "forward_float", "quantize_mlp", "serialize"]

INT8_MIN, INT8_MAX = -128, 127
ALIGNMENT = 16  # constant data alignment: lets the runtime and XNNPACK read weights in place
SCHEMA_VERSION = 3
FILE_IDENTIFIER = b"TFL3"
BIAS_LIMIT = 2**30  # |int32 bias| bound: leaves the accumulator room for the products' sum
FULLY_CONNECTED_VERSION = 4  # int8 input, weights and output (op_version.cc); per-channel too

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Quant:
    """Affine int8 quantization of one tensor: real = scale * (q - zero_point)."""

    scale: float
    zero_point: int

    def __post_init__(self) -> None:
        if not (self.scale > 0 and math.isfinite(self.scale)):
            raise ValueError(f"scale must be positive and finite, got {self.scale}")
        if not INT8_MIN <= self.zero_point <= INT8_MAX:
            raise ValueError(f"int8 zero point out of range: {self.zero_point}")

    @classmethod
    def from_range(cls, lo: float, hi: float) -> Quant:
        """Asymmetric int8 covering [lo, hi] widened to include 0, so 0 (ReLU's floor and the
        padding value) is exact, as TFLite requires."""
        lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
        if hi == lo:
            hi = lo + 1.0  # a constant-zero tensor: any scale represents it
        scale = float(np.float32((hi - lo) / (INT8_MAX - INT8_MIN)))
        zero_point = int(np.clip(round(INT8_MIN - lo / scale), INT8_MIN, INT8_MAX))
        return cls(scale, zero_point)

    def quantize(self, x: npt.ArrayLike) -> npt.NDArray[np.int8]:
        q = np.rint(np.asarray(x, np.float64) / self.scale) + self.zero_point
        return np.asarray(np.clip(q, INT8_MIN, INT8_MAX), dtype=np.int8)

    def dequantize(self, q: npt.ArrayLike) -> FloatArray:
        zp = np.int32(self.zero_point)
        return ((np.asarray(q, np.int32) - zp) * np.float32(self.scale)).astype(np.float32)


@dataclass(frozen=True)
class QDense:
    """One int8 FULLY_CONNECTED layer, already in TFLite's layout and units."""

    weights: npt.NDArray[np.int8]  # [out, in], symmetric: zero point 0
    weight_scales: FloatArray  # [out], one per output channel
    bias: npt.NDArray[np.int32]  # [out], at scale input.scale * weight_scales
    output: Quant
    relu: bool

    @property
    def n_out(self) -> int:
        return int(self.weights.shape[0])

    @property
    def n_in(self) -> int:
        return int(self.weights.shape[1])


@dataclass(frozen=True)
class QMLP:
    """An int8 MLP: input quantization, then FULLY_CONNECTED layers in order."""

    input: Quant
    layers: tuple[QDense, ...]

    def __post_init__(self) -> None:
        if not self.layers:
            raise ValueError("an MLP needs at least one layer")
        for prev, layer in zip(self.layers, self.layers[1:], strict=False):
            if layer.n_in != prev.n_out:
                raise ValueError(f"layer sizes do not chain: {prev.n_out} -> {layer.n_in}")

    @property
    def n_in(self) -> int:
        return self.layers[0].n_in

    @property
    def n_out(self) -> int:
        return self.layers[-1].n_out

    @property
    def output(self) -> Quant:
        return self.layers[-1].output

    @property
    def n_params(self) -> int:
        return sum(layer.weights.size + layer.bias.size for layer in self.layers)


def forward_float(weights: Sequence[FloatArray], biases: Sequence[FloatArray],
                  x: FloatArray) -> list[FloatArray]:
    """Every layer's float output (ReLU on all but the last), for calibration."""
    outs: list[FloatArray] = []
    h = np.asarray(x, np.float32)
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        h = (h @ np.asarray(w, np.float32) + np.asarray(b, np.float32)).astype(np.float32)
        if i < len(weights) - 1:
            h = np.maximum(h, np.float32(0))
        outs.append(h)
    return outs


def quantize_mlp(weights: Sequence[FloatArray], biases: Sequence[FloatArray], *,
                 input_quant: Quant, calibration: FloatArray) -> QMLP:
    """Post-training int8 quantization of a ReLU MLP (weights [in, out], as scikit-learn keeps
    them; ReLU after every layer but the last).

    Activation ranges are the min/max of the float model over ``calibration`` (MinMax, as the
    ONNX int8 model uses). Weights are symmetric per output channel in [-127, 127], as TFLite's
    int8 quantization spec requires (-128 never occurs).
    """
    if len(weights) != len(biases):
        raise ValueError("one bias per weight matrix")
    outs = forward_float(weights, biases, calibration)
    layers: list[QDense] = []
    s_in = input_quant.scale
    for i, (w, b, out) in enumerate(zip(weights, biases, outs, strict=True)):
        w_t = np.asarray(w, np.float64).T  # [out, in]
        b64 = np.asarray(b, np.float64)
        # Dead ReLU units end training with weights ~1e-7 next to a real bias; at s_in * s_w that
        # bias overflows int32. Raise such a channel's scale until the bias fits (its weights,
        # ~0, quantize to 0 either way), as onnxruntime's quantizer does. A channel of zeros
        # still needs a positive scale.
        w_scale64 = np.maximum(np.abs(w_t).max(axis=1) / INT8_MAX,
                               np.abs(b64) / (np.float64(np.float32(s_in)) * BIAS_LIMIT))
        w_scale = np.where(w_scale64 > 0, w_scale64, 1.0).astype(np.float32)
        q_w = np.clip(np.rint(w_t / w_scale[:, None]), -INT8_MAX, INT8_MAX).astype(np.int8)
        # The runtime checks bias scale == s_in * s_w (relative 1e-6) in float32 terms.
        b_scale = np.float64(np.float32(s_in)) * w_scale.astype(np.float64)
        q_b = np.rint(b64 / b_scale)
        if not np.abs(q_b).max(initial=0) < 2**31:
            raise ValueError(f"layer {i}: bias does not fit int32 at scale s_in*s_w")
        output = Quant.from_range(float(out.min()), float(out.max()))
        layers.append(QDense(q_w, w_scale, q_b.astype(np.int32), output,
                             relu=i < len(weights) - 1))
        s_in = output.scale
    return QMLP(input_quant, tuple(layers))


class _AlignedBufferT(tfl.BufferT):  # type: ignore[misc]  # generated code is untyped
    """A BufferT whose data vector starts on a 16-byte boundary of the finished file.

    The generated Pack() aligns a uint8 vector to 1 byte. Prep(16, n) first pads the builder so
    that the n bytes end up 16-byte aligned; flatbuffers then aligns the whole file to the
    largest alignment used, so the offset from the file start is aligned too.
    """

    def Pack(self, builder: flatbuffers.Builder) -> int:  # generated API name
        if self.data is not None and len(self.data):
            builder.Prep(ALIGNMENT, len(self.data))
        return int(super().Pack(builder))


def _buffer(data: npt.NDArray[Any] | None) -> tfl.BufferT:
    buf = _AlignedBufferT()
    if data is not None:
        buf.data = np.frombuffer(np.ascontiguousarray(data).astype(data.dtype.newbyteorder("<"))
                                 .tobytes(), dtype=np.uint8)
    return buf


def _quant(scales: Sequence[float], zero_points: Sequence[int],
           dimension: int = 0) -> tfl.QuantizationParametersT:
    q = tfl.QuantizationParametersT()
    q.scale = [float(s) for s in scales]
    q.zeroPoint = [int(z) for z in zero_points]
    q.quantizedDimension = dimension
    return q


def _tensor(name: str, shape: Sequence[int], dtype: int, buffer: int,
            quant: tfl.QuantizationParametersT, *, batch_dim: bool = False) -> tfl.TensorT:
    t = tfl.TensorT()
    t.name = name
    t.shape = [int(d) for d in shape]
    if batch_dim:  # -1 in the signature marks the batch as resizable
        t.shapeSignature = [-1, *t.shape[1:]]
    t.type = dtype
    t.buffer = buffer
    t.quantization = quant
    return t


def serialize(mlp: QMLP, *, input_name: str = "pixels", output_name: str = "logits",
              description: str = "") -> bytes:
    """The .tflite bytes of ``mlp``: one subgraph, input [1, n_in] int8 (resizable batch), one
    FULLY_CONNECTED per layer, output [1, n_out] int8, and a ``serving_default`` signature."""
    buffers = [_buffer(None)]  # buffer 0: the empty sentinel every activation points at
    tensors: list[tfl.TensorT] = []

    def add_const(name: str, array: npt.NDArray[Any], dtype: int,
                  quant: tfl.QuantizationParametersT) -> int:
        buffers.append(_buffer(array))
        tensors.append(_tensor(name, array.shape, dtype, len(buffers) - 1, quant))
        return len(tensors) - 1

    def add_activation(name: str, width: int, quant: Quant) -> int:
        tensors.append(_tensor(name, (1, width), tfl.TensorType.INT8, 0,
                               _quant([quant.scale], [quant.zero_point]), batch_dim=True))
        return len(tensors) - 1

    x = add_activation(input_name, mlp.n_in, mlp.input)
    s_in = np.float32(mlp.input.scale)
    operators: list[tfl.OperatorT] = []
    for i, layer in enumerate(mlp.layers):
        last = i == len(mlp.layers) - 1
        w = add_const(f"dense{i}/weights", layer.weights, tfl.TensorType.INT8,
                      _quant(layer.weight_scales.tolist(), [0] * layer.n_out))
        bias_scales = (np.float64(s_in) * layer.weight_scales.astype(np.float64)).tolist()
        b = add_const(f"dense{i}/bias", layer.bias, tfl.TensorType.INT32,
                      _quant(bias_scales, [0] * layer.n_out))
        y = add_activation(output_name if last else f"dense{i}/relu", layer.n_out, layer.output)
        options = tfl.FullyConnectedOptionsT()
        options.fusedActivationFunction = (tfl.ActivationFunctionType.RELU if layer.relu
                                           else tfl.ActivationFunctionType.NONE)
        op = tfl.OperatorT()
        op.opcodeIndex = 0
        op.inputs, op.outputs = [x, w, b], [y]
        op.builtinOptionsType = tfl.BuiltinOptions.FullyConnectedOptions
        op.builtinOptions = options
        operators.append(op)
        x, s_in = y, np.float32(layer.output.scale)

    code = tfl.OperatorCodeT()
    # Codes below 127 go in both fields: old readers look only at the deprecated int8 one.
    code.builtinCode = code.deprecatedBuiltinCode = tfl.BuiltinOperator.FULLY_CONNECTED
    code.version = FULLY_CONNECTED_VERSION

    graph = tfl.SubGraphT()
    graph.tensors, graph.operators = tensors, operators
    graph.inputs, graph.outputs = [0], [x]
    graph.name = "main"

    signature = tfl.SignatureDefT()
    signature.signatureKey = "serving_default"
    signature.subgraphIndex = 0
    signature.inputs = [_tensor_map(input_name, 0)]
    signature.outputs = [_tensor_map(output_name, x)]

    model = tfl.ModelT()
    model.version = SCHEMA_VERSION
    model.description = description
    model.operatorCodes = [code]
    model.subgraphs = [graph]
    model.buffers = buffers
    model.signatureDefs = [signature]

    builder = flatbuffers.Builder(1024 + sum(len(bf.data) for bf in buffers if bf.data is not None))
    builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def _tensor_map(name: str, index: int) -> tfl.TensorMapT:
    m = tfl.TensorMapT()
    m.name, m.tensorIndex = name, index
    return m
