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

The connection: MQTT v5 (3.1.1 accepted: no Will Delay, and requests carry no response topic or
correlation data, so commands get no replies), TLS and mutual TLS, username and password.
paho's thread reconnects; before each of its waits the link sets the wait itself, with
decorrelated jitter (``backoff``), so a refused connection (bad credentials, not authorized, a
TLS handshake the broker rejects) is retried slowly, reported in ``state`` and ``last_error``
and logged once per change, never hammered. Each attempt takes the next persistent session
number (``session``) for its Will and its ``online``; the link watches its own status topic and
says ``online`` again when it sees an older session's or an ``offline`` while connected, so a
late Will never has the last word. A publish the broker refuses (an ACL: PUBACK 0x87) parks its
row, counted per topic, instead of resending it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import random
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edgeagent import __version__
from edgeagent.config import MqttProtocol, TlsConfig
from edgeagent.telemetry.address import BrokerAddress
from edgeagent.telemetry.backoff import next_delay
from edgeagent.telemetry.outbox import Outbox, OutboxRow
from edgeagent.telemetry.session import SessionCounter
from edgeagent.telemetry.tls import client_context, tls_failure

log = logging.getLogger("edgeagent.telemetry")


ACK_BATCH = 100  # acknowledged rows deleted in one outbox transaction while rows stream


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
    def state(self) -> str:
        """Retained latest values for dashboards (Home Assistant's ``state_topic``)."""
        return self._node("state")

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


class AttemptClient(mqtt.Client):
    """paho's client, keeping why the last connection attempt failed: its threaded loop
    swallows that error and calls ``on_connect_fail`` without it."""

    attempt_error: OSError | None = None

    def reconnect(self) -> MQTTErrorCode:
        self.attempt_error = None
        try:
            return super().reconnect()
        except OSError as exc:
            self.attempt_error = exc
            raise


@dataclass
class _Attempt:
    """What the network thread learns about one connection attempt."""

    session: int
    connected: bool = False
    refusal: str | None = None  # from CONNACK, or a TLS alert seen in paho's log


