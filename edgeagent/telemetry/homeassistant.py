"""Home Assistant MQTT discovery, device-based: the site operator sees the node in Home
Assistant without writing any YAML.

One retained ``<prefix>/device/<site>_<node>/config`` message declares the node as a device
with one entity per field of ``NodeState``; the values come in one retained JSON message on
``Topics.state``, refreshed with every telemetry message. Entities are available while the
node's retained ``status`` says ``online``: its Last Will marks them unavailable when the agent
dies. Discovery is sent on every connection and again whenever Home Assistant announces itself
(``online`` on ``<prefix>/status``), as Home Assistant recommends: a Home Assistant that
restarted, or a broker that lost its retained messages, gets the device back at once.
Both go straight to the link, not through the outbox: each replaces the one before.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict

from edgeagent import __version__
from edgeagent.power.source import PowerSource
from edgeagent.telemetry.fleet import dropped_total
from edgeagent.telemetry.mqtt import Inbound, MqttLink, Topics


@dataclass(frozen=True)
class Sensor:
    """How one ``NodeState`` field appears in Home Assistant."""

    name: str
    device_class: str | None = None
    unit: str | None = None
    state_class: str | None = "measurement"
    precision: int | None = None
    diagnostic: bool = False  # the agent's own health, not the site's power
    options: tuple[str, ...] = ()  # the values of an enum sensor


class NodeState(BaseModel):
    """The retained state message: every key always present, null when unknown (Home
    Assistant shows ``unknown``; a missing key would be a template error)."""

    model_config = ConfigDict(extra="forbid")

    pv_power_w: Annotated[float | None, Sensor("PV power", "power", "W", precision=1)]
    battery_soc_pct: Annotated[float | None, Sensor("Battery", "battery", "%", precision=0)]
    battery_voltage_v: Annotated[float | None,
                                 Sensor("Battery voltage", "voltage", "V", precision=2)]
    battery_current_a: Annotated[float | None,
                                 Sensor("Battery current", "current", "A", precision=2)]
    load_power_w: Annotated[float | None, Sensor("Load power", "power", "W", precision=1)]
    supply: Annotated[str | None, Sensor("Board supply", "enum", state_class=None,
                                         options=("ok", "under-voltage"))]
    yield_today_kwh: Annotated[float | None, Sensor("Solar yield today", "energy", "kWh",
                                                    "total_increasing", precision=2)]
    work_level_pct: Annotated[float | None, Sensor("Work level", unit="%", precision=0)]
    workers: Annotated[int | None, Sensor("Workers")]
    model: Annotated[str | None, Sensor("Model", state_class=None)]
    j_per_inference: Annotated[float | None,
                               Sensor("Energy per inference", unit="J", precision=6)]
    solar_share_pct: Annotated[float | None, Sensor("Solar share", unit="%", precision=0)]
    outbox_backlog: Annotated[int | None, Sensor("Outbox backlog", diagnostic=True)]
    outbox_dropped: Annotated[int | None, Sensor("Messages dropped", state_class="total_increasing",
                                                 diagnostic=True)]
    link: Annotated[str | None, Sensor("Link", "enum", state_class=None, diagnostic=True,
                                       options=("connected", "disconnected"))]


def sensors() -> dict[str, Sensor]:
    """Each state field's entity, read from the model's annotations."""
    out = {}
    for name, field in NodeState.model_fields.items():
        out[name] = next(m for m in field.metadata if isinstance(m, Sensor))
    return out


def _pct(x: Any) -> float | None:
    return None if x is None else round(float(x) * 100, 1)


def _supply(under_voltage: bool | None) -> str | None:
    """A Raspberry Pi's under-voltage flag; unknown on boards without one."""
    return None if under_voltage is None else "under-voltage" if under_voltage else "ok"


