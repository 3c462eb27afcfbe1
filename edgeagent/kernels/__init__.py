"""Hot pre/post-processing kernels: compiled from ``ext/kernels.pyx``, or the NumPy fallback.

``COMPILED`` says which is in use. The fallback (``_fallback``) is the specification: quantize
and dequantize give bit-identical results either way, softmax_topk identical indices and
probabilities within 1e-6. Set ``EDGEAGENT_PURE_KERNELS=1`` to force the fallback, e.g. to
compare the two in one environment. These functions validate and convert their arguments; the
two implementation modules behind them take the same arguments and trust them.
"""

from __future__ import annotations

import importlib
import math
import operator
import os
import struct
from types import ModuleType

import numpy as np
import numpy.typing as npt

from edgeagent.kernels import _fallback

#: Why the compiled kernels are not in use (None when they are), for error messages.
_UNAVAILABLE: str | None = None


def _load() -> tuple[ModuleType, bool]:
    global _UNAVAILABLE
    if os.environ.get("EDGEAGENT_PURE_KERNELS") == "1":
        _UNAVAILABLE = "EDGEAGENT_PURE_KERNELS=1"
        return _fallback, False
    try:
        # importlib, not `import`: the extension has no type stubs, and may not be built at all.
        return importlib.import_module("edgeagent.kernels._compiled"), True
    except ImportError as exc:  # no compiler at install time, or its self-test refused it
        _UNAVAILABLE = str(exc)
        return _fallback, False


_impl, COMPILED = _load()


def _params(scale: float, zero_point: int) -> tuple[float, int]:
    """Per-tensor parameters as ONNX holds them: a float32 scale and an int8 zero point.

    Kept cheap (struct, not NumPy, rounds to float32): it runs on every call, and for small
    tensors it would otherwise cost more than the kernel.
    """
    if isinstance(scale, np.ndarray) and scale.ndim == 0:
        scale = scale.item()
    if not isinstance(scale, (float, int, np.floating, np.integer)):  # lists: per-tensor only
        raise ValueError(f"scale must be a real number (per-tensor), got {scale!r}")
    try:
        s: float = struct.unpack("f", struct.pack("f", scale))[0]  # rounded to float32
    except OverflowError:  # finite, but beyond float32
        s = math.inf
    if not (math.isfinite(s) and s > 0):  # also a scale that rounds to 0 in float32
        raise ValueError(f"scale must be a positive finite float32, got {scale!r}")
    try:
        zp = operator.index(zero_point)  # ints and NumPy integers, not 0.5 or 3.0
    except TypeError as exc:
        raise ValueError(f"zero_point must be an integer (per-tensor), got {zero_point!r}"
                         ) from exc
    if not -128 <= zp <= 127:
        raise ValueError(f"zero_point must be in [-128, 127] for int8, got {zp}")
    return s, zp


def quantize(x: npt.ArrayLike, scale: float, zero_point: int = 0) -> npt.NDArray[np.int8]:
    """ONNX QuantizeLinear to int8, per tensor: ``saturate(rint(x / scale) + zero_point)``.

    Computed in float32 (x is converted to float32 first, as an ONNX float input would be),
    rounding half to even, saturating to [-128, 127]; ±inf saturate, NaN maps to
    ``zero_point`` (ONNX leaves it undefined; a NaN must not crash a pipeline). The result has
    ``x``'s shape. ValueError if scale is not a positive finite float32 or zero_point not an
    integer in [-128, 127].
    """
    s, zp = _params(scale, zero_point)
    if isinstance(x, np.ndarray) and x.dtype == np.float32:
        arr = np.asarray(x, order="C")  # a copy only if not C-contiguous
    else:
        with np.errstate(over="ignore"):  # float64 beyond float32's range: inf, saturating
            arr = np.asarray(x, dtype=np.float32, order="C")
    out = np.empty(arr.shape, dtype=np.int8)
    _impl.quantize(arr.reshape(-1), s, zp, out.reshape(-1))
    return out


def dequantize(q: npt.ArrayLike, scale: float, zero_point: int = 0) -> npt.NDArray[np.float32]:
    """ONNX DequantizeLinear from int8: ``float32(q - zero_point) * float32(scale)``.

    ``q`` is int8, or integers that fit in int8 (a list, another integer dtype); anything else
    is a ValueError rather than a silent wrap-around. The result has ``q``'s shape.
    """
    s, zp = _params(scale, zero_point)
    arr = np.asarray(q)
    if arr.dtype != np.int8:
        empty = arr.size == 0 and arr.dtype.kind in "biuf"  # np.asarray([]) is float64
        if arr.dtype.kind not in "iu" and not empty:
            raise ValueError(f"dequantize expects int8 values, got dtype {arr.dtype}")
        if arr.size and (arr.min() < -128 or arr.max() > 127):
            raise ValueError("dequantize expects int8 values, got integers outside [-128, 127]")
    arr = np.asarray(arr, dtype=np.int8, order="C")
    out = np.empty(arr.shape, dtype=np.float32)
    _impl.dequantize(arr.reshape(-1), s, zp, out.reshape(-1))
    return out


def softmax_topk(logits: npt.ArrayLike, k: int
                 ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """The ``k`` largest logits' indices, descending, and their softmax probabilities.

    ``logits``: (n,) or (batch, n), converted to float32; results (k,) or (batch, k), int64
    and float32. Ties go to the lower index. The softmax is over the whole row, with the row
    maximum subtracted so large logits do not overflow. NaN ranks below every number (as
    -inf) and adds nothing to the softmax, so a bad model output degrades instead of
    crashing; a row with no finite logit gets probabilities 0. +inf is refused (ValueError):
    its softmax is undefined. ValueError also if k is not in 1..n.

    Indices are identical between the compiled and fallback kernels; probabilities agree to
    1e-6, not necessarily bit for bit, since ``exp`` comes from the C library in one and from
    NumPy in the other and those may differ in the last bit.
    """
    arr = np.asarray(logits, dtype=np.float32, order="C")
    if arr.ndim not in (1, 2):
        raise ValueError(f"logits must be 1-D or 2-D, got shape {arr.shape}")
    k = operator.index(k)
    n = arr.shape[-1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in 1..{n} (the number of logits), got {k}")
    rows = arr.reshape(1, n) if arr.ndim == 1 else arr
    if (rows == np.inf).any():
        raise ValueError("logits contain +inf: the softmax is undefined")
    indices = np.empty((rows.shape[0], k), dtype=np.int64)
    probs = np.empty((rows.shape[0], k), dtype=np.float32)
    _impl.softmax_topk(rows, k, indices, probs)
    if arr.ndim == 1:
        return indices[0], probs[0]
    return indices, probs


__all__ = ["COMPILED", "dequantize", "quantize", "softmax_topk"]
