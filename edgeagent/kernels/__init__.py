"""Hot pre/post-processing kernels: compiled from ``ext/kernels.pyx``, or the NumPy fallback.

``COMPILED`` says which is in use. The fallback (``_fallback``) is the specification, and the
two give bit-identical results for every kernel: each result is defined as a fixed sequence of
IEEE operations (no library ``exp``, no pairwise sums, no fused multiply-add) that both
perform. Set ``EDGEAGENT_PURE_KERNELS=1`` to force the fallback, e.g. to compare the two in one
environment. These functions validate and convert their arguments, and precompute what both
implementations share (resize tables, per-channel constants); the two implementation modules
behind them take the same arguments and trust them.
"""

from __future__ import annotations

import functools
import importlib
import math
import operator
import os
import struct
from collections.abc import Sequence
from types import ModuleType
from typing import Literal

import numpy as np
import numpy.typing as npt

from edgeagent.kernels import _fallback

#: Columns of ``window_features``, in order.
FEATURES = ("mean", "std", "min", "max", "rms")

Layout = Literal["chw", "hwc"]
PerChannel = float | Sequence[float] | npt.NDArray[np.floating]

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


# ---------------------------------------------------------------------------------------------
# argument checks shared by both implementations

def _params(scale: object, zero_point: object) -> tuple[float, int]:
    """Per-tensor parameters as ONNX holds them: a float32 scale and an int8 zero point.

    Kept cheap (struct, not NumPy, rounds to float32): it runs on every call, and for small
    tensors it would otherwise cost more than the kernel.
    """
    if isinstance(scale, np.ndarray) and scale.ndim == 0:
        scale = scale.item()
    if not isinstance(scale, (float, int, np.floating, np.integer)):  # arrays: give an axis
        raise ValueError(f"scale must be a real number (per-tensor; per-channel needs axis), "
                         f"got {scale!r}")
    try:
        s: float = struct.unpack("f", struct.pack("f", scale))[0]  # rounded to float32
    except OverflowError:  # finite, but beyond float32
        s = math.inf
    if not (math.isfinite(s) and s > 0):  # also a scale that rounds to 0 in float32
        raise ValueError(f"scale must be a positive finite float32, got {scale!r}")
    return s, _zero_point(zero_point)


def _zero_point(zero_point: object) -> int:
    try:
        zp = operator.index(zero_point)  # type: ignore[arg-type]  # not 0.5, nor 3.0
    except TypeError as exc:
        raise ValueError(f"zero_point must be an integer, got {zero_point!r}") from exc
    if not -128 <= zp <= 127:
        raise ValueError(f"zero_point must be in [-128, 127] for int8, got {zp}")
    return zp


def _channel_params(scale: npt.ArrayLike, zero_point: int | npt.ArrayLike, channels: int,
                    axis: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int32]]:
    """Per-axis parameters (ONNX): 1-D scale, one positive finite float32 per channel; zero
    point one int8 per channel, or one integer for all."""
    where = f"one per channel: the input has {channels} along axis {axis}"
    s = np.asarray(scale)
    if s.ndim != 1 or s.dtype.kind not in "fiu":
        raise ValueError(f"scale must be a 1-D array of real numbers ({where}), got {scale!r}")
    if len(s) != channels:
        raise ValueError(f"scale has {len(s)} values, expected {channels} ({where})")
    with np.errstate(over="ignore"):  # beyond float32: inf, refused below
        s32 = np.ascontiguousarray(s, dtype=np.float32)
        if not (np.isfinite(s32) & (s32 > 0)).all():
            raise ValueError(f"every scale must be a positive finite float32, got {scale!r}")
    if np.ndim(zero_point) == 0:
        zps = np.full(channels, _zero_point(zero_point), np.int32)
    else:
        z = np.asarray(zero_point)
        if z.ndim != 1 or z.dtype.kind not in "iu":
            raise ValueError(f"zero_point must be an integer or a 1-D array of integers "
                             f"({where}), got {zero_point!r}")
        if len(z) != channels:
            raise ValueError(f"zero_point has {len(z)} values, expected {channels} ({where})")
        if len(z) and (z.min() < -128 or z.max() > 127):
            raise ValueError(f"every zero_point must be in [-128, 127] for int8, got {z}")
        zps = z.astype(np.int32)
    return s32, zps


