"""``edgeagent fleet``: every node the broker knows, in one table, from what the nodes publish.

It listens to ``<root>/+/+/status`` (retained: every node that ever connected shows up at once)
and ``<root>/+/+/telemetry``. The ``seq`` gaps are counted by the viewer itself: values missing
between the lowest and highest ``seq`` it received from a node (a backlog replayed late fills
its gap); ``dropped`` is what the node itself reports it had to drop from its outbox (rows of
every kind) and ``lost`` the telemetry ``seq`` values it reports it never sent (dropped or
thinned): gaps beyond ``lost`` went missing between the node and the viewer. jobs/h
is the rate of the node's job counters (built-in batches and queued jobs done) over the last
hour of its own timestamps.
"""

from __future__ import annotations

import bisect
import json
import math
import queue
import ssl
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, TextIO

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edgeagent.config import TelemetryConfig
from edgeagent.telemetry.address import BrokerAddress
from edgeagent.telemetry.mqtt import AttemptClient, reason_text
from edgeagent.telemetry.tls import client_context, tls_failure

RATE_WINDOW_S = 3600.0
MAX_SEQ_RANGES = 1024  # per node


class SeqRanges:
    """The ``seq`` values seen, as merged ranges: bounded memory on a long watch.

    Every gap is a range of its own (a node that thins its backlog leaves one per summary),
    so beyond ``max_ranges`` the two oldest ranges are merged and their gap counted in
    ``forgotten``: still missing, but no longer filled if those seqs arrive after all."""

    def __init__(self, max_ranges: int = MAX_SEQ_RANGES) -> None:
        self.ranges: list[list[int]] = []  # sorted, disjoint, non-adjacent [first, last]
        self.max_ranges = max_ranges
        self.forgotten = 0  # missing seqs inside merged ranges

    def add(self, seq: int) -> None:
        r = self.ranges
        i = bisect.bisect_left(r, seq - 1, key=lambda x: x[1])  # first range reaching seq-1
        if i == len(r) or r[i][0] > seq + 1:
            r.insert(i, [seq, seq])
        else:
            r[i][0], r[i][1] = min(r[i][0], seq), max(r[i][1], seq)
            if i + 1 < len(r) and r[i + 1][0] <= r[i][1] + 1:
                r[i][1] = max(r[i][1], r[i + 1][1])
                del r[i + 1]
        if len(r) > self.max_ranges:
            self.forgotten += r[1][0] - r[0][1] - 1
            r[1][0] = r[0][0]
            del r[0]

    @property
    def missing(self) -> int:
        return self.forgotten + sum(b[0] - a[1] - 1 for a, b in zip(self.ranges, self.ranges[1:],
                                                                     strict=False))


@dataclass
class NodeRow:
    site: str
    node: str
    online: bool | None = None
    last_seen: float | None = None  # viewer's monotonic clock
    soc_pct: float | None = None
    pv_w: float | None = None
    level: float | None = None
    j_per_inference: float | None = None
    dropped: int | None = None
    lost: int | None = None
    telemetry: int = 0
    seqs: SeqRanges = field(default_factory=SeqRanges)
    jobs: deque[tuple[float, int]] = field(default_factory=deque)  # (node ts, jobs counter)

    @property
    def jobs_per_h(self) -> float | None:
        if len(self.jobs) < 2:
            return None
        (t0, n0), (t1, n1) = self.jobs[0], self.jobs[-1]
        return (n1 - n0) / (t1 - t0) * 3600 if t1 > t0 else None

    def count_jobs(self, ts: float, total: int) -> None:
        if self.jobs and (total < self.jobs[-1][1] or ts < self.jobs[-1][0]):
            self.jobs.clear()  # the node restarted its counter (or its clock jumped)
        self.jobs.append((ts, total))
        while ts - self.jobs[0][0] > RATE_WINDOW_S:
            self.jobs.popleft()

    def as_dict(self, now: float) -> dict[str, Any]:
        return {"site": self.site, "node": self.node, "online": self.online,
                "soc_pct": self.soc_pct, "pv_w": self.pv_w, "level": self.level,
                "jobs_per_h": self.jobs_per_h, "j_per_inference": self.j_per_inference,
                "last_seen_s": None if self.last_seen is None else round(now - self.last_seen, 1),
                "telemetry": self.telemetry, "seq_gaps": self.seqs.missing,
                "dropped": self.dropped, "lost": self.lost}


