"""The sleep actuator on a temporary sysfs tree: the RTC wake alarm is armed and read back
before anything halts, the agent is stopped before the halt command runs, and every unsafe
case (no RTC, a wake too soon, past or too far, the start grace period, a write that does not
read back, a halt that fails) leaves the board up and says why.

The halt command runs through a fake runner that records its argv (a real one would power the
test machine off); the service test runs a real harmless command instead.
"""

from __future__ import annotations

import io
import json
import logging
import math
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import edgeagent.actuators.sleep
import edgeagent.agent
import edgeagent.service
from edgeagent.actuators import ActuatorSet, SleepActuator, build_actuators
from edgeagent.actuators.sleep import RETRY_S
from edgeagent.agent import Agent
from edgeagent.boards import load_board
from edgeagent.config import (
    ActuatorConfig,
    BatteryConfig,
    ConfigError,
    GovernorConfig,
    parse_config,
)
from edgeagent.governor.decision import Decision
from edgeagent.infer.bundled import load_bundled_samples
from edgeagent.infer.classifier import DigitsClassifier
from edgeagent.service import run_service
from edgeagent.telemetry.mqtt import Topics
from edgeagent.telemetry.outbox import Outbox
from edgeagent.workloads.pool import WorkerPool

NOW = 1_790_000_000.0  # the wall clock's UTC epoch second in these tests
HOUR = 3600.0


HALTS = {"systemctl", "poweroff", "halt", "shutdown", "reboot", "sudo", "doas", "pkexec"}


