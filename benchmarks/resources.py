"""Resident memory and idle CPU of ``edgeagent run``, measured from /proc.

    python benchmarks/resources.py [--idle-s 180] [--warmup-s 30] [--work-s 60]
                                   [--model digits-int8] [--json]

Starts its own Mosquitto and an emulated SmartShunt on a pseudo-terminal (one VE.Direct block
pair per second, as a real one sends), then runs the service twice with a bundled int8 model
(``--model``: the default workload's ONNX one, or a ``-tflite`` one run by LiteRT, which then
leaves onnxruntime unloaded) at the default intervals (governor tick 5 s, telemetry every 10 s):
- idle: the battery at 20 %, below the reserve, so the governor decides level 0 (no workers):
  CPU is utime + stime from /proc/PID/stat over ``--idle-s`` after the warm-up, as a share of
  one core; RSS is VmRSS after the warm-up;
- work: the battery full, the governor runs its workers flat out on the bundled model: peak and
  last VmRSS over ``--work-s``, and the threads.
Goals (issue 7): RSS <= 80 MB with onnxruntime loaded, idle CPU <= 1 % of one core.

Under qemu-user (``scripts/aarch64-check --resources``), VmRSS is the emulator's: its translated
code and its own heap included. With ``QEMU_GUEST_BASE`` and ``QEMU_RESERVED_VA`` set, every guest
mapping lies in that one host window, so RSS is then the sum of ``/proc/PID/smaps`` Rss inside it:
the pages the aarch64 program itself touched (its libraries' aarch64 code, its heap, its
stacks). CPU under emulation says nothing about a board and is reported as such, and the thread
count (``/proc/PID/status``) includes qemu's own thread or two.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from conftest import Broker, edgeagent_command, free_port, mosquitto_binary  # noqa: E402
from edgeagent.sim.emulator import VEDirectEmulator  # noqa: E402
from emulated_devices import smartshunt  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def status(pid: int) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in
                Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)


def guest_window() -> tuple[int, int] | None:
    """The host address range of a qemu-user guest, when it was fixed by the environment."""
    base, size = os.environ.get("QEMU_GUEST_BASE"), os.environ.get("QEMU_RESERVED_VA")
    return (int(base, 0), int(base, 0) + int(size, 0)) if base and size else None


def alive(proc: subprocess.Popen[bytes], log: Path) -> int:
    """The agent's pid; an agent that exited (a zombie's smaps is empty: 0 MB) is an error."""
    if proc.poll() is not None:
        raise RuntimeError(f"edgeagent run exited with status {proc.returncode}:\n"
                           + log.read_text()[-2000:])
    return proc.pid


def rss_mb(pid: int) -> float:
    window = guest_window()
    if window is None:
        return int(status(pid)["VmRSS"].split()[0]) / 1024
    low, high = window
    kib, inside = 0, False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(maxsplit=1)[0]
        if not head.endswith(":"):  # a mapping's header line: "start-end perms offset ..."
            start, end = (int(a, 16) for a in head.split("-"))
            inside = low <= start and end <= high
        elif inside and head == "Rss:":
            kib += int(line.split()[1])
    if kib == 0:
        raise RuntimeError(f"no guest mapping of pid {pid} in {low:#x}-{high:#x}: not a qemu "
                           "guest started with this QEMU_GUEST_BASE/QEMU_RESERVED_VA?")
    return kib / 1024


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def agent_log(workdir: Path, soc_pct: float) -> Path:
    return workdir / f"agent-{soc_pct:.0f}.log"


def start_agent(workdir: Path, broker: Broker, soc_pct: float,
                model: str) -> tuple[subprocess.Popen[bytes], VEDirectEmulator]:
    """The service on a SmartShunt at ``soc_pct`` (13.2 V, -0.5 A, 3 cycles): its two blocks
    once a second, as a real one sends."""
    shunt = smartshunt(soc_pct, volts=13.2, amps=-0.5, cycles=3, interval_s=1.0)
    state = workdir / f"state-{soc_pct:.0f}"
    config = workdir / f"agent-{soc_pct:.0f}.toml"
    config.write_text(f"""
