"""Measure the bundled digits models' speed: fp32 vs int8 ONNX, and int8 TFLite (LiteRT).

Timings are not reproducible, so they are kept out of make_digits_model.py; this script writes
them into the model card's speed section (--update-card), together with the sha256 of every
file it measured, so regenerating unchanged files keeps the numbers and changed files drop them.

Method: onnxruntime with the agent's own session options (edgeagent.infer.ort.session_options:
1 intra-op thread, spinning off, ORT_ENABLE_ALL); LiteRT with num_threads=1 and its default
XNNPACK delegate. Inputs are the held-back test digits; each batch size cycles through them.
Every round times each variant in turn (order reversed every other round, so drift hits all
alike) for about ``--window`` seconds per batch size; the card reports the median over rounds
of the per-call time and of the per-round fp32/variant ratio. For digits_large it also
quantizes the fp32 model with each candidate ONNX configuration (S8S8 / U8S8 x per-channel /
per-tensor) and measures them the same way: the evidence for the configuration
make_digits_model.py ships.

    python scripts/bench_bundled_models.py                 # print
    python scripts/bench_bundled_models.py --update-card   # and write the card's speed section
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import os
import platform
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from ai_edge_litert.interpreter import Interpreter
from make_digits_model import (
    BENCH_BEGIN,
    BENCH_END,
    BENCHMARK,
    DEFAULT_OUT,
    LARGE,
    SMALL,
    TEST_FILE,
    TFLITE_INPUT,
    load_split,
    quantize_int8,
    scale,
    sha256,
)
from onnxruntime.quantization import QuantType

from edgeagent.infer.ort import session_options

BATCHES = (1, 64, 540)
# The agent's budget asks int8 for these over fp32 (issue 4, "Bundled models").
TARGETS = {"throughput at batch 64": 3.0, "batch-1 latency": 2.0}

Call = Callable[[], object]
FloatArray = npt.NDArray[np.float32]


@dataclass
class Variant:
    """One model file in one runtime: a prepared call per batch size and the rounds' timings."""

    label: str
    path: Path
    calls: dict[int, Call]
    seconds: dict[int, list[float]] = field(default_factory=dict)  # per-call time, per round

    def median(self, batch: int) -> float:
        return statistics.median(self.seconds[batch])


def onnx_variant(label: str, path: Path, raw: npt.NDArray[np.uint8]) -> Variant:
    sess = ort.InferenceSession(str(path), sess_options=session_options(threads=1),
                                providers=["CPUExecutionProvider"])
    x = scale(raw)
    calls: dict[int, Call] = {}
    for batch in BATCHES:
        inputs = itertools.cycle([np.ascontiguousarray(x[i:i + batch])
                                  for i in range(0, len(x) - batch + 1, batch)])

        def call(inputs: Iterator[FloatArray] = inputs) -> object:
            return sess.run(["logits"], {"pixels": next(inputs)})

        calls[batch] = call
    return Variant(label, path, calls)


def tflite_variant(label: str, path: Path, raw: npt.NDArray[np.uint8]) -> Variant:
    """Includes set_tensor and get_tensor in each call: what the agent pays per request."""
    q = TFLITE_INPUT.quantize(scale(raw))
    calls: dict[int, Call] = {}
    for batch in BATCHES:
        interp = Interpreter(model_path=str(path), num_threads=1)
        inp, out = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]
        interp.resize_tensor_input(inp, [batch, q.shape[1]])
        interp.allocate_tensors()
        inputs = itertools.cycle([np.ascontiguousarray(q[i:i + batch])
                                  for i in range(0, len(q) - batch + 1, batch)])

        def call(interp: Interpreter = interp, inp: int = inp, out: int = out,
                 inputs: Iterator[npt.NDArray[np.int8]] = inputs) -> object:
            interp.set_tensor(inp, next(inputs))
            interp.invoke()
            return interp.get_tensor(out)

        calls[batch] = call
    return Variant(label, path, calls)


