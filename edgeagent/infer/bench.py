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
    duty_calls: int = 100  # per round
    threads: int = 1  # intra-op threads per model, as workload.threads_per_worker
    data: Path | None = None  # .npz with x (inputs) and y (labels) for models of other shapes
    kernels: bool = True
    energy_idle_s: float = 10.0  # idle baseline (and the least busy window) with a sensor


@dataclass(frozen=True)
class Comparison:
    """This model against its baseline: > 1 means better (faster, smaller). Speed ratios are
    medians of the per-round ratios, so both sides of each ratio saw the same machine."""

    baseline: str
    latency_x: float
    throughput_x: dict[int, float]
    size_x: float
    accuracy_drop_pt: float | None


@dataclass(frozen=True)
class ModelResult:
    """One model's figures, each the median over rounds.

    ``joules`` is per batch-1 inference in duty-cycled use (measured or estimated);
    ``batch_j_per_inference`` estimates it at each batch size from the throughput (a busy
    core per thread for 1/throughput seconds), the cost in a batched workload such as the
    agent's.
    """

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
    batch_j_per_inference: dict[int, float]
    vs: Comparison | None = None

    @property
    def duty_cpu_per_latency(self) -> float:
        """CPU-seconds per inference over its wall latency: ~1 is no waste; > 1 is spinning."""
        return self.duty_cpu_s_per_inference / (self.duty_latency_us * 1e-6)


@dataclass(frozen=True)
class BenchReport:
    machine: dict[str, Any]
    board: str
    threads: int
    models: list[ModelResult]
    kernels: list[KernelComparison] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for model, result in zip(out["models"], self.models, strict=True):
            model["duty_cpu_per_latency"] = result.duty_cpu_per_latency
        return out


@dataclass
class _Subject:
    """A model under test and its per-round measurements."""

    name: str
    model: Model
    x: npt.NDArray[np.float32]
    y: npt.NDArray[np.int64] | None
    latency: list[tuple[float, float]] = field(default_factory=list)  # (median, p90) per round
    throughput: dict[int, list[float]] = field(default_factory=dict)
    duty: list[tuple[float, float]] = field(default_factory=list)  # (cpu_s, wall_s) per round


def _display_name(model: str) -> str:
    return model if model in BUNDLED_MODELS else Path(model).name


def _inputs(model: Model, data: Path | None
            ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64] | None]:
    """The data a model is benchmarked on: its own .npz, the bundled digits, or random."""
    if data is not None:
        return _load_data(data, model)
    if model.input.shape[1:] == (64,):
        raw, labels = load_bundled_samples()
        return raw.astype(np.float32) / np.float32(PIXEL_MAX), labels
    dims = [d if isinstance(d, int) else 1 for d in model.input.shape[1:]]
    return np.random.default_rng(0).random([540, *dims], dtype=np.float32), None


def _load_data(data: Path, model: Model
               ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64] | None]:
    with np.load(data, allow_pickle=False) as npz:
        if "x" not in npz:
            raise ValueError(f"--data {data}: no array 'x' (the inputs); it has "
                             f"{', '.join(npz.files) or 'nothing'}")
        x = np.asarray(npz["x"], np.float32)
        y = np.asarray(npz["y"], np.int64) if "y" in npz else None
    if len(x) == 0:
        raise ValueError(f"--data {data}: 'x' holds no samples")
    if y is not None and y.shape != (len(x),):
        raise ValueError(f"--data {data}: 'y' has shape {list(y.shape)}, expected one label "
                         f"per sample of 'x' ({len(x)})")
    model.input.check(x, model.path.name, any_batch=True)
    return x, y


def _timed_calls(fn: Callable[[], object], budget_s: float) -> list[float]:
    """Seconds of each call to ``fn``, for ``budget_s`` (at least 5 calls)."""
    times: list[float] = []
    end = time.perf_counter() + budget_s
    while len(times) < 5 or time.perf_counter() < end:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _duty_loop(run: Callable[[npt.NDArray[np.float32]], object], x: npt.NDArray[np.float32],
               calls: int) -> tuple[float, float]:
    """Process CPU-seconds (every thread) and wall seconds inside ``run`` over ``calls``
    single-sample calls, each followed by an idle pause, as an agent waiting for work."""
    busy = 0.0
    cpu0 = time.process_time()
    for i in range(calls):
        start = time.perf_counter()
        run(x[i % len(x):i % len(x) + 1])
        busy += time.perf_counter() - start
        time.sleep(DUTY_IDLE_S)
    return time.process_time() - cpu0, busy


