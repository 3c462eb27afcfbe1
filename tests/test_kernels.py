"""Kernels: both implementations follow the contract, and the compiled one matches the fallback.

Every behavioural test runs once per implementation (fallback always, compiled when built) by
routing the public API through it. Each kernel is checked against an independent rendering of
its contract (ONNX QuantizeLinear / DequantizeLinear and onnxruntime itself, a float64 softmax,
a float64 bilinear resize and onnxruntime's Resize, plain float64 window statistics), and the
compiled module against the fallback bit for bit, every kernel (the contract: both perform the
same IEEE operations, exp included).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import edgeagent.kernels as kernels
from edgeagent.kernels import _fallback
from edgeagent.kernels.bench import KernelComparison, compare_kernels, format_table


def _compiled() -> ModuleType | None:
    try:
        return importlib.import_module("edgeagent.kernels._compiled")
    except ImportError:
        return None


COMPILED_MODULE = _compiled()
MODULES: list[ModuleType] = [_fallback] + ([COMPILED_MODULE] if COMPILED_MODULE else [])
IMPLS = [pytest.param(m, id=m.__name__.rsplit(".", 1)[-1].lstrip("_")) for m in MODULES]
EXPECT_COMPILED = os.environ.get("EDGEAGENT_EXPECT_COMPILED") == "1"
FloatArray = npt.NDArray[np.float32]


def require_compiled() -> ModuleType:
    """The compiled module; where it is expected (EDGEAGENT_EXPECT_COMPILED=1) its absence fails."""
    if COMPILED_MODULE is None:
        if EXPECT_COMPILED:
            pytest.fail(f"compiled kernels expected but not importable: {kernels._UNAVAILABLE}")
        pytest.skip("compiled kernels are not built (fallback-only install)")
    return COMPILED_MODULE


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Route the public API through one implementation."""
    module: ModuleType = request.param
    monkeypatch.setattr(kernels, "_impl", module)
    return module


# ---------------------------------------------------------------------------------------------
# quantize

def onnx_quantize(x: npt.ArrayLike, scale: float, zp: int) -> npt.NDArray[np.int8]:
    """QuantizeLinear the plain way, independent of the fallback: float32 division, then (in
    float64, exact for any float32) round half to even, add zero point, saturate."""
    with np.errstate(over="ignore", invalid="ignore"):
        v = np.asarray(x, np.float32) / np.float32(scale)
    q = np.clip(np.rint(v.astype(np.float64)) + zp, -128, 127)
    return np.where(np.isnan(v), zp, q).astype(np.int8)


def exact_ties(scale: float, lo: int = -300, hi: int = 300) -> FloatArray:
    """Inputs x whose float32 quotient x / scale is exactly a half-integer in [lo, hi)."""
    t = np.arange(lo, hi, dtype=np.float32) + np.float32(0.5)
    with np.errstate(over="ignore", under="ignore"):  # huge scales: inf, which is no tie
        x = (t.astype(np.float64) * np.float32(scale)).astype(np.float32)
        hit = x / np.float32(scale) == t
    return x[hit]


def nasty_values(scale: float, zp: int, seed: int = 0) -> FloatArray:
    with np.errstate(over="ignore"):  # with huge scales some values become inf: also wanted
        return _nasty_values(scale, zp, np.random.default_rng(seed))


def _nasty_values(scale: float, zp: int, rng: np.random.Generator) -> FloatArray:
    ties = exact_ties(scale)
    tiny = np.finfo(np.float32).smallest_subnormal
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, tiny, -tiny, 1e-38,
                         np.finfo(np.float32).max, np.finfo(np.float32).min, 0.49999997,
                         8388607.5, 8388609.0, 16777217.0, 1e30, -1e30], np.float32)
    # Ties and near-ties right at the saturation bounds for this zero point.
    bounds = np.array([127.5 - zp, 126.5 - zp, 128.5 - zp, -128.5 - zp, -127.5 - zp,
                       -129.5 - zp], np.float32) * np.float32(scale)
    near = np.concatenate([np.nextafter(ties, np.float32(np.inf)),
                           np.nextafter(ties, np.float32(-np.inf))])
    rand = np.concatenate([rng.normal(0, 100, 5000) * scale, rng.uniform(-1e6, 1e6, 1000),
                           rng.normal(0, 1e-40, 200)]).astype(np.float32)
    return np.concatenate([ties, near, specials, bounds, rand]).astype(np.float32)


QUANT_PARAMS = [(1.0, 0), (0.5, 3), (0.1, -128), (1 / 255, 127), (2.0, -7), (0.0078125, 0),
                (0.37, 11), (0.02, -1), (1e-40, 0), (3e38, 5)]


@pytest.mark.parametrize(("scale", "zp"), QUANT_PARAMS)
def test_quantize_follows_onnx_quantizelinear(impl: ModuleType, scale: float, zp: int) -> None:
    x = nasty_values(scale, zp)
    np.testing.assert_array_equal(kernels.quantize(x, scale, zp), onnx_quantize(x, scale, zp))


def test_the_test_data_really_contains_exact_ties() -> None:
    """The tie inputs must divide to exact .5 values, or the half-to-even tests prove nothing."""
    for scale in (1.0, 0.5, 0.1, 1 / 255, 0.37, 0.02):
        assert len(exact_ties(scale)) > 100, scale


def test_quantize_ties_at_the_saturation_bounds_for_every_zero_point(impl: ModuleType) -> None:
    """Clamping before rounding (the compiled trick) must equal saturating after, for every
    zero point: all half-integers in [-300, 300) and their float32 neighbours."""
    t = np.arange(-300, 300, dtype=np.float32) + np.float32(0.5)
    x = np.concatenate([t, np.nextafter(t, np.float32(np.inf)), np.nextafter(t, np.float32(-1e9)),
                        t - np.float32(0.5)])
    for zp in range(-128, 128):
        np.testing.assert_array_equal(kernels.quantize(x, 1.0, zp), onnx_quantize(x, 1.0, zp),
                                      err_msg=f"zero_point {zp}")


@pytest.mark.parametrize(("scale", "zp"), [(1.0, 0), (1 / 255, -3), (1e-40, 127), (1e30, -128)])
def test_quantize_over_a_sweep_of_float32_bit_patterns(impl: ModuleType, scale: float,
                                                       zp: int) -> None:
    """~1M bit patterns spread over all 2**32: every exponent, subnormals, NaN payloads."""
    bits = np.arange(0, 2**32, 4099, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)
    np.testing.assert_array_equal(kernels.quantize(x, scale, zp), onnx_quantize(x, scale, zp))


def test_quantize_known_values(impl: ModuleType) -> None:
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999997, -0.0, 200, -200,
                  np.inf, -np.inf, np.nan], np.float32)
    assert kernels.quantize(x, 1.0, 0).tolist() == [0, 2, 2, 0, -2, -2, 0, 0, 127, -128, 127,
                                                     -128, 0]
    assert kernels.quantize(x, 1.0, 5).tolist() == [5, 7, 7, 5, 3, 3, 5, 5, 127, -128, 127,
                                                     -128, 5]  # NaN -> zero point
    assert kernels.quantize([124.5, 125.5, -130.5], 1.0, 3).tolist() == [127, 127, -127]
    assert kernels.quantize([5.0, 7.0], 2.0, 0).tolist() == [2, 4]  # 2.5 -> 2, 3.5 -> 4