@pytest.fixture(autouse=True)
def never_the_real_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever a test here gets wrong, the machine running it is neither powered off nor has
    its RTC alarm set: a halt command through the real runner, or a write under /sys, fails
    the test instead."""
    real_run, real_write = subprocess.run, edgeagent.actuators.sleep.write_value

    def run(args: Any, *more: Any, **kwargs: Any) -> Any:
        argv = [args] if isinstance(args, str) else list(args)
        if argv and Path(str(argv[0])).name in HALTS:
            raise AssertionError(f"a test ran {argv} through the real runner")
        return real_run(args, *more, **kwargs)

    def write(path: str, value: str) -> None:
        if Path(path).resolve().is_relative_to("/sys"):
            raise AssertionError(f"a test wrote {value!r} to the real {path}")
        real_write(path, value)

    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setattr(edgeagent.actuators.sleep, "write_value", write)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeRunner:
    """Records each command; answers as ``systemctl poweroff`` does (0, or a polkit denial)."""

    def __init__(self, events: list[tuple[str, ...]], alarm: Path, status: int = 0) -> None:
        self.events = events
        self.alarm = alarm
        self.status = status
        self.calls: list[list[str]] = []

    def __call__(self, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(args))
        self.events.append(("run", " ".join(args), self.alarm.read_text()))
        err = "" if self.status == 0 else ("Call to PowerOff failed: Interactive authentication "
                                           "required.\n")
        return subprocess.CompletedProcess(list(args), self.status, "", err)


def rtc_tree(root: Path, name: str = "rtc0") -> Path:
    """``<root>/sys/class/rtc/<name>/wakealarm`` as the kernel shows it with no alarm set."""
    alarm = root / "sys" / "class" / "rtc" / name / "wakealarm"
    alarm.parent.mkdir(parents=True)
    alarm.write_text("")
    return alarm


def sleeping(until: float | None = NOW + 6 * HOUR) -> Decision:
    return Decision(workers=0, budget_w=0.0, reason="night, asleep", sleep_until=until)


def make(root: Path, *, status: int = 0, grace_s: float = 0.0, dry_run: bool = False,
         hook: bool = True, **kwargs: Any
         ) -> tuple[SleepActuator, FakeRunner, list[tuple[str, ...]], Clock]:
    events: list[tuple[str, ...]] = []
    alarm = root / "sys" / "class" / "rtc" / kwargs.get("rtc", "rtc0") / "wakealarm"
    runner = FakeRunner(events, alarm, status)
    clock = Clock(100.0)

    def before_halt(wake: float) -> None:
        events.append(("hook", str(wake), alarm.read_text()))

    actuator = SleepActuator(root / "sys", runner=runner, grace_s=grace_s, dry_run=dry_run,
                             on_before_halt=before_halt if hook else None, clock=clock,
                             epoch=Clock(NOW), **kwargs)
    return actuator, runner, events, clock


def test_arms_and_verifies_the_alarm_then_stops_the_agent_then_halts(tmp_path: Path) -> None:
    alarm = rtc_tree(tmp_path)
    sleep, runner, events, _ = make(tmp_path)
    wake = int(NOW + 6 * HOUR)
    result = sleep.apply(sleeping())
    assert result.verified and not result.deferred, result
    assert [(w.knob, w.new) for w in result.writes] == [
        ("wakealarm", "0"), ("wakealarm", str(wake)),
        ("halt", "halted until 2026-09-21T20:13:20+00:00")]
    assert all(w.verified for w in result.writes)
    # the hook saw the alarm armed; the halt came after the hook, with the alarm still armed
    assert events == [("hook", str(wake), str(wake)),
                      ("run", "systemctl poweroff", str(wake))]
    assert runner.calls == [["systemctl", "poweroff"]]
    assert sleep.halting and sleep.halted and sleep.wake_at == wake
    assert alarm.read_text() == str(wake)
    # the board is going down: nothing more happens
    assert sleep.apply(sleeping()).writes == () and len(runner.calls) == 1


def test_a_configured_rtc_and_command(tmp_path: Path) -> None:
    alarm = rtc_tree(tmp_path, "rtc1")
    sleep, runner, _, _ = make(tmp_path, rtc="rtc1", command=["sudo", "-n", "edgeagent-halt"])
    assert sleep.apply(sleeping()).verified
    assert runner.calls == [["sudo", "-n", "edgeagent-halt"]]
    assert alarm.read_text() == str(int(NOW + 6 * HOUR))


def test_without_a_hook_it_halts_once(tmp_path: Path) -> None:
    rtc_tree(tmp_path)
    sleep, runner, events, _ = make(tmp_path, hook=False)
    assert sleep.apply(sleeping()).verified and sleep.halted and not sleep.halting
    assert sleep.apply(sleeping()).writes == () and len(runner.calls) == 1 and len(events) == 1


def test_no_rtc_means_no_sleep(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "sys" / "class" / "rtc").mkdir(parents=True)  # a Pi 4 without an RTC HAT
    sleep, runner, events, _ = make(tmp_path)
    with caplog.at_level(logging.WARNING, "edgeagent.actuators"):
        for _ in range(3):
            result = sleep.apply(sleeping())
    assert not result.ok and "no RTC wake alarm" in result.errors[0]
    assert "Raspberry Pi 4" in result.errors[0]
    assert events == [] and runner.calls == [] and not sleep.halting
    assert sum("no RTC" in r.message for r in caplog.records) == 1  # logged once, not per tick


@pytest.mark.parametrize(("offset_s", "why"), [
    (-60.0, "in the past"), (0.0, "in the past"), (600.0, "shorter than actuators.sleep_min_s"),
    (40 * HOUR, "beyond actuators.sleep_max_s")])
def test_a_wake_too_soon_past_or_too_far_is_refused(tmp_path: Path, offset_s: float,
                                                    why: str) -> None:
    alarm = rtc_tree(tmp_path)
    sleep, runner, events, _ = make(tmp_path)
    result = sleep.apply(sleeping(NOW + offset_s))
    assert not result.ok and why in result.errors[0], result.errors
    assert result.writes == () and events == [] and runner.calls == []
    assert alarm.read_text() == ""  # never armed


def test_the_limits_are_configurable(tmp_path: Path) -> None:
    rtc_tree(tmp_path)
    for offset_s in (600.0, 40 * HOUR):
        sleep, runner, _, _ = make(tmp_path, min_sleep_s=300.0, max_sleep_s=48 * HOUR)
        assert sleep.apply(sleeping(NOW + offset_s)).verified and len(runner.calls) == 1


def test_no_decision_to_sleep_does_nothing(tmp_path: Path) -> None:
    alarm = rtc_tree(tmp_path)
    sleep, runner, events, _ = make(tmp_path)
    assert sleep.apply(sleeping(None)) == sleep.apply(sleeping(None))
    assert sleep.apply(sleeping(None)).writes == () and runner.calls == [] and events == []
    assert alarm.read_text() == ""


def test_dry_run_writes_nothing_and_runs_nothing(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    alarm = rtc_tree(tmp_path)
    sleep, runner, events, _ = make(tmp_path, dry_run=True)
    with caplog.at_level(logging.INFO, "edgeagent.actuators"):
        results = [sleep.apply(sleeping()) for _ in range(3)]
    assert all(w.dry_run and not w.verified for r in results for w in r.writes)
    assert [w.knob for w in results[0].writes] == ["wakealarm", "halt"]
    assert results[0].ok and alarm.read_text() == ""
    assert runner.calls == [] and events == [] and not sleep.halting and not sleep.halted
    said = [r.message for r in caplog.records if "dry run" in r.message]
    assert len(said) == 1 and "systemctl poweroff" in said[0] and str(alarm) in said[0]


def test_dry_run_still_refuses_what_it_would_refuse(tmp_path: Path) -> None:
    sleep, _, _, _ = make(tmp_path, dry_run=True)  # no RTC
    result = sleep.apply(sleeping())
    assert not result.ok and result.writes == ()


def test_no_halt_within_the_grace_period_after_start(tmp_path: Path) -> None:
    alarm = rtc_tree(tmp_path)
    sleep, runner, events, clock = make(tmp_path, grace_s=1800.0)
    first = sleep.apply(sleeping())  # the very first decision after start
    assert first.deferred == ("sleep",) and first.ok and first.writes == ()
    clock.now += 1799.0
    assert sleep.apply(sleeping()).deferred == ("sleep",)
    assert runner.calls == [] and events == [] and alarm.read_text() == ""
    clock.now += 1.0
    assert sleep.apply(sleeping()).verified and sleep.halted


def test_a_write_that_does_not_read_back_is_reported_and_nothing_halts(tmp_path: Path) -> None:
    alarm = tmp_path / "sys" / "class" / "rtc" / "rtc0" / "wakealarm"
    alarm.parent.mkdir(parents=True)
    alarm.symlink_to("/dev/null")  # takes every write, keeps none: an alarm that did not set
    sleep, runner, events, clock = make(tmp_path)
    result = sleep.apply(sleeping())
    assert not result.ok and not result.verified
    assert "reads back ''" in result.errors[0], result.errors
    assert [(w.new, w.verified) for w in result.writes] == [
        ("0", True), (str(int(NOW + 6 * HOUR)), False)]
    assert runner.calls == [] and events == [] and not sleep.halting
    # the next attempt waits instead of hammering the RTC every tick
    assert sleep.apply(sleeping()).writes == ()
    clock.now += RETRY_S
    assert len(sleep.apply(sleeping()).writes) == 2


def test_an_unwritable_alarm_is_reported(tmp_path: Path) -> None:
    alarm = tmp_path / "sys" / "class" / "rtc" / "rtc0" / "wakealarm"
    alarm.mkdir(parents=True)  # open(..., "w") fails
    sleep, runner, _, _ = make(tmp_path)
    result = sleep.apply(sleeping())
    assert not result.ok and str(alarm) in result.errors[0]
    assert runner.calls == [] and not sleep.halting


def test_a_failed_halt_clears_the_alarm_and_says_how_to_allow_it(tmp_path: Path) -> None:
    alarm = rtc_tree(tmp_path)
    sleep, runner, _, _ = make(tmp_path, status=1, hook=False)
    result = sleep.apply(sleeping())
    assert not result.ok and "exit 1" in result.errors[0] and "polkit" in result.errors[0]
    assert alarm.read_text() == "0"  # disarmed: the board stays up with nothing pending
    assert not sleep.halted and not sleep.halting  # no hook ran: the agent goes on
    assert sleep.apply(sleeping()).errors == result.errors and len(runner.calls) == 1


def test_after_the_hook_ran_a_failed_halt_is_not_tried_again(tmp_path: Path) -> None:
    alarm = rtc_tree(tmp_path)
    sleep, runner, events, clock = make(tmp_path, status=1)
    assert not sleep.apply(sleeping()).ok
    assert [e[0] for e in events] == ["hook", "run"] and alarm.read_text() == "0"
    assert sleep.halting and not sleep.halted  # the agent is stopped: the service exits 1
    clock.now += RETRY_S
    assert sleep.apply(sleeping()).writes == () and len(runner.calls) == 1


def test_a_hook_that_fails_means_no_halt(tmp_path: Path) -> None:
    alarm = rtc_tree(tmp_path)
    calls: list[list[str]] = []

    def runner(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        calls.append(list(args))
        return subprocess.CompletedProcess(list(args), 0, "", "")

    def broken(wake: float) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    sleep = SleepActuator(tmp_path / "sys", runner=runner, on_before_halt=broken, grace_s=0,
                          epoch=Clock(NOW))
    result = sleep.apply(sleeping())
    assert not result.ok and "disk I/O error" in result.errors[0]
    assert calls == [] and alarm.read_text() == "0" and not sleep.halted


def test_a_slow_stop_that_nears_the_wake_time_means_no_halt(tmp_path: Path) -> None:
    # The alarm is armed 30 minutes ahead; stopping the agent takes 29 of them: the alarm would
    # fire before the board is down, and a halted board would then never wake.
    alarm = rtc_tree(tmp_path)
    events: list[tuple[str, ...]] = []
    runner = FakeRunner(events, alarm)
    epoch = Clock(NOW)

    def slow_stop(wake: float) -> None:
        epoch.now += 29 * 60

    sleep = SleepActuator(tmp_path / "sys", runner=runner, on_before_halt=slow_stop, grace_s=0,
                          epoch=epoch)
    result = sleep.apply(sleeping(NOW + 30 * 60))
    assert not result.ok and "too close to the wake time" in result.errors[0], result.errors
    assert runner.calls == [] and alarm.read_text() == "0" and not sleep.halted


def test_an_alarm_cleared_while_stopping_means_no_halt(tmp_path: Path) -> None:
    alarm = rtc_tree(tmp_path)
    runner = FakeRunner([], alarm)
    sleep = SleepActuator(tmp_path / "sys", runner=runner, grace_s=0, epoch=Clock(NOW),
                          on_before_halt=lambda wake: alarm.write_text("0"))
    result = sleep.apply(sleeping())
    assert not result.ok and "reads back '0' after stopping the agent" in result.errors[0]
    assert runner.calls == [] and not sleep.halted


def test_a_wake_time_that_is_not_a_time_is_refused(tmp_path: Path) -> None:
    alarm = rtc_tree(tmp_path)
    sleep, runner, events, _ = make(tmp_path)
    for until in (math.inf, math.nan):
        result = sleep.apply(sleeping(until))
        assert not result.ok and "not a time" in result.errors[0]
    assert runner.calls == [] and events == [] and alarm.read_text() == ""


def test_the_guard_stops_a_real_halt_in_these_tests(tmp_path: Path) -> None:
    # The fixture above, proven: the real runner with the default command never runs it.
    rtc_tree(tmp_path)
    sleep = SleepActuator(tmp_path / "sys", grace_s=0, epoch=Clock(NOW))
    with pytest.raises(AssertionError, match="real runner"):
        sleep.apply(sleeping())
    with pytest.raises(AssertionError, match="the real /sys"):
        SleepActuator(grace_s=0, epoch=Clock(NOW))._disarm()


# --- wiring ----------------------------------------------------------------------------------

def test_config_keys_and_defaults() -> None:
    default = parse_config("")
    assert not default.actuators.sleep and not default.governor.allow_sleep
    assert default.actuators.sleep_command == ["systemctl", "poweroff"]
    assert default.actuators.rtc == "rtc0" and default.actuators.sleep_grace_s == 1800
    config = parse_config('[governor]\nallow_sleep = true\n[actuators]\nsleep = true\n'
                          'rtc = "rtc1"\nsleep_command = ["sudo", "-n", "edgeagent-halt"]\n'
                          'sleep_min_s = 900\nsleep_max_s = 43200\nsleep_grace_s = 600\n')
    assert config.actuators.sleep and config.actuators.rtc == "rtc1"
    assert config.actuators.sleep_min_s == 900 and config.actuators.sleep_max_s == 43200
    for bad in ('rtc = "../../etc"', "sleep_command = []", "sleep_min_s = 10",
                "sleep_grace_s = 0", "sleep_min_s = 7200\nsleep_max_s = 3600"):
        with pytest.raises(ConfigError) as caught:
            parse_config(f"[actuators]\n{bad}\n")
        assert caught.value.issues[0].path.startswith("actuators"), caught.value.issues


def test_a_governor_planning_sleeps_the_actuator_would_refuse_is_a_config_error() -> None:
    on = "[governor]\nallow_sleep = true\nmin_sleep_s = 900\n[actuators]\nsleep = true\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(on)  # the actuator's default sleep_min_s is 1200 s
    issue = caught.value.issues[0]
    assert issue.path == "actuators.sleep_min_s" and "governor.min_sleep_s" in issue.message
    with pytest.raises(ConfigError, match=r"governor\.min_sleep_s"):
        parse_config(on + "sleep_min_s = 900\n")  # equal: no slack for the tick's lag
    assert parse_config(on + "sleep_min_s = 840\n").actuators.sleep_min_s == 840
    assert not parse_config(on.replace("sleep = true", "sleep = false")).actuators.sleep


def test_build_actuators_puts_sleep_last(tmp_path: Path) -> None:
    alarm = rtc_tree(tmp_path)
    events: list[tuple[str, ...]] = []
    runner = FakeRunner(events, alarm)
    hooked: list[float] = []
    config = ActuatorConfig(sleep=True, cgroup=True, sysfs_root=tmp_path / "sys",
                            sleep_grace_s=60)
    clock = Clock(0.0)
    actuators = build_actuators(config, board=load_board("raspberry-pi-5"), runner=runner,
                                clock=clock, epoch=Clock(NOW), on_before_halt=hooked.append)
    assert [a.name for a in actuators.actuators] == ["cgroup", "sleep"]
    actuators.apply(sleeping())
    assert not actuators.halting and actuators.telemetry()["sleep"]["deferred"] == 1
    clock.now = 60.0
    results = actuators.apply(sleeping())
    assert results[-1].verified and actuators.halting and actuators.halted
    assert hooked == [int(NOW + 6 * HOUR)] and runner.calls == [["systemctl", "poweroff"]]
    assert build_actuators(ActuatorConfig()).actuators == []


def _agent(tmp_path: Path, actuators: ActuatorSet) -> tuple[Agent, Outbox, WorkerPool]:
    x, y = load_bundled_samples()
    pool = WorkerPool(DigitsClassifier.load, x, y, max_workers=1)
    outbox = Outbox(tmp_path / "o.db")
    agent = Agent(sources=[], board=load_board("raspberry-pi-5"), battery=BatteryConfig(),
                  governor=GovernorConfig(max_workers=1, allow_sleep=True), stale_after_s=5,
                  pool=pool, outbox=outbox, topics=Topics("edgeagent", "s", "n"), link=None,
                  telemetry_interval_s=0.0, actuators=actuators)
    return agent, outbox, pool


def test_the_agent_stops_touching_what_the_hook_closed(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    alarm = rtc_tree(tmp_path)
    runner = FakeRunner([], alarm)
    closed: list[str] = []

    def fake_decide(*args: Any, **kwargs: Any) -> tuple[Decision, Any]:
        return replace(sleeping(), sleep_until=time.time() + 6 * HOUR), args[7]

    monkeypatch.setattr(edgeagent.agent, "decide", fake_decide)
    sleep = SleepActuator(tmp_path / "sys", runner=runner, grace_s=0,
                          on_before_halt=lambda wake: closed.append("closed"))
    agent, outbox, _ = _agent(tmp_path, ActuatorSet([sleep]))
    outbox.close()  # as the service's hook does
    decision = agent.tick()
    assert decision.sleep_until is not None and closed == ["closed"]
    assert agent.outbox_errors == 0  # the closed outbox was left alone
    assert runner.calls == [["systemctl", "poweroff"]]


def _service_config(tmp_path: Path, command: list[str]) -> str:
    return f"""
