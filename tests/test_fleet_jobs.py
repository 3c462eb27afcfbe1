"""Jobs across the fleet: nodes with spare sun take jobs from a shared subscription, store each
before acknowledging it, hand back what they cannot take, and publish every result once."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from conftest import Broker, Subscriber, edgeagent_command, retained
from edgeagent.agent import Agent
from edgeagent.boards import load_board
from edgeagent.config import BatteryConfig, ConfigError, GovernorConfig, parse_config
from edgeagent.governor.decision import Decision
from edgeagent.infer.bundled import load_bundled_samples
from edgeagent.infer.classifier import DigitsClassifier
from edgeagent.power.reader import SerialReader
from edgeagent.sim.battery import Battery as SimBattery
from edgeagent.sim.device import DeviceState
from edgeagent.sim.emulator import SiteEmulator
from edgeagent.sim.solar import SolarTrace, hour_of_year
from edgeagent.state import SiteState
from edgeagent.telemetry.mqtt import Defer, Inbound, MqttLink, Topics
from edgeagent.telemetry.outbox import Outbox
from edgeagent.workloads.desk import JobDesk
from edgeagent.workloads.fleet_jobs import FleetJob, FleetJobs, Ledger, inline_input
from edgeagent.workloads.jobs import JobQueue
from edgeagent.workloads.pool import WorkerPool
from emulated_devices import vedirect

BOARD = load_board("raspberry-pi-4")
SPARE = Decision(1, 3.7, "full in daylight", level=1.0,
                 admit=frozenset({"urgent", "deferrable", "best-effort"}))
SHORT = Decision(0, 0.0, "holding the reserve", holding_reserve=True)
SUNNY = SiteState(age_s=0.1, stale=False, battery_soc_pct=100.0, pv_power_w=30.0)
PIXELS, LABELS = load_bundled_samples()


def job(job_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": job_id, "class": "best-effort", "model": "digits-int8",
            "input": inline_input(PIXELS[:4]), "work_cpu_s": 0.01, **extra}


def until(condition: Callable[[], bool], timeout: float = 20.0,
          step: Callable[[], None] = lambda: None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        step()
        time.sleep(0.02)


@dataclass
class Node:
    """One node's fleet-job plumbing on a real broker, without the governor."""

    link: MqttLink
    outbox: Outbox
    queue: JobQueue
    fleet: FleetJobs

    def pump(self) -> None:
        self.link.pump(self.outbox)


@pytest.fixture
def node(broker: Broker, tmp_path: Path) -> Iterator[Node]:
    topics = Topics("edgeagent", "s1", "n1")
    link = MqttLink(broker.url, topics)
    outbox = Outbox(tmp_path / "outbox.db")
    queue = JobQueue(tmp_path / "jobs.db")
    desk = JobDesk(queue, None, BOARD, BatteryConfig(), GovernorConfig(max_workers=1))
    fleet = FleetJobs(link, outbox, desk, Ledger(tmp_path / "fleet.db"),
                      inputs_dir=tmp_path / "inputs", models={"digits-int8"},
                      subscribe_after_s=60.0, max_hops=2, epoch=time.time)
    n = Node(link, outbox, queue, fleet)
    link.start()
    until(lambda: link.connected, step=n.pump)
    yield n
    link.stop(outbox)
    fleet.ledger.close()
    queue.close()
    outbox.close()


def inbound(body: dict[str, Any], topic: str = "edgeagent/fleet/jobs", qos: int = 1) -> Inbound:
    return Inbound(topic, json.dumps(body).encode(), qos, False)


def test_a_node_subscribes_after_spare_energy_held_and_leaves_at_once(node: Node) -> None:
    fleet, now = node.fleet, 1_000_000.0
    fleet.tick(now, SUNNY, SHORT, None)
    assert not fleet.subscribed
    fleet.tick(now + 1, SUNNY, SPARE, None)
    fleet.tick(now + 59, SUNNY, SPARE, None)
    assert not fleet.subscribed  # spare for 58 s of the 60 needed
    fleet.tick(now + 61, SUNNY, SPARE, None)
    assert fleet.subscribed
    assert node.link.subscribed("edgeagent/s1/jobs") and node.link.subscribed(
        "edgeagent/fleet/jobs")
    fleet.tick(now + 62, SUNNY, SHORT, None)
    assert not fleet.subscribed  # lowering is immediate
    fleet.tick(now + 63, SUNNY, SPARE, None)
    assert not fleet.subscribed  # and the wait starts again