def dropped_total(outbox: Any) -> int | None:
    """Rows a node's outbox dropped, from its telemetry ``outbox`` section (per kind)."""
    dropped = outbox.get("dropped") if isinstance(outbox, dict) else None
    if isinstance(dropped, dict):
        counts = [_number(n) for n in dropped.values()]
        return None if None in counts else int(sum(n for n in counts if n is not None))
    return int(dropped) if isinstance(dropped, int) and not isinstance(dropped, bool) else None


def lost_total(outbox: Any) -> int | None:
    """Telemetry seqs a node reports it never sent: its ``lost_seq`` ranges and the ones
    too old to be listed."""
    if not isinstance(outbox, dict) or not isinstance(outbox.get("lost_seq"), list):
        return None
    listed = 0
    for r in outbox["lost_seq"]:
        if not (isinstance(r, list) and len(r) == 2 and all(isinstance(x, int) for x in r)):
            return None  # not what a node sends: shown as unknown, not a crash of the viewer
        listed += int(r[1]) - int(r[0]) + 1
    forgotten = outbox.get("lost_seq_forgotten")
    return listed + (int(forgotten) if isinstance(forgotten, int) else 0)


def _number(x: Any) -> float | None:
    """A finite JSON number (JSON from Python may say NaN or Infinity), or None."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    try:
        value = float(x)  # an int too large for a float raises
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


class FleetView:
    def __init__(self, root: str = "edgeagent") -> None:
        self.root = root
        self.nodes: dict[tuple[str, str], NodeRow] = {}

    @property
    def filters(self) -> tuple[str, str]:
        return f"{self.root}/+/+/status", f"{self.root}/+/+/telemetry"

    def observe(self, topic: str, payload: bytes, now: float) -> None:
        """Take one message in; anything that is not a node's JSON object is ignored."""
        levels = topic[len(self.root) + 1:].split("/") if topic.startswith(self.root + "/") \
            else []
        if len(levels) != 3 or levels[2] not in ("status", "telemetry"):
            return
        try:
            body = json.loads(payload)
        except (UnicodeDecodeError, ValueError):
            return
        if not isinstance(body, dict):
            return
        site, node, kind = levels
        row = self.nodes.setdefault((site, node), NodeRow(site, node))
        if kind == "status":
            row.online = body.get("state") == "online"
            if row.online:
                row.last_seen = now
            return
        row.last_seen = now
        row.telemetry += 1
        if isinstance(body.get("seq"), int):
            row.seqs.add(body["seq"])
        power = body.get("power") or {}
        decision = body.get("decision") or {}
        workload = body.get("workload") or {}
        row.soc_pct = _number(power.get("battery_soc_pct"))
        row.pv_w = _number(power.get("pv_power_w"))
        row.level = _number(decision.get("level"))
        row.j_per_inference = _number(workload.get("j_per_inference"))
        outbox = body.get("outbox")
        row.dropped = dropped_total(outbox)
        row.lost = lost_total(outbox)
        jobs = _number(workload.get("jobs"))
        done = _number((body.get("queue") or {}).get("done"))
        ts = _number(body.get("ts"))
        if ts is not None and (jobs is not None or done is not None):
            row.count_jobs(ts, int((jobs or 0) + (done or 0)))

    def snapshot(self, now: float) -> list[dict[str, Any]]:
        return [self.nodes[k].as_dict(now) for k in sorted(self.nodes)]


