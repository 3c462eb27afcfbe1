"""Kernels: compiled and fallback agree bit for bit, and both follow ONNX QuantizeLinear."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from types import ModuleType

import numpy as np
import pytest

import edgeagent.kernels as kernels
from edgeagent.kernels import _fallback


def _compiled() -> ModuleType | None:
    try:
        return importlib.import_module("edgeagent.kernels._compiled")
    except ImportError:
        return None


COMPILED_MODULE = _compiled()
IMPLS = [pytest.param(_fallback, id="fallback")]
if COMPILED_MODULE is not None:
    IMPLS.append(pytest.param(COMPILED_MODULE, id="compiled"))


def require_compiled() -> ModuleType:
    """The compiled module; where CI expects it (EDGEAGENT_EXPECT_COMPILED=1) its absence fails."""
    if COMPILED_MODULE is None:
        if os.environ.get("EDGEAGENT_EXPECT_COMPILED") == "1":
            pytest.fail("compiled kernels are not built")
        pytest.skip("compiled kernels are not built (fallback-only install)")
    return COMPILED_MODULE


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Route the public API through one implementation."""
    module: ModuleType = request.param
    monkeypatch.setattr(kernels, "_impl", module)
    return module


def reference_quantize(x: np.ndarray, scale: float, zp: int) -> np.ndarray:
    """ONNX QuantizeLinear written the plain way: divide, round half to even, add, saturate."""
    with np.errstate(over="ignore", invalid="ignore"):
        v = np.asarray(x, np.float32) / np.float32(scale)
        q = np.rint(v).astype(np.float64) + zp
    q = np.where(np.isnan(v), zp, q)
    return np.clip(q, -128, 127).astype(np.int8)


def nasty_values(rng: np.random.Generator) -> np.ndarray:
    ties = np.arange(-300, 300, dtype=np.float32) + np.float32(0.5)
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 3.4e38, -3.4e38,
                         126.5, 127.5, 128.5, -127.5, -128.5, -129.5], np.float32)
    return np.concatenate([ties, specials, rng.normal(0, 100, 5000).astype(np.float32),
                           rng.uniform(-1e6, 1e6, 1000).astype(np.float32)])


@pytest.mark.parametrize("scale,zp", [(1.0, 0), (0.5, 3), (0.1, -128), (1 / 255, 127),
                                      (2.0, -7), (0.0078125, 0)])
def test_quantize_follows_onnx_quantizelinear(impl: ModuleType, scale: float, zp: int) -> None:
    x = nasty_values(np.random.default_rng(0))
    np.testing.assert_array_equal(kernels.quantize(x, scale, zp), reference_quantize(x, scale, zp))


def test_quantize_rounds_half_to_even_and_saturates(impl: ModuleType) -> None:
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 200, -200, np.inf, -np.inf, np.nan], np.float32)
    assert kernels.quantize(x, 1.0, 0).tolist() == [0, 2, 2, 0, -2, 127, -128, 127, -128, 0]
    assert kernels.quantize([np.nan], 1.0, 5).tolist() == [5]  # NaN maps to the zero point


def test_compiled_and_fallback_are_bit_identical() -> None:
    compiled = require_compiled()
    x = nasty_values(np.random.default_rng(1))
    for scale, zp in [(0.37, 11), (1e-3, -100), (7.0, 0)]:
        a = np.empty(x.shape, np.int8)
        b = np.empty(x.shape, np.int8)
        _fallback.quantize(x, scale, zp, a)
        compiled.quantize(x, scale, zp, b)
        np.testing.assert_array_equal(a, b)
        fa = np.empty(x.shape, np.float32)
        fb = np.empty(x.shape, np.float32)
        _fallback.dequantize(a, scale, zp, fa)
        compiled.dequantize(a, scale, zp, fb)
        np.testing.assert_array_equal(fa.view(np.uint32), fb.view(np.uint32))


def test_quantize_keeps_shape_and_handles_empty_arrays(impl: ModuleType) -> None:
    assert kernels.quantize(np.zeros((3, 4, 2)), 0.1, 0).shape == (3, 4, 2)
    empty = kernels.quantize(np.array([], np.float32), 0.1, 0)
    assert empty.shape == (0,) and empty.dtype == np.int8
    assert kernels.dequantize(np.array([], np.int8), 0.1, 0).shape == (0,)


@pytest.mark.parametrize("scale,zp", [(0, 0), (-1, 0), (float("nan"), 0), (float("inf"), 0),
                                      (1, 128), (1, -129), (1, 0.5)])