def test_a_job_is_stored_once_and_a_redelivered_duplicate_is_not_queued_twice(
        node: Node) -> None:
    node.fleet.tick(time.time(), SUNNY, SPARE, None)
    for _ in range(2):
        node.fleet._on_job(inbound(job("j1")))
    assert node.queue.counts()["queued"] == 1
    assert node.fleet.counts["taken"] == 1 and node.fleet.counts["duplicates"] == 1
    stored = node.queue.get("j1")
    assert stored is not None and stored.job_class == "best-effort"
    assert np.array_equal(np.load(stored.input), PIXELS[:4])  # the inline input, on disk


def test_a_job_that_cannot_be_stored_is_deferred_unacknowledged(node: Node) -> None:
    node.fleet.tick(time.time(), SUNNY, SPARE, None)
    node.queue.close()
    with pytest.raises(Defer):
        node.fleet._on_job(inbound(job("j1")))
    node.queue = node.fleet.queue = JobQueue(node.queue.path)  # for the fixture's teardown
    assert node.queue.get("j1") is None


def test_a_job_arriving_after_the_node_went_short_is_handed_back_to_its_topic(
        node: Node, subscriber_factory: Callable[[str], Subscriber]) -> None:
    sub = subscriber_factory("edgeagent/s1/jobs")
    node.fleet.tick(time.time(), SUNNY, SHORT, None)
    node.fleet._on_job(inbound(job("j1"), topic="edgeagent/s1/jobs"))
    assert node.queue.get("j1") is None and node.fleet.counts["handed_back"] == 1
    until(lambda: bool(sub.json_on("edgeagent/s1/jobs")), step=node.pump)
    back = sub.json_on("edgeagent/s1/jobs")[0]
    assert FleetJob.model_validate(back).hops == 1
    assert back["input"] == job("j1")["input"]  # the job itself, unchanged


def test_a_job_already_on_its_way_when_the_node_unsubscribed_still_reaches_it(
        node: Node) -> None:
    """The broker may deliver before it processes the UNSUBSCRIBE: the job must not be
    acknowledged unseen, it is handed back."""
    fleet, now = node.fleet, time.time()
    fleet.tick(now, SUNNY, SPARE, None)
    fleet.tick(now + 61, SUNNY, SPARE, None)
    assert fleet.subscribed
    fleet.tick(now + 62, SUNNY, SHORT, None)
    assert not fleet.subscribed
    node.link._events.put(("message", (inbound(job("late"), qos=0), 0)))
    node.pump()
    assert fleet.counts["handed_back"] == 1 and node.queue.get("late") is None


def test_a_job_nobody_takes_ends_rejected_after_max_hops(
        node: Node, subscriber_factory: Callable[[str], Subscriber]) -> None:
    sub = subscriber_factory("edgeagent/s1/n1/results")
    node.fleet.tick(time.time(), SUNNY, SPARE, None)
    node.fleet._on_job(inbound(job("j1", model="resnet-50", hops=2)))
    until(lambda: bool(sub.json_on("edgeagent/s1/n1/results")), step=node.pump)
    body = sub.json_on("edgeagent/s1/n1/results")[0]
    assert body["id"] == "j1" and body["state"] == "rejected"
    assert "resnet-50" in body["reason"] and node.queue.get("j1") is None


def test_an_invalid_job_gets_an_answer_naming_the_field(
        node: Node, subscriber_factory: Callable[[str], Subscriber]) -> None:
    sub = subscriber_factory("edgeagent/s1/n1/results")
    node.fleet.tick(time.time(), SUNNY, SPARE, None)
    node.fleet._on_job(inbound({"id": "j1", "class": "deferrable", "model": "digits-int8",
                                "input": "data:application/x-npy;base64,AAAA"}))
    node.fleet._on_job(inbound(job("j2", input="../../etc/passwd")))
    until(lambda: len(sub.json_on("edgeagent/s1/n1/results")) == 2, step=node.pump)
    first, second = sub.json_on("edgeagent/s1/n1/results")
    assert first["id"] == "j1" and first["state"] == "invalid"
    assert "deadline" in [e["field"] for e in first["errors"]]
    assert second["id"] == "j2" and second["errors"][0]["field"] == "input"
    assert node.queue.counts()["queued"] == 0


