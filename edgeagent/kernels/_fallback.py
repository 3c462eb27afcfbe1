"""The NumPy reference kernels: the specification the compiled ones match bit for bit.

Same signatures as the compiled module: inputs already validated and converted by
``edgeagent.kernels``, results written into caller-provided output arrays.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def quantize(x: npt.NDArray[np.float32], scale: float, zero_point: int,
             out: npt.NDArray[np.int8]) -> None:
    """ONNX QuantizeLinear to int8, in float32: saturate(rint(x / scale) + zp); NaN -> zp."""
    lo, hi = np.float32(-128 - zero_point), np.float32(127 - zero_point)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow saturates, NaN is handled
        v = x / np.float32(scale)
        r = np.rint(np.clip(v, lo, hi))
    r[np.isnan(v)] = 0
    out[...] = r.astype(np.int32) + zero_point


def dequantize(q: npt.NDArray[np.int8], scale: float, zero_point: int,
               out: npt.NDArray[np.float32]) -> None:
    out[...] = (q.astype(np.int32) - zero_point).astype(np.float32) * np.float32(scale)


def softmax_topk(logits: npt.NDArray[np.float32], k: int, indices: npt.NDArray[np.int64],
                 probs: npt.NDArray[np.float32]) -> None:
    """Per row: top-k indices (ties: lower index first; NaN ranks as -inf) and their softmax
    probabilities over the whole row. A row with no finite logit gets probabilities 0."""
    x = np.where(np.isnan(logits), np.float32(-np.inf), logits)
    order = np.argsort(-x, axis=1, kind="stable")[:, :k]
    m = x.max(axis=1, keepdims=True, initial=-np.inf)
    finite = np.isfinite(m)
    with np.errstate(invalid="ignore"):
        shifted = np.where(finite, x - m, np.float32(-np.inf))  # float32, as in the compiled loop
    e = np.exp(shifted.astype(np.float64)).astype(np.float32)  # exp in double, then rounded
    total = np.zeros((x.shape[0], 1), np.float32)
    for i in range(x.shape[1]):  # sequential float32 sum, in the order the compiled loop adds
        total += e[:, i : i + 1]
    top = np.take_along_axis(e, order, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(total > 0, top / np.where(total > 0, total, 1), np.float32(0))
    indices[...] = order
    probs[...] = p
