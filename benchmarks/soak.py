"""Soak: ``edgeagent run`` for a long while under broker restarts and unplugged devices, with
its resident memory, file descriptors, threads and outbox size sampled all along.

    python benchmarks/soak.py [--duration 3600] [--tick 0.5] [--telemetry 0.5] [--speed 240]
                              [--sample 5] [--dir DIR] [--json]

The agent runs as the service does (a subprocess of ``edgeagent run --config``) on an emulated
site: a SmartShunt and a SmartSolar MPPT on VE.Direct and an EPEver on Modbus RTU, all on
pseudo-terminals, fed by a real solar trace at ``--speed`` times real time, with a battery small
enough that the governor's level goes up and down with the emulated days. Its own Mosquitto is
SIGKILLed every 45-90 s and comes back after 2-20 s; every 20-40 s one device's cable is pulled
(the pty closes, the name goes) or the device goes silent, for 2-10 s. The agent gets a
``NOTIFY_SOCKET`` and ``WATCHDOG_USEC``: if it speaks sd_notify, every ``WATCHDOG=1`` is timed.

At the end it prints each series (first, median, last, min, max) and checks, after a warm-up
of a tenth of the run (at least 10 s):
- resident memory grows by at most ``RSS_GROWTH_MB`` over the second half (median of its last
  tenth minus median of its first tenth, so a single sample's transient does not count);
- file descriptors and threads stay flat: max - min within ``FD_SPREAD`` / ``THREAD_SPREAD``
  (workers come and go with the level, serial ports and sockets reopen);
- the outbox database plus its WAL stays within ``telemetry.outbox_max_bytes``;
- no two watchdog pings are further apart than ``WATCHDOG_USEC`` (when the agent pings);
- the agent is alive at the end and exits 0 on SIGTERM.
Exit status 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from conftest import Broker, edgeagent_command, free_port, mosquitto_binary  # noqa: E402
from edgeagent.boards import load_board  # noqa: E402
from edgeagent.sim.battery import Battery  # noqa: E402
from edgeagent.sim.emulator import SiteEmulator  # noqa: E402
from edgeagent.sim.line import EmulatedLine  # noqa: E402
from edgeagent.sim.modbus import EPEverEmulator  # noqa: E402
from edgeagent.sim.solar import SolarTrace, hour_of_year  # noqa: E402

RSS_GROWTH_MB = 5.0
FD_SPREAD = 8
THREAD_SPREAD = 6
OUTBOX_MAX_BYTES = 1 << 20
OUTBOX_MAX_ROWS = 200
BOARD = "raspberry-pi-4"
MAX_WORKERS = 2


@dataclass(frozen=True)
class Sample:
    t_s: float  # since the agent started
    rss_kb: int
    fds: int
    threads: int
    outbox_bytes: int


@dataclass(frozen=True)
class Schedule:
    """How hard the run is: what it kills and unplugs, how often, for how long (seconds)."""

    broker_every: tuple[float, float] = (45.0, 90.0)
    broker_down: tuple[float, float] = (2.0, 20.0)
    unplug_every: tuple[float, float] = (20.0, 40.0)
    unplug_for: tuple[float, float] = (2.0, 10.0)


@dataclass
class Report:
    samples: list[Sample]
    watchdog_usec: int
    notify: list[tuple[float, str]]  # (seconds since start, message) of every datagram
    broker_kills: int = 0
    unplugs: int = 0
    silences: int = 0
    telemetry_seen: int = 0
    exit_code: int | None = None
    warmup_s: float = 0.0
    failures: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Each series after the warm-up, the counts and the watchdog's pings."""
        steady = [s for s in self.samples if s.t_s >= self.warmup_s] or self.samples
        series = {}
        for name in ("rss_kb", "fds", "threads", "outbox_bytes"):
            values = [getattr(s, name) for s in steady]
            series[name] = {"first": values[0], "median": statistics.median(values),
                            "last": values[-1], "min": min(values), "max": max(values)}
        pings = [t for t, m in self.notify if m == "WATCHDOG=1"]
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        return {
            "duration_s": round(self.samples[-1].t_s, 1), "samples": len(self.samples),
            "warmup_s": self.warmup_s, "series": series,
            "rss_growth_second_half_mb": round(rss_growth_mb(steady), 2),
            "broker_kills": self.broker_kills, "unplugs": self.unplugs,
            "silences": self.silences, "telemetry_seen": self.telemetry_seen,
            "watchdog": {"usec": self.watchdog_usec, "pings": len(pings),
                         "ready": any(m == "READY=1" for _, m in self.notify),
                         "max_gap_s": round(max(gaps), 3) if gaps else None},
            "exit_code": self.exit_code, "failures": self.failures,
        }