def test_the_result_of_a_finished_job_is_published_once_with_its_id(
        node: Node, subscriber_factory: Callable[[str], Subscriber]) -> None:
    sub = subscriber_factory("edgeagent/s1/n1/results")
    node.fleet.tick(time.time(), SUNNY, SPARE, None)
    node.fleet._on_job(inbound(job("j1")))
    node.queue.start("j1", time.time())
    node.queue.mark_done("j1", time.time(), {"labels": [1, 2, 3, 4]})
    for _ in range(3):
        node.fleet.tick(time.time(), SUNNY, SPARE, None)
    until(lambda: bool(sub.json_on("edgeagent/s1/n1/results")), step=node.pump)
    (body,) = sub.json_on("edgeagent/s1/n1/results")
    assert body["id"] == "j1" and body["state"] == "done"
    assert body["result"] == {"labels": [1, 2, 3, 4]}
    assert body["topic"] == "edgeagent/fleet/jobs"
    assert not (node.fleet.inputs_dir / "j1.npy").exists()  # its input is cleaned up


TRACE = SolarTrace.bundled()


@dataclass
class Site:
    """One site: its own sun and battery behind an emulated SmartShunt and SmartSolar MPPT on
    pseudo-terminals, and an in-process agent that reads them with the real ``SerialReader``
    and VE.Direct decoder, as ``edgeagent run`` does on a board."""

    emulator: SiteEmulator
    readers: list[SerialReader]
    agent: Agent

    @property
    def fleet(self) -> FleetJobs:
        assert self.agent.fleet_jobs is not None
        return self.agent.fleet_jobs

    def stop(self) -> None:
        self.agent.pool.stop()
        assert self.agent.link is not None
        self.agent.link.stop(self.agent.outbox)
        for reader in self.readers:
            reader.stop()
        self.emulator.stop()


def start_site(broker: Broker, tmp_path: Path, site: str, *, soc_pct: float,
               hour: float) -> Site:
    """``site`` at ``hour`` of the bundled solar year with its 1.2 kWh bank at ``soc_pct``, a
    100 Wp panel and a 3 W load, in real time."""
    battery = BatteryConfig()
    emulator = SiteEmulator(TRACE, SimBattery(battery.capacity_wh, soc_pct), start_hour=hour,
                            speed=1.0, panel_wp=100.0, load_w=lambda: 3.0,
                            block_interval_s=0.1)
    # The battery monitor first: its state of charge wins over the charger's (SiteState).
    readers = [SerialReader(emulator.shunt.port), SerialReader(emulator.mppt.port)]
    topics = Topics("edgeagent", site, "n1")
    link = MqttLink(broker.url, topics)
    outbox = Outbox(tmp_path / site / "outbox.db")
    queue = JobQueue(tmp_path / site / "jobs.db")
    governor = GovernorConfig(max_workers=1)
    desk = JobDesk(queue, None, BOARD, battery, governor)
    pool = WorkerPool(partial(DigitsClassifier.load, threads=1), PIXELS, LABELS, max_workers=1,
                      jobs=queue)
    fleet = FleetJobs(link, outbox, desk, Ledger(tmp_path / site / "fleet.db"),
                      inputs_dir=tmp_path / site / "inputs", models={"digits-int8"},
                      subscribe_after_s=0.0, epoch=time.time)
    agent = Agent(sources=readers, board=BOARD, battery=battery, governor=governor,
                  stale_after_s=5, pool=pool, outbox=outbox, topics=topics, link=link,
                  telemetry_interval_s=0.2, desk=desk, fleet_jobs=fleet)
    emulator.start()
    for reader in readers:
        reader.start()
    pool.start()
    link.start()
    return Site(emulator, readers, agent)


