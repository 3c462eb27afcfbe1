"""Kernels: both implementations follow the contract, and the compiled one matches the fallback.

Every behavioural test runs once per implementation (fallback always, compiled when built) by
routing the public API through it. quantize is checked against an independent float64
rendering of ONNX QuantizeLinear and against onnxruntime itself; compiled vs fallback is
checked bit for bit for (de)quantize, for softmax_topk indices exactly and probabilities to
1e-6 (the contract: exp comes from different libraries).
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

import edgeagent.kernels as kernels
from edgeagent.kernels import _fallback

try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp
except ImportError:  # optional: the fixed-seed tests below cover the same ground
    HAVE_HYPOTHESIS = False
else:
    HAVE_HYPOTHESIS = True


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


def test_quantize_agrees_with_onnxruntime(impl: ModuleType) -> None:
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    helper, tp = onnx.helper, onnx.TensorProto
    for scale, zp in [(1.0, 0), (0.5, 3), (0.1, -128), (1 / 255, 127), (0.37, 11)]:
        graph = helper.make_graph(
            [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])], "q",
            [helper.make_tensor_value_info("x", tp.FLOAT, [None])],
            [helper.make_tensor_value_info("y", tp.INT8, [None])],
            initializer=[helper.make_tensor("s", tp.FLOAT, [], [scale]),
                         helper.make_tensor("z", tp.INT8, [], [zp])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        session = ort.InferenceSession(model.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        x = nasty_values(scale, zp, seed=5)
        x = x[~np.isnan(x)]  # ONNX leaves NaN undefined (onnxruntime gives -128; we give zp)
        (expected,) = session.run(None, {"x": x})
        np.testing.assert_array_equal(kernels.quantize(x, scale, zp), expected,
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


if HAVE_HYPOTHESIS:
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
else:
    def test_quantize_property_every_module_matches_onnx() -> None:
        pytest.skip("hypothesis is not installed")


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
# compiled vs fallback, directly

def test_both_modules_expose_the_same_functions() -> None:
    compiled = require_compiled()
    for name in ("quantize", "dequantize", "softmax_topk"):
        assert callable(getattr(_fallback, name)) and callable(getattr(compiled, name))


def test_compiled_quantize_and_dequantize_are_bit_identical_to_the_fallback() -> None:
    compiled = require_compiled()
    rng = np.random.default_rng(1)
    for scale, zp in [*QUANT_PARAMS, (7.0, 0), (1e-3, -100)]:
        # Lengths that are not multiples of any vector width, so the scalar tail runs too.
        with np.errstate(over="ignore"):
            x = np.concatenate([nasty_values(scale, zp, seed=2),
                                rng.normal(0, 300 * scale, 100_003).astype(np.float32)])
        a, b = np.empty(x.shape, np.int8), np.empty(x.shape, np.int8)
        _fallback.quantize(x, scale, zp, a)
        compiled.quantize(x, scale, zp, b)
        np.testing.assert_array_equal(a, b, err_msg=f"scale {scale}, zero_point {zp}")
        fa, fb = np.empty(x.shape, np.float32), np.empty(x.shape, np.float32)
        with np.errstate(over="ignore"):
            _fallback.dequantize(a, scale, zp, fa)
        compiled.dequantize(a, scale, zp, fb)
        np.testing.assert_array_equal(fa.view(np.uint32), fb.view(np.uint32))


def test_compiled_softmax_topk_matches_the_fallback() -> None:
    compiled = require_compiled()
    rng = np.random.default_rng(3)
    cases = [rng.standard_normal((5000, 10)) * s for s in (0.1, 3.0, 30.0)]
    cases.append(rng.integers(-3, 3, (3000, 40)))  # many ties
    cases.append(rng.standard_normal((20, 3000)) * 10)
    special = rng.standard_normal((500, 12))
    special[rng.random(special.shape) < 0.2] = np.nan
    special[rng.random(special.shape) < 0.2] = -np.inf
    special[::50] = np.nan  # rows without a finite logit
    cases.append(special)
    for logits in cases:
        logits = logits.astype(np.float32)
        rows, n = logits.shape
        for k in sorted({1, 3, n // 2, n}):
            idx_a, idx_b = np.empty((rows, k), np.int64), np.empty((rows, k), np.int64)
            p_a, p_b = np.empty((rows, k), np.float32), np.empty((rows, k), np.float32)
            _fallback.softmax_topk(logits, k, idx_a, p_a)
            compiled.softmax_topk(logits, k, idx_b, p_b)
            np.testing.assert_array_equal(idx_a, idx_b)
            np.testing.assert_allclose(p_a, p_b, rtol=0, atol=1e-6)


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
    np.testing.assert_allclose(p, ref_p, rtol=0, atol=1e-6)


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