def rss_growth_mb(samples: list[Sample]) -> float:
    """Median RSS of the last tenth of the second half minus that of its first tenth."""
    half = samples[len(samples) // 2:]
    n = max(len(half) // 10, 1)
    return (statistics.median(s.rss_kb for s in half[-n:])
            - statistics.median(s.rss_kb for s in half[:n])) / 1024


def sample(pid: int, outbox: Path, t_s: float) -> Sample:
    status = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    size = sum(p.stat().st_size for p in (outbox, outbox.with_name(outbox.name + "-wal"))
               if p.exists())
    return Sample(t_s, int(status["VmRSS"].split()[0]), len(os.listdir(f"/proc/{pid}/fd")),
                  int(status["Threads"]), size)


def check(report: Report, warmup_s: float) -> list[str]:
    """What broke the bounds (empty when the run passed)."""
    failures = []
    steady = [s for s in report.samples if s.t_s >= warmup_s]
    if len(steady) < 4:
        return [f"too few samples after the {warmup_s:.0f} s warm-up: {len(steady)}"]
    growth = rss_growth_mb(steady)
    if growth > RSS_GROWTH_MB:
        failures.append(f"RSS grew {growth:.1f} MB over the second half (bound "
                        f"{RSS_GROWTH_MB} MB)")
    for name, bound in (("fds", FD_SPREAD), ("threads", THREAD_SPREAD)):
        values = [getattr(s, name) for s in steady]
        if max(values) - min(values) > bound:
            failures.append(f"{name} spread {min(values)}..{max(values)} (bound {bound})")
    biggest = max(s.outbox_bytes for s in report.samples)
    if biggest > OUTBOX_MAX_BYTES:
        failures.append(f"outbox reached {biggest} bytes (bound {OUTBOX_MAX_BYTES})")
    pings = [t for t, m in report.notify if m == "WATCHDOG=1"]
    limit = report.watchdog_usec / 1e6
    for a, b in itertools.pairwise(pings):
        if b - a > limit:
            failures.append(f"watchdog gap {b - a:.2f} s at {a:.0f} s (limit {limit:.1f} s)")
            break
    if report.exit_code != 0:
        failures.append(f"the agent exited with {report.exit_code}")
    return failures


class NotifySocket:
    """A datagram socket standing in for systemd's: records every message with its time."""

    def __init__(self, path: Path, t0: float) -> None:
        self.path = path
        self.t0 = t0
        self.messages: list[tuple[float, str]] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="notify", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            now = time.monotonic() - self.t0
            self.messages.extend((now, m) for m in data.decode(errors="replace").split("\n")
                                 if m)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()


class Telemetry:
    """Counts the agent's telemetry and keeps its latest worker count (the emulated load)."""

    def __init__(self, broker: Broker, topic: str) -> None:
        self.count = 0
        self.workers = 0
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2)
        self.client.reconnect_delay_set(0.2, 1)
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos=0)
        self.client.on_message = self._on_message
        self.client.connect_async("127.0.0.1", broker.port)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.count += 1
        decision = json.loads(msg.payload).get("decision") or {}
        self.workers = int(decision.get("workers") or 0)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def write_config(path: Path, broker: Broker, ports: list[str], tick_s: float,
                 telemetry_s: float) -> None:
    shunt, mppt, epever = ports
    path.write_text(f"""
[site]
id = "soak"
node = "n1"
board = "{BOARD}"
[power]
stale_after_s = 3.0
[[power.devices]]
driver = "vedirect"
port = "{shunt}"
[[power.devices]]
driver = "vedirect"
port = "{mppt}"
[[power.devices]]
driver = "epever"
port = "{epever}"
poll_interval_s = 1.0
[battery]
capacity_wh = 150
[governor]
tick_s = {tick_s}
max_workers = {MAX_WORKERS}
min_dwell_s = 60
[telemetry]
broker = "{broker.url}"
interval_s = {telemetry_s}
outbox_path = "{path.parent / 'state' / 'outbox.db'}"
outbox_max_rows = {OUTBOX_MAX_ROWS}
outbox_max_bytes = {OUTBOX_MAX_BYTES}
reconnect_min_s = 0.5
reconnect_max_s = 2.0
""")


