"""The MQTT link: moves outbox rows to the broker, keeps the retained online/offline status,
and hands inbound messages (commands, desired config, jobs) to their handlers.

paho-mqtt 2.x with ``CallbackAPIVersion.VERSION2`` runs its own network thread; its callbacks
only put events on a queue. The agent's main thread calls ``pump()``, which owns the outbox:
it deletes a row only after the broker's PUBACK and keeps a bounded window in flight. Within a
process paho itself resends unacknowledged QoS 1 messages after a reconnect, so the window
survives reconnects; across restarts the outbox resends what was never acknowledged.

Inbound messages are acknowledged by hand (``manual_ack``): only after their handler returned
on the main thread, so a job that arrives is in the SQLite queue before the broker forgets it.
A handler that cannot take a message now raises ``Defer``: no PUBACK, the broker redelivers it
when the session resumes. Any other exception is a bug in the handler, counted in
``handler_errors`` and acknowledged, so one poisonous message cannot wedge the link.
"""

from __future__ import annotations

import contextlib
import json
import queue
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edgeagent import __version__
from edgeagent.telemetry.address import BrokerAddress
from edgeagent.telemetry.outbox import Outbox


@dataclass(frozen=True)
class Topics:
    root: str
    site: str
    node: str

    def _node(self, leaf: str) -> str:
        return f"{self.root}/{self.site}/{self.node}/{leaf}"

    @property
    def status(self) -> str:
        return self._node("status")

    @property
    def telemetry(self) -> str:
        return self._node("telemetry")

    @property
    def events(self) -> str:
        return self._node("events")

    @property
    def cmd(self) -> str:
        return self._node("cmd")

    @property
    def config_desired(self) -> str:
        return self._node("config/desired")

    @property
    def config_reported(self) -> str:
        return self._node("config/reported")

    @property
    def results(self) -> str:
        """Results of jobs taken from the job topics, each with its job id."""
        return self._node("results")

    @property
    def site_jobs(self) -> str:
        return f"{self.root}/{self.site}/jobs"

    @property
    def fleet_jobs(self) -> str:
        return f"{self.root}/fleet/jobs"