def test_three_sites_share_one_job_stream_by_their_sun(
        broker: Broker, tmp_path: Path, subscriber_factory: Callable[[str], Subscriber]) -> None:
    """Two sites in full sun take the fleet's jobs; the one at its reserve in the dark takes
    none; every job is done exactly once. Each agent's power comes from its own emulated
    VE.Direct devices on ptys, through the serial reader and the driver."""
    results = subscriber_factory("edgeagent/+/n1/results")
    telemetry = subscriber_factory("edgeagent/+/n1/telemetry")
    noon, midnight = hour_of_year(6, 21, 12.0), hour_of_year(12, 21, 0.0)
    sites: dict[str, Site] = {}
    subscribed: set[str] = set()  # every site that was ever subscribed after a tick
    try:
        sites["north"] = start_site(broker, tmp_path, "north", soc_pct=100.0, hour=noon)
        sites["south"] = start_site(broker, tmp_path, "south", soc_pct=98.0, hour=noon + 1)
        sites["dark"] = start_site(broker, tmp_path, "dark", soc_pct=30.0, hour=midnight)

        def tick() -> None:
            for name, site in sites.items():
                site.agent.tick()
                if site.fleet.subscribed:
                    subscribed.add(name)

        def seen(name: str) -> SiteState:
            return sites[name].agent.state

        def ready() -> bool:
            """Every agent decides on fresh data from its devices: the sunny ones are
            subscribed, the dark one holds its reserve."""
            dark = sites["dark"].agent.decision
            return (not any(seen(name).stale for name in sites)
                    and sites["north"].fleet.subscribed and sites["south"].fleet.subscribed
                    and dark is not None and dark.holding_reserve)

        until(ready, step=tick)
        for name in ("north", "south"):  # what the serial path read: a full bank in the sun
            state = seen(name)
            assert state.battery_soc_pct is not None and state.battery_soc_pct >= 97.0, state
            assert state.pv_power_w is not None and state.pv_power_w > 0, state
        dark = seen("dark")
        assert dark.battery_soc_pct == 30.0 and dark.pv_power_w == 0.0, dark
        assert dark.charger_state is not None, dark  # the MPPT's block reached it too
        assert not sites["dark"].fleet.subscribed
        # The SUBSCRIBE went out before any telemetry queued after it: once that telemetry is
        # on the broker, so is the subscription.
        marks = {name: sites[name].agent.outbox.next_seq for name in ("north", "south")}
        until(lambda: all(any(m["seq"] >= mark for m in
                              telemetry.json_on(f"edgeagent/{name}/n1/telemetry"))
                          for name, mark in marks.items()), step=tick)
        publisher = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        publisher.connect("127.0.0.1", broker.port)
        publisher.loop_start()
        ids = [f"job-{i:02d}" for i in range(30)]
        for job_id in ids:
            publisher.publish("edgeagent/fleet/jobs", json.dumps(job(job_id)), qos=1)
        publisher.loop_stop()
        publisher.disconnect()

        def done() -> set[str]:
            return {m["id"] for t, p, _ in list(results.messages) for m in [json.loads(p)]
                    if m["state"] == "done"}

        until(lambda: done() == set(ids), timeout=60, step=tick)
        for _ in range(10):  # a duplicate would come now
            tick()
            time.sleep(0.02)
        for site in sites.values():  # the readers read the devices all along, undamaged
            for reader in site.readers:
                counters = reader.counters()
                assert reader.running and counters["valid"] > 0, counters
                assert counters["invalid"] == 0 and counters["reopens"] == 0, counters
        assert sites["dark"].agent.decision is not None
        assert sites["dark"].agent.decision.holding_reserve
    finally:
        for site in sites.values():
            site.stop()

    bodies = [(t, json.loads(p)) for t, p, _ in results.messages]
    assert sorted(b["id"] for _, b in bodies) == ids  # each job once: none lost, none twice
    assert all(b["state"] == "done" and len(b["result"]["labels"]) == 4 for _, b in bodies)
    by_site = {name: sum(t == f"edgeagent/{name}/n1/results" for t, _ in bodies)
               for name in sites}
    assert by_site["dark"] == 0 and sites["dark"].fleet.counts["taken"] == 0
    assert subscribed == {"north", "south"}  # the dark site never subscribed
    assert by_site["north"] > 0 and by_site["south"] > 0, by_site
    assert by_site["north"] + by_site["south"] == 30