def reps_for(call: Call, window: float) -> int:
    """How many calls fill about ``window`` seconds (after a warm-up)."""
    for _ in range(3):
        call()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < window / 10:
        call()
        n += 1
    return max(3, int(n * 10))


def measure(variants: list[Variant], rounds: int, window: float) -> None:
    reps = {(v.label, b): reps_for(v.calls[b], window) for v in variants for b in BATCHES}
    for r in range(rounds):
        order = variants if r % 2 == 0 else variants[::-1]
        for batch in BATCHES:
            for v in order:
                call, n = v.calls[batch], reps[(v.label, batch)]
                start = time.perf_counter()
                for _ in range(n):
                    call()
                v.seconds.setdefault(batch, []).append((time.perf_counter() - start) / n)


def ratio(base: Variant, other: Variant, batch: int) -> float:
    """Median over rounds of base/other per-call time: > 1 means ``other`` is faster."""
    return statistics.median(b / o for b, o in
                             zip(base.seconds[batch], other.seconds[batch], strict=True))


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f} µs" if seconds < 1e-3 else f"{seconds * 1e3:,.2f} ms"


def speed_table(variants: list[Variant], base: Variant) -> list[str]:
    lines = ["| variant | batch 1 | batch 64 | batch 540 | samples/s at 64 | samples/s at 540 "
             "| vs fp32: batch 1 / 64 / 540 |",
             "|---|---|---|---|---|---|---|"]
    for v in variants:
        times = " | ".join(_us(v.median(b)) for b in BATCHES)
        rates = " | ".join(f"{b / v.median(b):,.0f}" for b in BATCHES[1:])
        ratios = ("-" if v is base else
                  " / ".join(f"{ratio(base, v, b):.2f}x" for b in BATCHES))
        lines.append(f"| {v.label} | {times} | {rates} | {ratios} |")
    return lines


@dataclass(frozen=True)
class Candidate:
    label: str
    activations: QuantType
    per_channel: bool


CANDIDATES = (Candidate("S8S8 per-channel", QuantType.QInt8, True),
              Candidate("S8S8 per-tensor", QuantType.QInt8, False),
              Candidate("U8S8 per-channel", QuantType.QUInt8, True),
              Candidate("U8S8 per-tensor", QuantType.QUInt8, False))


