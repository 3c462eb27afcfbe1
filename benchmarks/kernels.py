"""Compiled (Cython) vs NumPy fallback kernels, side by side in one run.

    python benchmarks/kernels.py [--rounds 7] [--budget 0.05]

Each case goes through the public API (validation and conversion included, as the agent calls
it), routed to one implementation at a time. Rounds interleave the implementations (compiled,
fallback, compiled, ...) so both see the same machine noise; each round times as many calls as
fit in --budget seconds. The table shows the median time per call and fallback/compiled (> 1:
the compiled kernel is faster). Before timing, each case checks that both implementations
agree. Without the compiled module only the fallback is timed. Takes about 20 s.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import statistics
import time
from collections.abc import Callable
from types import ModuleType

import numpy as np

import edgeagent.kernels as kernels
from edgeagent.kernels import _fallback

Case = tuple[str, Callable[[], tuple[np.ndarray, ...]]]


def per_call_s(fn: Callable[[], object], budget_s: float) -> float:
    """Seconds per call: call fn in doubling batches until one batch takes budget_s."""
    n = 1
    while True:
        start = time.perf_counter()
        for _ in range(n):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= budget_s:
            return elapsed / n
        n *= 2


def make_cases(rng: np.random.Generator) -> list[Case]:
    cases: list[Case] = []
    for n in (64, 27_648, 1_000_000):  # 27648 = a 96x96x3 camera frame
        x = rng.normal(0, 50, n).astype(np.float32)
        q = kernels.quantize(x, 0.4, 3)
        cases.append((f"quantize {n}", lambda x=x: (kernels.quantize(x, 0.4, 3),)))
        cases.append((f"dequantize {n}", lambda q=q: (kernels.dequantize(q, 0.4, 3),)))
    for shape in ((1, 10), (540, 10), (2000, 1000)):
        logits = rng.normal(0, 3, shape).astype(np.float32)
        cases.append((f"softmax_topk {shape[0]}x{shape[1]} k=3",
                      lambda lg=logits: kernels.softmax_topk(lg, 3)))
    return cases


def check_agreement(label: str, fn: Callable[[], tuple[np.ndarray, ...]],
                    impls: list[tuple[str, ModuleType]]) -> None:
    """Indices and integers must be identical; float probabilities within 1e-6 (the contract)."""
    results = []
    for _, module in impls:
        kernels._impl = module
        results.append(fn())
    for got in results[1:]:
        for a, b in zip(results[0], got, strict=True):
            if a.dtype.kind == "f" and label.startswith("softmax"):
                ok = bool(np.allclose(a, b, rtol=0, atol=1e-6))
            else:
                ok = a.tobytes() == b.tobytes()
            if not ok:
                raise SystemExit(f"{label}: compiled and fallback results differ")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds per case")
    parser.add_argument("--budget", type=float, default=0.05,
                        help="seconds of calls timed per round and implementation")
    args = parser.parse_args()
    try:
        compiled: ModuleType | None = importlib.import_module("edgeagent.kernels._compiled")
    except ImportError as exc:
        compiled = None
        print(f"compiled kernels not available ({exc}): only the fallback is timed")
    impls = [("compiled", compiled), ("fallback", _fallback)] if compiled else [
        ("fallback", _fallback)]
    print(f"python {platform.python_version()}, numpy {np.__version__}, "
          f"{platform.machine()}; median of {args.rounds} rounds, time per call")
    default_impl = kernels._impl
    try:
        cases = make_cases(np.random.default_rng(0))
        print(f"{'kernel':<28}" + "".join(f"{name:>14}" for name, _ in impls)
              + ("   fallback/compiled" if compiled else ""))
        for label, fn in cases:
            check_agreement(label, fn, impls)
            times: dict[str, list[float]] = {name: [] for name, _ in impls}
            for _ in range(args.rounds):
                for name, module in impls:
                    kernels._impl = module
                    times[name].append(per_call_s(fn, args.budget))
            med = {name: statistics.median(t) for name, t in times.items()}
            row = f"{label:<28}" + "".join(f"{med[name] * 1e6:>12.1f}us" for name, _ in impls)
            if compiled:
                row += f"   {med['fallback'] / med['compiled']:>8.2f}x"
            print(row, flush=True)
    finally:
        kernels._impl = default_impl


if __name__ == "__main__":
    main()
