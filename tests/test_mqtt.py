"""The MQTT link against a real Mosquitto: retained status, Last Will, acked delivery."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from broker_auth import password_file
from conftest import Broker, retained
from edgeagent.config import MqttProtocol, parse_config
from edgeagent.telemetry.address import BrokerAddress
from edgeagent.telemetry.backoff import next_delay
from edgeagent.telemetry.mqtt import Inbound, MqttLink, Topics
from edgeagent.telemetry.outbox import Outbox
from edgeagent.telemetry.session import SessionCounter

TOPICS = Topics("edgeagent", "s1", "n1")


def pump_until(link: MqttLink, box: Outbox, done: Callable[[], bool],
               timeout: float = 15.0) -> None:
    """Pump ``link`` (as the agent's outbox thread does) until ``done()``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        link.pump(box)
        if done():
            return
        time.sleep(0.02)
    raise AssertionError(f"condition not reached: {link.report()}")


def test_broker_urls() -> None:
    assert BrokerAddress.parse("mqtt://h:1999") == BrokerAddress("tcp", "h", 1999, False)
    assert BrokerAddress.parse("mqtts://h").port == 8883
    assert BrokerAddress.parse("unix:///run/mosquitto.sock").host == "/run/mosquitto.sock"
    for bad in ("http://h", "mqtt://", "mqtt://h:99999", "mqtt://h:0", "unix://"):
        with pytest.raises(ValueError, match=bad.replace("/", ".")):
            BrokerAddress.parse(bad)


def test_status_is_retained_online_then_offline(broker: Broker, tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    link = MqttLink(broker.url, TOPICS)
    link.start()
    pump_until(link, box, lambda: link.connected)
    time.sleep(0.2)
    status = retained(broker, TOPICS.status)
    assert status is not None and status["state"] == "online"
    link.stop(box)
    status = retained(broker, TOPICS.status)
    assert status is not None and status["state"] == "offline"
    assert status["session"] == link.session


def test_every_queued_row_is_delivered_once_and_then_removed(
        broker: Broker, tmp_path: Path, subscriber_factory: Any) -> None:
    sub = subscriber_factory(TOPICS.telemetry)
    box = Outbox(tmp_path / "o.db")
    for i in range(200):
        box.enqueue_telemetry(TOPICS.telemetry, {"i": i})
    link = MqttLink(broker.url, TOPICS, window=20)
    link.start()
    pump_until(link, box, lambda: box.pending_count() == 0)
    link.stop(box)
    assert link.published == 200
    deadline = time.monotonic() + 5
    while len(sub.on(TOPICS.telemetry)) < 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [m["seq"] for m in sub.json_on(TOPICS.telemetry)] == list(range(200))


def test_rows_wait_in_the_outbox_while_the_broker_is_down(
        broker: Broker, tmp_path: Path, subscriber_factory: Any) -> None:
    box = Outbox(tmp_path / "o.db")
    broker.stop()
    link = MqttLink(broker.url, TOPICS, reconnect_min_s=0.2, reconnect_max_s=1.0)
    link.start()
    for i in range(30):
        box.enqueue_telemetry(TOPICS.telemetry, {"i": i})
        link.pump(box)
    time.sleep(0.5)
    link.pump(box)
    assert box.pending_count() == 30 and link.published == 0
    broker.start()
    sub = subscriber_factory(TOPICS.telemetry)
    pump_until(link, box, lambda: box.pending_count() == 0, timeout=30)
    link.stop(box)
    deadline = time.monotonic() + 5
    while len(sub.on(TOPICS.telemetry)) < 30 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted({m["seq"] for m in sub.json_on(TOPICS.telemetry)}) == list(range(30))


def test_the_last_will_says_offline_when_the_agent_is_killed(
        broker: Broker, tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from edgeagent.telemetry.mqtt import Inbound, MqttLink, Topics
        from edgeagent.telemetry.outbox import Outbox
        box = Outbox(Path({str(tmp_path / "o.db")!r}))
        link = MqttLink({broker.url!r}, Topics("edgeagent", "s1", "n1"), keepalive_s=1,
                        will_delay_s=1)
        link.start()
        while not link.connected:
            link.pump(box); time.sleep(0.02)
        link.pump(box); time.sleep(0.3); link.pump(box)
        print("online", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            cwd=tmp_path)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "online"
    status = retained(broker, TOPICS.status)
    assert status is not None and status["state"] == "online"
    session = status["session"]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status = retained(broker, TOPICS.status, timeout=1)
        if status is not None and status["state"] == "offline":
            break
    assert status is not None and status["state"] == "offline"
    assert status["session"] == session  # the Will of the connection that said online


def test_a_broker_that_dies_mid_stream_loses_nothing(broker: Broker, tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    for i in range(2000):
        box.enqueue_telemetry(TOPICS.telemetry, {"i": i, "pad": "x" * 200})
    link = MqttLink(broker.url, TOPICS, window=20, reconnect_min_s=0.2, reconnect_max_s=1.0)
    link.start()
    pump_until(link, box, lambda: link.published >= 200)
    assert broker.process is not None
    broker.process.kill()  # SIGKILL: in-flight messages are never acknowledged
    broker.process.wait()
    for _ in range(20):
        link.pump(box)
        time.sleep(0.02)
    assert box.pending_count() > 0
    broker.start()
    pump_until(link, box, lambda: box.pending_count() == 0, timeout=60)
    link.stop(box)
    assert box.acked == 2000 and link.published == 2000


def test_rows_the_broker_refuses_are_parked_reported_and_do_not_hold_up_shutdown(
        broker: Broker, tmp_path: Path) -> None:
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite edgeagent/s1/n1/status\n")  # telemetry is not allowed
    broker.stop()
    broker.extra_config = [f"acl_file {acl}"]
    broker.start()
    box = Outbox(tmp_path / "o.db")
    for i in range(5):
        box.enqueue_telemetry(TOPICS.telemetry, {"i": i})
    link = MqttLink(broker.url, TOPICS)
    link.start()
    pump_until(link, box, lambda: len(link.rejected) == 5)
    for _ in range(25):  # parked, not resent: the count stays where it is
        link.pump(box)
        time.sleep(0.02)
    report = link.report()
    assert report["refused_rows"] == 5 and report["refused_topics"] == {TOPICS.telemetry: 5}
    assert report["state"] == "connected"
    assert link.last_error == f"publish refused: not authorized (0x87) on {TOPICS.telemetry}"
    started = time.monotonic()
    link.stop(box, flush_timeout_s=5.0)
    assert time.monotonic() - started < 3.0
    assert box.pending_count() == 5 and link.published == 0  # kept for a later retry


def _request(broker: Broker, topic: str, payload: bytes, response_topic: str,
             correlation: bytes, timeout: float = 10.0) -> tuple[bytes, bytes | None]:
    """A requester as a fleet tool would be: MQTT v5 request, wait for the correlated reply."""
    got: list[tuple[bytes, bytes | None]] = []
    subscribed = threading.Event()
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

    def on_message(c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        got.append((msg.payload, getattr(msg.properties, "CorrelationData", None)))
        done.set()

    client.on_message = on_message
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_connect = lambda c, *a: c.subscribe(response_topic, qos=1)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        assert subscribed.wait(timeout)
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = response_topic
        props.CorrelationData = correlation
        client.publish(topic, payload, qos=1, properties=props)
        assert done.wait(timeout), "no reply"
        return got[0]
    finally:
        client.loop_stop()
        client.disconnect()


def test_a_request_reaches_its_handler_and_the_reply_carries_its_correlation_data(
        broker: Broker, tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    link = MqttLink(broker.url, TOPICS)
    seen: list[Inbound] = []

    def handle(msg: Inbound) -> None:
        seen.append(msg)
        link.reply(msg, b"pong:" + msg.payload)

    link.subscribe(f"{TOPICS.root}/s1/n1/cmd", handle)  # before connecting: kept for it
    link.start()
    pump_until(link, box, lambda: link.connected)
    answers: list[tuple[bytes, bytes | None]] = []
    requester = threading.Thread(target=lambda: answers.append(_request(
        broker, "edgeagent/s1/n1/cmd", b"ping", "fleet/replies/1", b"corr-42")))
    requester.start()
    pump_until(link, box, lambda: bool(answers))  # the outbox's thread pumps, as in the agent
    requester.join()
    reply, corr = answers[0]
    link.stop(box)
    assert reply == b"pong:ping" and corr == b"corr-42"
    assert seen[0].response_topic == "fleet/replies/1"


def test_a_handler_that_raises_is_counted_and_the_link_goes_on(
        broker: Broker, tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    link = MqttLink(broker.url, TOPICS)
    calls: list[bytes] = []

    def handle(msg: Inbound) -> None:
        calls.append(msg.payload)
        if msg.payload == b"bad":
            raise ValueError("boom")

    link.subscribe("edgeagent/s1/n1/cmd", handle)
    link.start()
    pump_until(link, box, lambda: link.connected)
    time.sleep(0.2)
    link.pump(box)
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    publisher.connect("127.0.0.1", broker.port)
    publisher.loop_start()
    publisher.publish("edgeagent/s1/n1/cmd", b"bad", qos=1).wait_for_publish(5)
    publisher.publish("edgeagent/s1/n1/cmd", b"good", qos=1).wait_for_publish(5)
    publisher.loop_stop()
    publisher.disconnect()
    pump_until(link, box, lambda: calls == [b"bad", b"good"])
    link.stop(box)
    assert link.handler_errors == 1 and "boom" in (link.last_handler_error or "")


def test_reconnect_waits_stay_within_bounds_grow_to_the_max_and_spread() -> None:
    rng = random.Random(7)
    first = [next_delay(None, 1.0, 60.0, rng) for _ in range(2000)]
    assert all(1.0 <= d <= 3.0 for d in first)  # right after a success: soon, not at once
    assert statistics.pstdev(first) > 0.4  # a fleet does not knock in lock-step
    chains: list[float] = []
    for _ in range(200):
        delay = next_delay(None, 1.0, 60.0, rng)
        for _ in range(11):
            delay = next_delay(delay, 1.0, 60.0, rng)
            assert 1.0 <= delay <= 60.0
        chains.append(delay)
    assert statistics.median(chains) > 20  # repeated failures back off towards the max
    assert len({round(d, 3) for d in chains}) > 100  # and still do not line up


def test_the_session_counter_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state" / "mqtt-session"
    counter = SessionCounter(path)
    assert [counter.next(), counter.next()] == [1, 2]
    assert SessionCounter(path).next() == 3
    assert SessionCounter(None).next() == 1  # in memory: starts again


def _password_broker(broker: Broker, tmp_path: Path) -> None:
    passwords = password_file(tmp_path / "passwd", {"n1": "right"})
    broker.stop()
    broker.extra_config = [f"password_file {passwords}"]
    broker.start()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_wrong_password_is_refused_reported_and_retried_slowly(
        broker: Broker, tmp_path: Path, protocol: MqttProtocol, caplog: Any) -> None:
    _password_broker(broker, tmp_path)
    box = Outbox(tmp_path / "o.db")
    link = MqttLink(broker.url, TOPICS, username="n1", password="wrong", protocol=protocol,
                    reconnect_min_s=0.5, reconnect_max_s=2.0)
    caplog.set_level(logging.INFO, logger="edgeagent.telemetry")
    link.start()
    pump_until(link, box, lambda: link.state == "refused")
    watched = time.monotonic()
    first = link.attempts
    while time.monotonic() - watched < 4.0:
        link.pump(box)
        time.sleep(0.05)
    link.stop(box)
    # Mosquitto answers a bad password with "not authorized", in v5 and in 3.1.1.
    assert link.report()["last_error"] == "refused: not authorized (0x87)"
    assert not link.connected and link.connects == 0
    assert link.attempts - first <= 6  # 4 s at waits of 0.5-2 s, growing: never a hot loop
    refusals = [r for r in caplog.records if "not authorized" in r.getMessage()]
    assert len(refusals) == 1  # logged once, not once per attempt


def test_the_password_can_come_from_a_file(broker: Broker, tmp_path: Path) -> None:
    _password_broker(broker, tmp_path)
    (tmp_path / "secret").write_text("right\n")
    config = parse_config(f'[telemetry]\nbroker = "{broker.url}"\nusername = "n1"\n'
                          'password_file = "secret"\n', config_dir=tmp_path)
    box = Outbox(tmp_path / "o.db")
    link = MqttLink(broker.url, TOPICS, username="n1",
                    password=config.telemetry.broker_password())
    link.start()
    pump_until(link, box, lambda: link.connected)
    link.stop(box)
    assert link.last_error is None and link.connects == 1


def test_a_stale_offline_of_an_older_session_is_answered_with_online(
        broker: Broker, tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    link = MqttLink(broker.url, TOPICS, session_file=tmp_path / "mqtt-session")
    link.start()
    pump_until(link, box, lambda: link.connected)
    assert link.session == 1

    def online_retained() -> bool:
        status = retained(broker, TOPICS.status, timeout=0.5)
        return status is not None and status["state"] == "online"

    # Our online is on the broker before the late Will comes: otherwise online simply wins.
    pump_until(link, box, online_retained)
    late_will = {"state": "offline", "session": 0, "version": "0"}  # e.g. through a bridge
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    publisher.connect("127.0.0.1", broker.port)
    publisher.loop_start()
    publisher.publish(TOPICS.status, json.dumps(late_will), qos=1,
                      retain=True).wait_for_publish(5)
    publisher.loop_stop()
    publisher.disconnect()
    pump_until(link, box, lambda: link.reasserted >= 1)
    deadline = time.monotonic() + 10
    status = None
    while time.monotonic() < deadline:
        link.pump(box)
        status = retained(broker, TOPICS.status, timeout=1)
        if status is not None and status["state"] == "online":
            break
    assert status is not None and status["state"] == "online" and status["session"] == 1
    assert status["outbox"]["pending"] == 0  # the status carries the outbox's loss report
    link.stop(box)
    relinked = MqttLink(broker.url, TOPICS, session_file=tmp_path / "mqtt-session")
    relinked.start()
    pump_until(relinked, box, lambda: relinked.connected)
    relinked.stop(box)
    assert relinked.session == 2  # a restart goes on counting: its Will is never "older"


def test_mqtt_311_is_accepted_and_requests_get_no_reply(
        broker: Broker, tmp_path: Path, subscriber_factory: Any) -> None:
    sub = subscriber_factory(TOPICS.telemetry)
    box = Outbox(tmp_path / "o.db")
    box.enqueue_telemetry(TOPICS.telemetry, {"i": 0})
    link = MqttLink(broker.url, TOPICS, protocol="3.1.1")
    link.start()
    pump_until(link, box, lambda: box.pending_count() == 0)
    status = retained(broker, TOPICS.status)
    assert status is not None and status["state"] == "online"
    # 3.1.1 has no response topic: a command cannot be answered.
    assert not link.reply(Inbound(TOPICS.cmd, b"{}", 1, False), b"{}")
    link.stop(box)
    sub.wait_for(TOPICS.telemetry, lambda m: m["seq"] == 0)


def test_a_reply_to_a_wildcard_response_topic_is_not_published(tmp_path: Path) -> None:
    link = MqttLink("mqtt://127.0.0.1:1", TOPICS)  # never started
    for topic in ("replies/#", "replies/+/x", ""):
        assert not link.reply(Inbound(TOPICS.cmd, b"{}", 1, False, topic, b"c"), b"{}")


def test_a_session_counter_that_cannot_be_stored_or_read_never_stops_the_link(
        tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    counter = SessionCounter(blocked / "session")  # its directory cannot be made
    first = counter.next()  # in memory, not raised
    assert counter.next() == first + 1
    assert counter.store_error is not None
    torn = tmp_path / "session"
    torn.write_text("")
    assert SessionCounter(torn).next() > 1_000_000_000  # above any number used before


def test_parked_rows_do_not_fill_the_outbox_for_good(tmp_path: Path) -> None:
    """A topic the ACL denies: its rows stay parked in the outbox, but they are evictable like
    any other row (the broker does not have them), and the link forgets the evicted ones."""
    box = Outbox(tmp_path / "o.db", max_rows=20)
    link = MqttLink("mqtt://127.0.0.1:1", TOPICS)  # never started
    for i in range(60):
        box.enqueue(TOPICS.events, b"denied %d" % i)
        row = box.pending(1, after_id=box.last_id() - 1)[0]
        box.in_flight.add(row.id)  # as _send leaves it
        link._park(row.id, "not authorized (0x87)", box)
        assert row.id not in box.in_flight
        assert len(link.rejected) <= box.pending_count() <= 20
    assert box.dropped > 0 and link.refused_topics == {TOPICS.events: 60}