def bench_large(models: Path, raw: npt.NDArray[np.uint8], y: npt.NDArray[np.int64],
                rounds: int, window: float, tmp: Path) -> tuple[list[str], list[Path]]:
    fp32_file, int8_file, tflite_file = (models / name for name in LARGE.files)
    split = load_split()
    candidates: list[tuple[Candidate, Path]] = []
    for c in CANDIDATES:
        path = tmp / f"{c.label.replace(' ', '_')}.onnx"
        path.write_bytes(quantize_int8(fp32_file, split.x_train, activations=c.activations,
                                       per_channel=c.per_channel)
                         .SerializeToString(deterministic=True))
        candidates.append((c, path))
    bundled = [c for c, p in candidates if sha256(p) == sha256(int8_file)]
    fp32 = onnx_variant(f"`{fp32_file.name}` (ORT fp32)", fp32_file, raw)
    int8 = onnx_variant(f"`{int8_file.name}` (ORT int8)", int8_file, raw)
    tfl = tflite_variant(f"`{tflite_file.name}` (LiteRT int8)", tflite_file, raw)
    others = [onnx_variant(f"ORT int8 QDQ {c.label}", p, raw)
              for c, p in candidates if c not in bundled]
    variants = [fp32, int8, tfl, *others]
    measure(variants, rounds, window)

    accuracy = {v.label: accuracy_of(v, raw, y) for v in variants}
    lines = [f"Median of {rounds} interleaved rounds (per-call time; ratio = median of the "
             "per-round fp32/variant ratios):", "", *speed_table(variants, fp32), ""]
    b64, b1 = ratio(fp32, int8, 64), ratio(fp32, int8, 1)
    size = fp32_file.stat().st_size / int8_file.stat().st_size
    drop = 100 * (accuracy[fp32.label] - accuracy[int8.label]) / len(y)
    lines += ["Targets for the bundled int8 ONNX vs fp32 ONNX:", "",
              f"- throughput at batch 64: **{b64:.2f}x** (target >= 3x: "
              f"{'met' if b64 >= TARGETS['throughput at batch 64'] else 'NOT met'}); at batch "
              f"540: {ratio(fp32, int8, 540):.2f}x",
              f"- batch-1 latency: **{b1:.2f}x** lower (target >= 2x: "
              f"{'met' if b1 >= TARGETS['batch-1 latency'] else 'NOT met'})",
              f"- accuracy: {accuracy[fp32.label]}/{len(y)} -> {accuracy[int8.label]}/{len(y)}, "
              f"drop **{drop:.2f} points** (target <= 0.5: {'met' if drop <= 0.5 else 'NOT met'})",
              f"- file: **{size:.2f}x** smaller (target >= 3.5x: "
              f"{'met' if size >= 3.5 else 'NOT met'})", ""]
    lines += ["Choosing the int8 configuration (all static QDQ, int8 weights, MinMax over the "
              "training set; same runs as above):", "",
              "| configuration | size | correct | batch 1 | batch 64 | batch 540 |",
              "|---|---|---|---|---|---|"]
    by_label = {v.label: v for v in variants}
    for c, p in candidates:
        v = int8 if c in bundled else by_label[f"ORT int8 QDQ {c.label}"]
        name = f"{c.label} (bundled)" if c in bundled else c.label
        lines.append(f"| {name} | {p.stat().st_size:,} B | {accuracy[v.label]}/{len(y)} | "
                     + " | ".join(f"{_us(v.median(b))} ({ratio(fp32, v, b):.2f}x)"
                                  for b in BATCHES) + " |")
    return lines, [fp32_file, int8_file, tflite_file]


def bench_small(models: Path, raw: npt.NDArray[np.uint8], rounds: int,
                window: float) -> tuple[list[str], list[Path]]:
    files = [models / name for name in SMALL.files]
    fp32 = onnx_variant(f"`{files[0].name}` (ORT fp32)", files[0], raw)
    variants = [fp32, onnx_variant(f"`{files[1].name}` (ORT int8)", files[1], raw),
                tflite_variant(f"`{files[2].name}` (LiteRT int8)", files[2], raw)]
    measure(variants, rounds, window)
    return ["For comparison, the small model (same method): int8 ONNX buys size, not speed; "
            "LiteRT's lower per-call overhead wins at this size.", "",
            *speed_table(variants, fp32)], files


def accuracy_of(v: Variant, raw: npt.NDArray[np.uint8], y: npt.NDArray[np.int64]) -> int:
    if v.path.suffix == ".tflite":
        interp = Interpreter(model_path=str(v.path), num_threads=1)
        inp, out = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]
        interp.resize_tensor_input(inp, list(raw.shape))
        interp.allocate_tensors()
        interp.set_tensor(inp, TFLITE_INPUT.quantize(scale(raw)))
        interp.invoke()
        pred = np.asarray(interp.get_tensor(out)).argmax(axis=1)
    else:
        sess = ort.InferenceSession(str(v.path), sess_options=session_options(threads=1),
                                    providers=["CPUExecutionProvider"])
        pred = np.asarray(sess.run(["logits"], {"pixels": scale(raw)})[0]).argmax(axis=1)
    return int((pred == y).sum())


# CPU features that give int8 dot products (x86 /proc/cpuinfo "flags", ARM "Features").
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