def onnx_model(nodes: list[object], inputs: list[object], outputs: list[object],
               initializers: list[object]) -> object:
    """An onnxruntime CPU session for a one-off graph (opset 13: per-axis Q/DQ, Resize)."""
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    graph = onnx.helper.make_graph(nodes, "g", inputs, outputs, initializer=initializers)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
    model.ir_version = 8
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def onnxruntime_qdq(op: str, x: npt.NDArray[np.generic], scale: npt.ArrayLike,
                    zp: npt.ArrayLike, axis: int | None = None) -> npt.NDArray[np.generic]:
    """onnxruntime's QuantizeLinear or DequantizeLinear of x, per tensor or per axis."""
    onnx = pytest.importorskip("onnx")
    helper, tp = onnx.helper, onnx.TensorProto
    s, z = np.asarray(scale, np.float32), np.asarray(zp, np.int8)
    node = helper.make_node(op, ["x", "s", "z"], ["y"], **({} if axis is None else {"axis": axis}))
    quantizing = op == "QuantizeLinear"
    session = onnx_model(
        [node], [helper.make_tensor_value_info("x", tp.FLOAT if quantizing else tp.INT8, None)],
        [helper.make_tensor_value_info("y", tp.INT8 if quantizing else tp.FLOAT, None)],
        [helper.make_tensor("s", tp.FLOAT, s.shape, s.ravel().tolist()),
         helper.make_tensor("z", tp.INT8, z.shape, z.ravel().tolist())])
    (result,) = session.run(None, {"x": x})  # type: ignore[attr-defined]
    return np.asarray(result)


def test_quantize_agrees_with_onnxruntime(impl: ModuleType) -> None:
    for scale, zp in [(1.0, 0), (0.5, 3), (0.1, -128), (1 / 255, 127), (0.37, 11)]:
        x = nasty_values(scale, zp, seed=5)
        x = x[~np.isnan(x)]  # ONNX leaves NaN undefined (onnxruntime gives -128; we give zp)
        np.testing.assert_array_equal(kernels.quantize(x, scale, zp),
                                      onnxruntime_qdq("QuantizeLinear", x, scale, zp),
                                      err_msg=f"scale {scale}, zero_point {zp}")


def test_quantize_keeps_shape_and_accepts_array_likes(impl: ModuleType) -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(0, 20, (6, 5, 4)).astype(np.float32)
    want = onnx_quantize(x, 0.3, -2)
    got = kernels.quantize(x, 0.3, -2)
    assert got.shape == (6, 5, 4) and got.dtype == np.int8
    np.testing.assert_array_equal(got, want)
    # Non-contiguous, Fortran-ordered, read-only, big-endian, float64, lists: same results.
    np.testing.assert_array_equal(kernels.quantize(x[:, ::2, 1:], 0.3, -2), want[:, ::2, 1:])
    np.testing.assert_array_equal(kernels.quantize(x.transpose(2, 0, 1), 0.3, -2),
                                  want.transpose(2, 0, 1))
    np.testing.assert_array_equal(kernels.quantize(np.asfortranarray(x), 0.3, -2), want)
    frozen = x.copy()
    frozen.flags.writeable = False
    np.testing.assert_array_equal(kernels.quantize(frozen, 0.3, -2), want)
    np.testing.assert_array_equal(kernels.quantize(x.astype(">f4"), 0.3, -2), want)
    np.testing.assert_array_equal(kernels.quantize(x.astype(np.float64), 0.3, -2), want)
    assert kernels.quantize([[1.0, 2], [3, 4]], 1.0, 0).tolist() == [[1, 2], [3, 4]]
    assert kernels.quantize([1e300, -1e300], 1.0, 0).tolist() == [127, -128]  # float64 -> inf
    scalar = kernels.quantize(2.6, 1.0, 0)
    assert scalar.shape == () and int(scalar) == 3


def test_quantize_and_dequantize_handle_empty_arrays(impl: ModuleType) -> None:
    for shape in [(0,), (3, 0), (0, 4, 2)]:
        q = kernels.quantize(np.zeros(shape, np.float32), 0.1, 0)
        assert q.shape == shape and q.dtype == np.int8
        f = kernels.dequantize(np.zeros(shape, np.int8), 0.1, 0)
        assert f.shape == shape and f.dtype == np.float32
    assert kernels.quantize([], 0.1, 0).shape == (0,)
    assert kernels.dequantize([], 0.1, 0).shape == (0,)


@pytest.mark.parametrize(("scale", "zp"), [
    (0, 0), (-1, 0), (-0.0, 0), (float("nan"), 0), (float("inf"), 0), (1e39, 0), (1e-50, 0),
    ("0.5", 0), (None, 0), ([0.5], 0), (np.array([0.5, 0.25]), 0),
    (1, 128), (1, -129), (1, 0.5), (1, 3.0), (1, float("inf")), (1, float("nan")), (1, "3"),
    (1, None), (1, [0]),
])
def test_invalid_quantization_parameters_are_refused(impl: ModuleType, scale: object,
                                                     zp: object) -> None:
    with pytest.raises(ValueError):
        kernels.quantize([1.0], scale, zp)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        kernels.dequantize([1], scale, zp)  # type: ignore[arg-type]


def test_quantization_parameters_accept_numpy_scalars(impl: ModuleType) -> None:
    assert kernels.quantize([2.0], np.float32(0.5), np.int8(-3)).tolist() == [1]
    assert kernels.quantize([2.0], np.float64(0.5), np.int64(-3)).tolist() == [1]
    assert kernels.dequantize([1], np.float32(0.5), np.int8(-3)).tolist() == [2.0]


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(bits=hnp.arrays(np.uint32, st.integers(0, 70)),
       scale=st.floats(min_value=float(np.finfo(np.float32).smallest_subnormal),
                       max_value=float(np.finfo(np.float32).max), width=32),
       zp=st.integers(-128, 127))
def test_quantize_property_every_module_matches_onnx(bits: npt.NDArray[np.uint32],
                                                     scale: float, zp: int) -> None:
    """Arbitrary bit patterns (NaN payloads, subnormals, inf) and any valid parameters."""
    x = bits.view(np.float32)
    want = onnx_quantize(x, scale, zp)
    for module in MODULES:
        out = np.empty(x.shape, np.int8)
        module.quantize(x, scale, zp, out)
        np.testing.assert_array_equal(out, want, err_msg=module.__name__)


# ---------------------------------------------------------------------------------------------
# dequantize

@pytest.mark.parametrize(("scale", "zp"), [(0.25, -3), (0.37, 11), (1 / 255, 127), (1e-40, -128),
                                           (3e38, 0), (1.0, 0)])
def test_dequantize_is_the_float32_formula(impl: ModuleType, scale: float, zp: int) -> None:
    q = np.arange(-128, 128, dtype=np.int8)
    got = kernels.dequantize(q, scale, zp)
    assert got.dtype == np.float32
    with np.errstate(over="ignore"):
        want = (q.astype(np.int32) - zp).astype(np.float32) * np.float32(scale)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_dequantize_is_the_inverse_on_the_grid(impl: ModuleType) -> None:
    q = np.arange(-128, 128, dtype=np.int8).reshape(16, 16)
    x = kernels.dequantize(q, 0.25, -3)
    assert x.shape == (16, 16)
    np.testing.assert_array_equal(kernels.quantize(x, 0.25, -3), q)


def test_dequantize_accepts_integers_that_fit_int8_only(impl: ModuleType) -> None:
    assert kernels.dequantize([-128, 0, 127], 0.5, 1).tolist() == [-64.5, -0.5, 63.0]
    assert kernels.dequantize(np.array([3, 4], np.int64), 1.0, 0).tolist() == [3.0, 4.0]
    assert kernels.dequantize(np.array([3], np.uint8), 1.0, 0).tolist() == [3.0]
    assert kernels.dequantize(np.int8(5), 2.0, 0).shape == ()
    strided = np.arange(-100, 100, dtype=np.int8)[::3]
    np.testing.assert_array_equal(kernels.dequantize(strided, 0.5, 2),
                                  kernels.dequantize(strided.copy(), 0.5, 2))
    for bad in [np.array([1, 2], np.float32), [0.5], [128], [-129], np.array([200], np.uint8),
                [True], ["1"]]:
        with pytest.raises(ValueError, match="int8"):
            kernels.dequantize(bad, 1.0, 0)


