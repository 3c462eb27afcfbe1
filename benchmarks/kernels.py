"""Compiled (Cython) vs NumPy fallback kernels, side by side in one run.

    python benchmarks/kernels.py [--rounds 7]

Each case is timed in interleaved rounds (compiled, fallback, compiled, ...) so both see the
same machine noise; the table shows medians and the ratio fallback/compiled (> 1: compiled is
faster). Inputs go through the public API, validation included, as the agent calls them.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time
from collections.abc import Callable
from types import ModuleType

import numpy as np

import edgeagent.kernels as kernels
from edgeagent.kernels import _fallback


def per_call_s(fn: Callable[[], object], budget_s: float = 0.05) -> float:
    n = 1
    while True:
        start = time.perf_counter()
        for _ in range(n):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= budget_s:
            return elapsed / n
        n *= 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    try:
        compiled: ModuleType | None = importlib.import_module("edgeagent.kernels._compiled")
    except ImportError:
        compiled = None
        print("compiled kernels not built: timing the fallback only")
    rng = np.random.default_rng(0)
    cases: list[tuple[str, Callable[[], object]]] = []
    for n in (64, 27_648, 1_000_000):
        x = rng.normal(0, 50, n).astype(np.float32)
        q = kernels.quantize(x, 0.4, 3)
        cases.append((f"quantize {n}", lambda x=x: kernels.quantize(x, 0.4, 3)))
        cases.append((f"dequantize {n}", lambda q=q: kernels.dequantize(q, 0.4, 3)))
    for shape in ((10,), (540, 10), (2000, 1000)):
        logits = rng.normal(0, 3, shape).astype(np.float32)
        cases.append((f"softmax_topk {'x'.join(map(str, shape))} k=3",
                      lambda lg=logits: kernels.softmax_topk(lg, 3)))
    impls = [("compiled", compiled), ("fallback", _fallback)] if compiled else [
        ("fallback", _fallback)]
    print(f"{'kernel':<28}" + "".join(f"{name:>14}" for name, _ in impls)
          + ("   fallback/compiled" if compiled else ""))
    for label, fn in cases:
        times: dict[str, list[float]] = {name: [] for name, _ in impls}
        for _ in range(args.rounds):
            for name, module in impls:
                kernels._impl = module
                times[name].append(per_call_s(fn))
        med = {name: statistics.median(t) for name, t in times.items()}
        row = f"{label:<28}" + "".join(f"{med[name] * 1e6:>12.1f}us" for name, _ in impls)
        if compiled:
            row += f"   {med['fallback'] / med['compiled']:>8.2f}x"
        print(row)


if __name__ == "__main__":
    main()
