"""End to end against a real Mosquitto: nothing inside the outbox bound is lost when the broker
and the agent are killed, what is lost beyond the bound is reported exactly, and the backlog
drains at the pace the governor allows.

How a consumer removes the duplicates that at-least-once delivery may bring: by ``seq`` (a
message whose seq is not above the highest seen so far was seen already)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from conftest import Broker, Subscriber, retained
from edgeagent.telemetry.mqtt import MqttLink, Topics
from edgeagent.telemetry.outbox import Outbox

TOPICS = Topics("edgeagent", "s1", "n1")

AGENT = textwrap.dedent("""
    import signal, sys, time
    from pathlib import Path
    from edgeagent.telemetry.mqtt import MqttLink, Topics
    from edgeagent.telemetry.outbox import Outbox
    url, db, total = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    topics = Topics("edgeagent", "s1", "n1")
    box = Outbox(db)
    link = MqttLink(url, topics)
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    link.start()
    while not stop:
        if box.next_seq < total:
            box.enqueue_telemetry(topics.telemetry, {"power": {"pv_power_w": 1.0}})
        link.pump(box)
        time.sleep(0.01)
    link.stop(box)
""")


def until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"not reached within {timeout} s: {what}")


class FleetView:
    """A subscriber with a persistent session (clean_start false, session expiry 1 h, QoS 1)
    that removes duplicates by seq and records every gap it ever saw."""

    def __init__(self, broker: Broker) -> None:
        self.seqs: list[int] = []  # in arrival order, duplicates removed
        self.duplicates = 0
        self.gaps: list[tuple[int, int]] = []  # (highest seen, seq that jumped past it)
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fleet-view",
                                  protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, *a: c.subscribe(TOPICS.telemetry, qos=1)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", broker.port, clean_start=False, properties=props)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        seq = json.loads(msg.payload)["seq"]
        with self.lock:
            top = self.seqs[-1] if self.seqs else -1
            if seq <= top:
                self.duplicates += 1
                return
            if seq != top + 1:
                self.gaps.append((top, seq))
            self.seqs.append(seq)

    def seen(self) -> int:
        with self.lock:
            return len(self.seqs)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_every_seq_arrives_once_in_order_through_broker_and_agent_kills(
        broker: Broker, tmp_path: Path) -> None:
    # Without persistence a restarted broker forgets the subscriber's session and the
    # messages queued for it; autosave on every change keeps what it acknowledged.
    broker.extra_config += ["persistence true", f"persistence_location {broker.directory}/",
                            "autosave_interval 1", "autosave_on_changes true"]
    broker.stop()
    broker.start()
    total = 1200
    script = tmp_path / "agent.py"
    script.write_text(AGENT)
    command = [sys.executable, str(script), broker.url, str(tmp_path / "outbox.db"), str(total)]
    view = FleetView(broker)
    agent = subprocess.Popen(command)
    try:
        until(lambda: view.seen() >= 150, "first messages")
        for mark in (350, 550):  # the broker dies twice while the agent publishes
            assert broker.process is not None
            broker.process.send_signal(signal.SIGKILL)
            broker.process.wait()
            broker.start()
            until(lambda mark=mark: view.seen() >= mark, f"{mark} messages after a restart")
        os.kill(agent.pid, signal.SIGKILL)  # and the agent once
        agent.wait()
        agent = subprocess.Popen(command)
        until(lambda: view.seen() == total, "every seq", timeout=60)
        status = retained(broker, TOPICS.status)
        assert status is not None and status["state"] == "online"
    finally:
        agent.terminate()
        agent.wait(timeout=30)
        view.close()
    assert view.seqs == list(range(total))
    assert view.gaps == []  # never a seq that jumped past one not yet seen


def test_beyond_a_tiny_bound_the_report_names_exactly_the_missing_seqs(
        broker: Broker, tmp_path: Path, subscriber_factory: Callable[[str], Subscriber]) -> None:
    sub = subscriber_factory(TOPICS.telemetry)
    box = Outbox(tmp_path / "o.db", max_rows=10)
    for i in range(300):  # the link is down: the outbox thins, then drops
        box.enqueue_telemetry(TOPICS.telemetry, {"power": {"pv_power_w": float(i)}})
    link = MqttLink(broker.url, TOPICS)
    link.start()
    until(lambda: link.pump(box) >= 0 and box.pending_count() == 0, "the outbox drained")
    report = box.report()
    last = box.enqueue_telemetry(TOPICS.telemetry, {"outbox": report})
    until(lambda: link.pump(box) >= 0 and box.pending_count() == 0, "the report sent")
    link.stop(box)
    until(lambda: any(m["seq"] == last for m in sub.json_on(TOPICS.telemetry)), "the report")
    received = [m["seq"] for m in sub.json_on(TOPICS.telemetry)]
    missing = set(range(last + 1)) - set(received)
    reported = sub.json_on(TOPICS.telemetry)[-1]["outbox"]
    assert reported["dropped"]["telemetry"] > 0 and reported["thinned"] > 0
    assert reported["dropped"]["telemetry"] + reported["thinned"] == len(missing)
    assert {s for lo, hi in reported["lost_seq"] for s in range(lo, hi + 1)} == missing
    for summary in (m for m in sub.json_on(TOPICS.telemetry) if "thinned" in m):
        stands_for = set(range(summary["thinned"]["from_seq"], summary["seq"]))
        assert stands_for <= missing  # a summary names seqs that are missing, never others


def test_while_lean_live_rows_go_at_once_and_the_backlog_only_by_its_allowance(
        broker: Broker, tmp_path: Path, subscriber_factory: Callable[[str], Subscriber]) -> None:
    sub = subscriber_factory(TOPICS.telemetry)
    box = Outbox(tmp_path / "o.db")
    box.enqueue_telemetry_many(TOPICS.telemetry, [{"i": i} for i in range(100)])  # a backlog
    link = MqttLink(broker.url, TOPICS)
    link.allow_backlog(5)
    link.start()
    until(lambda: link.pump(box) >= 0 and box.pending_count() == 95, "the allowance sent")
    live = box.enqueue_telemetry(TOPICS.telemetry, {"live": True})
    until(lambda: link.pump(box) >= 0 and box.pending_count() == 95, "the live row sent")
    until(lambda: live in [m["seq"] for m in sub.json_on(TOPICS.telemetry)], "live row seen")
    assert sorted(m["seq"] for m in sub.json_on(TOPICS.telemetry)) == [0, 1, 2, 3, 4, live]
    link.allow_backlog(None)  # surplus: drain freely
    until(lambda: link.pump(box) >= 0 and box.pending_count() == 0, "the backlog drained")
    link.stop(box)
    until(lambda: len(sub.on(TOPICS.telemetry)) == 101, "every row")
    assert sorted(m["seq"] for m in sub.json_on(TOPICS.telemetry)) == list(range(101))