# ---------------------------------------------------------------------------------------------
# per-channel (ONNX per-axis) quantize / dequantize

def onnx_quantize_axis(x: npt.ArrayLike, scales: npt.ArrayLike, zps: npt.ArrayLike,
                       axis: int) -> npt.NDArray[np.int8]:
    """Per-axis QuantizeLinear by its definition: each slice along ``axis`` quantized per
    tensor with its own scale and zero point."""
    x = np.asarray(x, np.float32)
    out = np.empty(x.shape, np.int8)
    for c, (scale, zp) in enumerate(zip(np.asarray(scales).tolist(), np.asarray(zps).tolist(),
                                        strict=True)):
        index = (slice(None),) * (axis % x.ndim) + (c,)
        out[index] = onnx_quantize(x[index], scale, zp)
    return out


# (shape, axis): channels last (runs of 1), mid runs, runs >= 64 values, many channels, 1-D.
AXIS_CASES = [((1000, 3), 1), ((7, 5, 9), 1), ((3, 100), 0), ((4, 2, 70), -2), ((300, 1), 0),
              ((2, 3, 4, 5), 3), ((17,), 0), ((6, 96, 96), 0), ((0, 3), 1)]


def channel_params(channels: int, seed: int) -> tuple[npt.NDArray[np.float32],
                                                      npt.NDArray[np.int64]]:
    rng = np.random.default_rng(seed)
    return (rng.uniform(0.005, 2.0, channels).astype(np.float32),
            rng.integers(-128, 128, channels))


@pytest.mark.parametrize(("shape", "axis"), AXIS_CASES)
def test_per_channel_quantize_quantizes_each_slice_with_its_own_parameters(
        impl: ModuleType, shape: tuple[int, ...], axis: int) -> None:
    rng = np.random.default_rng(len(shape) * 100 + axis)
    scales, zps = channel_params(shape[axis], seed=axis + 7)
    x = (rng.normal(0, 150, shape) * rng.choice([0.01, 1.0], shape)).astype(np.float32)
    flat = x.reshape(-1)
    flat[::97] = np.nan  # specials land in every kind of run
    flat[1::89] = np.inf
    flat[2::83] = -np.inf
    got = kernels.quantize(x, scales, zps, axis=axis)
    assert got.shape == shape and got.dtype == np.int8
    np.testing.assert_array_equal(got, onnx_quantize_axis(x, scales, zps, axis))


@pytest.mark.parametrize(("shape", "axis"), AXIS_CASES)
def test_per_channel_dequantize_is_the_float32_formula_per_slice(
        impl: ModuleType, shape: tuple[int, ...], axis: int) -> None:
    scales, zps = channel_params(shape[axis], seed=axis + 11)
    q = np.random.default_rng(3).integers(-128, 128, shape).astype(np.int8)
    got = kernels.dequantize(q, scales, zps, axis=axis)
    view = [1] * len(shape)
    view[axis] = shape[axis]
    want = ((q.astype(np.int32) - zps.reshape(view)).astype(np.float32)
            * scales.reshape(view))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_per_channel_agrees_with_onnxruntime(impl: ModuleType) -> None:
    rng = np.random.default_rng(9)
    for shape, axis in [((5, 4, 3), 0), ((5, 4, 3), 1), ((5, 4, 3), 2), ((64, 3), 1)]:
        scales, zps = channel_params(shape[axis], seed=axis)
        x = (rng.normal(0, 100, shape) * scales.max()).astype(np.float32)
        x.reshape(-1)[::7] = np.float32(0.5) * scales[0]  # exact ties in channel 0
        q = kernels.quantize(x, scales, zps, axis=axis)
        np.testing.assert_array_equal(
            q, onnxruntime_qdq("QuantizeLinear", x, scales, zps, axis=axis), err_msg=str(shape))
        np.testing.assert_array_equal(
            kernels.dequantize(q, scales, zps, axis=axis),
            onnxruntime_qdq("DequantizeLinear", q, scales, zps, axis=axis), err_msg=str(shape))


def test_per_channel_with_equal_channels_is_per_tensor(impl: ModuleType) -> None:
    """One scale and zero point repeated over the channels gives the per-tensor result; a single
    integer zero point applies to every channel."""
    x = nasty_values(0.37, 11)[:3000].reshape(1000, 3)
    want = kernels.quantize(x, 0.37, 11)
    np.testing.assert_array_equal(kernels.quantize(x, [0.37] * 3, [11] * 3, axis=1), want)
    np.testing.assert_array_equal(kernels.quantize(x, [0.37] * 3, 11, axis=-1), want)
    np.testing.assert_array_equal(kernels.dequantize(want, np.full(3, 0.37), 11, axis=1),
                                  kernels.dequantize(want, 0.37, 11))
    np.testing.assert_array_equal(kernels.quantize(x, [0.37] * 1000, 0, axis=0),
                                  kernels.quantize(x, 0.37))  # zero_point defaults to 0


@pytest.mark.parametrize(("scale", "zp", "axis", "match"), [
    ([0.5, 0.5], 0, 1, "scale has 2 values, expected 3"),
    ([0.5] * 4, [0] * 4, 1, "scale has 4 values"),
    ([[0.5] * 3], 0, 1, "scale must be a 1-D array"),
    (0.5, 0, 1, "scale must be a 1-D array"),
    (["0.5"] * 3, 0, 1, "scale must be a 1-D array"),
    ([0.5, 0.0, 0.5], 0, 1, "every scale must be a positive finite float32"),
    ([0.5, -1, 0.5], 0, 1, "every scale"),
    ([0.5, np.nan, 0.5], 0, 1, "every scale"),
    ([0.5, np.inf, 0.5], 0, 1, "every scale"),
    ([0.5, 1e39, 0.5], 0, 1, "every scale"),  # beyond float32
    ([0.5, 1e-50, 0.5], 0, 1, "every scale"),  # rounds to 0 in float32
    ([0.5] * 3, [0, 0], 1, "zero_point has 2 values, expected 3"),
    ([0.5] * 3, [0, 128, 0], 1, r"zero_point must be in \[-128, 127\]"),
    ([0.5] * 3, [0, -129, 0], 1, "zero_point"),
    ([0.5] * 3, [0.0, 1.0, 2.0], 1, "zero_point must be an integer or a 1-D array"),
    ([0.5] * 3, [[0, 0, 0]], 1, "zero_point must be an integer or a 1-D array"),
    ([0.5] * 3, 200, 1, "zero_point must be in"),
    ([0.5] * 3, 1.5, 1, "zero_point must be an integer"),
    ([0.5] * 3, 0, 2, "axis 2 is out of range"),
    ([0.5] * 3, 0, -3, "axis -3 is out of range"),
    ([0.5] * 3, 0, 1.0, "axis must be an integer"),
    ([0.5] * 3, 0, "1", "axis must be an integer"),
])
def test_invalid_per_channel_parameters_are_refused_naming_the_argument(
        impl: ModuleType, scale: object, zp: object, axis: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        kernels.quantize(np.zeros((4, 3), np.float32), scale, zp, axis=axis)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=match):
        kernels.dequantize(np.zeros((4, 3), np.int8), scale, zp, axis=axis)  # type: ignore[arg-type]


