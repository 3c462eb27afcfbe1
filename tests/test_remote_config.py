"""Remote config against ``edgeagent run`` and a real Mosquitto: retained ``config/desired`` ->
validate -> apply -> retained ``config/reported``; invalid input changes nothing; a config that
makes the agent unhealthy is rolled back."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent_site import Agent, Requester, write_config
from conftest import Broker, Subscriber
from emulated_devices import smartshunt

DESIRED = "edgeagent/s1/n1/config/desired"
REPORTED = "edgeagent/s1/n1/config/reported"


@dataclass
class Site:
    broker: Broker
    config: Path
    requester: Requester
    reports: Subscriber
    agent: Agent

    def desire(self, body: dict[str, Any] | bytes) -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.requester.client.publish(DESIRED, payload, qos=1, retain=True).wait_for_publish(10)

    def report(self, predicate: Any) -> dict[str, Any]:
        return self.reports.wait_for(REPORTED, predicate, timeout=30)

    def restart(self, kill: bool = False) -> None:
        if kill:
            self.agent.proc.send_signal(signal.SIGKILL)
            self.agent.proc.wait(timeout=30)
        else:
            assert self.agent.stop() == 0
        self.agent = Agent(self.config)
        self.agent.ready(self.requester)


@contextmanager
def make_site(broker: Broker, tmp_path: Path, subscriber_factory: Any,
              extra: str = "", probation_ticks: int = 5) -> Iterator[Site]:
    shunt = smartshunt(90.0)
    config = tmp_path / "edgeagent.toml"
    write_config(config, broker, shunt.port, extra=extra, probation_ticks=probation_ticks)
    reports = subscriber_factory(REPORTED)
    requester = Requester(broker)
    site = Site(broker, config, requester, reports, Agent(config))
    try:
        site.agent.ready(requester)
        yield site
    finally:
        requester.close()
        site.agent.stop()
        shunt.stop()


@pytest.fixture
def site(broker: Broker, tmp_path: Path, subscriber_factory: Any) -> Iterator[Site]:
    with make_site(broker, tmp_path, subscriber_factory,
                   extra='username = "n1"\npassword = "hunter2"') as made:
        yield made


def reserve(site: Site) -> float:
    return float(site.requester.status()["control"]["reserve_pct"])


def test_a_valid_desired_config_is_applied_reported_and_kept_across_restarts(
        site: Site) -> None:
    site.desire({"version": 3, "config": {"battery": {"reserve_soc_pct": 45},
                                          "telemetry": {"interval_s": 0.5}}})
    applied = site.report(lambda r: r["status"] == "applied" and not r["probation"])
    assert applied["version"] == 3 and applied["applied_version"] == 3
    assert applied["source"] == "desired" and applied["errors"] == []
    assert applied["config"]["battery"]["reserve_soc_pct"] == 45
    assert applied["config"]["telemetry"]["interval_s"] == 0.5
    assert applied["config"]["telemetry"]["password"] == "<redacted>"
    assert b"hunter2" not in b"".join(site.reports.on(REPORTED))
    assert reserve(site) == 45.0
    site.restart()  # the last good remote config is laid over the file at start
    assert reserve(site) == 45.0
    remote = site.requester.status()["remote_config"]
    assert remote["applied_version"] == 3 and remote["answered_version"] == 3
    assert remote["applied"] == 0  # the retained version 3, seen again, changed nothing


def test_invalid_desired_configs_are_rejected_by_field_and_change_nothing(site: Site) -> None:
    site.desire({"version": 1, "config": {"battery": {"reserve_soc_pct": 2, "colour": "red"}}})
    rejected = site.report(lambda r: r["version"] == 1)
    assert rejected["status"] == "rejected" and rejected["applied_version"] == 0
    assert {e["field"] for e in rejected["errors"]} == {"battery.reserve_soc_pct",
                                                        "battery.colour"}
    site.desire({"version": 2, "config": {"site": {"node": "n9"}, "power": {"devices": []}}})
    rejected = site.report(lambda r: r["version"] == 2)
    assert [e["field"] for e in rejected["errors"]] == ["power.devices", "site.node"]
    assert all("restart" in e["message"] for e in rejected["errors"])
    site.desire(b"{version: 3")
    rejected = site.report(lambda r: r["version"] is None)
    assert rejected["errors"][0]["field"] == "(payload)"
    site.desire({"version": 4, "config": {"battery": {"reserve_soc_pct": 50}}, "by": "me"})
    rejected = site.report(lambda r: r["version"] == 4)
    assert [e["field"] for e in rejected["errors"]] == ["by"]
    assert reserve(site) == 30.0
    assert rejected["config"]["battery"]["reserve_soc_pct"] == 30.0
    site.desire({"version": 4, "config": {"battery": {"reserve_soc_pct": 50}}})  # answered
    site.desire({"version": 5, "config": {"battery": {"reserve_soc_pct": 50}}})
    site.report(lambda r: r["version"] == 5 and r["status"] == "applied")
    assert not any(r["version"] == 4 and r["status"] == "applied"
                   for r in site.reports.json_on(REPORTED))
    assert reserve(site) == 50.0


@pytest.mark.parametrize(("change", "why"), [
    ({"power": {"stale_after_s": 0.001}}, "the power data went stale"),
    ({"workload": {"model": "broken.onnx"}}, "the workers are failing"),
])
def test_a_config_that_makes_the_agent_unhealthy_is_rolled_back(
        site: Site, change: dict[str, Any], why: str) -> None:
    (site.config.parent / "broken.onnx").write_bytes(b"valid name, not a model")
    site.desire({"version": 7, "config": change})
    site.report(lambda r: r["version"] == 7 and r["status"] == "applied" and r["probation"])
    rolled = site.report(lambda r: r["status"] == "rolled-back")
    assert rolled["version"] == 7 and rolled["applied_version"] == 0
    assert rolled["reason"].startswith(why)
    assert rolled["config"]["power"]["stale_after_s"] == 5.0
    assert rolled["config"]["workload"]["model"] == "digits-int8"
    status = site.requester.until(lambda s: s["decision"]["workers"] == 2
                                  and s["decision"]["model"] == "digits-int8")
    assert status["remote_config"]["rolled-back"] == 1
    state = json.loads((site.config.parent / "state" / "remote-config.json").read_text())
    assert state == {"answered": 7, "good": None, "trial": None}


def test_an_agent_killed_during_a_probation_comes_back_on_the_previous_config(
        broker: Broker, tmp_path: Path, subscriber_factory: Any) -> None:
    with make_site(broker, tmp_path, subscriber_factory, probation_ticks=100_000) as site:
        site.desire({"version": 1, "config": {"battery": {"reserve_soc_pct": 60}}})
        site.report(lambda r: r["version"] == 1 and r["probation"])
        assert reserve(site) == 60.0
        site.restart(kill=True)
        rolled = site.report(lambda r: r["status"] == "rolled-back")
        assert rolled["version"] == 1 and rolled["source"] == "start"
        assert "stopped during its probation" in rolled["reason"]
        assert reserve(site) == 30.0


@pytest.mark.parametrize("state", ['[1, 2]', '{"answered": "x"}', '{"good": {"version": 2}}',
                                   '{"trial": 5}', "not json"])
def test_a_state_file_it_cannot_read_leaves_the_agent_on_its_file(tmp_path: Path,
                                                                   state: str) -> None:
    from edgeagent.config import parse_config
    from edgeagent.telemetry.remote_config import RemoteConfig

    file_config = parse_config('[site]\nid = "s1"\nnode = "n1"\n')
    path = tmp_path / "remote-config.json"
    path.write_text(state)
    remote = RemoteConfig(file_config, path=None, state_path=path, probation_ticks=3,
                          max_bytes=65536)
    assert remote.config == file_config and remote.answered == 0 and remote.good is None
    assert remote.last_error is not None and str(path) in remote.last_error
