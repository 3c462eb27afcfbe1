"""The NumPy reference kernels: the specification ``ext/kernels.pyx`` must reproduce.

quantize and dequantize are matched bit for bit; softmax_topk's indices exactly and its
probabilities to 1e-6 (see there). Same signatures as the compiled module: the inputs are
already validated and converted by ``edgeagent.kernels`` (contiguous float32 / int8, scale a
positive finite float32 value, zero_point in [-128, 127]) and results go into caller-provided
arrays, so the two modules are interchangeable behind the public API.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def quantize(x: npt.NDArray[np.float32], scale: float, zero_point: int,
             out: npt.NDArray[np.int8]) -> None:
    """ONNX QuantizeLinear to int8, written the way the ONNX spec says it.

    ``saturate(round_half_to_even(x / scale) + zero_point)``, every step in float32 (adding
    zero_point in float32 is exact wherever the result is not saturated anyway). ±inf
    saturates; NaN, which ONNX leaves undefined, maps to ``zero_point`` (what 0.0 maps to).
    """
    zp = np.float32(zero_point)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow saturates, NaN is handled
        v = np.divide(x, np.float32(scale), dtype=np.float32)
        nan = np.isnan(v)
        np.rint(v, out=v)  # round half to even
        np.add(v, zp, out=v)
        np.clip(v, np.float32(-128), np.float32(127), out=v)
    np.copyto(v, zp, where=nan)
    np.copyto(out, v, casting="unsafe")  # integers in [-128, 127]: the cast is exact


def dequantize(q: npt.NDArray[np.int8], scale: float, zero_point: int,
               out: npt.NDArray[np.float32]) -> None:
    """ONNX DequantizeLinear from int8: float32(int32(q) - zero_point) * float32(scale)."""
    diff = q.astype(np.int32) - np.int32(zero_point)  # in [-255, 255]: exact in float32
    with np.errstate(over="ignore"):  # a scale near float32's max overflows to inf, as in C
        np.multiply(diff.astype(np.float32), np.float32(scale), out=out)


def softmax_topk(logits: npt.NDArray[np.float32], k: int, indices: npt.NDArray[np.int64],
                 probs: npt.NDArray[np.float32]) -> None:
    """Per row of ``logits`` (batch, n): the k largest, descending, and their softmax.

    Ranking: NaN counts as -inf (it never beats a number, and a NaN model output must not
    crash the agent); ties go to the lower index. Probabilities: softmax over the whole row,
    ``exp(x - max)`` in double (NaN contributing 0), summed in index order in double, divided
    in double and rounded once to float32, so they are as exact as float32 allows. A row with
    no finite logit (all -inf / NaN) has no defined softmax: its probabilities are 0.

    The compiled kernel performs the same IEEE operations in the same order; only ``exp`` comes
    from the C library there and from NumPy here, and those may differ in the last bit of a
    double, so probabilities agree to 1e-6 (in practice bit for bit), indices exactly.
    +inf is refused by the public API (its softmax is undefined); here it would give NaN.
    """
    x = np.where(np.isnan(logits), np.float32(-np.inf), logits)
    order = np.argsort(-x, axis=1, kind="stable")[:, :k]  # stable: ties keep index order
    m = x.max(axis=1, keepdims=True, initial=-np.inf).astype(np.float64)
    # Rows without a finite logit: shift by 0 so every exp is exp(-inf) = 0, not exp(NaN).
    m = np.where(m == -np.inf, 0.0, m)
    with np.errstate(invalid="ignore"):  # only +inf - +inf, which the public API refuses
        e = np.exp(x.astype(np.float64) - m)
    top = np.take_along_axis(e, order, axis=1)
    total = np.cumsum(e, axis=1)[:, -1:]  # cumsum adds strictly in index order, as the C loop
    total = np.where(total == 0.0, 1.0, total)  # no finite logit: 0 / 1 = 0
    indices[...] = order
    probs[...] = top / total  # the one rounding to float32