def test_per_channel_rejects_a_scalar_input(impl: ModuleType) -> None:
    with pytest.raises(ValueError, match="axis 0 is out of range"):
        kernels.quantize(1.0, [1.0], 0, axis=0)


# ---------------------------------------------------------------------------------------------
# compiled vs fallback, directly

KERNEL_NAMES = ("quantize", "quantize_axis", "dequantize", "dequantize_axis", "softmax_topk",
                "resize_normalize", "resize_normalize_quantize", "window_features")


def test_both_modules_expose_the_same_functions() -> None:
    compiled = require_compiled()
    for name in KERNEL_NAMES:
        assert callable(getattr(_fallback, name)) and callable(getattr(compiled, name)), name


def assert_bit_identical(a: npt.NDArray[np.generic], b: npt.NDArray[np.generic],
                         what: str = "") -> None:
    assert a.shape == b.shape and a.dtype == b.dtype, what
    if a.tobytes() != b.tobytes():
        diff = np.flatnonzero(a.view(np.uint8) != b.view(np.uint8))
        pytest.fail(f"{what}: compiled and fallback differ, first at byte {diff[0]}")


def both(call: object, *args: object, outs: list[npt.NDArray[np.generic]]) -> None:
    """Run kernel ``call`` (a name) in both modules on the same arguments, each writing into
    fresh copies of ``outs``, and require bit-identical results."""
    compiled = require_compiled()
    results = []
    for module in (_fallback, compiled):
        fresh = [np.full_like(out, 0x5A if out.dtype.kind in "iu" else np.nan) for out in outs]
        with np.errstate(over="ignore"):
            getattr(module, str(call))(*args, *fresh)
        results.append(fresh)
    for a, b in zip(*results, strict=True):
        assert_bit_identical(a, b, str(call))


def test_compiled_quantize_and_dequantize_are_bit_identical_to_the_fallback() -> None:
    rng = np.random.default_rng(1)
    for scale, zp in [*QUANT_PARAMS, (7.0, 0), (1e-3, -100)]:
        # Lengths that are not multiples of any vector width, so the scalar tail runs too.
        with np.errstate(over="ignore"):
            x = np.concatenate([nasty_values(scale, zp, seed=2),
                                rng.normal(0, 300 * scale, 100_003).astype(np.float32)])
        q = np.empty(x.shape, np.int8)
        _fallback.quantize(x, scale, zp, q)
        both("quantize", x, scale, zp, outs=[q])
        both("dequantize", q, scale, zp, outs=[np.empty(x.shape, np.float32)])


def test_compiled_per_channel_kernels_are_bit_identical_to_the_fallback() -> None:
    rng = np.random.default_rng(2)
    # (outer, channels, inner): tiled runs (inner < 64) with a partial last block, and long runs.
    for view in [(1001, 3, 1), (50, 7, 5), (2, 300, 1), (3, 4, 64), (2, 2, 1000), (1, 1, 1)]:
        x = rng.normal(0, 100, view).astype(np.float32)
        x.reshape(-1)[::13] = np.nan
        scales, zps = channel_params(view[1], seed=view[1])
        zps32 = zps.astype(np.int32)
        q = np.empty(view, np.int8)
        _fallback.quantize_axis(x, scales, zps32, q)
        both("quantize_axis", x, scales, zps32, outs=[q])
        both("dequantize_axis", q, scales, zps32, outs=[np.empty(view, np.float32)])


def softmax_cases(rng: np.random.Generator) -> list[npt.NDArray[np.float32]]:
    cases = [rng.standard_normal((5000, 10)) * s for s in (0.1, 3.0, 30.0, 300.0)]
    cases.append(rng.integers(-3, 3, (3000, 40)))  # many ties
    cases.append(rng.standard_normal((20, 3000)) * 10)
    cases.append(rng.uniform(-800, 0, (200, 9)))  # exps near and beyond the cut to 0 at -708
    special = rng.standard_normal((500, 12))
    special[rng.random(special.shape) < 0.2] = np.nan
    special[rng.random(special.shape) < 0.2] = -np.inf
    special[::50] = np.nan  # rows without a finite logit
    cases.append(special)
    return [c.astype(np.float32) for c in cases]


def test_compiled_softmax_topk_is_bit_identical_to_the_fallback() -> None:
    for logits in softmax_cases(np.random.default_rng(3)):
        rows, n = logits.shape
        for k in sorted({1, 3, n // 2, n}):
            both("softmax_topk", logits, k,
                 outs=[np.empty((rows, k), np.int64), np.empty((rows, k), np.float32)])


@settings(max_examples=150, deadline=None, database=None, derandomize=True)
@given(logits=hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, max_side=20),
                         elements=st.floats(width=32, allow_infinity=False) | st.sampled_from(
                             [float("nan"), float("-inf"), 0.0, -0.0, 88.5, -103.0])),
       k_fraction=st.floats(0, 1))
def test_softmax_topk_property_compiled_equals_fallback(logits: npt.NDArray[np.float32],
                                                       k_fraction: float) -> None:
    rows, n = logits.shape
    k = max(1, round(k_fraction * n))
    both("softmax_topk", logits, k,
         outs=[np.empty((rows, k), np.int64), np.empty((rows, k), np.float32)])


def resize_args(image: npt.NDArray[np.uint8], height: int, width: int,
                mean: tuple[float, ...], std: tuple[float, ...]) -> list[object]:
    """The arguments the public API hands the resize kernels."""
    img, ys, xs, gain, offset, _ = kernels._resize_args(image, height, width, mean, std, "chw")
    return [img, *ys, *xs, gain, offset]


def test_compiled_resize_is_bit_identical_to_the_fallback() -> None:
    rng = np.random.default_rng(4)
    for (h, w, c), (oh, ow) in [((480, 640, 3), (96, 96)), ((480, 640, 3), (224, 224)),
                                ((7, 5, 3), (23, 31)), ((1, 9, 1), (4, 3)), ((30, 40, 4), (30, 40)),
                                ((2, 2, 3), (1, 1)), ((16, 16, 2), (9, 17))]:
        image = rng.integers(0, 256, (h, w, c), dtype=np.uint8)
        mean = tuple(rng.uniform(0, 1, c).tolist())
        std = tuple(rng.uniform(0.1, 1, c).tolist())
        args = resize_args(image, oh, ow, mean, std)
        for chw, shape in [(True, (c, oh, ow)), (False, (oh, ow, c))]:
            both("resize_normalize", *args, chw, outs=[np.empty(shape, np.float32)])
            for scale, zp in [(0.02, 0), (0.007, -100), (1.0, 5)]:
                both("resize_normalize_quantize", *args, scale, zp, chw,
                     outs=[np.empty(shape, np.int8)])


@settings(max_examples=60, deadline=None, database=None, derandomize=True)
@given(image=hnp.arrays(np.uint8, hnp.array_shapes(min_dims=3, max_dims=3, max_side=12)),
       out_hw=st.tuples(st.integers(1, 15), st.integers(1, 15)),
       scale=st.floats(1e-3, 2.0), zp=st.integers(-128, 127), chw=st.booleans())
def test_resize_property_compiled_equals_fallback(image: npt.NDArray[np.uint8],
                                                  out_hw: tuple[int, int], scale: float, zp: int,
                                                  chw: bool) -> None:
    c = image.shape[2]
    args = resize_args(image, *out_hw, (0.45,) * c, (0.23,) * c)
    shape = (c, *out_hw) if chw else (*out_hw, c)
    both("resize_normalize", *args, chw, outs=[np.empty(shape, np.float32)])
    both("resize_normalize_quantize", *args, scale, zp, chw, outs=[np.empty(shape, np.int8)])


