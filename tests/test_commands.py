"""Commands over MQTT v5 request/response against ``edgeagent run`` and a real Mosquitto:
every request gets a reply with its correlation data; a bad one changes nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent_site import Agent, Requester, write_config
from conftest import Broker, Subscriber, free_port, mosquitto_binary
from edgeagent.telemetry.signing import sign
from emulated_devices import smartshunt

TELEMETRY = "edgeagent/s1/n1/telemetry"


@dataclass
class Site:
    broker: Broker
    agent: Agent
    requester: Requester
    config: Path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """One agent for the module: each test leaves it as it found it."""
    tmp = tmp_path_factory.mktemp("site")
    broker = Broker(tmp / "broker", free_port(), mosquitto_binary())
    broker.directory.mkdir()
    broker.start()
    shunt = smartshunt(90.0)
    config = tmp / "edgeagent.toml"
    write_config(config, broker, shunt.port)
    agent = Agent(config)
    requester = Requester(broker)
    try:
        agent.ready(requester)
        yield Site(broker, agent, requester, config)
    finally:
        requester.close()
        assert agent.stop() == 0
        shunt.stop()
        broker.stop()


def control(status: dict[str, Any]) -> dict[str, Any]:
    return dict(status["control"])


def test_status_round_trips_with_its_correlation_data(site: Site) -> None:
    correlation = site.requester.send(b'{"cmd": "status", "id": "req-1"}')
    reply = site.requester.wait(correlation)  # found by the correlation data it came back with
    assert reply["ok"] and reply["cmd"] == "status" and reply["id"] == "req-1"
    assert reply["errors"] == []
    result = reply["result"]
    assert control(result) == {"policy": "governor", "paused": False, "reserve_pct": 30.0}
    assert result["power"]["battery_soc_pct"] == 90.0
    assert result["commands"]["received"] >= 1


def test_set_reserve_within_the_configs_bounds(site: Site) -> None:
    ask = site.requester.ask
    reply = ask({"cmd": "set_reserve", "args": {"pct": 40}})
    assert reply["ok"] and reply["result"] == {"reserve_pct": 40.0}
    assert control(site.requester.status())["reserve_pct"] == 40.0
    refused = ask({"cmd": "set_reserve", "args": {"pct": 2}})  # battery.reserve_soc_pct >= 5
    assert not refused["ok"]
    assert [e["field"] for e in refused["errors"]] == ["args.pct"]
    assert "greater than or equal to 5" in refused["errors"][0]["message"]
    assert control(site.requester.status())["reserve_pct"] == 40.0
    assert ask({"cmd": "set_reserve", "args": {"pct": 30}})["ok"]


def test_pause_stops_the_workers_and_resume_brings_them_back(site: Site) -> None:
    requester = site.requester
    requester.until(lambda s: s["decision"]["workers"] == 2)
    assert requester.ask({"cmd": "pause"})["result"] == {"paused": True}
    status = requester.until(lambda s: s["decision"]["workers"] == 0)
    assert status["decision"]["reason"] == "paused by command"
    assert status["decision"]["admit"] == []
    assert requester.ask({"cmd": "resume"})["result"] == {"paused": False}
    status = requester.until(lambda s: s["decision"]["workers"] == 2)
    assert not control(status)["paused"]


def test_set_policy_picks_what_runs(site: Site) -> None:
    requester = site.requester
    assert requester.ask({"cmd": "set_policy", "args": {"policy": "always-on"}})["ok"]
    status = requester.until(lambda s: s["decision"]["reason"] == "always-on by command")
    assert status["decision"]["workers"] == 2
    assert status["decision"]["admit"] == ["best-effort", "deferrable", "urgent"]
    refused = requester.ask({"cmd": "set_policy", "args": {"policy": "turbo"}})
    assert [e["field"] for e in refused["errors"]] == ["args.policy"]
    assert control(requester.status())["policy"] == "always-on"
    assert requester.ask({"cmd": "set_policy", "args": {"policy": "governor"}})["ok"]
    requester.until(lambda s: s["decision"]["reason"] != "always-on by command")


def test_submit_job_goes_through_admission_and_runs(site: Site) -> None:
    reply = site.requester.ask({"cmd": "submit_job", "args": {
        "id": "cmd-job-1", "class": "urgent", "model": "digits-int8", "input": "five.npy"}})
    assert reply["ok"], reply
    assert reply["result"]["job_id"] == "cmd-job-1" and reply["result"]["created"]
    assert reply["result"]["state"] == "queued" and reply["result"]["reason"]
    result = site.config.parent / "inbox" / "results" / "cmd-job-1.json"
    deadline = time.monotonic() + 60
    while not result.exists():
        assert time.monotonic() < deadline, "the job never finished"
        time.sleep(0.1)
    assert json.loads(result.read_text())["state"] == "done"
    again = site.requester.ask({"cmd": "submit_job", "args": {
        "id": "cmd-job-1", "class": "urgent", "model": "digits-int8", "input": "five.npy"}})
    assert again["ok"] and not again["result"]["created"]  # the id is the idempotency key


@pytest.mark.parametrize(("args", "fields"), [
    ({"class": "urgent", "model": "digits-int8", "input": "missing.npy"}, ["args.input"]),
    ({"class": "urgent", "model": "gpt-5", "input": "five.npy"}, ["args.model"]),
    ({"class": "urgent", "model": "digits-int8", "input": "../../etc/passwd"}, ["args.input"]),
    ({"model": "digits-int8", "input": "five.npy"}, ["args.class"]),
    ({"class": "deferrable", "model": "digits-int8", "input": "five.npy"}, ["args.deadline"]),
])
def test_a_job_this_site_cannot_take_is_refused_by_field(
        site: Site, args: dict[str, Any], fields: list[str]) -> None:
    before = site.requester.status()["queue"]
    reply = site.requester.ask({"cmd": "submit_job", "args": args})
    assert not reply["ok"]
    assert [e["field"] for e in reply["errors"]] == fields
    assert site.requester.status()["queue"] == before


def test_reload_applies_the_file_and_refuses_a_broken_one(site: Site) -> None:
    requester, config = site.requester, site.config
    original = config.read_text()
    try:
        config.write_text(original.replace("[governor]", "[battery]\nreserve_soc_pct = 35\n"
                                                         "[governor]"))
        reply = requester.ask({"cmd": "reload"})
        assert reply["ok"], reply
        assert reply["result"]["changed"] == ["battery.reserve_soc_pct"]
        assert control(requester.status())["reserve_pct"] == 35.0
        config.write_text(original.replace("[governor]", "[battery]\nreserve_soc_pct = 2\n"
                                                         "[governor]"))
        refused = requester.ask({"cmd": "reload"})
        assert [e["field"] for e in refused["errors"]] == ["battery.reserve_soc_pct"]
        config.write_text(original.replace('node = "n1"', 'node = "n2"'))
        refused = requester.ask({"cmd": "reload"})
        assert [e["field"] for e in refused["errors"]] == ["site.node"]
        assert "restart" in refused["errors"][0]["message"]
        assert control(requester.status())["reserve_pct"] == 35.0
    finally:
        config.write_text(original)
        assert requester.ask({"cmd": "reload"})["ok"]
    assert control(requester.status())["reserve_pct"] == 30.0


BAD_REQUESTS = [
    (b"{not json", "(payload)", "not valid JSON"),
    (b"\xff\xfe", "(payload)", "not valid JSON"),
    (b"[1, 2]", "(payload)", "must be a JSON object"),
    (b"x" * (64 * 1024 + 1), "(payload)", "larger than 65536 bytes"),
    (b'{"cmd": "format_disk"}', "cmd", "Input should be"),
    (b'{"args": {}}', "cmd", "Field required"),
    (b'{"cmd": "status", "sudo": true}', "sudo", "Extra inputs are not permitted"),
    (b'{"cmd": "set_reserve", "args": {"pct": "lots"}}', "args.pct", "valid number"),
    (b'{"cmd": "set_reserve", "args": {}}', "args.pct", "Field required"),
    (b'{"cmd": "set_reserve", "args": {"pct": 96}}', "args.pct", "less than or equal to 95"),
    (b'{"cmd": "pause", "args": {"now": true}}', "args.now", "Extra inputs"),
    (b'{"cmd": "set_policy", "args": []}', "args", "valid dictionary"),
]


def test_malformed_oversized_and_unknown_commands_get_error_replies_and_change_nothing(
        site: Site) -> None:
    requester = site.requester
    telemetry = Subscriber(site.broker, TELEMETRY)
    try:
        before = requester.status()
        for payload, field, message in BAD_REQUESTS:
            reply = requester.ask(payload)
            assert not reply["ok"], payload
            assert reply["errors"][0]["field"] == field, (payload, reply)
            assert message in reply["errors"][0]["message"], (payload, reply)
        seen = telemetry.wait_for(TELEMETRY, lambda m: True)["seq"]
        telemetry.wait_for(TELEMETRY, lambda m: m["seq"] > seen + 3)  # still ticking
    finally:
        telemetry.close()
    after = requester.status()
    assert control(after) == control(before)
    assert after["queue"] == before["queue"]
    assert after["commands"]["refused"] - before["commands"]["refused"] == len(BAD_REQUESTS)
    assert site.agent.proc.poll() is None


def test_a_request_without_a_response_topic_is_answered_on_cmd_reply(site: Site) -> None:
    site.requester.send(b'{"cmd": "status", "id": "plain-1"}', respond=False)
    deadline = time.monotonic() + 30
    while not any(r["id"] == "plain-1" for r in site.requester.plain):
        assert time.monotonic() < deadline, "no reply on cmd/reply"
        time.sleep(0.05)


def test_signed_commands_when_a_key_is_configured(broker: Broker, tmp_path: Path) -> None:
    key = b"0123456789abcdef-a-shared-secret"
    (tmp_path / "cmd.key").write_bytes(key + b"\n")
    shunt = smartshunt(90.0)
    config = tmp_path / "edgeagent.toml"
    write_config(config, broker, shunt.port, extra='command_hmac_key_file = "cmd.key"')
    agent = Agent(config)
    requester = Requester(broker)

    def signed(payload: bytes, ts: float | None = None,
               key_: bytes = key) -> list[tuple[str, str]]:
        stamp = f"{time.time() if ts is None else ts:.3f}"
        return [("ts", stamp), ("hmac", sign(key_, "edgeagent/s1/n1/cmd", stamp, payload))]

    def refusal(payload: bytes, props: list[tuple[str, str]] | None) -> str:
        reply = requester.ask(payload, user_properties=props)
        assert not reply["ok"] and reply["errors"][0]["field"] == "(signature)", reply
        return str(reply["errors"][0]["message"])

    try:
        agent.ready(requester, sign=signed)
        pause = b'{"cmd": "pause"}'
        assert "unsigned" in refusal(pause, None)
        assert "bad signature" in refusal(pause, signed(pause, key_=b"another-key-of-16-bytes"))
        assert "bad signature" in refusal(b'{"cmd": "resume"}', signed(pause))
        assert "stale" in refusal(pause, signed(pause, ts=time.time() - 600))
        status = requester.ask(b'{"cmd": "status"}', user_properties=signed(b'{"cmd": "status"}'))
        assert status["ok"] and not status["result"]["control"]["paused"]  # nothing changed
        props = signed(pause)
        assert requester.ask(pause, user_properties=props)["ok"]
        assert "replayed" in refusal(pause, props)
    finally:
        requester.close()
        assert agent.stop() == 0
        shunt.stop()


def test_a_signature_that_is_not_ascii_is_refused_not_raised() -> None:
    from edgeagent.telemetry.signing import Verifier

    verifier = Verifier(b"0123456789abcdef", clock=lambda: 1000.0)
    assert verifier.check("t", b"{}", (("ts", "1000"), ("hmac", "é" * 64))) == "bad signature"
    good = sign(b"0123456789abcdef", "t", "1000", b"{}")
    props = (("ts", "1000"), ("hmac", good.upper()))  # hex in either case
    assert verifier.check("t", b"{}", props) is None
    assert verifier.check("t", b"{}", props) is not None  # and only once


def test_a_signed_command_taken_before_a_restart_is_still_a_replay_after_it(
        tmp_path: Path) -> None:
    """The replay window outlives the process: a command captured and resent after a crash or
    a watchdog restart is refused; once its window has passed it is forgotten, and a state file
    that cannot be read is said and started over, not fatal."""
    from edgeagent.telemetry.signing import Verifier

    key, seen = b"0123456789abcdef", tmp_path / "command-signatures.json"
    props = (("ts", "1000"), ("hmac", sign(key, "t", "1000", b"{}")))
    assert Verifier(key, clock=lambda: 1000.0, seen_path=seen).check("t", b"{}", props) is None
    again = Verifier(key, clock=lambda: 1010.0, seen_path=seen)  # the agent restarted
    assert again.check("t", b"{}", props) == "replayed: this signed command was already taken"
    later = Verifier(key, clock=lambda: 1000.0 + 2 * 300 + 1, seen_path=seen)
    assert "stale" in str(later.check("t", b"{}", props))  # outside the window: ts refuses it
    fresh = (("ts", "1601"), ("hmac", sign(key, "t", "1601", b"{}")))
    assert later.check("t", b"{}", fresh) is None
    assert list(json.loads(seen.read_text())) == [fresh[1][1]]  # the old one forgotten
    for junk in ("{not json", '{"sig": [1]}', "[1, 2]", "[" * 100_000):
        seen.write_text(junk)
        assert Verifier(key, clock=lambda: 1601.0, seen_path=seen).check("t", b"{}",
                                                                         fresh) is None


def test_a_command_that_fails_inside_the_agent_still_gets_a_reply() -> None:
    from edgeagent.telemetry.commands import Commands
    from edgeagent.telemetry.mqtt import Inbound

    class Broken:
        def pause(self) -> None:
            raise RuntimeError("the pool is gone")

    class Link:
        def __init__(self) -> None:
            self.replies: list[bytes] = []

        def reply(self, request: Inbound, payload: bytes) -> bool:
            self.replies.append(payload)
            return True

        def publish_latest(self, topic: str, payload: bytes, retain: bool = True) -> bool:
            raise AssertionError("replied on the response topic")

    link = Link()
    commands = Commands(Broken(), link, "edgeagent/s1/n1/cmd",  # type: ignore[arg-type]
                        reload=dict)
    commands.handle(Inbound("edgeagent/s1/n1/cmd", b'{"cmd": "pause"}', 1, False, "r", b"c"))
    (reply,) = [json.loads(p) for p in link.replies]
    assert not reply["ok"] and reply["errors"][0]["field"] == "(agent)"
    assert "the pool is gone" in reply["errors"][0]["message"]
    assert commands.telemetry()["errors"] == 1 and commands.telemetry()["refused"] == 1
