"""Hot pre/post-processing kernels: compiled from ``ext/kernels.pyx``, or the NumPy fallback.

``COMPILED`` says which is in use. Both produce identical results (the fallback is the
reference); set ``EDGEAGENT_PURE_KERNELS=1`` to force the fallback, e.g. to compare them.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import numpy as np
import numpy.typing as npt

from edgeagent.kernels import _fallback


def _load() -> tuple[ModuleType, bool]:
    if os.environ.get("EDGEAGENT_PURE_KERNELS") == "1":
        return _fallback, False
    try:
        return importlib.import_module("edgeagent.kernels._compiled"), True
    except ImportError:
        return _fallback, False


_impl, COMPILED = _load()


def _scale_and_zero_point(scale: float, zero_point: int) -> tuple[float, int]:
    s = float(np.float32(scale))
    if not np.isfinite(s) or s <= 0:
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    if int(zero_point) != zero_point or not -128 <= zero_point <= 127:
        raise ValueError(f"zero_point must be an integer in [-128, 127], got {zero_point!r}")
    return s, int(zero_point)


def quantize(x: npt.ArrayLike, scale: float, zero_point: int = 0) -> npt.NDArray[np.int8]:
    """ONNX QuantizeLinear to int8 (float32 maths, round half to even, saturating; ±inf
    saturate, NaN maps to ``zero_point``). The result has the input's shape."""
    s, zp = _scale_and_zero_point(scale, zero_point)
    arr = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty(arr.shape, dtype=np.int8)
    _impl.quantize(arr.reshape(-1), s, zp, out.reshape(-1))
    return out


def dequantize(q: npt.ArrayLike, scale: float, zero_point: int = 0) -> npt.NDArray[np.float32]:
    """ONNX DequantizeLinear from int8: ``(q - zero_point) * scale`` in float32."""
    s, zp = _scale_and_zero_point(scale, zero_point)
    arr = np.asarray(q)
    if arr.dtype != np.int8:
        raise ValueError(f"dequantize expects int8 values, got {arr.dtype}")
    arr = np.ascontiguousarray(arr)
    out = np.empty(arr.shape, dtype=np.float32)
    _impl.dequantize(arr.reshape(-1), s, zp, out.reshape(-1))
    return out


def softmax_topk(logits: npt.ArrayLike, k: int
                 ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Indices of the ``k`` largest logits, descending (ties: lower index first), and their
    probabilities under the softmax over *all* logits of the row.

    ``logits``: (n,) or (batch, n) float32. NaN ranks below everything and adds nothing to the
    softmax; +inf is rejected (its softmax is undefined). The compiled and fallback kernels
    return identical indices and bit-identical probabilities (exp in double, then float32).
    """
    arr = np.ascontiguousarray(logits, dtype=np.float32)
    if arr.ndim not in (1, 2):
        raise ValueError(f"logits must be 1-D or 2-D, got shape {arr.shape}")
    rows = arr.reshape(1, -1) if arr.ndim == 1 else arr
    n = rows.shape[1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in 1..{n}, got {k}")
    if np.isposinf(rows).any():
        raise ValueError("logits contain +inf: the softmax is undefined")
    indices = np.empty((rows.shape[0], k), dtype=np.int64)
    probs = np.empty((rows.shape[0], k), dtype=np.float32)
    _impl.softmax_topk(rows, k, indices, probs)
    if arr.ndim == 1:
        return indices[0], probs[0]
    return indices, probs


__all__ = ["COMPILED", "dequantize", "quantize", "softmax_topk"]