def compare_window_features(signal: npt.NDArray[np.float32], window: int, hop: int) -> None:
    compiled = require_compiled()
    count = (len(signal) - window) // hop + 1 if len(signal) >= window else 0
    outs = [np.empty((count, 5), np.float32) for _ in range(2)]
    flags = [module.window_features(signal, window, hop, out)
             for module, out in zip((_fallback, compiled), outs, strict=True)]
    assert flags[0] == flags[1]
    if flags[0]:  # with NaN or inf the public API refuses the result: nothing to compare
        assert_bit_identical(*outs, what=f"window {window}, hop {hop}")


def test_compiled_window_features_are_bit_identical_to_the_fallback() -> None:
    rng = np.random.default_rng(5)
    hour = (np.sin(np.arange(180_000) / 7.0) * 3 + rng.normal(0, 0.1, 180_000) + 20)
    for signal in [hour.astype(np.float32), rng.normal(0, 1e30, 5000).astype(np.float32),
                   (rng.normal(0, 1, 5000) * 10.0 ** rng.integers(-40, 38, 5000)
                    ).astype(np.float32)]:
        for window, hop in [(128, 64), (1, 1), (2, 1), (127, 129), (1000, 333), (3000, 1000)]:
            compare_window_features(signal[:window * 40 + 7], window, hop)  # <= 120 windows


@settings(max_examples=150, deadline=None, database=None, derandomize=True)
@given(signal=hnp.arrays(np.float32, st.integers(0, 300), elements=st.floats(
           width=32, allow_nan=False, allow_infinity=False) | st.sampled_from(
           [0.0, -0.0, 1e-45, 3.4e38, -3.4e38])),
       window=st.integers(1, 40), hop=st.integers(1, 40))
def test_window_features_property_compiled_equals_fallback(signal: npt.NDArray[np.float32],
                                                           window: int, hop: int) -> None:
    compare_window_features(signal, window, hop)


def test_compiled_kernels_refuse_mismatched_outputs() -> None:
    """boundscheck is off in the loops, so the wrappers must check sizes themselves."""
    compiled = require_compiled()
    x = np.zeros(10, np.float32)
    with pytest.raises(ValueError):
        compiled.quantize(x, 1.0, 0, np.empty(9, np.int8))
    with pytest.raises(ValueError):
        compiled.dequantize(np.zeros(10, np.int8), 1.0, 0, np.empty(11, np.float32))
    logits = np.zeros((4, 6), np.float32)
    for k, ishape, pshape in [(3, (4, 2), (4, 3)), (3, (4, 3), (3, 3)), (7, (4, 7), (4, 7)),
                              (0, (4, 0), (4, 0))]:
        with pytest.raises(ValueError):
            compiled.softmax_topk(logits, k, np.empty(ishape, np.int64),
                                  np.empty(pshape, np.float32))
    with pytest.raises((ValueError, TypeError)):  # a wrong dtype is a buffer mismatch
        compiled.quantize(np.zeros(10), 1.0, 0, np.empty(10, np.int8))
    x3, s, z = np.zeros((2, 3, 4), np.float32), np.ones(3, np.float32), np.zeros(3, np.int32)
    for args in [(x3, s[:2], z, np.empty((2, 3, 4), np.int8)),
                 (x3, s, z[:2], np.empty((2, 3, 4), np.int8)),
                 (x3, s, z, np.empty((2, 3, 5), np.int8))]:
        with pytest.raises(ValueError):
            compiled.quantize_axis(*args)
    with pytest.raises(ValueError):
        compiled.dequantize_axis(np.zeros((2, 3, 4), np.int8), s[:1], z, np.empty((2, 3, 4),
                                                                                 np.float32))


def test_compiled_resize_and_window_kernels_refuse_bad_tables_and_outputs() -> None:
    compiled = require_compiled()
    image = np.zeros((4, 5, 3), np.uint8)
    img, y0, y1, wy0, wy1, x0, x1, wx0, wx1, gain, offset = resize_args(
        image, 2, 3, (0.0,) * 3, (1.0,) * 3)
    good = np.empty((3, 2, 3), np.float32)
    compiled.resize_normalize(img, y0, y1, wy0, wy1, x0, x1, wx0, wx1, gain, offset, True, good)
    bad_rows = np.array([0, 4], np.intp)  # row 4 of a 4-row image
    bad_cols = np.array([0, 1, -1], np.intp)
    for args in [(img, bad_rows, y1, wy0, wy1, x0, x1, wx0, wx1, gain, offset, True, good),
                 (img, y0, y1, wy0, wy1, x0, bad_cols, wx0, wx1, gain, offset, True, good),
                 (img, y0, y1, wy0[:1], wy1, x0, x1, wx0, wx1, gain, offset, True, good),
                 (img, y0, y1, wy0, wy1, x0, x1, wx0, wx1, gain[:2], offset, True, good),
                 (img, y0, y1, wy0, wy1, x0, x1, wx0, wx1, gain, offset, False, good)]:
        with pytest.raises(ValueError):
            compiled.resize_normalize(*args)
    with pytest.raises(ValueError):
        compiled.resize_normalize_quantize(img, y0, y1, wy0, wy1, x0, x1, wx0, wx1, gain, offset,
                                           1.0, 0, True, np.empty((3, 2, 4), np.int8))
    signal = np.zeros(100, np.float32)
    for window, hop, rows in [(10, 10, 11), (0, 1, 1), (10, 0, 1), (101, 1, 1)]:
        with pytest.raises(ValueError):
            compiled.window_features(signal, window, hop, np.empty((rows, 5), np.float32))
    with pytest.raises(ValueError):
        compiled.window_features(signal, 10, 10, np.empty((10, 4), np.float32))


# ---------------------------------------------------------------------------------------------
# softmax_topk