def test_invalid_quantization_parameters_are_refused(scale: float, zp: int) -> None:
    with pytest.raises(ValueError):
        kernels.quantize([1.0], scale, zp)


def test_dequantize_is_the_inverse_on_the_grid(impl: ModuleType) -> None:
    q = np.arange(-128, 128, dtype=np.int8)
    x = kernels.dequantize(q, 0.25, -3)
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x, (q.astype(np.float32) + 3) * np.float32(0.25))
    np.testing.assert_array_equal(kernels.quantize(x, 0.25, -3), q)
    with pytest.raises(ValueError, match="int8"):
        kernels.dequantize(np.array([1, 2], np.int32), 1.0, 0)


def test_softmax_topk_orders_and_normalises(impl: ModuleType) -> None:
    logits = np.array([1.0, 3.0, 2.0, 3.0, -1.0], np.float32)
    idx, p = kernels.softmax_topk(logits, 3)
    assert idx.tolist() == [1, 3, 2]  # the tie 3.0 / 3.0 goes to the lower index
    e = np.exp(logits - logits.max())
    np.testing.assert_allclose(p, (e / e.sum())[[1, 3, 2]], rtol=1e-6)
    _, all_p = kernels.softmax_topk(logits, 5)
    assert abs(float(all_p.sum()) - 1.0) < 1e-6


def test_softmax_topk_probabilities_are_bit_identical_between_implementations() -> None:
    compiled = require_compiled()
    rng = np.random.default_rng(3)
    for scale in (0.1, 3.0, 30.0):
        logits = (rng.standard_normal((20000, 10)) * scale).astype(np.float32)
        results = []
        for module in (_fallback, compiled):
            idx = np.empty((20000, 10), np.int64)
            p = np.empty((20000, 10), np.float32)
            module.softmax_topk(logits, 10, idx, p)
            results.append((idx, p))
        np.testing.assert_array_equal(results[0][0], results[1][0])
        np.testing.assert_array_equal(results[0][1].view(np.uint32),
                                      results[1][1].view(np.uint32))


def test_softmax_topk_batches_and_agrees_between_implementations() -> None:
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 5, (540, 10)).astype(np.float32)
    logits[::7, 3] = logits[::7, 5]  # ties
    for module in [m.values[0] for m in IMPLS]:
        idx = np.empty((540, 4), np.int64)
        p = np.empty((540, 4), np.float32)
        module.softmax_topk(logits, 4, idx, p)
        ref = np.argsort(-logits, axis=1, kind="stable")[:, :4]
        np.testing.assert_array_equal(idx, ref)
        full = np.exp(logits - logits.max(1, keepdims=True))
        np.testing.assert_allclose(p, np.take_along_axis(full / full.sum(1, keepdims=True),
                                                         ref, 1), atol=1e-6)


def test_softmax_topk_survives_nan_and_minus_inf(impl: ModuleType) -> None:
    idx, p = kernels.softmax_topk([np.nan, 1.0, -np.inf, 0.0], 4)
    assert idx.tolist() == [1, 3, 0, 2]
    assert p[2] == 0 and p[3] == 0 and abs(float(p.sum()) - 1) < 1e-6
    idx, p = kernels.softmax_topk([-np.inf, -np.inf], 1)
    assert idx.tolist() == [0] and p.tolist() == [0.0]


def test_softmax_topk_rejects_bad_arguments(impl: ModuleType) -> None:
    with pytest.raises(ValueError, match="k must be"):
        kernels.softmax_topk([1.0, 2.0], 3)
    with pytest.raises(ValueError, match="k must be"):
        kernels.softmax_topk([1.0, 2.0], 0)
    with pytest.raises(ValueError, match=r"\+inf"):
        kernels.softmax_topk([1.0, np.inf], 1)
    with pytest.raises(ValueError, match="1-D or 2-D"):
        kernels.softmax_topk(np.zeros((2, 2, 2)), 1)
    idx, p = kernels.softmax_topk(np.zeros((0, 10), np.float32), 2)
    assert idx.shape == (0, 2) and p.shape == (0, 2)


def test_the_compiled_kernels_are_in_use_where_ci_expects_them() -> None:
    if os.environ.get("EDGEAGENT_EXPECT_COMPILED") == "1":
        assert kernels.COMPILED, "the Cython extension did not build or import"


def test_the_fallback_can_be_forced() -> None:
    out = subprocess.run([sys.executable, "-c", "import edgeagent.kernels as k; print(k.COMPILED)"],
                         env={**os.environ, "EDGEAGENT_PURE_KERNELS": "1"}, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "False"