def _round(subjects: Sequence[_Subject], options: BenchOptions) -> None:
    """One round over every model. The duty loop's own CPU (the pauses' system calls, the
    timing) is measured on the same loop without inferences and subtracted, as the idle board
    is in energy: what remains is the inference and any thread left spinning after it."""
    loop_cpu, _ = _duty_loop(lambda _: None, subjects[0].x, options.duty_calls)
    for s in subjects:
        model, x = s.model, s.x
        calls = _timed_calls(partial(model.run, x[:1]), options.budget_s)
        s.latency.append((statistics.median(calls), float(np.percentile(calls, 90))))
        for batch in options.batches:
            rows = np.resize(x, (batch, *x.shape[1:]))  # repeats the data when it is shorter
            per_call = statistics.median(_timed_calls(partial(model.run, rows), options.budget_s))
            s.throughput.setdefault(batch, []).append(batch / per_call)
        cpu, wall = _duty_loop(model.run, x, options.duty_calls)
        s.duty.append((max(cpu - loop_cpu, 0.0) / options.duty_calls,
                       wall / options.duty_calls))


def _accuracy(model: Model, x: npt.NDArray[np.float32],
              y: npt.NDArray[np.int64] | None) -> float | None:
    if y is None:
        return None
    return float(np.mean(model.run(x).argmax(axis=1) == y))


def _joules(s: _Subject, cpu_s: float, board: BoardProfile, meter: tuple[Meter, str] | None,
            idle_s: float) -> Joules:
    if meter is None:
        return estimated(cpu_s, board)

    def work() -> int:
        n, end = 0, time.monotonic() + idle_s
        while time.monotonic() < end:
            s.model.run(s.x[n % len(s.x):n % len(s.x) + 1])
            n += 1
        return n

    return measure(meter[0], meter[1], work, idle_s) or estimated(cpu_s, board)


def _result(s: _Subject, board: BoardProfile, meter: tuple[Meter, str] | None,
            options: BenchOptions) -> ModelResult:
    cpu_s = statistics.median(c for c, _ in s.duty)
    throughput = {b: statistics.median(t) for b, t in s.throughput.items()}
    return ModelResult(
        name=s.name, runtime=s.model.runtime, precision=s.model.precision,
        size_bytes=s.model.path.stat().st_size, accuracy=_accuracy(s.model, s.x, s.y),
        latency_us_median=statistics.median(m for m, _ in s.latency) * 1e6,
        latency_us_p90=statistics.median(p for _, p in s.latency) * 1e6,
        throughput_per_s=throughput,
        duty_cpu_s_per_inference=cpu_s,
        duty_latency_us=statistics.median(w for _, w in s.duty) * 1e6,
        joules=_joules(s, cpu_s, board, meter, options.energy_idle_s),
        batch_j_per_inference={b: board.watts_per_core * options.threads / t
                               for b, t in throughput.items()})


def _compare(s: _Subject, base: _Subject, result: ModelResult, base_result: ModelResult
             ) -> Comparison:
    latency_x = statistics.median(b[0] / m[0] for m, b in zip(s.latency, base.latency,
                                                               strict=True))
    throughput_x = {batch: statistics.median(m / b for m, b in zip(
        s.throughput[batch], base.throughput[batch], strict=True)) for batch in s.throughput}
    drop = (None if result.accuracy is None or base_result.accuracy is None
            else (base_result.accuracy - result.accuracy) * 100)
    return Comparison(base.name, latency_x, throughput_x,
                      base_result.size_bytes / result.size_bytes, drop)


def _baseline(name: str, given: Sequence[str], names: Sequence[str]) -> str | None:
    """A bundled int8 model's fp32 sibling when it is benchmarked too; otherwise, for a list
    the user gave, its first model."""
    base = BASELINES.get(name)
    if base in names:
        return base
    if list(given) != list(BUNDLED_MODELS) and names[0] != name:
        return names[0]
    return None