[site]
id = "res"
node = "n1"
[[power.devices]]
driver = "vedirect"
port = "{shunt.port}"
[telemetry]
broker = "{broker.url}"
outbox_path = "{state / 'outbox.db'}"
[workload]
model = "{model}"
""")
    log = agent_log(workdir, soc_pct).open("w")
    proc = subprocess.Popen([*edgeagent_command(), "run", "--config", str(config)],
                            stdout=log, stderr=subprocess.STDOUT)
    return proc, shunt


def stop_agent(proc: subprocess.Popen[bytes], shunt: VEDirectEmulator) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    shunt.stop()


def measure_idle(workdir: Path, broker: Broker, model: str, warmup_s: float, idle_s: float
                 ) -> dict[str, Any]:
    proc, shunt = start_agent(workdir, broker, soc_pct=20.0, model=model)
    try:
        time.sleep(warmup_s)
        pid = alive(proc, agent_log(workdir, 20.0))
        rss, cpu0, t0 = rss_mb(pid), cpu_s(pid), time.monotonic()
        time.sleep(idle_s)
        used, wall = cpu_s(alive(proc, agent_log(workdir, 20.0))) - cpu0, time.monotonic() - t0
        return {"rss_mb": round(rss, 1), "rss_end_mb": round(rss_mb(pid), 1),
                "threads": int(status(pid)["Threads"]), "cpu_s": round(used, 3),
                "wall_s": round(wall, 1), "cpu_pct_of_one_core": round(100 * used / wall, 3)}
    finally:
        stop_agent(proc, shunt)


def measure_work(workdir: Path, broker: Broker, model: str, warmup_s: float, work_s: float
                 ) -> dict[str, Any]:
    proc, shunt = start_agent(workdir, broker, soc_pct=100.0, model=model)
    try:
        time.sleep(warmup_s)
        pid = alive(proc, agent_log(workdir, 100.0))
        cpu0, t0, peak = cpu_s(pid), time.monotonic(), 0.0
        while time.monotonic() - t0 < work_s:
            peak = max(peak, rss_mb(alive(proc, agent_log(workdir, 100.0))))
            time.sleep(1.0)
        used, wall = cpu_s(pid) - cpu0, time.monotonic() - t0
        return {"rss_peak_mb": round(peak, 1), "rss_end_mb": round(rss_mb(pid), 1),
                "threads": int(status(pid)["Threads"]),
                "cores_busy": round(used / wall, 2)}
    finally:
        stop_agent(proc, shunt)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--warmup-s", type=float, default=30.0)
    parser.add_argument("--idle-s", type=float, default=180.0)
    parser.add_argument("--work-s", type=float, default=60.0)
    parser.add_argument("--model", default="digits-int8",
                        help="the workload's model (default digits-int8, onnxruntime)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="edgeagent-resources-"))
    broker = Broker(workdir / "broker", free_port(), mosquitto_binary())
    broker.directory.mkdir()
    broker.start()
    try:
        result: dict[str, Any] = {
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
                       f"Python {platform.python_version()}",
            "rss": ("VmRSS" if guest_window() is None else
                    "qemu-user guest: smaps Rss inside QEMU_GUEST_BASE + QEMU_RESERVED_VA;"
                    " CPU figures are the emulator's"),
            "model": args.model,
            "idle": measure_idle(workdir, broker, args.model, args.warmup_s, args.idle_s),
            "work": measure_work(workdir, broker, args.model, args.warmup_s, args.work_s)}
    finally:
        broker.stop()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        idle, work = result["idle"], result["work"]
        print(f"machine: {result['machine']}; model {args.model}; RSS is {result['rss']}")
        print(f"idle (level 0, tick 5 s, telemetry 10 s): RSS {idle['rss_mb']} MB, CPU "
              f"{idle['cpu_pct_of_one_core']} % of one core ({idle['cpu_s']} s in "
              f"{idle['wall_s']} s), {idle['threads']} threads")
        print(f"work (workers flat out): RSS peak {work['rss_peak_mb']} MB, end "
              f"{work['rss_end_mb']} MB, {work['threads']} threads, {work['cores_busy']} "
              "cores busy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