[governor]
allow_sleep = true
tick_s = 0.1
[telemetry]
outbox_path = "{tmp_path / 'outbox.db'}"
[actuators]
sleep = true
sysfs_root = "{tmp_path / 'sys'}"
sleep_command = {json.dumps(command)}
"""


@pytest.mark.parametrize("halts", [True, False])
def test_the_service_stops_cleanly_then_halts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              halts: bool) -> None:
    alarm = rtc_tree(tmp_path)
    marker = tmp_path / "halted"
    command = ([sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"] if halts
               else [sys.executable, "-c", "raise SystemExit('Access denied')"])
    config = parse_config(_service_config(tmp_path, command))
    wake = int(time.time() + 6 * HOUR)

    def fake_decide(*args: Any, **kwargs: Any) -> tuple[Decision, Any]:
        return sleeping(wake), args[7]

    real_build = edgeagent.service.build_actuators

    def no_grace(config: ActuatorConfig, **kwargs: Any) -> ActuatorSet:
        # past the start grace period (the config refuses a grace this short)
        return real_build(config.model_copy(update={"sleep_grace_s": 0.0}), **kwargs)

    monkeypatch.setattr(edgeagent.agent, "decide", fake_decide)
    monkeypatch.setattr(edgeagent.service, "build_actuators", no_grace)
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # keep pytest's handlers
    out = io.StringIO()
    status = run_service(config, out)
    said = out.getvalue()
    assert "sleeping until" in said and "stopping before the halt" in said
    outbox = Outbox(tmp_path / "outbox.db")
    try:  # the last telemetry row says until when the site sleeps
        rows = outbox._db.execute("SELECT payload FROM outbox ORDER BY id").fetchall()
    finally:
        outbox.close()
    assert rows and str(wake).encode() in bytes(rows[-1][0])
    if halts:
        assert status == 0 and marker.exists() and "halting" in said
        assert alarm.read_text() == str(wake)
    else:
        assert status == 1 and "did not halt" in said and "Access denied" in said
        assert alarm.read_text() == "0"
