"""Compiled vs NumPy-fallback kernels, timed through the public API on the agent's real sizes.

What ``edgeagent bench`` and ``benchmarks/kernels.py`` report: whether building the Cython
kernels pays off on this board, for the calls the agent makes (one camera frame, one 10-class
output, one sensor window), with argument checks and conversions included. Each case is first
checked to give bit-identical results either way, then timed in interleaved rounds (compiled,
fallback, compiled, ...) so both see the same machine noise; the median round counts.
"""

from __future__ import annotations

import importlib
import math
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import numpy.typing as npt

import edgeagent.kernels as kernels
from edgeagent.kernels import _fallback

__all__ = ["KernelComparison", "compare_kernels", "format_table"]


@dataclass(frozen=True)
class KernelComparison:
    """One case: median seconds per call each way. ``compiled_s``, ``ratio`` (fallback /
    compiled, > 1 when the compiled kernel is faster) and ``bit_exact`` are None when the
    compiled module is not available."""

    name: str
    size: str
    compiled_s: float | None
    fallback_s: float
    ratio: float | None
    bit_exact: bool | None


@dataclass(frozen=True)
class _Case:
    name: str
    size: str
    call: Callable[[], object]


def _cases(rng: np.random.Generator) -> list[_Case]:
    """Inputs the size of the agent's: a 96x96 RGB model input, a 640x480 camera frame, a
    10-class output, a 128-sample window (2.56 s at 50 Hz) and an hour of such samples."""
    frame = rng.normal(0, 1, (96, 96, 3)).astype(np.float32)
    frame_q = kernels.quantize(frame, 0.02, 3)
    channel_scales, channel_zps = np.array([0.02, 0.03, 0.025]), np.array([3, -1, 0])
    logits = rng.normal(0, 3, (1, 10)).astype(np.float32)
    batch_logits = rng.normal(0, 3, (540, 10)).astype(np.float32)
    camera = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # the ImageNet normalization
    hour = (np.sin(np.arange(180_000) / 7.0) + rng.normal(0, 0.1, 180_000)).astype(np.float32)
    window = hour[:128]
    return [
        _Case("quantize", "96x96x3 per-tensor", lambda: kernels.quantize(frame, 0.02, 3)),
        _Case("quantize", "96x96x3 per-channel", lambda: kernels.quantize(
            frame, channel_scales, channel_zps, axis=-1)),
        _Case("dequantize", "96x96x3 per-tensor", lambda: kernels.dequantize(frame_q, 0.02, 3)),
        _Case("softmax_topk", "1x10 k=3", lambda: kernels.softmax_topk(logits, 3)),
        _Case("softmax_topk", "540x10 k=3", lambda: kernels.softmax_topk(batch_logits, 3)),
        _Case("resize_normalize", "640x480x3 -> 96x96", lambda: kernels.resize_normalize(
            camera, 96, 96, mean, std)),
        _Case("resize_normalize_quantize", "640x480x3 -> 96x96",
              lambda: kernels.resize_normalize_quantize(camera, 96, 96, 0.02, 3, mean, std)),
        _Case("window_features", "128, hop 64 (1 window)",
              lambda: kernels.window_features(window, 128, 64)),
        _Case("window_features", "180000, hop 64 (1 h @ 50 Hz)",
              lambda: kernels.window_features(hour, 128, 64)),
    ]


@contextmanager
def _routed(module: ModuleType) -> Iterator[None]:
    """Route the public API through one implementation (not thread-safe: benchmarks only)."""
    saved = kernels._impl
    kernels._impl = module
    try:
        yield
    finally:
        kernels._impl = saved


def _arrays(result: object) -> tuple[npt.NDArray[np.generic], ...]:
    """A kernel's result as a tuple of arrays (softmax_topk returns two)."""
    return tuple(result) if isinstance(result, tuple) else (np.asarray(result),)


def _bit_exact(call: Callable[[], object], compiled: ModuleType) -> bool:
    """Same shapes, dtypes and bytes from both implementations."""
    with _routed(compiled):
        got = _arrays(call())
    with _routed(_fallback):
        want = _arrays(call())
    return len(got) == len(want) and all(
        a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()
        for a, b in zip(got, want, strict=False))


def _calls_per_round(call: Callable[[], object], budget_s: float) -> int:
    """How many calls take about budget_s: doubling up to a quarter of it, then scaled."""
    n = 1
    while True:
        start = time.perf_counter()
        for _ in range(n):
            call()
        elapsed = time.perf_counter() - start
        if elapsed >= budget_s / 4:
            return max(1, math.ceil(n * budget_s / elapsed))
        n *= 2


def _seconds_per_call(call: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        call()
    return (time.perf_counter() - start) / n


def compare_kernels(rounds: int = 5, budget_s: float = 0.05) -> list[KernelComparison]:
    """Time every case through the public API, compiled and fallback, ``rounds`` interleaved
    rounds of about ``budget_s`` seconds each; medians per call. Without the compiled module
    (not built, or its self-test refused it) only the fallback is timed. About 5 s with the
    defaults on a 2-core x86 machine; each case costs about 2 * (rounds + 1) * budget_s."""
    if rounds < 1 or not budget_s > 0:
        raise ValueError(f"rounds must be >= 1 and budget_s > 0, got {rounds}, {budget_s}")
    try:
        compiled: ModuleType | None = importlib.import_module("edgeagent.kernels._compiled")
    except ImportError:
        compiled = None
    impls = [_fallback] if compiled is None else [compiled, _fallback]
    results = []
    for case in _cases(np.random.default_rng(0)):
        exact = None if compiled is None else _bit_exact(case.call, compiled)
        calls = []
        for module in impls:
            with _routed(module):
                calls.append(_calls_per_round(case.call, budget_s))
        times: list[list[float]] = [[] for _ in impls]
        for _ in range(rounds):
            for module, n, samples in zip(impls, calls, times, strict=True):
                with _routed(module):
                    samples.append(_seconds_per_call(case.call, n))
        medians = [statistics.median(samples) for samples in times]
        fallback_s = medians[-1]
        compiled_s = None if compiled is None else medians[0]
        results.append(KernelComparison(
            case.name, case.size, compiled_s, fallback_s,
            None if compiled_s is None else fallback_s / compiled_s, exact))
    return results


def format_table(results: list[KernelComparison]) -> str:
    """A fixed-width table, one line per case, times in microseconds per call."""
    lines = [f"{'kernel':<26} {'size':<29} {'compiled':>11} {'fallback':>11} {'ratio':>7}  "
             "bit-exact"]
    for r in results:
        compiled = "-" if r.compiled_s is None else f"{r.compiled_s * 1e6:.1f} us"
        ratio = "-" if r.ratio is None else f"{r.ratio:.1f}x"
        exact = {None: "-", True: "yes", False: "NO"}[r.bit_exact]
        lines.append(f"{r.name:<26} {r.size:<29} {compiled:>11} "
                     f"{r.fallback_s * 1e6:>8.1f} us {ratio:>7}  {exact}")
    return "\n".join(lines)
