"""Home Assistant discovery: one retained device config whose entities Home Assistant accepts,
a retained state, and a new announcement whenever Home Assistant comes online."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from conftest import Broker, Subscriber, retained
from edgeagent import __version__
from edgeagent.telemetry.homeassistant import HomeAssistant, NodeState, discovery, node_state
from edgeagent.telemetry.mqtt import MqttLink, Topics
from edgeagent.telemetry.outbox import Outbox

TOPICS = Topics("edgeagent", "s1", "n1")
# Units Home Assistant accepts for each sensor device class used (homeassistant.components.
# sensor.const DEVICE_CLASS_UNITS), and the state classes it allows.
UNITS = {"power": {"W", "kW"}, "battery": {"%"}, "voltage": {"V", "mV"},
         "current": {"A", "mA"}, "energy": {"Wh", "kWh", "MWh"}, "enum": {None}}
STATE_CLASSES = {None, "measurement", "total", "total_increasing"}
TELEMETRY = {
    "seq": 7, "ts": 1.7e9,
    "power": {"pv_power_w": 31.5, "battery_soc_pct": 88.0, "battery_voltage_v": 13.3},
    "decision": {"workers": 2, "level": 1.0, "admit": ["urgent"]},
    "workload": {"model": "digits-int8", "j_per_inference": 9.1e-5, "solar_share": 0.75},
    "outbox": {"pending": 3, "dropped": {"telemetry": 1, "result": 0}},
}


def test_the_discovery_payload_is_a_valid_device_config() -> None:
    topic, payload = discovery(TOPICS, "homeassistant", board="raspberry-pi-4",
                               support_url="https://example.org/edgeagent")
    assert topic == "homeassistant/device/s1_n1/config"
    assert payload["dev"]["ids"] == ["edgeagent_s1_n1"] and payload["dev"]["mdl"]
    assert payload["o"] == {"name": "edgeagent", "sw": __version__,
                            "url": "https://example.org/edgeagent"}
    assert payload["state_topic"] == "edgeagent/s1/n1/state"
    (avty,) = payload["availability"]
    assert avty["topic"] == "edgeagent/s1/n1/status"
    components = payload["cmps"]
    unique_ids = [c["unique_id"] for c in components.values()]
    assert len(unique_ids) == len(set(unique_ids))
    for key, c in components.items():
        assert c["p"] == "sensor" and c["name"]
        assert c["value_template"] == f"{{{{ value_json.{key} }}}}"
        assert key in NodeState.model_fields  # every template reads a key the state has
        if "device_class" in c:
            assert c.get("unit_of_measurement") in UNITS[c["device_class"]], key
        assert c.get("state_class") in STATE_CLASSES
    assert components["yield_today_kwh"]["device_class"] == "energy"  # the energy dashboard
    assert components["yield_today_kwh"]["state_class"] == "total_increasing"
    diagnostics = {k for k, c in components.items() if c.get("entity_category") == "diagnostic"}
    assert diagnostics == {"outbox_backlog", "outbox_dropped", "link"}
    for wanted in ("pv_power_w", "battery_soc_pct", "battery_voltage_v", "battery_current_a",
                   "load_power_w", "work_level_pct", "workers", "model", "j_per_inference",
                   "solar_share_pct"):
        assert wanted in components


def test_the_state_has_every_entity_and_null_for_what_is_unknown() -> None:
    state = json.loads(node_state(TELEMETRY, 0.12, connected=True).model_dump_json())
    assert set(state) == set(discovery(TOPICS, "ha", board="b")[1]["cmps"])
    assert state["pv_power_w"] == 31.5 and state["battery_soc_pct"] == 88.0
    assert state["work_level_pct"] == 100.0 and state["solar_share_pct"] == 75.0
    assert state["outbox_backlog"] == 3 and state["outbox_dropped"] == 1
    assert state["yield_today_kwh"] == 0.12 and state["link"] == "connected"
    assert state["load_power_w"] is None and state["battery_current_a"] is None


@pytest.fixture
def announced(broker: Broker, tmp_path: Path) -> Iterator[tuple[HomeAssistant, Outbox]]:
    link = MqttLink(broker.url, TOPICS)
    outbox = Outbox(tmp_path / "outbox.db")
    ha = HomeAssistant(link, "homeassistant", board="raspberry-pi-4")
    link.start()
    pump(ha, outbox, lambda: ha.announcements == 1)
    yield ha, outbox
    link.stop(outbox)
    outbox.close()


def pump(ha: HomeAssistant, outbox: Outbox, done: Callable[[], bool],
         timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "condition not reached"
        ha.link.pump(outbox)
        ha.tick()
        time.sleep(0.02)


def test_discovery_and_state_are_retained_on_the_broker(
        broker: Broker, announced: tuple[HomeAssistant, Outbox]) -> None:
    ha, outbox = announced
    config = retained(broker, "homeassistant/device/s1_n1/config")
    assert config is not None and "pv_power_w" in config["cmps"]
    ha.update(TELEMETRY)
    state: dict[str, Any] = {}

    def state_retained() -> bool:
        state.update(retained(broker, "edgeagent/s1/n1/state", timeout=0.5) or {})
        return bool(state)

    pump(ha, outbox, state_retained)
    assert state["battery_soc_pct"] == 88.0
    status = retained(broker, "edgeagent/s1/n1/status")  # what availability reads
    assert status is not None
    assert re.fullmatch(r"online|offline", status["state"]) and status["state"] == "online"


def test_discovery_is_announced_again_when_home_assistant_comes_online(
        broker: Broker, announced: tuple[HomeAssistant, Outbox],
        subscriber_factory: Callable[[str], Subscriber]) -> None:
    ha, outbox = announced
    ha.update(TELEMETRY)
    sub = subscriber_factory("homeassistant/device/#")
    sub_state = subscriber_factory("edgeagent/s1/n1/state")
    home_assistant = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    home_assistant.connect("127.0.0.1", broker.port)
    home_assistant.loop_start()
    home_assistant.publish("homeassistant/status", b"offline", qos=1).wait_for_publish(5)
    home_assistant.publish("homeassistant/status", b"online", qos=1).wait_for_publish(5)
    home_assistant.loop_stop()
    home_assistant.disconnect()
    pump(ha, outbox, lambda: ha.announcements == 2)

    def fresh() -> list[bytes]:  # sent now, not the retained copy a new subscriber gets
        return [p for t, p, r in list(sub.messages)
                if t == "homeassistant/device/s1_n1/config" and not r]

    pump(ha, outbox, lambda: bool(fresh()))
    assert json.loads(fresh()[-1])["dev"]["ids"] == ["edgeagent_s1_n1"]
    pump(ha, outbox, lambda: any(not r for _, _, r in sub_state.messages))  # state follows


def test_a_connection_that_dropped_and_came_back_between_two_ticks_is_announced_again() -> None:
    """A broker restart takes a second or two, less than a telemetry interval: the new
    connection (to a broker that may have lost its retained messages) still gets discovery."""

    class Link:
        topics = TOPICS
        connected, connects = True, 1

        def __init__(self) -> None:
            self.sent: list[str] = []

        def subscribe(self, *args: Any, **kwargs: Any) -> None: ...

        def publish_latest(self, topic: str, payload: bytes, retain: bool = True) -> bool:
            self.sent.append(topic)
            return True

    link = Link()
    ha = HomeAssistant(link, "homeassistant", board="raspberry-pi-4")  # type: ignore[arg-type]
    ha.update(TELEMETRY)
    ha.tick()
    assert ha.announcements == 1
    link.connects = 2  # down and up again since the last tick
    ha.tick()
    assert ha.announcements == 2
    assert link.sent.count("homeassistant/device/s1_n1/config") == 2