def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def render(rows: list[dict[str, Any]]) -> str:
    """The table as text, one line per node."""
    head = (f"{'site':<12} {'node':<12} {'online':<7} {'SoC %':>6} {'PV W':>7} {'level':>6} "
            f"{'jobs/h':>8} {'J/inf':>9} {'seen':>7} {'seq gaps':>8} {'lost':>6} "
            f"{'dropped':>8}")
    lines = [head]
    for r in rows:
        online = {True: "yes", False: "no", None: "?"}[r["online"]]
        seen = "-" if r["last_seen_s"] is None else f"{r['last_seen_s']:.0f}s"
        lines.append(
            f"{r['site']:<12} {r['node']:<12} {online:<7} {_cell(r['soc_pct'], '6.1f')} "
            f"{_cell(r['pv_w'], '7.1f')} {_cell(r['level'], '6.2f')} "
            f"{_cell(r['jobs_per_h'], '8.0f')} {_cell(r['j_per_inference'], '9.2e')} "
            f"{seen:>7} {r['seq_gaps']:>8} {_cell(r['lost'], '6d')} "
            f"{_cell(r['dropped'], '8d')}")
    if not rows:
        lines.append("(no node seen yet)")
    return "\n".join(lines)


@dataclass
class _Connection:
    """What paho's thread learned about the connection (its callbacks write it)."""

    connected: bool = False
    was_connected: bool = False  # then a failed reconnect is paho's to retry, not an exit
    refusal: str | None = None  # this attempt's: from the CONNACK, or a TLS alert in the log


class CannotLoad(Exception):
    """A validated TLS or password file that cannot be used (unreadable, not PEM, not text)."""


def _client(config: TelemetryConfig, address: BrokerAddress) -> AttemptClient:
    """A paho client with the TLS and the credentials of ``config``, applied as the agent's
    MQTT link applies them. Raises ``CannotLoad`` naming the file it cannot use."""
    client = AttemptClient(CallbackAPIVersion.VERSION2,
                           protocol=mqtt.MQTTv5 if config.protocol == "5" else mqtt.MQTTv311,
                           transport=address.transport)  # type: ignore[arg-type]
    if address.tls:
        try:
            client.tls_set_context(client_context(config.tls))
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            where = getattr(exc, "filename", None)
            raise CannotLoad(f"the TLS files{f' ({where})' if where else ''}: {exc}") from exc
        if config.tls is not None and config.tls.insecure:
            client.tls_insecure_set(True)
    if config.username is not None:
        try:
            password = config.broker_password()
        except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
            raise CannotLoad(f"the password_file ({config.password_file}): {exc}") from exc
        client.username_pw_set(config.username, password)
    return client


