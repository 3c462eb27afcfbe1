"""Compiled (Cython) vs NumPy fallback kernels, side by side in one run.

    python benchmarks/kernels.py [--rounds 7] [--budget 0.05]

A thin front end to ``edgeagent.kernels.bench.compare_kernels`` (also behind ``edgeagent
bench``): each case goes through the public API, checked bit for bit between the two
implementations, then timed in interleaved rounds of --budget seconds each; the table shows the
median time per call and fallback/compiled (> 1: the compiled kernel is faster). Without the
compiled module only the fallback is timed. Exits 1 if any case is not bit-exact. Takes about
7 s.
"""

from __future__ import annotations

import argparse
import platform
import sys

import numpy as np

import edgeagent.kernels as kernels
from edgeagent.kernels.bench import compare_kernels, format_table


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds per case")
    parser.add_argument("--budget", type=float, default=0.05,
                        help="seconds of calls timed per round and implementation")
    args = parser.parse_args()
    print(f"python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}; "
          f"compiled kernels in use: {kernels.COMPILED}; median of {args.rounds} rounds")
    results = compare_kernels(rounds=args.rounds, budget_s=args.budget)
    print(format_table(results))
    if any(r.bit_exact is False for r in results):
        sys.exit("compiled and fallback results differ")


if __name__ == "__main__":
    main()
