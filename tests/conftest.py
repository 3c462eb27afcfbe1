"""Shared fixtures: a real Mosquitto broker on a private port, and an MQTT subscriber."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion


def edgeagent_command() -> list[str]:
    """The installed console script, so subprocesses test what a user runs (not the source
    tree, which ``python -m`` from the checkout would import instead)."""
    script = Path(sys.executable).parent / "edgeagent"
    return [str(script)] if script.exists() else [sys.executable, "-m", "edgeagent"]


def mosquitto_binary() -> str:
    """Mosquitto on the PATH or in /usr/sbin; the test fails saying how to install it."""
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto"
                                          if Path("/usr/sbin/mosquitto").exists() else None)
    if found is None:
        pytest.fail("mosquitto is not installed: run the README's test command "
                    "(./scripts/test), which installs it, or `apt-get install mosquitto`")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Broker:
    """A private Mosquitto: its own directory, port and process, killable and restartable."""

    directory: Path
    port: int
    binary: str
    process: subprocess.Popen[bytes] | None = None
    extra_config: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        conf = self.directory / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true",
                 "persistence false", f"log_dest file {self.directory / 'mosquitto.log'}"]
        if os.geteuid() == 0:
            lines.append("user root")
        lines += self.extra_config
        conf.write_text("\n".join(lines) + "\n")
        self.process = subprocess.Popen([self.binary, "-c", str(conf)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.process.poll() is not None:
                    break
                time.sleep(0.05)
        log = (self.directory / "mosquitto.log")
        raise RuntimeError("mosquitto did not start: "
                           + (log.read_text() if log.exists() else "no log"))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "broker", free_port(), mosquitto_binary())
    b.directory.mkdir()
    b.start()
    yield b
    b.stop()


@dataclass
class Subscriber:
    """Records every message on a topic filter, retained ones included."""

    broker: Broker
    topic: str
    messages: list[tuple[str, bytes, bool]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_connect = lambda c, *a: c.subscribe(self.topic, qos=1)
        self.client.connect("127.0.0.1", self.broker.port)
        self.client.loop_start()
        assert self._subscribed.wait(10), "subscriber could not subscribe"

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))

    def on(self, topic: str) -> list[bytes]:
        with self.lock:
            return [p for t, p, _ in self.messages if t == topic]

    def json_on(self, topic: str) -> list[dict[str, Any]]:
        return [json.loads(p) for p in self.on(topic)]

    def wait_for(self, topic: str, predicate: Any, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for body in self.json_on(topic):
                if predicate(body):
                    return body
            time.sleep(0.05)
        raise AssertionError(f"no message on {topic} matched within {timeout} s: "
                             f"{self.json_on(topic)[-3:]}")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def subscriber_factory(broker: Broker) -> Iterator[Any]:
    made: list[Subscriber] = []

    def make(topic: str) -> Subscriber:
        s = Subscriber(broker, topic)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def retained(broker: Broker, topic: str, timeout: float = 5.0) -> dict[str, Any] | None:
    """The retained message on ``topic`` as a fresh subscriber sees it (None if there is none)."""
    got: list[bytes] = []
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

    def on_message(c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.retain:
            got.append(msg.payload)
            done.set()

    client.on_message = on_message
    client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    done.wait(timeout)
    client.loop_stop()
    client.disconnect()
    return json.loads(got[-1]) if got else None