def run_soak(broker: Broker, workdir: Path, duration_s: float, *, tick_s: float = 0.5,
             telemetry_s: float = 0.5, speed: float = 240.0, sample_s: float = 5.0,
             schedule: Schedule | None = None, watchdog_s: float = 10.0, seed: int = 7,
             log: Callable[[str], None] = print, stop: threading.Event | None = None
             ) -> Report:
    """Run the agent for ``duration_s`` (or until ``stop`` is set) under ``schedule``; the
    report's ``failures`` say which bounds broke."""
    schedule = schedule or Schedule()
    rng = random.Random(seed)
    board = load_board(BOARD)
    tel: Telemetry | None = None
    emulator = SiteEmulator(SolarTrace.bundled(), Battery(150.0, 60.0),
                            start_hour=hour_of_year(6, 21, 5.0), speed=speed, panel_wp=60.0,
                            load_w=lambda: board.load_w(tel.workers if tel else 0))
    epever = EPEverEmulator(emulator.device_state)
    lines: list[EmulatedLine] = [emulator.shunt, emulator.mppt, epever.line]
    config = workdir / "agent.toml"
    write_config(config, broker, [line.port for line in lines], tick_s, telemetry_s)
    outbox = workdir / "state" / "outbox.db"
    t0 = time.monotonic()
    notify = NotifySocket(workdir / "notify.sock", t0)
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path),
           "WATCHDOG_USEC": str(int(watchdog_s * 1e6)), "EDGEAGENT_PURE_KERNELS": "1"}
    report = Report([], int(watchdog_s * 1e6), notify.messages)
    emulator.start()
    epever.start()
    tel = Telemetry(broker, "edgeagent/soak/n1/telemetry")
    with (workdir / "agent.log").open("w") as agent_log:
        proc = subprocess.Popen([*edgeagent_command(), "run", "--config", str(config)],
                                stdout=agent_log, stderr=subprocess.STDOUT, env=env)
        try:
            _drive(proc, broker, lines, outbox, t0, duration_s, sample_s, schedule, rng,
                   report, log, stop or threading.Event())
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            report.exit_code = proc.returncode
            report.telemetry_seen = tel.count
            tel.close()
            epever.stop()
            emulator.stop()
            notify.close()
    report.warmup_s = max(duration_s / 10, 10.0)
    report.failures += check(report, report.warmup_s)
    return report


