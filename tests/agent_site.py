"""A running ``edgeagent run`` on an emulated SmartShunt (``emulated_devices.smartshunt(90.0)``),
and an MQTT v5 requester: what the command and remote-config tests talk to."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from conftest import Broker, edgeagent_command
from edgeagent.infer.bundled import load_bundled_samples

CMD = "edgeagent/s1/n1/cmd"


def write_config(path: Path, broker: Broker, port: str, *, extra: str = "",
                 probation_ticks: int = 5) -> None:
    """Site s1/n1, a 0.2 s tick, telemetry every 0.2 s, an inbox with ``five.npy`` in it."""
    inbox = path.parent / "inbox"
    if not inbox.exists():
        inbox.mkdir()
        np.save(inbox / "five.npy", load_bundled_samples()[0][:5])
    path.write_text(f"""
[site]
id = "s1"
node = "n1"
[[power.devices]]
driver = "vedirect"
port = "{port}"
[governor]
tick_s = 0.2
[actuators]
min_interval_s = 0   # resume brings the workers back at once
[jobs]
inbox_dir = "{inbox}"
[telemetry]
broker = "{broker.url}"
interval_s = 0.2
outbox_path = "{path.parent / 'state' / 'outbox.db'}"
config_probation_ticks = {probation_ticks}
{extra}
""")


class Requester:
    """An MQTT v5 client that sends commands and collects replies by correlation data."""

    def __init__(self, broker: Broker) -> None:
        self.reply_topic = f"test/replies/{uuid.uuid4().hex}"
        self.replies: dict[bytes, dict[str, Any]] = {}
        self.plain: list[dict[str, Any]] = []  # replies on <node>/cmd/reply
        self._lock = threading.Lock()
        ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.on_connect = lambda c, *a: c.subscribe(
            [(self.reply_topic, 1), (f"{CMD}/reply", 1)])
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        assert ready.wait(10), "requester could not subscribe"

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        body = json.loads(msg.payload)
        with self._lock:
            if msg.topic == self.reply_topic:
                correlation = getattr(msg.properties, "CorrelationData", None)
                self.replies[bytes(correlation or b"")] = body
            else:
                self.plain.append(body)

    def send(self, payload: bytes, *, user_properties: list[tuple[str, str]] | None = None,
             respond: bool = True, topic: str = CMD) -> bytes:
        """Publish a request; returns its correlation data."""
        correlation = uuid.uuid4().bytes
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if respond:
            props.ResponseTopic = self.reply_topic
            props.CorrelationData = correlation
        for name, value in user_properties or []:
            props.UserProperty = (name, value)
        self.client.publish(topic, payload, qos=1, properties=props).wait_for_publish(10)
        return correlation

    def wait(self, correlation: bytes, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if correlation in self.replies:
                    return self.replies.pop(correlation)
            time.sleep(0.02)
        raise AssertionError(f"no reply within {timeout} s")

    def ask(self, body: dict[str, Any] | bytes, **kwargs: Any) -> dict[str, Any]:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.wait(self.send(payload, **kwargs))

    def status(self) -> dict[str, Any]:
        reply = self.ask({"cmd": "status"})
        assert reply["ok"], reply
        return dict(reply["result"])

    def until(self, predicate: Any, timeout: float = 30.0) -> dict[str, Any]:
        """The first status that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        status = self.status()
        while not predicate(status):
            assert time.monotonic() < deadline, f"status never matched: {status}"
            time.sleep(0.1)
            status = self.status()
        return status

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Agent:
    """``edgeagent run --config PATH`` in a subprocess."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.proc = subprocess.Popen([*edgeagent_command(), "run", "--config", str(config)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)

    def ready(self, requester: Requester, timeout: float = 60.0,
              sign: Callable[[bytes], list[tuple[str, str]]] | None = None) -> None:
        """Answering commands (signed by ``sign``) with fresh power data: the shunt's 90 %."""
        deadline = time.monotonic() + timeout
        request = b'{"cmd": "status"}'
        while True:
            assert self.proc.poll() is None, self.proc.stderr and self.proc.stderr.read()
            correlation = requester.send(request, user_properties=sign and sign(request))
            try:
                status = requester.wait(correlation, timeout=2.0)["result"]
            except AssertionError:
                status = None
            if status is not None and status["power"].get("battery_soc_pct") == 90.0:
                return
            assert time.monotonic() < deadline, "the agent did not come up"

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