FULL_IN_THE_SUN = DeviceState(battery_voltage_v=13.6, battery_current_a=2.0, soc_pct=100.0,
                              pv_power_w=30.0, pv_voltage_v=36.0, yield_today_kwh=0.12)


def test_the_service_announces_itself_to_home_assistant_and_takes_fleet_jobs(
        broker: Broker, tmp_path: Path, subscriber_factory: Callable[[str], Subscriber]) -> None:
    """``edgeagent run`` with both on: a full battery in the sun takes a job from the fleet."""
    shunt, mppt = vedirect("shunt", FULL_IN_THE_SUN), vedirect("mppt", FULL_IN_THE_SUN)
    config = tmp_path / "edgeagent.toml"
    config.write_text(f"""
[site]
id = "s1"
node = "n1"
[[power.devices]]
driver = "vedirect"
port = "{shunt.port}"
[[power.devices]]
driver = "vedirect"
port = "{mppt.port}"
[governor]
tick_s = 0.2
max_workers = 1
[jobs.fleet]
enabled = true
subscribe_after_s = 0
[telemetry]
broker = "{broker.url}"
interval_s = 0.2
outbox_path = "{tmp_path / 'outbox.db'}"
[telemetry.homeassistant]
enabled = true
""")
    results = subscriber_factory("edgeagent/s1/n1/results")
    telemetry = subscriber_factory("edgeagent/s1/n1/telemetry")
    proc = subprocess.Popen([*edgeagent_command(), "run", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        body = telemetry.wait_for("edgeagent/s1/n1/telemetry",
                                  lambda m: (m.get("fleet_jobs") or {}).get("subscribed"),
                                  timeout=60)
        telemetry.wait_for("edgeagent/s1/n1/telemetry", lambda m: m["seq"] > body["seq"])
        publisher = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        publisher.connect("127.0.0.1", broker.port)
        publisher.loop_start()
        publisher.publish("edgeagent/fleet/jobs", json.dumps(job("svc-1")),
                          qos=1).wait_for_publish(5)
        publisher.loop_stop()
        publisher.disconnect()
        done = results.wait_for("edgeagent/s1/n1/results", lambda m: m["id"] == "svc-1",
                                timeout=60)
        assert done["state"] == "done" and len(done["result"]["labels"]) == 4
        config_msg = retained(broker, "homeassistant/device/s1_n1/config")
        assert config_msg is not None and config_msg["dev"]["ids"] == ["edgeagent_s1_n1"]
        state = retained(broker, "edgeagent/s1/n1/state")
        assert state is not None and state["battery_soc_pct"] == 100.0
        assert state["pv_power_w"] == 30.0 and state["yield_today_kwh"] == 0.12
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        shunt.stop()
        mppt.stop()
    assert proc.returncode == 0, err


def test_the_fleet_settings_are_validated_with_their_field_path() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config('[jobs.fleet]\nshare_group = "a/b"\nsubscribe_after_s = -1\n'
                     '[telemetry.homeassistant]\nprefix = "home#"\n')
    fields = {issue.path for issue in caught.value.issues}
    assert fields == {"jobs.fleet.share_group", "jobs.fleet.subscribe_after_s",
                      "telemetry.homeassistant.prefix"}


def test_an_inline_input_whose_header_claims_gigabytes_is_invalid_not_allocated() -> None:
    import base64

    from edgeagent.workloads.fleet_jobs import INLINE_PREFIX, InvalidInput, decode_inline

    raw = base64.b64decode(inline_input(PIXELS[:1]).removeprefix(INLINE_PREFIX))
    header = raw[:raw.index(b"\n") + 1]
    shape = str(PIXELS[:1].shape).encode()
    huge = str((10**12,)).encode().ljust(len(shape))  # same header length
    bomb = header.replace(shape, huge) + raw[len(header):]
    with pytest.raises(InvalidInput, match="shape"):
        decode_inline(INLINE_PREFIX + base64.b64encode(bomb).decode())
    with pytest.raises(InvalidInput, match="uint8"):
        decode_inline(inline_input(PIXELS[:1].astype(np.float32)))
    assert decode_inline(inline_input(PIXELS[:1])) == raw
