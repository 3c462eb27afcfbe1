"""``edgeagent bench``: every model on every runtime, side by side in one run.

Per model: batch-1 latency (median and p90 of single calls), throughput at larger batches,
accuracy on the bundled held-back digits, CPU-seconds per inference in duty-cycled use (one
inference, then the agent idles a little: where thread spinning would show up as waste), and
joules per inference (measured from the board's power sensor when it has one, otherwise
estimated from its profile, and labelled which). Ratios are against the model's fp32 baseline,
and the kernels are compared compiled vs NumPy. Rounds interleave the models, so machine noise
hits them alike; every figure is the median over rounds.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from edgeagent import kernels
from edgeagent.boards import BoardProfile
from edgeagent.infer.bundled import BUNDLED_MODELS, PIXEL_MAX, load_bundled_samples, model_path
from edgeagent.infer.energy import Joules, Meter, estimated, measure
from edgeagent.infer.model import Model, load_model
from edgeagent.kernels.bench import KernelComparison, compare_kernels, format_table

#: The bundled models and the fp32 model each is compared with.
BASELINES = {"digits-int8": "digits-fp32", "digits-int8-tflite": "digits-fp32",
             "digits-large-int8": "digits-large-fp32",
             "digits-large-int8-tflite": "digits-large-fp32"}
DUTY_IDLE_S = 0.002  # the pause between duty-cycled inferences: an agent waiting for work


@dataclass(frozen=True)
class BenchOptions:
    models: Sequence[str] = tuple(BUNDLED_MODELS)  # bundled names or paths
    rounds: int = 5
    budget_s: float = 0.1  # seconds of calls per measurement and round
    batches: Sequence[int] = (64, 540)
    duty_calls: int = 300
    data: Path | None = None  # .npz with x (inputs) and y (labels) for models of other shapes
    kernels: bool = True
    energy_idle_s: float = 10.0  # idle baseline (and the least busy window) with a sensor


@dataclass(frozen=True)
class Comparison:
    """This model against its baseline: > 1 means better (faster, smaller)."""

    baseline: str
    latency_x: float
    throughput_x: dict[int, float]
    size_x: float
    accuracy_drop_pt: float | None


@dataclass(frozen=True)
class ModelResult:
    name: str
    runtime: str
    precision: str
    size_bytes: int
    accuracy: float | None
    latency_us_median: float
    latency_us_p90: float
    throughput_per_s: dict[int, float]
    duty_cpu_s_per_inference: float
    duty_latency_us: float
    joules: Joules
    vs: Comparison | None = None

    @property
    def duty_cpu_per_latency(self) -> float:
        """CPU-seconds per inference over its wall latency: ~1 is no waste; > 1 is spinning."""
        return self.duty_cpu_s_per_inference / (self.duty_latency_us * 1e-6)


@dataclass(frozen=True)
class BenchReport:
    machine: dict[str, Any]
    board: str
    models: list[ModelResult]
    kernels: list[KernelComparison] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for model, result in zip(out["models"], self.models, strict=True):
            model["duty_cpu_per_latency"] = result.duty_cpu_per_latency
        return out


@dataclass
class _Subject:
    name: str
    model: Model
    x: npt.NDArray[np.float32]
    y: npt.NDArray[np.int64] | None
    latency: list[tuple[float, float]] = field(default_factory=list)  # (median, p90) per round
    throughput: dict[int, list[float]] = field(default_factory=dict)


def _inputs(model: Model, data: Path | None
            ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64] | None]:
    """The data a model is benchmarked on: its own .npz, the bundled digits, or random."""
    if data is not None:
        with np.load(data, allow_pickle=False) as npz:
            x = np.asarray(npz["x"], np.float32)
            y = np.asarray(npz["y"], np.int64) if "y" in npz else None
        return x, y
    if model.input.shape[1:] == (64,):
        raw, labels = load_bundled_samples()
        return raw.astype(np.float32) / np.float32(PIXEL_MAX), labels
    dims = [d if isinstance(d, int) else 1 for d in model.input.shape[1:]]
    return np.random.default_rng(0).random([540, *dims], dtype=np.float32), None


def _timed_calls(fn: Callable[[], object], budget_s: float) -> list[float]:
    """Seconds of each call to ``fn``, for ``budget_s`` (at least 5 calls)."""
    times: list[float] = []
    end = time.perf_counter() + budget_s
    while len(times) < 5 or time.perf_counter() < end:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _round(subject: _Subject, options: BenchOptions) -> None:
    x, model = subject.x, subject.model
    one = x[:1]
    calls = _timed_calls(lambda: model.run(one), options.budget_s)
    subject.latency.append((statistics.median(calls), float(np.percentile(calls, 90))))
    for batch in options.batches:
        rows = np.resize(x, (batch, *x.shape[1:]))  # repeats the data when it is shorter
        per_call = statistics.median(_timed_calls(partial(model.run, rows), options.budget_s))
        subject.throughput.setdefault(batch, []).append(batch / per_call)


def _duty_cycle(model: Model, x: npt.NDArray[np.float32], calls: int) -> tuple[float, float]:
    """CPU-seconds per inference (the whole process, every thread) and wall seconds per
    inference, over ``calls`` single inferences each followed by a short idle pause.

    The CPU the loop itself costs (the pause's system calls, the timing) is measured on the same
    loop without inferences and subtracted, as the idle board is in energy: what remains is the
    inference and any thread left spinning after it, which is the waste this looks for.
    """
    def loop(run: Callable[[npt.NDArray[np.float32]], object]) -> tuple[float, float]:
        busy = 0.0
        cpu0 = time.process_time()
        for i in range(calls):
            start = time.perf_counter()
            run(x[i % len(x):i % len(x) + 1])
            busy += time.perf_counter() - start
            time.sleep(DUTY_IDLE_S)
        return time.process_time() - cpu0, busy

    idle_cpu, _ = loop(lambda _: None)
    cpu, busy = loop(model.run)
    return max(cpu - idle_cpu, 0.0) / calls, busy / calls


def _accuracy(model: Model, x: npt.NDArray[np.float32],
              y: npt.NDArray[np.int64] | None) -> float | None:
    if y is None:
        return None
    return float(np.mean(model.run(x).argmax(axis=1) == y))


def _joules(model: Model, x: npt.NDArray[np.float32], cpu_s: float, board: BoardProfile,
            meter: tuple[Meter, str] | None, idle_s: float) -> Joules:
    if meter is None:
        return estimated(cpu_s, board)

    def work() -> int:
        n, end = 0, time.monotonic() + idle_s
        while time.monotonic() < end:
            model.run(x[n % len(x):n % len(x) + 1])
            n += 1
        return n

    return measure(meter[0], meter[1], work, idle_s) or estimated(cpu_s, board)


def run_bench(options: BenchOptions, board: BoardProfile, meter: tuple[Meter, str] | None,
              progress: Callable[[str], None] = lambda _: None) -> BenchReport:
    subjects = []
    for name in options.models:
        model = load_model(model_path(name))
        x, y = _inputs(model, options.data)
        subjects.append(_Subject(name, model, x, y))
    for r in range(options.rounds):
        progress(f"round {r + 1}/{options.rounds}")
        for subject in subjects:
            _round(subject, options)
    results: dict[str, ModelResult] = {}
    for s in subjects:
        progress(f"duty cycle and energy: {s.name}")
        cpu_s, wall_s = _duty_cycle(s.model, s.x, options.duty_calls)
        results[s.name] = ModelResult(
            name=s.name, runtime=s.model.runtime, precision=s.model.precision,
            size_bytes=s.model.path.stat().st_size, accuracy=_accuracy(s.model, s.x, s.y),
            latency_us_median=statistics.median(m for m, _ in s.latency) * 1e6,
            latency_us_p90=statistics.median(p for _, p in s.latency) * 1e6,
            throughput_per_s={b: statistics.median(t) for b, t in s.throughput.items()},
            duty_cpu_s_per_inference=cpu_s, duty_latency_us=wall_s * 1e6,
            joules=_joules(s.model, s.x, cpu_s, board, meter, options.energy_idle_s))
    given = list(options.models)
    for name, result in results.items():
        base = BASELINES.get(name) if given == list(BUNDLED_MODELS) else given[0]
        if base is not None and base != name and base in results:
            results[name] = _compare(result, results[base])
    kernel_rows = []
    if options.kernels:
        progress("kernels: compiled vs NumPy")
        kernel_rows = compare_kernels(rounds=options.rounds)
    machine = {"python": platform.python_version(), "machine": platform.machine(),
               "numpy": np.__version__, "onnxruntime": ort.__version__,
               "kernels_compiled": kernels.COMPILED}
    return BenchReport(machine, board.name, list(results.values()), kernel_rows)


def _compare(result: ModelResult, base: ModelResult) -> ModelResult:
    drop = (None if result.accuracy is None or base.accuracy is None
            else (base.accuracy - result.accuracy) * 100)
    vs = Comparison(base.name, base.latency_us_median / result.latency_us_median,
                    {b: result.throughput_per_s[b] / base.throughput_per_s[b]
                     for b in result.throughput_per_s},
                    base.size_bytes / result.size_bytes, drop)
    return replace(result, vs=vs)


def print_report(report: BenchReport, out: TextIO) -> None:
    m = report.machine
    print(f"python {m['python']} {m['machine']}, numpy {m['numpy']}, onnxruntime "
          f"{m['onnxruntime']}, kernels {'compiled' if m['kernels_compiled'] else 'NumPy'}; "
          f"board profile {report.board}; medians over rounds", file=out)
    print("b1: batch-1 latency; bN/s: inferences per second at batch N; duty: batch-1 "
          "latency when each inference follows an idle pause, and cpu/lat its CPU-seconds "
          "(every thread) over that latency", file=out)
    batches = sorted({b for r in report.models for b in r.throughput_per_s})
    head = (f"{'model':<26}{'runtime':<12}{'size':>9}{'acc':>8}{'b1 med':>9}{'p90':>8}"
            + "".join(f"{f'b{b}/s':>10}" for b in batches)
            + f"{'duty':>9}{'cpu/lat':>8}{'J/inf':>10}")
    print(head, file=out)
    for r in report.models:
        acc = "-" if r.accuracy is None else f"{r.accuracy:.2%}"
        print(f"{r.name:<26}{r.runtime:<12}{r.size_bytes / 1024:>7.0f}kB{acc:>8}"
              f"{r.latency_us_median:>7.1f}us{r.latency_us_p90:>6.1f}us"
              + "".join(f"{r.throughput_per_s[b]:>10.0f}" for b in batches)
              + f"{r.duty_latency_us:>7.1f}us{r.duty_cpu_per_latency:>8.2f}"
              f"{r.joules.per_inference_j * 1e6:>8.1f}uJ",
              file=out)
    compared = [r for r in report.models if r.vs is not None]
    if compared:
        print("\nvs baseline (x = times better)", file=out)
        for r in compared:
            assert r.vs is not None
            tput = "  ".join(f"b{b} {x:.2f}x" for b, x in r.vs.throughput_x.items())
            drop = ("" if r.vs.accuracy_drop_pt is None
                    else f"  accuracy drop {r.vs.accuracy_drop_pt:+.2f} pt")
            print(f"  {r.name:<26} vs {r.vs.baseline:<18} latency {r.vs.latency_x:.2f}x  "
                  f"{tput}  size {r.vs.size_x:.2f}x{drop}", file=out)
    bases = sorted({(r.joules.basis, r.joules.detail) for r in report.models})
    for basis, detail in bases:
        print(f"J/inf {basis}: {detail}", file=out)
    if report.kernels:
        print("\nkernels (public API, compiled vs NumPy fallback)", file=out)
        print(format_table(report.kernels), file=out)


def write_json(report: BenchReport, out: TextIO) -> None:
    json.dump(report.to_json(), out, indent=1)
    out.write("\n")