def run_fleet(config: TelemetryConfig, *, once: bool, as_json: bool, window_s: float,
              out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Watch ``config.broker`` under ``config.topic_root``, with the config's credentials and
    TLS; ``once``: print one snapshot after ``window_s`` and exit.

    Returns 0 when done (or interrupted), 1 when the broker cannot be reached or refuses the
    connection (bad credentials, a TLS handshake one side rejects: said in one line on ``err``
    and not retried), 2 when the password or TLS files cannot be loaded."""
    out, err = out or sys.stdout, err or sys.stderr  # at call time: tests swap them
    if config.broker is None:
        raise ValueError("run_fleet needs a broker")
    broker, root = config.broker, config.topic_root
    address = BrokerAddress.parse(broker)
    try:
        client = _client(config, address)
    except CannotLoad as exc:
        print(f"edgeagent fleet: cannot load {exc}", file=err)
        return 2
    view = FleetView(root)
    # (kind, text, payload): message (topic), suback, lost, refused, unreachable (why)
    events: queue.Queue[tuple[str, str, bytes]] = queue.Queue()
    link = _Connection()

    def on_connect(c: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags,
                   reason_code: ReasonCode, properties: Properties | None) -> None:
        if reason_code.is_failure:  # the broker closes the connection next
            link.refusal = reason_text(reason_code)
            return
        link.connected = link.was_connected = True
        for topic_filter in view.filters:
            c.subscribe(topic_filter, qos=1)

    def on_pre_connect(c: mqtt.Client, userdata: Any) -> None:
        link.refusal = None  # each attempt answers for itself

    def on_disconnect(c: mqtt.Client, userdata: Any, flags: mqtt.DisconnectFlags,
                      reason_code: ReasonCode, properties: Properties | None) -> None:
        if link.connected:
            link.connected = False
            events.put(("lost", reason_text(reason_code), b""))
        elif not link.was_connected:  # the first connection never came: say why, once
            events.put(("refused", link.refusal or "the connection was closed before the "
                        f"broker accepted it (no CONNACK within {config.keepalive_s} s, or "
                        "closed by the broker)", b""))
        # after a first connection, a failed reconnect is paho's to retry

    def on_connect_fail(c: mqtt.Client, userdata: Any) -> None:
        error = client.attempt_error
        if not link.was_connected:
            reason = tls_failure(error) if isinstance(error, ssl.SSLError) else None
            events.put(("unreachable", reason or str(error), b""))

    def on_log(c: mqtt.Client, userdata: Any, level: int, message: str) -> None:
        """A TLS alert after the handshake (no client certificate, one the broker does not
        trust) reaches us only as paho's log line of the failed read."""
        if level == mqtt.MQTT_LOG_ERR and not link.connected and link.refusal is None:
            link.refusal = tls_failure(message)

    client.reconnect_delay_set(1, 10)  # a viewer is watched: back soon after a broker restart
    client.on_pre_connect = on_pre_connect
    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_connect_fail = on_connect_fail
    client.on_log = on_log
    client.on_subscribe = lambda *args: events.put(("suback", "", b""))
    client.on_message = lambda c, u, msg: events.put(("message", msg.topic, bytes(msg.payload)))
    # From paho's thread, as the agent's link does: a TLS alert after the handshake is read
    # there, whereas connect() would write CONNECT at once and see a bare EOF.
    client.connect_async(address.host, address.port, config.keepalive_s)
    client.loop_start()
    live = not once and out.isatty()
    start = time.monotonic()
    next_draw = start + (window_s if once else 1.0)
    subacks = 0
    try:
        while True:
            try:
                kind, text, payload = events.get(timeout=0.1)
                if kind == "message":
                    view.observe(text, payload, time.monotonic())
                elif kind == "suback":
                    subacks += 1
                    if subacks == len(view.filters):
                        print(f"edgeagent fleet: watching {root}/+/+ on {broker}", file=err,
                              flush=True)
                elif kind == "refused":  # paho would retry: we say why once and stop
                    print(f"edgeagent fleet: {broker} refused the connection: {text}",
                          file=err, flush=True)
                    return 1
                elif kind == "unreachable":
                    print(f"edgeagent fleet: cannot connect to {broker}: {text}", file=err,
                          flush=True)
                    return 1
                else:
                    print(f"edgeagent fleet: connection to {broker} lost: {text}; "
                          "reconnecting", file=err, flush=True)
            except queue.Empty:
                pass
            now = time.monotonic()
            if now < next_draw:
                continue
            if once and not link.was_connected:  # a broker that never answers: no hang
                print(f"edgeagent fleet: {broker} did not accept the connection within "
                      f"{window_s:g} s", file=err, flush=True)
                return 1
            rows = view.snapshot(now)
            text = json.dumps(rows) if as_json else render(rows)
            if live:
                text = "\x1b[H\x1b[2J" + text  # home and clear: a plain redraw
            print(text, file=out, flush=True)
            if once:
                return 0
            next_draw = now + 1.0 if live else now + window_s
    except KeyboardInterrupt:
        return 0
    finally:
        client.disconnect()  # while the loop runs, so that it sends DISCONNECT and closes
        client.loop_stop()