def node_state(telemetry: dict[str, Any], yield_today_kwh: float | None,
               connected: bool) -> NodeState:
    """The state Home Assistant shows, from a telemetry body (``Agent.telemetry``)."""
    power = telemetry.get("power", {})
    decision = telemetry.get("decision") or {}
    workload = telemetry.get("workload", {})
    outbox = telemetry.get("outbox", {})
    return NodeState(
        pv_power_w=power.get("pv_power_w"), battery_soc_pct=power.get("battery_soc_pct"),
        battery_voltage_v=power.get("battery_voltage_v"),
        battery_current_a=power.get("battery_current_a"),
        load_power_w=power.get("load_power_w"), yield_today_kwh=yield_today_kwh,
        supply=_supply(power.get("under_voltage")),
        work_level_pct=_pct(decision.get("level")), workers=decision.get("workers"),
        model=workload.get("model"), j_per_inference=workload.get("j_per_inference"),
        solar_share_pct=_pct(workload.get("solar_share")),
        outbox_backlog=outbox.get("pending"), outbox_dropped=dropped_total(outbox),
        link="connected" if connected else "disconnected")


def discovery(topics: Topics, prefix: str, *, board: str,
              support_url: str | None = None) -> tuple[str, dict[str, Any]]:
    """The device-based discovery topic and payload of one node."""
    object_id = f"{topics.site}_{topics.node}"
    base = f"edgeagent_{object_id}"
    components: dict[str, dict[str, Any]] = {}
    for key, s in sensors().items():
        c: dict[str, Any] = {"p": "sensor", "unique_id": f"{base}_{key}", "name": s.name,
                             "value_template": f"{{{{ value_json.{key} }}}}"}
        for option, value in (("device_class", s.device_class), ("unit_of_measurement", s.unit),
                              ("state_class", s.state_class),
                              ("suggested_display_precision", s.precision)):
            if value is not None:
                c[option] = value
        if s.options:
            c["options"] = list(s.options)
        if s.diagnostic:
            c["entity_category"] = "diagnostic"
        components[key] = c
    origin: dict[str, Any] = {"name": "edgeagent", "sw": __version__}
    if support_url:
        origin["url"] = support_url
    payload = {
        "dev": {"ids": [base], "name": f"edgeagent {topics.site}/{topics.node}",
                "mf": "edgeagent", "mdl": board, "sw": __version__},
        "o": origin,
        "cmps": components,
        "state_topic": topics.state,
        "availability": [{"topic": topics.status, "value_template": "{{ value_json.state }}",
                          "payload_available": "online", "payload_not_available": "offline"}],
        "qos": 1,
    }
    return f"{prefix}/device/{object_id}/config", payload


class HomeAssistant:
    def __init__(self, link: MqttLink, prefix: str, *, board: str,
                 sources: Sequence[PowerSource] = (), support_url: str | None = None) -> None:
        """``sources``: the power devices, for the solar yield of the day they report."""
        self.link = link
        self.prefix = prefix
        self.sources = sources
        self.topic, payload = discovery(link.topics, prefix, board=board,
                                        support_url=support_url)
        self._config = json.dumps(payload, separators=(",", ":")).encode()
        self._state: bytes | None = None
        self._announced: int | None = None  # the link's connection count when announced
        self.announcements = 0
        link.subscribe(f"{prefix}/status", self._on_birth)

    def _on_birth(self, message: Inbound) -> None:
        if message.payload.strip() == b"online":
            self._announced = None
            self.tick()

    @property
    def announced(self) -> bool:
        """Announced on the current connection: one that dropped and came back between two
        ticks (a broker restart, which may have lost its retained messages) is a new one."""
        return self.link.connected and self._announced == self.link.connects

    def tick(self) -> None:
        """Announce once per connection (and after a Home Assistant birth), then the state."""
        if not self.announced and self.link.publish_latest(self.topic, self._config):
            self._announced = self.link.connects
            self.announcements += 1
            if self._state is not None:
                self.link.publish_latest(self.link.topics.state, self._state)

    def update(self, telemetry: dict[str, Any]) -> None:
        """Publish the state of a new telemetry body (kept for the next announcement)."""
        yields = [s.latest.yield_today_kwh for s in self.sources
                  if s.latest is not None and s.latest.yield_today_kwh is not None]
        state = node_state(telemetry, max(yields, default=None), self.link.connected)
        self._state = state.model_dump_json().encode()
        if self.announced:
            self.link.publish_latest(self.link.topics.state, self._state)
        else:
            self.tick()  # announces first, with this state