def softmax_reference(logits: npt.ArrayLike, k: int
                      ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """float64 softmax over the row, NaN as -inf; top-k by a stable sort (ties: lower index)."""
    x = np.asarray(logits, np.float32).astype(np.float64)
    x = np.where(np.isnan(x), -np.inf, x)
    order = np.argsort(-x, axis=-1, kind="stable")[..., :k]
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return order, np.take_along_axis(e / e.sum(axis=-1, keepdims=True), order, axis=-1)


def test_softmax_topk_orders_ties_and_normalises(impl: ModuleType) -> None:
    logits = np.array([1.0, 3.0, 2.0, 3.0, -1.0], np.float32)
    idx, p = kernels.softmax_topk(logits, 3)
    assert idx.tolist() == [1, 3, 2]  # the tie 3.0 / 3.0 goes to the lower index
    assert idx.dtype == np.int64 and p.dtype == np.float32 and p.shape == (3,)
    np.testing.assert_allclose(p, softmax_reference(logits, 3)[1], rtol=0, atol=1e-7)
    _, everything = kernels.softmax_topk(logits, 5)
    assert abs(float(everything.astype(np.float64).sum()) - 1.0) < 1e-6
    assert kernels.softmax_topk([0.0, -0.0, 0.0], 3)[0].tolist() == [0, 1, 2]  # -0.0 == 0.0


@pytest.mark.parametrize(("rows", "n", "k"), [(1, 1, 1), (540, 10, 1), (540, 10, 4),
                                              (540, 10, 10), (7, 1000, 5), (7, 1000, 1000)])
def test_softmax_topk_matches_a_float64_reference(impl: ModuleType, rows: int, n: int,
                                                  k: int) -> None:
    rng = np.random.default_rng(rows * n + k)
    logits = rng.normal(0, 5, (rows, n)).astype(np.float32)
    logits[::3, : n // 2] = np.round(logits[::3, : n // 2])  # ties
    idx, p = kernels.softmax_topk(logits, k)
    ref_idx, ref_p = softmax_reference(logits, k)
    assert idx.shape == p.shape == (rows, k)
    np.testing.assert_array_equal(idx, ref_idx)
    # The float64 softmax rounded once to float32: within half a float32 ulp (2**-24 relative).
    np.testing.assert_allclose(p, ref_p, rtol=6e-8, atol=1e-45)


def test_the_shared_exp_is_accurate_to_double_precision() -> None:
    """Both implementations compute exp with these explicit operations instead of their
    libraries' exp (which may differ in the last bit); it must still be an accurate exp."""
    rng = np.random.default_rng(6)
    d = np.concatenate([-rng.exponential(3, 200_000), -rng.uniform(0, 708, 200_000),
                        np.linspace(_fallback.EXP_MIN, 0, 100_001),
                        [0.0, -0.0, -1e-300, -5e-324, -0.34657359027997264, -0.5, -1.0]])
    e = _fallback.exp_nonpositive(d)
    np.testing.assert_allclose(e, np.exp(d), rtol=1e-15, atol=0)
    assert _fallback.exp_nonpositive(np.array([0.0]))[0] == 1.0
    below = np.array([-708.0001, -745.2, -1e30, -np.inf])
    assert (_fallback.exp_nonpositive(below) == 0).all()
    # The cut to 0 changes no probability: the softmax total is >= 1 and float32 has no value
    # near exp(-708) (its smallest subnormal is 1.4e-45).
    assert np.exp(_fallback.EXP_MIN) < 1e-250 * float(np.finfo(np.float32).smallest_subnormal)


def test_softmax_topk_is_stable_for_huge_logits(impl: ModuleType) -> None:
    idx, p = kernels.softmax_topk([3e38, 3e38, -3e38, 1e30], 4)
    assert idx.tolist() == [0, 1, 3, 2]
    assert np.isfinite(p).all() and p.tolist() == [0.5, 0.5, 0.0, 0.0]
    idx, p = kernels.softmax_topk([1000.0, 999.0], 2)  # exp(1000) alone would overflow
    np.testing.assert_allclose(p, [1 / (1 + np.exp(-1)), 1 / (1 + np.exp(1))], atol=1e-7)


def test_softmax_topk_survives_nan_and_minus_inf(impl: ModuleType) -> None:
    idx, p = kernels.softmax_topk([np.nan, 1.0, -np.inf, 0.0], 4)
    assert idx.tolist() == [1, 3, 0, 2]  # NaN ranks as -inf, the tie with -inf by index
    np.testing.assert_allclose(p[:2], softmax_reference([1.0, 0.0], 2)[1], atol=1e-7)
    assert p[2] == 0 and p[3] == 0
    # Rows with no finite logit: no softmax, probabilities 0; other rows are unaffected.
    batch = np.array([[np.nan, np.nan, np.nan], [-np.inf, np.nan, -np.inf], [0.0, np.nan, 1.0]],
                     np.float32)
    idx, p = kernels.softmax_topk(batch, 2)
    assert idx.tolist() == [[0, 1], [0, 1], [2, 0]]
    assert p[:2].tolist() == [[0.0, 0.0], [0.0, 0.0]]
    np.testing.assert_allclose(p[2], softmax_reference([0.0, 1.0], 2)[1], atol=1e-7)


def test_softmax_topk_shapes_and_inputs(impl: ModuleType) -> None:
    idx, p = kernels.softmax_topk(np.zeros((0, 10), np.float32), 2)
    assert idx.shape == (0, 2) and p.shape == (0, 2)
    assert idx.dtype == np.int64 and p.dtype == np.float32
    rng = np.random.default_rng(11)
    logits = rng.normal(0, 2, (30, 12))
    want_idx, want_p = kernels.softmax_topk(logits.astype(np.float32), 3)
    for variant in (logits, np.asfortranarray(logits), logits.tolist()):  # float64, F-order
        got_idx, got_p = kernels.softmax_topk(variant, 3)
        np.testing.assert_array_equal(got_idx, want_idx)
        np.testing.assert_array_equal(got_p, want_p)
    wide = rng.normal(0, 2, (30, 24)).astype(np.float32)
    np.testing.assert_array_equal(kernels.softmax_topk(wide[:, ::2], 3)[0],
                                  kernels.softmax_topk(wide[:, ::2].copy(), 3)[0])
    assert kernels.softmax_topk([1, 5, 3], np.int64(2))[0].tolist() == [1, 2]  # ints, numpy k


def test_softmax_topk_rejects_bad_arguments(impl: ModuleType) -> None:
    for k in (0, -1, 3):
        with pytest.raises(ValueError, match="k must be"):
            kernels.softmax_topk([1.0, 2.0], k)
    with pytest.raises(ValueError, match="k must be"):
        kernels.softmax_topk(np.zeros((3, 0), np.float32), 1)
    with pytest.raises(TypeError):
        kernels.softmax_topk([1.0, 2.0], 1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\+inf"):
        kernels.softmax_topk([[1.0, 2.0], [np.inf, 0.0]], 1)
    for shape in [(2, 2, 2), ()]:
        with pytest.raises(ValueError, match="1-D or 2-D"):
            kernels.softmax_topk(np.zeros(shape), 1)


# ---------------------------------------------------------------------------------------------
# resize_normalize(_quantize)

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def bilinear_reference(image: npt.NDArray[np.uint8], height: int, width: int
                       ) -> npt.NDArray[np.float64]:
    """Half-pixel bilinear resize in float64, pixel by pixel as the textbooks (and cv2's
    INTER_LINEAR geometry) put it: output (i, j) samples the source at ((i + 0.5) * H / height
    - 0.5, (j + 0.5) * W / width - 0.5), clamped to the image, from its 4 neighbours."""
    h_in, w_in = image.shape[:2]
    p = image.astype(np.float64).reshape(h_in, w_in, -1)
    out = np.empty((height, width, p.shape[2]))
    for i in range(height):
        sy = min(max((i + 0.5) * h_in / height - 0.5, 0.0), h_in - 1.0)
        y0 = int(sy)
        y1, fy = min(y0 + 1, h_in - 1), sy - y0
        for j in range(width):
            sx = min(max((j + 0.5) * w_in / width - 0.5, 0.0), w_in - 1.0)
            x0 = int(sx)
            x1, fx = min(x0 + 1, w_in - 1), sx - x0
            out[i, j] = ((p[y0, x0] * (1 - fx) + p[y0, x1] * fx) * (1 - fy)
                         + (p[y1, x0] * (1 - fx) + p[y1, x1] * fx) * fy)
    return out


def normalize_reference(pixels: npt.NDArray[np.float64], mean: tuple[float, ...],
                        std: tuple[float, ...]) -> npt.NDArray[np.float64]:
    return (pixels / 255.0 - np.array(mean)) / np.array(std)


RESIZE_CASES = [((48, 64, 3), (9, 9)), ((5, 7, 3), (11, 13)), ((1, 5, 3), (4, 2)),
                ((10, 10, 3), (3, 7)), ((6, 1, 3), (2, 5)), ((33, 17, 3), (33, 17))]


@pytest.mark.parametrize(("in_shape", "out_hw"), RESIZE_CASES)
def test_resize_normalize_matches_a_float64_bilinear_reference(
        impl: ModuleType, in_shape: tuple[int, int, int], out_hw: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(in_shape) + sum(out_hw))
    image = rng.integers(0, 256, in_shape, dtype=np.uint8)
    want = normalize_reference(bilinear_reference(image, *out_hw), *IMAGENET)
    got = kernels.resize_normalize(image, *out_hw, *IMAGENET, layout="hwc")
    assert got.shape == (*out_hw, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    # The quantized variant: within one step of the exact value, quantized.
    scale, zp = 0.0215, -7
    q = kernels.resize_normalize_quantize(image, *out_hw, scale, zp, *IMAGENET, layout="hwc")
    exact_q = np.clip(np.rint(want / np.float32(scale)) + zp, -128, 127)
    assert q.dtype == np.int8 and np.abs(q - exact_q).max() <= 1


def test_resize_geometry_agrees_with_onnxruntime_resize(impl: ModuleType) -> None:
    """An independent implementation of the same resize: ONNX Resize, linear, half_pixel.
    mean 0 and std 1/255 keep pixel units; onnxruntime computes its source coordinates in
    float32, hence a tolerance of 0.05 of 255 (a half-pixel slip would be off by tens)."""
    onnx = pytest.importorskip("onnx")
    helper, tp = onnx.helper, onnx.TensorProto
    rng = np.random.default_rng(8)
    for (h, w, c), (oh, ow) in [((48, 64, 3), (9, 9)), ((5, 7, 3), (11, 13)),
                                ((120, 160, 3), (96, 96)), ((10, 10, 1), (3, 7))]:
        image = rng.integers(0, 256, (h, w, c), dtype=np.uint8)
        node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear",
                                coordinate_transformation_mode="half_pixel")
        session = onnx_model(
            [node], [helper.make_tensor_value_info("x", tp.FLOAT, [1, c, h, w])],
            [helper.make_tensor_value_info("y", tp.FLOAT, None)],
            [helper.make_tensor("sizes", tp.INT64, [4], [1, c, oh, ow])])
        (want,) = session.run(  # type: ignore[attr-defined]
            None, {"x": image.transpose(2, 0, 1)[None].astype(np.float32)})
        got = kernels.resize_normalize(image, oh, ow, 0.0, 1 / 255)  # chw by default
        np.testing.assert_allclose(got, want[0], rtol=0, atol=0.05, err_msg=f"{(h, w, oh, ow)}")


def test_resize_to_the_same_size_is_just_the_normalized_input(impl: ModuleType) -> None:
    image = np.random.default_rng(10).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    got = kernels.resize_normalize(image, 17, 23, *IMAGENET, layout="hwc")
    want = normalize_reference(image.astype(np.float64), *IMAGENET)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)  # constants rounded to float32
    plain = kernels.resize_normalize(image, 17, 23, layout="hwc")  # mean 0, std 1: p / 255
    np.testing.assert_allclose(plain, image / 255.0, rtol=1e-7, atol=0)


def test_resize_layouts_hold_the_same_values(impl: ModuleType) -> None:
    image = np.random.default_rng(12).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    chw = kernels.resize_normalize(image, 20, 25, *IMAGENET)
    hwc = kernels.resize_normalize(image, 20, 25, *IMAGENET, layout="hwc")
    assert chw.shape == (3, 20, 25) and hwc.shape == (20, 25, 3)
    np.testing.assert_array_equal(chw, hwc.transpose(2, 0, 1))
    q_chw = kernels.resize_normalize_quantize(image, 20, 25, 0.02, 3, *IMAGENET)
    q_hwc = kernels.resize_normalize_quantize(image, 20, 25, 0.02, 3, *IMAGENET, layout="hwc")
    np.testing.assert_array_equal(q_chw, q_hwc.transpose(2, 0, 1))


@pytest.mark.parametrize("layout", ["chw", "hwc"])
def test_resize_normalize_quantize_is_quantize_of_resize_normalize(impl: ModuleType,
                                                                  layout: str) -> None:
    """Bit for bit, including saturation: the fused kernel is only a faster route."""
    image = np.random.default_rng(13).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    for scale, zp in [(0.02, 0), (0.0078125, -128), (0.005, 100), (1.0, 0)]:
        fused = kernels.resize_normalize_quantize(image, 31, 45, scale, zp, *IMAGENET,
                                                  layout=layout)  # type: ignore[arg-type]
        two_steps = kernels.quantize(kernels.resize_normalize(
            image, 31, 45, *IMAGENET, layout=layout), scale, zp)  # type: ignore[arg-type]
        np.testing.assert_array_equal(fused, two_steps, err_msg=f"{scale}, {zp}")


def test_resize_accepts_a_grayscale_frame_as_one_channel(impl: ModuleType) -> None:
    image = np.random.default_rng(14).integers(0, 256, (12, 16), dtype=np.uint8)
    gray = kernels.resize_normalize(image, 6, 8, mean=0.5, std=0.25)
    assert gray.shape == (1, 6, 8)
    np.testing.assert_array_equal(gray, kernels.resize_normalize(image[:, :, None], 6, 8,
                                                                 mean=[0.5], std=[0.25]))
    np.testing.assert_allclose(gray[0], normalize_reference(bilinear_reference(image, 6, 8),
                                                            (0.5,), (0.25,))[:, :, 0], atol=1e-5)
    assert kernels.resize_normalize_quantize(image, 6, 8, 0.1, 0, 0.5, 0.25,
                                             layout="hwc").shape == (6, 8, 1)


def test_resize_accepts_non_contiguous_frames_and_numpy_parameters(impl: ModuleType) -> None:
    image = np.random.default_rng(15).integers(0, 256, (60, 80, 4), dtype=np.uint8)
    view = image[::2, 1::2, 2::-1]  # strided, channels reversed: BGRA -> RGB
    want = kernels.resize_normalize(np.ascontiguousarray(view), 13, 11, *IMAGENET)
    got = kernels.resize_normalize(view, np.int64(13), np.int32(11), np.array(IMAGENET[0]),
                                   np.array(IMAGENET[1], np.float32))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)  # std rounded to float32 first


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"image": np.zeros((4, 4, 3), np.float32)}, "image must be uint8"),
    ({"image": [[[1, 2, 3]]]}, "image must be uint8"),
    ({"image": np.zeros((2, 4, 4, 3), np.uint8)}, "image must be"),
    ({"image": np.zeros(12, np.uint8)}, "image must be"),
    ({"image": np.zeros((0, 4, 3), np.uint8)}, "not empty"),
    ({"image": np.zeros((4, 4, 0), np.uint8)}, "not empty"),
    ({"height": 0}, "height and width must be >= 1"),
    ({"width": -3}, "height and width must be >= 1"),
    ({"layout": "nchw"}, "layout must be"),
    ({"mean": (0.5, 0.5)}, "mean has 2 values, the image 3 channels"),
    ({"std": (0.5,) * 4}, "std has 4 values"),
    ({"image": np.zeros((4, 4), np.uint8)}, "mean has 3 values, the image 1 channels"),
    ({"std": (0.5, 0.0, 0.5)}, "std must be positive"),
    ({"std": (0.5, -1.0, 0.5)}, "std must be positive"),
    ({"std": (0.5, float("nan"), 0.5)}, "std must be finite"),
    ({"mean": (0.5, float("inf"), 0.5)}, "mean must be finite"),
    ({"mean": ("a", 0.5, 0.5)}, "mean must be numbers"),
    ({"std": 1e-300}, "out of float32's range"),
])
def test_resize_rejects_bad_arguments(impl: ModuleType, kwargs: dict[str, object],
                                      match: str) -> None:
    args: dict[str, object] = {"image": np.zeros((4, 4, 3), np.uint8), "height": 2, "width": 2,
                               "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), **kwargs}
    with pytest.raises(ValueError, match=match):
        kernels.resize_normalize(**args)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=match):
        kernels.resize_normalize_quantize(scale=0.1, zero_point=0, **args)  # type: ignore[arg-type]