def run_bench(options: BenchOptions, board: BoardProfile, meter: tuple[Meter, str] | None,
              progress: Callable[[str], None] = lambda _: None) -> BenchReport:
    subjects = []
    for ref in options.models:
        model = load_model(model_path(ref), threads=options.threads)
        x, y = _inputs(model, options.data)
        subjects.append(_Subject(_display_name(ref), model, x, y))
    for r in range(options.rounds):
        progress(f"round {r + 1}/{options.rounds}")
        _round(subjects, options)
    progress("accuracy" + (" and energy" if meter else ""))
    results = {s.name: _result(s, board, meter, options) for s in subjects}
    by_name = {s.name: s for s in subjects}
    names = [s.name for s in subjects]
    for s in subjects:
        base = _baseline(s.name, options.models, names)
        if base is not None:
            results[s.name] = replace(results[s.name], vs=_compare(
                s, by_name[base], results[s.name], results[base]))
    kernel_rows = []
    if options.kernels:
        progress("kernels: compiled vs NumPy")
        kernel_rows = compare_kernels(rounds=options.rounds)
    machine = {"python": platform.python_version(), "machine": platform.machine(),
               "numpy": np.__version__, "onnxruntime": ort.__version__,
               "kernels_compiled": kernels.COMPILED}
    return BenchReport(machine, board.name, options.threads, list(results.values()),
                       kernel_rows)


def print_report(report: BenchReport, out: TextIO) -> None:
    m = report.machine
    print(f"python {m['python']} {m['machine']}, numpy {m['numpy']}, onnxruntime "
          f"{m['onnxruntime']}, kernels {'compiled' if m['kernels_compiled'] else 'NumPy'}; "
          f"{report.threads} thread(s) per model; board profile {report.board}; medians over "
          "rounds", file=out)
    batches = sorted({b for r in report.models for b in r.throughput_per_s})
    big = batches[-1] if batches else None
    print("b1: batch-1 latency; bN/s: inferences per second at batch N; duty: batch-1 latency "
          "when each inference follows an idle pause, cpu/lat its CPU-seconds (every thread) "
          "over that latency, J b1 its energy"
          + (f"; J b{big}: estimated energy per inference at batch {big}" if big else ""),
          file=out)
    head = (f"{'model':<26}{'runtime':<12}{'size':>9}{'acc':>8}{'b1 med':>9}{'p90':>8}"
            + "".join(f"{f'b{b}/s':>10}" for b in batches)
            + f"{'duty':>9}{'cpu/lat':>8}{'J b1':>10}" + (f"{f'J b{big}':>9}" if big else ""))
    print(head, file=out)
    for r in report.models:
        acc = "-" if r.accuracy is None else f"{r.accuracy:.2%}"
        print(f"{r.name[:25]:<26}{r.runtime:<12}{r.size_bytes / 1024:>7.0f}kB{acc:>8}"
              f"{r.latency_us_median:>7.1f}us{r.latency_us_p90:>6.1f}us"
              + "".join(f"{r.throughput_per_s[b]:>10.0f}" for b in batches)
              + f"{r.duty_latency_us:>7.1f}us{r.duty_cpu_per_latency:>8.2f}"
              f"{r.joules.per_inference_j * 1e6:>8.1f}uJ"
              + (f"{r.batch_j_per_inference[big] * 1e6:>7.2f}uJ" if big else ""), file=out)
    compared = [(r, r.vs) for r in report.models if r.vs is not None]
    if compared:
        print("\nvs baseline (x = times better; medians of the per-round ratios)", file=out)
        for r, vs in compared:
            tput = "  ".join(f"b{b} {x:.2f}x" for b, x in vs.throughput_x.items())
            drop = ("" if vs.accuracy_drop_pt is None
                    else f"  accuracy drop {vs.accuracy_drop_pt:+.2f} pt")
            print(f"  {r.name[:25]:<26} vs {vs.baseline[:25]:<18} latency {vs.latency_x:.2f}x  "
                  f"{tput}  size {vs.size_x:.2f}x{drop}", file=out)
    for basis, detail in sorted({(r.joules.basis, r.joules.detail) for r in report.models}):
        print(f"J b1 {basis}: {detail}", file=out)
    if big:
        print(f"J b{big} estimated: {report.board} watts per busy core x threads / inferences "
              "per second", file=out)
    if report.kernels:
        print("\nkernels (public API, compiled vs NumPy fallback)", file=out)
        print(format_table(report.kernels), file=out)


def write_json(report: BenchReport, out: TextIO) -> None:
    json.dump(report.to_json(), out, indent=1)
    out.write("\n")
