"""Durable outbox + MQTT link vs paho's bare in-memory QoS 1 publish, side by side in one run.

    python benchmarks/outbox_throughput.py [--messages 5000] [--rounds 5] [--batch 100]
                                           [--window 20] [--dir DIR] [--json]

Starts its own Mosquitto on a private port. Per round, interleaved:
- bare: one paho client publishes every message at QoS 1 from memory; timed until the last
  PUBACK.
- durable: the agent's path: ``Outbox.enqueue_telemetry_many`` in batches of --batch (one
  transaction, one fsync each; WAL, synchronous=FULL), ``MqttLink.pump`` moving rows through a
  window of --window in-flight messages, each row deleted after its PUBACK (one transaction per
  pump); timed until the outbox is empty.
The same payload (a telemetry-sized JSON body, ~600 bytes) and window for both. Prints the
median rate of each and durable/bare; the goal is >= 0.5. --dir puts the outbox on the disk to
measure (an SD card: its fsync is the cost); default: a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import sqlite3
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgeagent.telemetry.mqtt import MqttLink, Topics
from edgeagent.telemetry.outbox import Outbox

TOPICS = Topics("edgeagent", "bench", "n1")
BODY: dict[str, Any] = {
    "ts": 1.7e9, "mono": 1234.5, "boot_id": "1b2c3d4e-5f60-4718-9a0b-1c2d3e4f5a6b",
    "clock_synced": True,
    "power": {"battery_voltage_v": 13.21, "battery_current_a": 1.52, "battery_soc_pct": 81.0,
              "pv_voltage_v": 18.4, "pv_power_w": 31.5, "load_power_w": 4.2,
              "charger_state": "bulk"},
    "decision": {"workers": 2, "level": 1.0, "budget_w": 3.7, "model": "digits-int8",
                 "admit": ["best-effort", "deferrable", "urgent"], "reserve_pct": 30.0,
                 "reason": "surplus: PV covers the load"},
    "workload": {"model": "digits-int8", "inferences": 123456, "jobs": 3858, "cpu_s": 812.3,
                 "energy_j": 1523.2, "j_per_inference": 0.0123, "solar_share": 0.83},
    "outbox": {"pending": 0, "dropped": {"telemetry": 0, "event": 0, "result": 0}},
}


def start_broker(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false"]
    if os.geteuid() == 0:
        lines.append("user root")  # else it drops to the mosquitto user
    conf = directory / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n")
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("mosquitto did not start")


def bare(port: int, payloads: list[bytes], window: int) -> float:
    """Seconds for paho alone to get every message acknowledged at QoS 1."""
    acked = 0
    done = threading.Event()

    def on_publish(*args: Any) -> None:
        nonlocal acked
        acked += 1
        if acked == len(payloads):
            done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(window)
    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    start = time.perf_counter()
    for p in payloads:
        client.publish(TOPICS.telemetry, p, qos=1)
    if not done.wait(120):
        raise SystemExit("bare publish did not finish")
    elapsed = time.perf_counter() - start
    client.loop_stop()
    client.disconnect()
    return elapsed


def durable(port: int, bodies: list[dict[str, Any]], batch: int, window: int,
            directory: Path) -> float:
    """Seconds from the first enqueue to an empty outbox (every row acknowledged, deleted)."""
    path = directory / "bench-outbox.db"
    for f in directory.glob("bench-outbox.db*"):
        f.unlink()
    box = Outbox(path)
    link = MqttLink(f"mqtt://127.0.0.1:{port}", TOPICS, window=window)
    link.start()
    while not link.connected:
        link.pump(box)
        time.sleep(0.01)
    start = time.perf_counter()
    queued = 0
    while queued < len(bodies) or box.pending_count():
        if queued < len(bodies):
            box.enqueue_telemetry_many(TOPICS.telemetry, bodies[queued:queued + batch])
            queued += batch
        if not link.pump(box):
            time.sleep(0.0005)  # the window is full: let the network thread run
    elapsed = time.perf_counter() - start
    link.stop(box)
    box.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=100, help="rows per enqueue transaction")
    parser.add_argument("--window", type=int, default=20, help="QoS 1 messages in flight")
    parser.add_argument("--dir", type=Path, default=None, help="where the outbox lives")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    bodies = [dict(BODY) for _ in range(args.messages)]
    payloads = [json.dumps({"seq": i, **b}, separators=(",", ":")).encode()
                for i, b in enumerate(bodies)]
    with tempfile.TemporaryDirectory() as tmp:
        work = args.dir or Path(tmp)
        broker, port = start_broker(Path(tmp))
        try:
            bare_s, durable_s = [], []
            for _ in range(args.rounds):  # interleaved, so drift hits both alike
                bare_s.append(bare(port, payloads, args.window))
                durable_s.append(durable(port, bodies, args.batch, args.window, work))
        finally:
            broker.terminate()
            broker.wait()
    bare_rate = args.messages / statistics.median(bare_s)
    durable_rate = args.messages / statistics.median(durable_s)
    result = {
        "messages": args.messages, "rounds": args.rounds, "batch": args.batch,
        "window": args.window, "payload_bytes": len(payloads[0]),
        "bare_msgs_per_s": round(bare_rate), "durable_msgs_per_s": round(durable_rate),
        "ratio": round(durable_rate / bare_rate, 3),
        "python": platform.python_version(), "machine": platform.machine(),
        "sqlite": sqlite3.sqlite_version, "paho": paho.mqtt.__version__,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.messages} messages of {result['payload_bytes']} B, QoS 1, window "
          f"{args.window}, median of {args.rounds} rounds; python {result['python']}, "
          f"sqlite {result['sqlite']}, paho {result['paho']}, {result['machine']}")
    print(f"{'path':<52} {'msgs/s':>9}")
    print(f"{'paho bare publish (in memory)':<52} {bare_rate:>9.0f}")
    print(f"{'outbox: enqueue (batch ' + str(args.batch) + ', FULL) + drain + delete':<52} "
          f"{durable_rate:>9.0f}")
    print(f"{'durable / bare':<52} {durable_rate / bare_rate:>9.2f}")


if __name__ == "__main__":
    main()