class MqttLink:
    def __init__(self, url: str, topics: Topics, *, client_id: str | None = None,
                 username: str | None = None, password: str | None = None,
                 tls: TlsConfig | None = None, protocol: MqttProtocol = "5",
                 reconnect_min_s: float = 1.0, reconnect_max_s: float = 120.0,
                 will_delay_s: int = 5, session_file: Path | None = None,
                 window: int = 20, queue_depth: int = 200, keepalive_s: int = 30) -> None:
        """``session_file`` keeps the session counter across restarts (next to the outbox);
        None: in memory only. ``window``: QoS 1 messages in flight (paho's limit);
        ``queue_depth``: outbox rows handed to paho at once, the rest of them waiting in its
        memory queue, so each PUBACK refills the window from paho's own thread instead of a
        round trip through the main loop. They stay in the outbox until acknowledged."""
        self.address = BrokerAddress.parse(url)
        self.topics = topics
        self.window = window
        self.queue_depth = max(queue_depth, window)
        self.keepalive_s = keepalive_s
        self.v5 = protocol == "5"
        self.reconnect_s = (reconnect_min_s, reconnect_max_s)
        self._rng = random.Random()
        self._delay: float | None = None  # the last reconnect wait; None after a success
        self._sessions = SessionCounter(session_file)
        self._attempt: _Attempt | None = None  # network thread only
        self.session: int | None = None  # of the connection that is (or was last) up
        self.state = "connecting"  # connected, disconnected, unreachable, refused, stopped
        self.last_error: str | None = None
        self.attempts = 0  # connection attempts (written by the network thread only)
        self.connects = 0
        self.reasserted = 0  # times a stale status was answered with ``online`` again
        self.refused_topics: Counter[str] = Counter()  # parked rows per topic
        self._stopping = False
        self.connected = False
        self.published = 0  # rows the broker acknowledged
        # Rows the broker refused (e.g. ACL): kept, not resent; at most those still in the outbox.
        self.rejected: set[int] = set()
        self._events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._inflight: dict[int, int] = {}  # paho mid -> outbox row id
        self._sent_upto = 0  # rows up to this id were handed to paho (or are held as live)
        self._acked: list[int] = []  # acknowledged rows not yet deleted from the outbox
        self._backlog_budget: int | None = None  # backlog rows allowed now; None: no limit
        self._hold: tuple[int, int] | None = None  # (last backlog row, last live row sent)
        self._subscriptions: dict[str, _Subscription] = {}
        # Unsubscribed, but messages the broker sent before it saw the UNSUBSCRIBE still reach
        # their handler: acknowledging them unseen would lose them.
        self._retired: dict[str, _Subscription] = {}
        self.handler_errors = 0
        self.last_handler_error: str | None = None
        self.client = AttemptClient(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"edgeagent-{topics.site}-{topics.node}",
            protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311,
            transport=self.address.transport,  # type: ignore[arg-type]
            manual_ack=True,
        )
        if self.address.tls:
            self.client.tls_set_context(client_context(tls))
            if tls is not None and tls.insecure:
                self.client.tls_insecure_set(True)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.max_inflight_messages_set(window)
        self._will_props: Properties | None = None
        self._connect_props: Properties | None = None
        if self.v5 and will_delay_s > 0:
            # The Will waits for the delay only while the session lives: keep it that long.
            self._will_props = Properties(PacketTypes.WILLMESSAGE)  # type: ignore[no-untyped-call]
            self._will_props.WillDelayInterval = will_delay_s
            self._connect_props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            self._connect_props.SessionExpiryInterval = will_delay_s
        self.client.on_pre_connect = self._on_pre_connect
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_log = self._on_log
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message

    def _status(self, state: str, session: int | None,
                outbox: Outbox | None = None) -> bytes:
        """The retained status body; with ``outbox``, what it holds and what it lost."""
        body: dict[str, Any] = {"state": state, "session": session, "version": __version__}
        if outbox is not None:
            body["ts"] = time.time()
            body["outbox"] = outbox.report()  # pending, drops, lost seq ranges
        return json.dumps(body, separators=(",", ":")).encode()

    def report(self) -> dict[str, Any]:
        """The link's health for telemetry: connection state, why it is not up, refusals."""
        return {"state": self.state, "last_error": self.last_error, "session": self.session,
                "attempts": self.attempts, "connects": self.connects,
                "refused_rows": len(self.rejected), "refused_topics": dict(self.refused_topics),
                "status_reasserted": self.reasserted}

    # paho callbacks: network thread; they only hand events to the main thread.
    def _on_pre_connect(self, client: mqtt.Client, userdata: Any) -> None:
        """Before each attempt: the next session number, in the Will it registers."""
        self._attempt = _Attempt(self._sessions.next())
        self.attempts += 1
        client.will_set(self.topics.status, self._status("offline", self._attempt.session),
                        qos=1, retain=True, properties=self._will_props)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags,
                    reason_code: ReasonCode, properties: Properties | None) -> None:
        attempt = self._attempt
        assert attempt is not None
        if reason_code.is_failure:
            attempt.refusal = f"refused: {reason_text(reason_code)}"
        else:
            attempt.connected = True
            self._delay = None
            self._events.put(("connected", attempt.session))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: mqtt.DisconnectFlags,
                       reason_code: ReasonCode, properties: Properties | None) -> None:
        attempt = self._attempt
        if self._stopping:  # our own disconnect: nothing to report
            self._events.put(("disconnected", None))
            return
        if attempt is not None and attempt.connected:
            down = ("disconnected", f"connection lost: {reason_text(reason_code)}")
        elif attempt is not None and attempt.refusal is not None:
            down = ("refused", attempt.refusal)
        else:
            down = ("unreachable", "closed by the broker before it accepted the connection")
        self._down(*down)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        error = self.client.attempt_error
        refusal = tls_failure(error) if isinstance(error, ssl.SSLError) else None
        if refusal is not None:
            self._down("refused", refusal)
        else:
            self._down("unreachable", f"connect: {error}")

    def _on_log(self, client: mqtt.Client, userdata: Any, level: int, message: str) -> None:
        """A TLS alert after the handshake (no client certificate, one the broker does not
        trust) reaches us only as paho's log line of the failed read."""
        attempt = self._attempt
        if level == mqtt.MQTT_LOG_ERR and attempt is not None and attempt.refusal is None:
            attempt.refusal = tls_failure(message)

    def _down(self, state: str, error: str) -> None:
        """The attempt or connection ended: report it and set the wait before the next."""
        self._events.put(("disconnected", (state, error)))
        self._delay = next_delay(self._delay, *self.reconnect_s, self._rng)
        # paho waits its minimum after a reset; it takes float seconds despite its hints.
        self.client.reconnect_delay_set(self._delay, self._delay)  # type: ignore[arg-type]

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int,
                    reason_code: ReasonCode, properties: Properties | None) -> None:
        refused = reason_text(reason_code) if reason_code.is_failure else None
        self._events.put(("ack", (mid, refused)))

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
        self._retired.pop(topic_filter, None)
        if self.connected:
            self.client.subscribe(sub.wire_filter, qos)

    def unsubscribe(self, topic_filter: str) -> None:
        sub = self._subscriptions.pop(topic_filter, None)
        if sub is not None:
            self._retired[topic_filter] = sub
            if self.connected:
                self.client.unsubscribe(sub.wire_filter)

    def subscribed(self, topic_filter: str) -> bool:
        return topic_filter in self._subscriptions

    def publish_latest(self, topic: str, payload: bytes, retain: bool = True) -> bool:
        """Publish a latest value (discovery, dashboard state) now, QoS 1, not through the
        outbox: the next one replaces it, so one missed while offline is not worth keeping.
        False when not connected."""
        if not self.connected:
            return False
        self.client.publish(topic, payload, 1, retain)
        return True

    def reply(self, request: Inbound, payload: bytes) -> bool:
        """Answer a request on its MQTT v5 response topic with its correlation data (QoS 1,
        not through the outbox: a reply nobody waits for any more is not worth keeping).
        False when the request named no response topic, or one nobody can publish to (a
        wildcard: paho would raise, after the command ran)."""
        if not request.response_topic or not _publishable(request.response_topic):
            return False
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if request.correlation_data is not None:
            props.CorrelationData = request.correlation_data
        self.client.publish(request.response_topic, payload, 1, False, properties=props)
        return True

    def _dispatch(self, inbound: Inbound, mid: int) -> None:
        for sub in [*self._subscriptions.values(), *self._retired.values()]:
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
        time.sleep(self._rng.uniform(0, 0.2))  # a fleet restarting at once must not stampede
        self.client.connect_async(self.address.host, self.address.port, self.keepalive_s,
                                  properties=self._connect_props)
        self.client.loop_start()

    def network_alive(self) -> bool:
        """paho's network thread runs (from ``start`` until ``stop``): the watchdog's check."""
        thread = self.client._thread
        return thread is not None and thread.is_alive()

    def _set_state(self, state: str, error: str | None) -> None:
        if (state, error) == (self.state, self.last_error):
            return  # logged once per change, not once per attempt
        self.state, self.last_error = state, error
        if error is None:
            log.info("mqtt: connected to %s, session %s", self.address.host, self.session)
        else:
            log.warning("mqtt: %s", error)

    def _check_status(self, inbound: Inbound, outbox: Outbox) -> None:
        """Our status as the broker holds it: anything but our current ``online`` (a late
        Will, an older session's ``online``, an ``offline`` while we are up) is answered by
        saying ``online`` again."""
        if not self.connected or self._stopping or self.session is None:
            return
        try:
            body = json.loads(inbound.payload)
            state, session = body.get("state"), body.get("session")
        except (ValueError, AttributeError):
            state, session = None, None
        if state == "online" and isinstance(session, int) and session >= self.session:
            return
        self.reasserted += 1
        self._say_online(outbox)

    def _say_online(self, outbox: Outbox) -> None:
        self.client.publish(self.topics.status, self._status("online", self.session, outbox), 1,
                            True)

    def _park(self, row_id: int, reason: str, outbox: Outbox) -> None:
        """The broker refused a row (an ACL): keep it, count it per topic, report it.

        It stays in the outbox, behind the send cursor (retried after a restart), but it is no
        longer in flight: the broker does not have it, so when the outbox is full it can be
        evicted (and counted) like any row, instead of filling the bound for good."""
        outbox.in_flight.discard(row_id)
        self.rejected.add(row_id)
        if len(self.rejected) > outbox.pending_count():  # some were evicted: forget those
            self.rejected &= outbox.existing(self.rejected)
        rows = outbox.pending(1, after_id=row_id - 1)
        topic = rows[0].topic if rows and rows[0].id == row_id else "?"
        self.refused_topics[topic] += 1
        self._set_state(self.state, f"publish refused: {reason} on {topic}")

    def allow_backlog(self, rows: int | None) -> None:
        """How many backlog rows the link may send until the next call (None: no limit), from
        the governor's drain policy (``edgeagent.telemetry.drain``). Rows queued after a limit
        began are live: they always go, ahead of the held backlog."""
        self._backlog_budget = rows

    def pump(self, outbox: Outbox) -> int:
        """Handle what the network thread reported, then fill the in-flight window; return how
        many rows were handed to paho."""
        acked: list[int] = []
        while True:
            try:
                kind, data = self._events.get_nowait()
            except queue.Empty:
                break
            if kind == "connected":
                self.connected = True
                self.session = data
                self.connects += 1
                self._set_state("connected", None)
                self._say_online(outbox)
                # After our online, so the retained status we are sent is normally that one.
                self.client.subscribe(self.topics.status, 1)
                for sub in self._subscriptions.values():
                    self.client.subscribe(sub.wire_filter, sub.qos)
            elif kind == "disconnected":
                self.connected = False
                if data is not None:
                    self._set_state(*data)
            elif kind == "message":
                inbound, mid = data
                if inbound.topic == self.topics.status:
                    self._check_status(inbound, outbox)
                    if inbound.qos > 0:
                        self.client.ack(mid, inbound.qos)
                else:
                    self._dispatch(inbound, mid)
            elif kind == "ack":
                mid, failed = data
                row_id = self._inflight.pop(mid, None)
                if row_id is None:  # status, a latest value or a reply: not from the outbox
                    continue
                if failed:
                    self._park(row_id, failed, outbox)
                else:
                    acked.append(row_id)
        self.published += len(acked)
        self._acked += acked
        if len(self._acked) >= ACK_BATCH or not self._inflight:
            self._flush_acks(outbox)
        if not self.connected:
            return 0
        return self._fill(outbox)

    def _fill(self, outbox: Outbox) -> int:
        """Hand paho rows up to ``queue_depth`` in row order; while the backlog is limited,
        live rows first."""
        room = self.queue_depth - len(self._inflight)
        if room <= 0:
            return 0
        if self._hold is None:
            if self._backlog_budget is None:
                sent = self._send(outbox, outbox.pending(room, after_id=self._sent_upto))
                self._sent_upto = sent[-1].id if sent else self._sent_upto
                return len(sent)
            start = max(self._sent_upto, outbox.last_id())
            self._hold = (start, start)
        start, live = self._hold
        budget = room if self._backlog_budget is None else min(room, self._backlog_budget)
        backlog = [r for r in outbox.pending(budget, after_id=self._sent_upto) if r.id <= start]
        sent = self._send(outbox, backlog)
        self._sent_upto = sent[-1].id if sent else self._sent_upto
        if self._backlog_budget is not None:
            self._backlog_budget -= len(sent)
        caught_up = len(sent) == len(backlog) < budget  # no backlog row left to send
        fresh = self._send(outbox, outbox.pending(room - len(sent), after_id=live))
        live = fresh[-1].id if fresh else live
        if caught_up:
            self._sent_upto, self._hold = live, None
        else:
            self._hold = (start, live)
        return len(sent) + len(fresh)

    def _flush_acks(self, outbox: Outbox) -> None:
        """Delete acknowledged rows, ``ACK_BATCH`` at a time while rows stream (or when nothing
        is in flight), so one transaction (one fsync) covers many PUBACKs. Until then they
        stay behind the send cursor: a crash only resends them (at least once)."""
        if self._acked:
            outbox.ack(self._acked)
            self._acked = []

    def _send(self, outbox: Outbox, rows: list[OutboxRow]) -> list[OutboxRow]:
        """Hand rows to paho in order; return those it took."""
        for n, row in enumerate(rows):
            info = self.client.publish(row.topic, row.payload, row.qos, row.retain)
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                return rows[:n]  # not queued by paho: try again on the next pump
            self._inflight[info.mid] = row.id
            outbox.in_flight.add(row.id)  # possibly delivered already: never evicted
        return rows

    def stop(self, outbox: Outbox, flush_timeout_s: float = 5.0) -> None:
        """Flush what the link allows, publish ``offline`` ourselves (the Will does not fire on a
        clean disconnect), then disconnect."""
        deadline = time.monotonic() + flush_timeout_s
        while time.monotonic() < deadline:
            sent = self.pump(outbox)
            if not self.connected or (not self._inflight and sent == 0):
                break  # all acknowledged, and nothing more the drain policy lets go
            time.sleep(0.02)
        self._stopping = True
        if self.connected:
            info = self.client.publish(self.topics.status,
                                       self._status("offline", self.session, outbox), 1, True)
            # If the link went away meanwhile, the broker sends our Will instead.
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout=max(deadline - time.monotonic(), 1.0))
        self.client.disconnect()
        self.client.loop_stop()
        self.pump(outbox)
        self._flush_acks(outbox)
        self.state = "stopped"  # last_error stays: why it was not up, if it was not


def _publishable(topic: str) -> bool:
    """A topic name a PUBLISH may carry: no wildcard, no NUL, at most 65535 bytes."""
    return not any(c in topic for c in "+#\0") and len(topic.encode()) <= 65535


def reason_text(code: ReasonCode) -> str:
    """``not authorized (0x87)``: a reason code as the logs and telemetry say it."""
    return f"{code.getName().lower()} (0x{code.value:02X})"