@dataclass(frozen=True)
class Inbound:
    """A message the broker delivered, as its handler sees it on the main thread."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    response_topic: str | None = None  # MQTT v5 request/response
    correlation_data: bytes | None = None
    user_properties: tuple[tuple[str, str], ...] = ()


Handler = Callable[[Inbound], None]


class Defer(Exception):
    """Raised by a handler that cannot take the message now: it stays unacknowledged."""


@dataclass(frozen=True)
class _Subscription:
    topic_filter: str
    handler: Handler
    qos: int
    share_group: str | None

    @property
    def wire_filter(self) -> str:
        """What goes in SUBSCRIBE: shared subscriptions deliver with the real topic."""
        if self.share_group is None:
            return self.topic_filter
        return f"$share/{self.share_group}/{self.topic_filter}"


class MqttLink:
    def __init__(self, url: str, topics: Topics, *, client_id: str | None = None,
                 username: str | None = None, password: str | None = None,
                 window: int = 20, keepalive_s: int = 30) -> None:
        self.address = BrokerAddress.parse(url)
        self.topics = topics
        self.window = window
        self.keepalive_s = keepalive_s
        self.session = uuid.uuid4().hex[:12]  # tells a late Will of an old session from ours
        self.connected = False
        self.published = 0  # rows the broker acknowledged
        self.rejected: set[int] = set()  # rows the broker refused (e.g. ACL): kept, not resent
        self._events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._inflight: dict[int, int] = {}  # paho mid -> outbox row id
        self._sent_upto = 0
        self._status_mids: set[int] = set()
        self._subscriptions: dict[str, _Subscription] = {}
        self.handler_errors = 0
        self.last_handler_error: str | None = None
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"edgeagent-{topics.site}-{topics.node}",
            protocol=mqtt.MQTTv5,
            transport=self.address.transport,  # type: ignore[arg-type]
            manual_ack=True,
        )
        if self.address.tls:
            self.client.tls_set()
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.max_inflight_messages_set(window)
        self.client.reconnect_delay_set(min_delay=1, max_delay=60)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.client.will_set(topics.status, self._status("offline"), qos=1, retain=True)

    def _status(self, state: str) -> bytes:
        body = {"state": state, "session": self.session, "version": __version__, "ts": time.time()}
        return json.dumps(body, separators=(",", ":")).encode()

    # paho callbacks: network thread; they only hand events to the main thread.
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags,
                    reason_code: ReasonCode, properties: Properties | None) -> None:
        if not reason_code.is_failure:
            self._events.put(("connected", None))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: mqtt.DisconnectFlags,
                       reason_code: ReasonCode, properties: Properties | None) -> None:
        self._events.put(("disconnected", None))

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int,
                    reason_code: ReasonCode, properties: Properties | None) -> None:
        self._events.put(("ack", (mid, reason_code.is_failure)))

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        inbound = Inbound(
            msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain),
            getattr(props, "ResponseTopic", None), getattr(props, "CorrelationData", None),
            tuple(getattr(props, "UserProperty", ()) or ()))
        self._events.put(("message", (inbound, msg.mid)))

    def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1, *,
                  share_group: str | None = None) -> None:
        """Deliver messages matching ``topic_filter`` to ``handler`` (on the main thread, in
        ``pump``), now and after every reconnect. With ``share_group`` the broker hands each
        message to one member of the group (MQTT v5 shared subscription)."""
        sub = _Subscription(topic_filter, handler, qos, share_group)
        self._subscriptions[topic_filter] = sub
        if self.connected:
            self.client.subscribe(sub.wire_filter, qos)

    def unsubscribe(self, topic_filter: str) -> None:
        sub = self._subscriptions.pop(topic_filter, None)
        if sub is not None and self.connected:
            self.client.unsubscribe(sub.wire_filter)

    def subscribed(self, topic_filter: str) -> bool:
        return topic_filter in self._subscriptions

    def reply(self, request: Inbound, payload: bytes) -> bool:
        """Answer a request on its MQTT v5 response topic with its correlation data (QoS 1,
        not through the outbox: a reply nobody waits for any more is not worth keeping).
        False when the request named no response topic."""
        if not request.response_topic:
            return False
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if request.correlation_data is not None:
            props.CorrelationData = request.correlation_data
        self.client.publish(request.response_topic, payload, 1, False, properties=props)
        return True

    def _dispatch(self, inbound: Inbound, mid: int) -> None:
        for sub in list(self._subscriptions.values()):
            if mqtt.topic_matches_sub(sub.topic_filter, inbound.topic):
                try:
                    sub.handler(inbound)
                except Defer:
                    return  # no PUBACK: the broker keeps it for this session
                except Exception as exc:  # a handler bug must not stop the link
                    self.handler_errors += 1
                    self.last_handler_error = f"{inbound.topic}: {exc!r}"
                break
        if inbound.qos > 0:
            self.client.ack(mid, inbound.qos)

    def start(self) -> None:
        """Connect in the background: a broker that is down at boot must not stop the agent."""
        time.sleep(random.uniform(0, 0.2))  # jitter: a fleet restarting at once must not stampede
        self.client.connect_async(self.address.host, self.address.port, self.keepalive_s)
        self.client.loop_start()

    def pump(self, outbox: Outbox) -> None:
        """Handle what the network thread reported, then fill the in-flight window."""
        acked: list[int] = []
        while True:
            try:
                kind, data = self._events.get_nowait()
            except queue.Empty:
                break
            if kind == "connected":
                self.connected = True
                for sub in self._subscriptions.values():
                    self.client.subscribe(sub.wire_filter, sub.qos)
                info = self.client.publish(self.topics.status, self._status("online"), 1, True)
                self._status_mids.add(info.mid)
            elif kind == "disconnected":
                self.connected = False
            elif kind == "message":
                self._dispatch(*data)
            elif kind == "ack":
                mid, failed = data
                row_id = self._inflight.pop(mid, None)
                if row_id is None:
                    self._status_mids.discard(mid)
                elif failed:
                    self.rejected.add(row_id)  # stays in the outbox; retried after a restart
                else:
                    acked.append(row_id)
        if acked:
            outbox.ack(acked)
            self.published += len(acked)
        if not self.connected:
            return
        room = self.window - len(self._inflight)
        if room <= 0:
            return
        for row in outbox.pending(room, after_id=self._sent_upto):
            info = self.client.publish(row.topic, row.payload, row.qos, row.retain)
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                break  # not queued by paho: try again on the next pump
            self._inflight[info.mid] = row.id
            self._sent_upto = row.id

    def stop(self, outbox: Outbox, flush_timeout_s: float = 5.0) -> None:
        """Flush what the link allows, publish ``offline`` ourselves (the Will does not fire on a
        clean disconnect), then disconnect."""
        deadline = time.monotonic() + flush_timeout_s
        while time.monotonic() < deadline:
            self.pump(outbox)
            if not self.connected or (
                    not self._inflight and outbox.pending_count() <= len(self.rejected)):
                break
            time.sleep(0.02)
        if self.connected:
            info = self.client.publish(self.topics.status, self._status("offline"), 1, True)
            # If the link went away meanwhile, the broker sends our Will instead.
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout=max(deadline - time.monotonic(), 1.0))
        self.client.disconnect()
        self.client.loop_stop()
        self.pump(outbox)
