"""The NumPy reference kernels: the specification ``ext/kernels.pyx`` must reproduce bit for bit.

Every result is defined as a sequence of IEEE operations (float32 or float64, each rounded
once, no fused multiply-add, sums strictly in index order), so the compiled twin can perform
the very same operations and match exactly; where NumPy's own routine would not pin down the
bits (``np.exp`` differs between libraries, ``np.sum`` adds pairwise) the reference spells the
computation out instead. Same signatures as the compiled module: inputs are already validated
and converted by ``edgeagent.kernels`` (contiguous arrays of the documented dtypes, parameters
in range, index and weight tables precomputed) and results go into caller-provided arrays, so
the two modules are interchangeable behind the public API.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I8 = npt.NDArray[np.int8]
Index = npt.NDArray[np.intp]

# exp(d) for d <= 0, written out so that C can repeat it operation for operation (libm's exp
# and NumPy's may differ in the last bit). The constants are doubles; ext/kernels.pyx holds
# the same literals. ln 2 is split (fdlibm's split: LN2_HI has 21 trailing zero bits, so
# n * LN2_HI is exact for the |n| <= 1021 used here) so the reduced argument keeps its bits.
LOG2E = 1.4426950408889634
LN2_HI = 0.6931471803691238
LN2_LO = 1.9082149292705877e-10
#: Below this, exp(d) < 3.3e-308: it is taken as 0, which changes no float32 probability (the
#: softmax total is >= 1), and it keeps 2**n a normal double, so scaling by it is exact.
EXP_MIN = -708.0
#: Taylor coefficients 1/k!, k = 12 down to 0. On |r| <= ln(2)/2 the truncation error is
#: below 2.5e-16 relative, a few double ulps with Horner's rounding: about 1e-8 of a float32 ulp.
EXP_POLY = (2.08767569878681e-09, 2.505210838544172e-08, 2.755731922398589e-07,
            2.7557319223985893e-06, 2.48015873015873e-05, 0.0001984126984126984,
            0.001388888888888889, 0.008333333333333333, 0.041666666666666664,
            0.16666666666666666, 0.5, 1.0, 1.0)


def quantize(x: F32, scale: float, zero_point: int, out: I8) -> None:
    """ONNX QuantizeLinear to int8, written the way the ONNX spec says it.

    ``saturate(round_half_to_even(x / scale) + zero_point)``, every step in float32 (adding
    zero_point in float32 is exact wherever the result is not saturated anyway). ±inf
    saturates; NaN, which ONNX leaves undefined, maps to ``zero_point`` (what 0.0 maps to).
    """
    _quantize(x, np.float32(scale), np.float32(zero_point), out)


def quantize_axis(x: F32, scale: F32, zero_point: npt.NDArray[np.int32], out: I8) -> None:
    """Per-channel quantize: ``x`` and ``out`` are (outer, channels, inner), channel c uses
    ``scale[c]`` and ``zero_point[c]``; otherwise exactly ``quantize``."""
    _quantize(x, scale[None, :, None], zero_point.astype(np.float32)[None, :, None], out)


def _quantize(x: F32, scale: np.float32 | F32, zp: np.float32 | F32, out: I8) -> None:
    with np.errstate(over="ignore", invalid="ignore"):  # overflow saturates, NaN is handled
        v = np.divide(x, scale, dtype=np.float32)
        nan = np.isnan(v)
        np.rint(v, out=v)  # round half to even
        np.add(v, zp, out=v)
        np.clip(v, np.float32(-128), np.float32(127), out=v)
    np.copyto(v, np.broadcast_to(zp, v.shape), where=nan)
    np.copyto(out, v, casting="unsafe")  # integers in [-128, 127]: the cast is exact


def dequantize(q: I8, scale: float, zero_point: int, out: F32) -> None:
    """ONNX DequantizeLinear from int8: float32(int32(q) - zero_point) * float32(scale)."""
    _dequantize(q, np.int32(zero_point), np.float32(scale), out)


def dequantize_axis(q: I8, scale: F32, zero_point: npt.NDArray[np.int32], out: F32) -> None:
    """Per-channel dequantize: ``q`` and ``out`` are (outer, channels, inner)."""
    _dequantize(q, zero_point[None, :, None], scale[None, :, None], out)


def _dequantize(q: I8, zp: np.int32 | npt.NDArray[np.int32], scale: np.float32 | F32,
                out: F32) -> None:
    diff = q.astype(np.int32) - zp  # in [-255, 255]: exact in float32
    with np.errstate(over="ignore"):  # a scale near float32's max overflows to inf, as in C
        np.multiply(diff.astype(np.float32), scale, out=out)


def exp_nonpositive(d: F64) -> F64:
    """exp(d) for float64 d <= 0 (-inf included), as explicit IEEE double operations.

    ``n = rint(d * LOG2E)``; ``r = (d - n * LN2_HI) - n * LN2_LO`` (|r| <= 0.347);
    ``p = EXP_POLY(r)`` by Horner, one multiply then one add per coefficient; result
    ``p * 2**n``, exact because 2**n and the product are normal doubles. d < EXP_MIN gives 0.
    Relative error a few 1e-16: far below float32's 6e-8 resolution.
    """
    dc = np.maximum(d, EXP_MIN)
    n = np.rint(dc * LOG2E)
    r = dc - n * LN2_HI
    r -= n * LN2_LO
    p = np.full_like(r, EXP_POLY[0])
    for c in EXP_POLY[1:]:
        p *= r
        p += c
    e = np.ldexp(p, n.astype(np.int32))
    e[d < EXP_MIN] = 0.0
    return e


def softmax_topk(logits: F32, k: int, indices: npt.NDArray[np.int64], probs: F32) -> None:
    """Per row of ``logits`` (batch, n): the k largest, descending, and their softmax.

    Ranking: NaN counts as -inf (it never beats a number, and a NaN model output must not
    crash the agent); ties go to the lower index. Probabilities: with ``m`` the row maximum,
    ``e_i = exp_nonpositive(double(x_i) - double(m))`` (NaN contributing 0), summed in index
    order in double, ``e_i / total`` in double, rounded once to float32. A row with no finite
    logit (all -inf / NaN) has no defined softmax: its probabilities are 0. +inf is refused by
    the public API (its softmax is undefined).
    """
    x = np.where(np.isnan(logits), np.float32(-np.inf), logits)
    order = np.argsort(-x, axis=1, kind="stable")[:, :k]  # stable: ties keep index order
    m = x.max(axis=1, keepdims=True, initial=-np.inf).astype(np.float64)
    # Rows without a finite logit: shift by 0 so every exp is exp(-inf) = 0, not exp(NaN).
    m = np.where(m == -np.inf, 0.0, m)
    e = exp_nonpositive(x.astype(np.float64) - m)
    top = np.take_along_axis(e, order, axis=1)
    total = np.cumsum(e, axis=1)[:, -1:]  # cumsum adds strictly in index order, as the C loop
    total = np.where(total == 0.0, 1.0, total)  # no finite logit: 0 / 1 = 0
    indices[...] = order
    probs[...] = top / total  # the one rounding to float32


def _bilinear(image: npt.NDArray[np.uint8], y0: Index, y1: Index, wy0: F32, wy1: F32,
              x0: Index, x1: Index, wx0: F32, wx1: F32) -> F32:
    """(out_h, out_w, channels) float32: horizontal blend of the two source rows first
    (``top = p[y0,x0] * wx0 + p[y0,x1] * wx1``, ``bottom`` likewise from row y1), then
    ``top * wy0 + bottom * wy1``; every operation in float32, each rounded once."""
    r0, r1 = image[y0], image[y1]  # (out_h, in_w, channels) uint8: gather rows first
    wx0c, wx1c = wx0[None, :, None], wx1[None, :, None]
    top = r0[:, x0].astype(np.float32) * wx0c
    top += r0[:, x1].astype(np.float32) * wx1c
    bottom = r1[:, x0].astype(np.float32) * wx0c
    bottom += r1[:, x1].astype(np.float32) * wx1c
    top *= wy0[:, None, None]
    bottom *= wy1[:, None, None]
    top += bottom
    return top


def resize_normalize(image: npt.NDArray[np.uint8], y0: Index, y1: Index, wy0: F32, wy1: F32,
                     x0: Index, x1: Index, wx0: F32, wx1: F32, gain: F32, offset: F32,
                     chw: bool, out: F32) -> None:
    """Bilinear resize of ``image`` (in_h, in_w, channels) with the given source tables (see
    ``_bilinear``), then per channel ``v * gain[c] + offset[c]`` in float32 (a multiply, then
    an add). ``out`` is (channels, out_h, out_w) if ``chw`` else (out_h, out_w, channels)."""
    v = _bilinear(image, y0, y1, wy0, wy1, x0, x1, wx0, wx1)
    v *= gain
    v += offset
    out[...] = v.transpose(2, 0, 1) if chw else v


def resize_normalize_quantize(image: npt.NDArray[np.uint8], y0: Index, y1: Index, wy0: F32,
                              wy1: F32, x0: Index, x1: Index, wx0: F32, wx1: F32, gain: F32,
                              offset: F32, scale: float, zero_point: int, chw: bool,
                              out: I8) -> None:
    """``resize_normalize`` followed by ``quantize``: the same operations, so the result is
    bit for bit ``quantize(resize_normalize(...), scale, zero_point)``."""
    v = _bilinear(image, y0, y1, wy0, wy1, x0, x1, wx0, wx1)
    v *= gain
    v += offset
    q = np.empty(v.shape, np.int8)
    quantize(v, scale, zero_point, q)
    out[...] = q.transpose(2, 0, 1) if chw else q


def window_features(signal: F32, window: int, hop: int, out: F32) -> bool:
    """Per window (starts 0, hop, 2 hop, ...; ``out`` has one row per window): mean, std, min,
    max, rms, each rounded once to float32.

    In float64, with sums strictly in index order (starting from the first term, as
    ``np.add.accumulate``): ``mean = sum(x) / window``; ``std = sqrt(sum((x - mean)**2) /
    window)`` (population, two-pass); ``rms = sqrt(sum(x * x) / window)``. min and max are
    the float32 extremes plus 0.0, so -0.0 reads as 0.0 whichever zero a reduction picks.
    Returns whether every window's rms is finite, which it is exactly when all the window's
    samples are (float32 squares cannot overflow a float64 sum): the public API refuses NaN
    and inf that way, without a pass of its own over the signal.
    """
    if out.shape[0] == 0:
        return True
    w32 = sliding_window_view(signal, window)[::hop]
    w = w32.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):  # inf / NaN samples: refused later
        mean = _row_sums(w) / window
        d = w - mean[:, None]
        var = _row_sums(d * d) / window
        ms = _row_sums(w * w) / window
        out[:, 0] = mean
        out[:, 1] = np.sqrt(var)
        out[:, 2] = w32.min(axis=1) + np.float32(0.0)
        out[:, 3] = w32.max(axis=1) + np.float32(0.0)
        out[:, 4] = np.sqrt(ms)
    return bool(np.isfinite(out[:, 4]).all())


def _row_sums(w: F64) -> F64:
    """Row sums added strictly left to right from the first term (``np.sum`` adds pairwise).

    Column by column, all rows at once, when there are more rows than columns; otherwise
    ``np.add.accumulate`` along the rows, which beats a Python loop over a long row. The same
    additions in the same order either way.
    """
    if w.shape[0] <= w.shape[1]:
        return np.add.accumulate(w, axis=1)[:, -1]
    total = w[:, 0].copy()
    for j in range(1, w.shape[1]):
        total += w[:, j]
    return total