def test_resize_quantize_validates_its_quantization_parameters(impl: ModuleType) -> None:
    image = np.zeros((4, 4, 3), np.uint8)
    for scale, zp in [(0.0, 0), (float("nan"), 0), ([0.1, 0.1, 0.1], 0), (0.1, 128), (0.1, 0.5)]:
        with pytest.raises(ValueError):
            kernels.resize_normalize_quantize(image, 2, 2, scale, zp)  # type: ignore[arg-type]


def test_resize_tables_are_computed_once_and_shared_read_only() -> None:
    first = kernels._axis_table(480, 96)
    assert kernels._axis_table(480, 96) is first
    assert all(not table.flags.writeable for table in first)
    i0, i1, w0, w1 = first
    assert i0.dtype == i1.dtype == np.intp and w0.dtype == w1.dtype == np.float32
    assert (i0 >= 0).all() and (i1 <= 479).all() and (i1 - i0 <= 1).all()


# ---------------------------------------------------------------------------------------------
# window_features

def window_reference(signal: npt.ArrayLike, window: int, hop: int) -> npt.NDArray[np.float64]:
    """Plain float64 statistics, one window at a time."""
    x = np.asarray(signal, np.float32).astype(np.float64)
    rows = [[w.mean(), w.std(), w.min(), w.max(), np.sqrt(np.mean(w * w))]
            for w in (x[start:start + window]
                      for start in range(0, len(x) - window + 1, hop))]
    return np.array(rows).reshape(-1, 5)