def machine() -> tuple[str, list[str]]:
    """A one-line description of this machine and runtimes, and its int8 dot-product flags."""
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        text = ""
    found = re.search(r"^(?:model name|Model)\s*:\s*(.+)$", text, re.M)
    cpu = found[1].strip() if found else cpu
    for line in re.findall(r"^(?:flags|Features)\s*:\s*(.+)$", text, re.M):
        flags.update(line.split())
    dot = [f for f in INT8_DOT_FLAGS if f in flags]
    caches = ", ".join(f"{name} {size}" for name, size in cache_sizes())
    return (f"{cpu} ({os.cpu_count()} CPUs{'; ' + caches if caches else ''}); Python "
            f"{platform.python_version()}, onnxruntime {ort.__version__}, ai-edge-litert "
            f"{version('ai-edge-litert')}, numpy {np.__version__}"), dot


def cache_sizes() -> list[tuple[str, str]]:
    """(level, size) of cpu0's data/unified caches, from sysfs (empty where not exposed)."""
    out = []
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            kind = (index / "type").read_text(encoding="utf-8").strip()
            level = (index / "level").read_text(encoding="utf-8").strip()
            size = (index / "size").read_text(encoding="utf-8").strip()
        except OSError:
            continue
        if kind != "Instruction":
            out.append((f"L{level}", size))
    return out


def section(lines: list[str], files: list[Path], rounds: int, window: float) -> str:
    desc, dot = machine()
    if dot:
        caveat = (f"This CPU has int8 dot-product instructions ({', '.join(dot)}), so int8 gains "
                  "here are an upper bound: a Pi 4 (Cortex-A72, no dot product) gains less; "
                  "re-measure on the board.")
    else:
        caveat = ("This CPU has no int8 dot-product instructions, like a Pi 4; a Pi 5 or "
                  "Jetson Orin (SDOT/UDOT) should gain more.")
    measured = "\n".join(f"- `{p.name}` sha256 `{sha256(p)}`" for p in files)
    return "\n".join([
        BENCH_BEGIN,
        f"Measured {dt.date.today().isoformat()} with `{BENCHMARK}` (--rounds {rounds}, "
        f"--window {window}) on {desc}. onnxruntime sessions use the agent's "
        "`edgeagent.infer.ort.session_options(threads=1)` (1 thread, spinning off, "
        "ORT_ENABLE_ALL); LiteRT runs with num_threads=1 and its default XNNPACK delegate, "
        f"and its times include set_tensor/get_tensor. {caveat}",
        "", *lines, "", "Files measured:", "", measured, BENCH_END])


def update_card(card: Path, text: str) -> None:
    old = card.read_text(encoding="utf-8")
    pattern = re.escape(BENCH_BEGIN) + r".*?" + re.escape(BENCH_END)
    if re.search(pattern, old, re.S) is None:
        raise SystemExit(f"{card} has no speed section: regenerate it with make_digits_model.py")
    card.write_text(re.sub(pattern, lambda _: text, old, count=1, flags=re.S), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--models", type=Path, default=DEFAULT_OUT,
                        help=f"model directory (default: {DEFAULT_OUT})")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument("--window", type=float, default=0.15,
                        help="seconds per variant, batch size and round (default 0.15)")
    parser.add_argument("--update-card", action="store_true",
                        help="write the results into the model card's speed section")
    args = parser.parse_args()
    if args.rounds < 5:
        parser.error("--rounds must be >= 5: medians of fewer rounds are too noisy to publish")
    with np.load(args.models / TEST_FILE, allow_pickle=False) as npz:
        raw, y = npz["x"], npz["y"]
    with tempfile.TemporaryDirectory() as tmp:
        large, large_files = bench_large(args.models, raw, y, args.rounds, args.window,
                                         Path(tmp))
    small, small_files = bench_small(args.models, raw, args.rounds, args.window)
    text = section([*large, "", *small], [*large_files, *small_files], args.rounds, args.window)
    print(text)
    if args.update_card:
        update_card(args.models / "README.md", text)
        print(f"updated {args.models / 'README.md'}")


if __name__ == "__main__":
    main()