def _drive(proc: subprocess.Popen[bytes], broker: Broker, lines: list[EmulatedLine],
           outbox: Path, t0: float, duration_s: float, sample_s: float, schedule: Schedule,
           rng: random.Random, report: Report, log: Callable[[str], None],
           stop: threading.Event) -> None:
    """The run's clock: samples, broker kills and restarts, unplugs and silences."""
    def after(span: tuple[float, float]) -> float:
        return time.monotonic() + rng.uniform(*span)

    next_sample = time.monotonic()
    next_kill, broker_back = after(schedule.broker_every), None
    next_unplug, unplug_back = after(schedule.unplug_every), None
    pulled: tuple[EmulatedLine, bool] | None = None  # the line, and whether it was unplugged
    end = t0 + duration_s
    while (now := time.monotonic()) < end and not stop.is_set():
        if proc.poll() is not None:
            report.failures.append(f"the agent died with {proc.returncode}")
            return
        if now >= next_sample:
            with_pid = sample(proc.pid, outbox, now - t0)
            report.samples.append(with_pid)
            next_sample += sample_s
            if len(report.samples) % max(int(60 / sample_s), 1) == 0:
                log(f"{with_pid.t_s:7.0f} s  rss {with_pid.rss_kb / 1024:6.1f} MB  fds "
                    f"{with_pid.fds:3d}  threads {with_pid.threads:3d}  outbox "
                    f"{with_pid.outbox_bytes / 1024:7.1f} KiB  kills {report.broker_kills}  "
                    f"unplugs {report.unplugs + report.silences}  watchdog pings "
                    f"{sum(m == 'WATCHDOG=1' for _, m in report.notify)}")
        if broker_back is None and now >= next_kill:
            assert broker.process is not None
            broker.process.kill()
            broker.process.wait()
            report.broker_kills += 1
            broker_back = after(schedule.broker_down)
        elif broker_back is not None and now >= broker_back:
            broker.start()
            broker_back, next_kill = None, after(schedule.broker_every)
        if pulled is None and now >= next_unplug:
            line, unplug = rng.choice(lines), rng.random() < 0.5
            if unplug:
                line.unplug()
                report.unplugs += 1
            else:
                line.faults.silent = True
                report.silences += 1
            pulled, unplug_back = (line, unplug), after(schedule.unplug_for)
        elif pulled is not None and unplug_back is not None and now >= unplug_back:
            _restore(*pulled)
            pulled, next_unplug = None, after(schedule.unplug_every)
        time.sleep(0.1)
    if pulled is not None:
        _restore(*pulled)
    if broker_back is not None:
        broker.start()


def _restore(line: EmulatedLine, unplugged: bool) -> None:
    """The cable back in, or the device talking again."""
    if unplugged:
        line.replug()
    else:
        line.faults.silent = False


def _print_summary(summary: dict[str, Any], out: TextIO) -> None:
    print(f"soak: {summary['duration_s']} s, {summary['samples']} samples, "
          f"{summary['broker_kills']} broker kills, {summary['unplugs']} unplugs, "
          f"{summary['silences']} silences, {summary['telemetry_seen']} telemetry messages "
          "received", file=out)
    print(f"after the {summary['warmup_s']:.0f} s warm-up:", file=out)
    print(f"{'series':14}{'first':>10}{'median':>10}{'last':>10}{'min':>10}{'max':>10}",
          file=out)
    for name, s in summary["series"].items():
        print(f"{name:14}" + "".join(f"{s[k]:>10.0f}" for k in
                                     ("first", "median", "last", "min", "max")), file=out)
    print(f"RSS growth over the second half: {summary['rss_growth_second_half_mb']} MB "
          f"(bound {RSS_GROWTH_MB} MB)", file=out)
    wd = summary["watchdog"]
    print(f"watchdog: READY {'seen' if wd['ready'] else 'not seen'}, {wd['pings']} pings, "
          f"largest gap {wd['max_gap_s']} s (limit {wd['usec'] / 1e6} s)", file=out)
    print("PASS" if not summary["failures"] else "FAIL: " + "; ".join(summary["failures"]),
          file=out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=3600.0, help="seconds")
    parser.add_argument("--tick", type=float, default=0.5, help="governor tick (s)")
    parser.add_argument("--telemetry", type=float, default=0.5, help="telemetry interval (s)")
    parser.add_argument("--speed", type=float, default=240.0, help="emulated sun's speed-up")
    parser.add_argument("--sample", type=float, default=5.0, help="sampling period (s)")
    parser.add_argument("--dir", type=Path, help="keep the run's files here")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args()
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="edgeagent-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    broker = Broker(workdir / "broker", free_port(), mosquitto_binary())
    broker.directory.mkdir(exist_ok=True)
    broker.start()
    stop = threading.Event()  # SIGTERM or SIGINT: end early, still check and summarise
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    print(f"soak: {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, files in {workdir}", flush=True)
    try:
        report = run_soak(broker, workdir, args.duration, tick_s=args.tick,
                          telemetry_s=args.telemetry, speed=args.speed, sample_s=args.sample,
                          log=lambda line: print(line, flush=True), stop=stop)
    finally:
        broker.stop()
    summary = report.summary()
    (workdir / "samples.json").write_text(json.dumps([asdict(s) for s in report.samples]))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary, sys.stdout)
    return 0 if not report.failures else 1


if __name__ == "__main__":
    sys.exit(main())