def test_window_features_columns_are_named() -> None:
    assert kernels.FEATURES == ("mean", "std", "min", "max", "rms")


@pytest.mark.parametrize(("n", "window", "hop"), [(1000, 128, 64), (1000, 1, 1), (1000, 1000, 5),
                                                  (999, 100, 300), (257, 16, 16), (50, 7, 3)])
def test_window_features_match_plain_float64_statistics(impl: ModuleType, n: int, window: int,
                                                        hop: int) -> None:
    rng = np.random.default_rng(n + window + hop)
    signal = (np.sin(np.arange(n) / 5.0) * 4 + rng.normal(12, 0.5, n)).astype(np.float32)
    got = kernels.window_features(signal, window, hop)
    want = window_reference(signal, window, hop)
    assert got.dtype == np.float32 and got.shape == want.shape == ((n - window) // hop + 1, 5)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)


def test_window_features_windows_start_at_multiples_of_hop(impl: ModuleType) -> None:
    got = kernels.window_features(np.arange(20), 5, 4)  # windows 0-4, 4-8, 8-12, 12-16
    assert got[:, 2].tolist() == [0, 4, 8, 12] and got[:, 3].tolist() == [4, 8, 12, 16]
    assert got[:, 0].tolist() == [2, 6, 10, 14]
    np.testing.assert_allclose(got[:, 1], np.sqrt(2.0), rtol=1e-7)  # std of 5 consecutive ints
    assert kernels.window_features(np.arange(5), 5, 1).shape == (1, 5)  # exactly one window
    assert kernels.window_features(np.arange(4), 5, 1).shape == (0, 5)  # shorter than a window
    assert kernels.window_features([], 5, 1).shape == (0, 5)


def test_window_features_std_is_two_pass_and_exact_for_a_constant(impl: ModuleType) -> None:
    """A large offset with a tiny spread: the one-pass formula sqrt(E[x^2] - mean^2) would
    lose it to cancellation; around the mean it survives."""
    offset = np.float32(100_000.0)
    signal = offset + np.tile(np.array([-0.5, 0.5], np.float32), 64)
    got = kernels.window_features(signal, 128, 64)
    assert got[0].tolist() == [100_000.0, 0.5, 99_999.5, 100_000.5, got[0, 4]]
    assert kernels.window_features(np.full(64, 0.1, np.float32), 64, 1)[0, 1] == 0.0


def test_window_features_report_zero_as_positive_zero(impl: ModuleType) -> None:
    """min and max pick one of -0.0 and 0.0 depending on evaluation order; both implementations
    report 0.0 so they stay bit-identical."""
    got = kernels.window_features(np.array([-0.0, 0.0, -0.0], np.float32), 3, 1)
    assert np.signbit(got).tolist() == [[False] * 5]


def test_window_features_accept_array_likes(impl: ModuleType) -> None:
    want = kernels.window_features(np.arange(10, dtype=np.float32), 4, 2)
    for signal in (list(range(10)), np.arange(10), np.arange(20.0)[::2] / 2):
        np.testing.assert_array_equal(kernels.window_features(signal, np.int64(4), 2), want)


def test_window_features_refuse_nan_and_inf_inside_a_window(impl: ModuleType) -> None:
    for bad in (np.nan, np.inf, -np.inf, 1e300):  # 1e300 becomes inf in float32
        signal = np.zeros(10)
        signal[5] = bad
        with pytest.raises(ValueError, match="NaN or ±inf"):
            kernels.window_features(signal, 4, 2)
    tail = np.zeros(10, np.float32)
    tail[9] = np.nan  # after the last window (0-4, 4-8): no window reads it
    assert kernels.window_features(tail, 4, 4).shape == (2, 5)


def test_window_features_reject_bad_arguments(impl: ModuleType) -> None:
    for window, hop in [(0, 1), (4, 0), (-1, 1)]:
        with pytest.raises(ValueError, match="window and hop must be >= 1"):
            kernels.window_features(np.zeros(10), window, hop)
    with pytest.raises(ValueError, match="1-D"):
        kernels.window_features(np.zeros((2, 10)), 4, 2)
    with pytest.raises(TypeError):
        kernels.window_features(np.zeros(10), 4.0, 2)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# the benchmark behind `edgeagent bench`

def test_compare_kernels_checks_every_case_and_times_both() -> None:
    results = compare_kernels(rounds=1, budget_s=0.001)
    assert {r.name for r in results} >= {"quantize", "softmax_topk", "resize_normalize_quantize",
                                         "window_features"}
    for r in results:
        assert isinstance(r, KernelComparison) and r.fallback_s > 0
        if COMPILED_MODULE is None:
            assert r.compiled_s is r.ratio is r.bit_exact is None
        else:
            assert r.bit_exact is True, r
            assert r.compiled_s is not None and r.compiled_s > 0
            assert r.ratio == pytest.approx(r.fallback_s / r.compiled_s)
    table = format_table(results).splitlines()
    assert len(table) == len(results) + 1 and "bit-exact" in table[0]
    with pytest.raises(ValueError):
        compare_kernels(rounds=0)


# ---------------------------------------------------------------------------------------------
# which implementation is in use

def test_compiled_kernels_are_in_use_where_expected() -> None:
    """CI and the install check set EDGEAGENT_EXPECT_COMPILED=1: a silent fallback fails."""
    if EXPECT_COMPILED:
        assert kernels.COMPILED, f"the compiled kernels are not in use: {kernels._UNAVAILABLE}"
    elif not kernels.COMPILED:
        pytest.skip(f"fallback in use ({kernels._UNAVAILABLE})")


def _compiled_flag_in_subprocess(pure: str | None) -> str:
    """kernels.COMPILED in a fresh interpreter importing this very edgeagent package."""
    root = Path(kernels.__file__).resolve().parents[2]
    env = {key: value for key, value in os.environ.items() if key != "EDGEAGENT_PURE_KERNELS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    if pure is not None:
        env["EDGEAGENT_PURE_KERNELS"] = pure
    result = subprocess.run([sys.executable, "-c",
                             "import edgeagent.kernels as k; print(k.COMPILED)"],
                            cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_the_fallback_can_be_forced() -> None:
    assert _compiled_flag_in_subprocess("1") == "False"
    expected = str(COMPILED_MODULE is not None)
    assert _compiled_flag_in_subprocess(None) == expected
    assert _compiled_flag_in_subprocess("0") == expected