def _split_axis(shape: tuple[int, ...], axis: object) -> tuple[int, tuple[int, int, int]]:
    """``axis`` normalized (ONNX: -ndim <= axis < ndim) and ``shape`` as (outer, channels,
    inner), the view both implementations loop over."""
    try:
        ax = operator.index(axis)  # type: ignore[arg-type]
    except TypeError as exc:
        raise ValueError(f"axis must be an integer or None, got {axis!r}") from exc
    if not -len(shape) <= ax < len(shape):
        raise ValueError(f"axis {ax} is out of range for an array of shape {shape}")
    ax %= len(shape)
    return ax, (math.prod(shape[:ax]), shape[ax], math.prod(shape[ax + 1:]))


def _float32(x: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """x as C-contiguous float32 (a copy only when needed); float64 beyond float32's range
    becomes ±inf, as an ONNX cast would."""
    if isinstance(x, np.ndarray) and x.dtype == np.float32:
        return np.asarray(x, order="C")
    with np.errstate(over="ignore"):
        return np.asarray(x, dtype=np.float32, order="C")


# ---------------------------------------------------------------------------------------------
# quantize / dequantize

def quantize(x: npt.ArrayLike, scale: float | npt.ArrayLike, zero_point: int | npt.ArrayLike = 0,
             axis: int | None = None) -> npt.NDArray[np.int8]:
    """ONNX QuantizeLinear to int8: ``saturate(rint(x / scale) + zero_point)``.

    Computed in float32 (x is converted to float32 first, as an ONNX float input would be),
    rounding half to even, saturating to [-128, 127]; ±inf saturate, NaN maps to
    ``zero_point`` (ONNX leaves it undefined; a NaN must not crash a pipeline). The result has
    ``x``'s shape.

    ``axis=None``: per tensor, ``scale`` a real number and ``zero_point`` an integer. With an
    axis (ONNX per-axis; negative counts from the end): ``scale`` is 1-D with one value per
    index along that axis, ``zero_point`` likewise or one integer for all. ValueError, naming
    the argument, for a scale that is not a positive finite float32, a zero point outside
    [-128, 127] or not an integer, a length that does not match, or an axis out of range.
    """
    arr = _float32(x)
    out = np.empty(arr.shape, dtype=np.int8)
    if axis is None:
        s, zp = _params(scale, zero_point)
        _impl.quantize(arr.reshape(-1), s, zp, out.reshape(-1))
    else:
        ax, view = _split_axis(arr.shape, axis)
        scales, zps = _channel_params(scale, zero_point, arr.shape[ax], ax)
        _impl.quantize_axis(arr.reshape(view), scales, zps, out.reshape(view))
    return out


def dequantize(q: npt.ArrayLike, scale: float | npt.ArrayLike,
               zero_point: int | npt.ArrayLike = 0,
               axis: int | None = None) -> npt.NDArray[np.float32]:
    """ONNX DequantizeLinear from int8: ``float32(q - zero_point) * float32(scale)``.

    ``q`` is int8, or integers that fit in int8 (a list, another integer dtype); anything else
    is a ValueError rather than a silent wrap-around. ``scale``, ``zero_point`` and ``axis``
    as for ``quantize``. The result has ``q``'s shape.
    """
    arr = np.asarray(q)
    if arr.dtype != np.int8:
        empty = arr.size == 0 and arr.dtype.kind in "biuf"  # np.asarray([]) is float64
        if arr.dtype.kind not in "iu" and not empty:
            raise ValueError(f"dequantize expects int8 values, got dtype {arr.dtype}")
        if arr.size and (arr.min() < -128 or arr.max() > 127):
            raise ValueError("dequantize expects int8 values, got integers outside [-128, 127]")
    arr = np.asarray(arr, dtype=np.int8, order="C")
    out = np.empty(arr.shape, dtype=np.float32)
    if axis is None:
        s, zp = _params(scale, zero_point)
        _impl.dequantize(arr.reshape(-1), s, zp, out.reshape(-1))
    else:
        ax, view = _split_axis(arr.shape, axis)
        scales, zps = _channel_params(scale, zero_point, arr.shape[ax], ax)
        _impl.dequantize_axis(arr.reshape(view), scales, zps, out.reshape(view))
    return out


# ---------------------------------------------------------------------------------------------
# softmax_topk

def softmax_topk(logits: npt.ArrayLike, k: int
                 ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """The ``k`` largest logits' indices, descending, and their softmax probabilities.

    ``logits``: (n,) or (batch, n), converted to float32; results (k,) or (batch, k), int64
    and float32. Ties go to the lower index. The softmax is over the whole row, with the row
    maximum subtracted so large logits do not overflow, in double with one rounding to
    float32 (error far below float32's resolution). NaN ranks below every number (as -inf)
    and adds nothing to the softmax, so a bad model output degrades instead of crashing; a
    row with no finite logit gets probabilities 0. +inf is refused (ValueError): its softmax
    is undefined. ValueError also if k is not in 1..n.

    Compiled and fallback results are bit-identical: both compute exp with the same explicit
    operations (``_fallback.exp_nonpositive``) rather than their libraries' exp.
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


# ---------------------------------------------------------------------------------------------
# resize_normalize(_quantize)

AxisTable = tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.float32],
                  npt.NDArray[np.float32]]


@functools.lru_cache(maxsize=64)
def _axis_table(n_in: int, n_out: int) -> AxisTable:
    """Bilinear sampling along one axis with half-pixel centres (cv2.INTER_LINEAR, ONNX Resize
    half_pixel): output i reads source ``s = (i + 0.5) * n_in / n_out - 0.5``, clamped to
    [0, n_in - 1]; returns (i0, i1, w0, w1) with ``i0 = floor(s)``, ``i1 = min(i0 + 1,
    n_in - 1)``, ``w1 = s - i0`` and ``w0 = 1 - w1`` (computed in float64, stored as float32).
    Cached and read-only: the same frame size comes every call."""
    s = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0, n_in - 1)
    i0 = np.floor(s).astype(np.intp)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = s - i0
    table = (i0, i1, (1.0 - frac).astype(np.float32), frac.astype(np.float32))
    for a in table:
        a.flags.writeable = False
    return table


def _per_channel(name: str, value: PerChannel, channels: int) -> tuple[float, ...]:
    if isinstance(value, (int, float, np.integer, np.floating)):
        values: tuple[float, ...] = (float(value),) * channels
    else:
        try:
            values = tuple(float(v) for v in value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name} must be numbers, one per channel, got {value!r}") from exc
        if len(values) != channels:
            raise ValueError(f"{name} has {len(values)} values, the image {channels} channels")
    if not all(map(math.isfinite, values)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return values


@functools.lru_cache(maxsize=64)
def _normalization(mean: tuple[float, ...], std: tuple[float, ...]
                   ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """``(p / 255 - mean) / std`` as one float32 multiply-add per channel, ``p * gain +
    offset``: gain = 1 / (255 std) and offset = -mean / std, computed in float64."""
    if not all(s > 0 for s in std):
        raise ValueError(f"std must be positive, got {std}")
    m, s = np.array(mean), np.array(std)
    with np.errstate(over="ignore"):
        gain, offset = (1.0 / (255.0 * s)).astype(np.float32), (-m / s).astype(np.float32)
    if not (np.isfinite(gain).all() and np.isfinite(offset).all() and (gain > 0).all()):
        raise ValueError(f"mean / std out of float32's range: mean {mean}, std {std}")
    gain.flags.writeable = offset.flags.writeable = False
    return gain, offset


def _resize_args(image: npt.ArrayLike, height: int, width: int, mean: PerChannel,
                 std: PerChannel, layout: str
                 ) -> tuple[npt.NDArray[np.uint8], AxisTable, AxisTable, npt.NDArray[np.float32],
                            npt.NDArray[np.float32], tuple[int, int, int]]:
    """What both resize kernels take, checked and converted: the image as contiguous (h, w,
    channels), the row and column tables, gain and offset, and the output shape."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got dtype {img.dtype}")
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or 0 in img.shape:
        raise ValueError(f"image must be (height, width, channels) or (height, width), not "
                         f"empty, got shape {img.shape}")
    img = np.ascontiguousarray(img)
    height, width = operator.index(height), operator.index(width)
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got height={height}, width={width}")
    if layout not in ("chw", "hwc"):
        raise ValueError(f"layout must be 'chw' or 'hwc', got {layout!r}")
    channels = img.shape[2]
    gain, offset = _normalization(_per_channel("mean", mean, channels),
                                  _per_channel("std", std, channels))
    shape = (channels, height, width) if layout == "chw" else (height, width, channels)
    return (img, _axis_table(img.shape[0], height), _axis_table(img.shape[1], width), gain,
            offset, shape)


def resize_normalize(image: npt.ArrayLike, height: int, width: int,
                     mean: PerChannel = (0.0, 0.0, 0.0), std: PerChannel = (1.0, 1.0, 1.0),
                     layout: Layout = "chw") -> npt.NDArray[np.float32]:
    """A uint8 camera frame as a model input: bilinear resize, then ``(p / 255 - mean) / std``.

    ``image`` (h, w, channels) or (h, w) as one channel, uint8 (anything else: ValueError).
    Resize: half-pixel centres with source coordinates clamped at the edges, like
    cv2.INTER_LINEAR and ONNX Resize (half_pixel, linear). ``mean`` and ``std``: one value per
    channel (ValueError if the count differs; a single number applies to every channel), std
    positive; applied as one float32 multiply-add per channel with constants rounded to
    float32, so within a few float32 ulps of the formula. Result float32, (channels, height,
    width) for ``layout="chw"`` or (height, width, channels) for ``"hwc"``. Same size in and
    out gives the normalized input, unresized.
    """
    img, ys, xs, gain, offset, shape = _resize_args(image, height, width, mean, std, layout)
    out = np.empty(shape, np.float32)
    _impl.resize_normalize(img, *ys, *xs, gain, offset, layout == "chw", out)
    return out


def resize_normalize_quantize(image: npt.ArrayLike, height: int, width: int, scale: float,
                              zero_point: int, mean: PerChannel = (0.0, 0.0, 0.0),
                              std: PerChannel = (1.0, 1.0, 1.0),
                              layout: Layout = "chw") -> npt.NDArray[np.int8]:
    """``quantize(resize_normalize(image, ...), scale, zero_point)`` in one pass, bit for bit
    the same result, for an int8 model input (per-tensor scale and zero point as for
    ``quantize``)."""
    s, zp = _params(scale, zero_point)
    img, ys, xs, gain, offset, shape = _resize_args(image, height, width, mean, std, layout)
    out = np.empty(shape, np.int8)
    _impl.resize_normalize_quantize(img, *ys, *xs, gain, offset, s, zp, layout == "chw", out)
    return out


# ---------------------------------------------------------------------------------------------
# window_features

def window_features(signal: npt.ArrayLike, window: int, hop: int) -> npt.NDArray[np.float32]:
    """Features of each window of a 1-D sensor signal: float32 (n_windows, 5), columns
    ``FEATURES`` = mean, std (population), min, max, rms.

    The signal is converted to float32; windows start at 0, hop, 2 hop, ... while they fit
    (none if the signal is shorter than one window: shape (0, 5)). Sums run in float64 in
    sample order and each feature is rounded once to float32; std is two-pass (around the
    mean), so it does not cancel catastrophically. ValueError for a window or hop below 1, or
    a NaN or ±inf sample in any window (a dropout must be handled upstream, not averaged).
    """
    x = _float32(signal)
    if x.ndim != 1:
        raise ValueError(f"signal must be 1-D, got shape {x.shape}")
    window, hop = operator.index(window), operator.index(hop)
    if window < 1 or hop < 1:
        raise ValueError(f"window and hop must be >= 1, got window={window}, hop={hop}")
    count = (len(x) - window) // hop + 1 if len(x) >= window else 0
    out = np.empty((count, len(FEATURES)), np.float32)
    if not _impl.window_features(x, window, hop, out):
        raise ValueError("signal has NaN or ±inf samples inside a window")
    return out


__all__ = ["COMPILED", "FEATURES", "dequantize", "quantize", "resize_normalize",
           "resize_normalize_quantize", "softmax_topk", "window_features"]
