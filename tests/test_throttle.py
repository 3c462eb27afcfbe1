"""A Raspberry Pi's under-voltage and throttling flags are read from sysfs or ``vcgencmd``,
decoded, reported, and make the governor shed load while the supply sags."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from edgeagent.agent import Agent
from edgeagent.boards import load_board
from edgeagent.config import BatteryConfig, GovernorConfig
from edgeagent.governor import GovernorMemory, decide
from edgeagent.infer.bundled import load_bundled_samples
from edgeagent.infer.classifier import DigitsClassifier
from edgeagent.power.reader import SerialReader
from edgeagent.power.throttle import SYSFS, ThrottleSensor, parse_throttled
from edgeagent.state import SiteState
from edgeagent.telemetry.mqtt import Topics
from edgeagent.telemetry.outbox import Outbox
from edgeagent.workloads.pool import WorkerPool
from emulated_devices import smartshunt

PI4 = load_board("raspberry-pi-4")
BATTERY = BatteryConfig()
GOVERNOR = GovernorConfig(max_workers=4, min_dwell_s=600)
SUNNY_AND_FULL = SiteState(pv_power_w=60.0, battery_soc_pct=99.0, battery_voltage_v=13.4,
                           age_s=0.5, stale=False)


def sysfs_root(tmp_path: Path, text: str) -> Path:
    path = tmp_path / SYSFS
    path.parent.mkdir(parents=True)
    path.write_text(text)
    return tmp_path


def test_the_bits_decode_into_what_is_true_now_and_what_has_occurred() -> None:
    flags = parse_throttled("throttled=0x50005\n")  # vcgencmd: under-voltage and throttled
    assert flags.under_voltage
    assert flags.telemetry() == {"bits": "0x50005", "now": ["under_voltage", "throttled"],
                                 "occurred": ["under_voltage", "throttled"]}
    past = parse_throttled("80000")  # sysfs: hex without a prefix; soft limit occurred only
    assert not past.under_voltage
    assert past.telemetry()["now"] == [] and past.telemetry()["occurred"] == ["soft_temp_limit"]


def test_sysfs_is_read_where_the_kernel_has_it(tmp_path: Path) -> None:
    sensor = ThrottleSensor.find(sysfs_root(tmp_path, "50005\n"))
    assert sensor is not None and sensor.source == f"/{SYSFS}"
    flags = sensor.read()
    assert flags is not None and flags.under_voltage
    (tmp_path / SYSFS).write_text("0\n")
    assert sensor.read() == parse_throttled("0")
    assert sensor.telemetry()["now"] == [] and sensor.telemetry()["errors"] == 0


def test_vcgencmd_on_the_path_is_run_when_sysfs_has_no_flags(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "vcgencmd"
    script.write_text('#!/bin/sh\n[ "$1" = get_throttled ] && echo "throttled=0x50000"\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    sensor = ThrottleSensor.find(tmp_path)
    assert sensor is not None and sensor.source == "vcgencmd get_throttled"
    flags = sensor.read()
    assert flags is not None and not flags.under_voltage
    assert flags.telemetry()["occurred"] == ["under_voltage", "throttled"]


def test_a_board_with_neither_has_no_sensor(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert ThrottleSensor.find(tmp_path) is None


def test_a_failing_read_is_counted_and_makes_the_flags_unknown(tmp_path: Path) -> None:
    answers = ["throttled=0x1", "garbage", None]

    def runner(args: Sequence[str]) -> str:
        answer = answers.pop(0)
        if answer is None:
            raise subprocess.CalledProcessError(255, list(args), "", "VCHI init failed")
        return answer

    sensor = ThrottleSensor(lambda: runner(["vcgencmd", "get_throttled"]), "vcgencmd")
    assert sensor.read() is not None
    assert sensor.read() is None and sensor.read() is None
    report = sensor.telemetry()
    assert report["errors"] == 2 and report["bits"] is None
    assert "CalledProcessError" in report["last_error"]


def test_under_voltage_sheds_one_worker_a_tick_and_the_dwell_keeps_the_load_down() -> None:
    now = 1.75e9
    decision, memory = decide(SUNNY_AND_FULL, now, None, PI4, BATTERY, GOVERNOR)
    assert decision.workers == 4
    sagging = replace(SUNNY_AND_FULL, under_voltage=True)
    workers, reasons = [], []
    for tick in range(1, 6):
        decision, memory = decide(sagging, now + tick * 5, None, PI4, BATTERY, GOVERNOR,
                                  memory=memory)
        workers.append(decision.workers)
        reasons.append(decision.reason)
    assert workers == [3, 2, 1, 0, 0]
    assert all(r.startswith("under-voltage: shedding") for r in reasons[:4])
    assert decision.freeze and decision.admit <= {"urgent"}
    steady = replace(sagging, under_voltage=False)
    decision, memory = decide(steady, now + 60, None, PI4, BATTERY, GOVERNOR, memory=memory)
    assert decision.workers == 0 and "dwell" in decision.reason
    decision, _ = decide(steady, now + 30 + GOVERNOR.min_dwell_s, None, PI4, BATTERY, GOVERNOR,
                         memory=memory)
    assert decision.workers == 4


def test_no_flag_or_an_unknown_one_changes_nothing() -> None:
    plain, _ = decide(SUNNY_AND_FULL, 1.75e9, None, PI4, BATTERY, GOVERNOR)
    memory = GovernorMemory()
    for flag in (False, None):
        state = replace(SUNNY_AND_FULL, under_voltage=flag)
        assert decide(state, 1.75e9, None, PI4, BATTERY, GOVERNOR, memory=memory)[0] == plain


def test_the_agent_puts_the_flag_in_its_state_and_telemetry_and_always_on_yields(
        tmp_path: Path) -> None:
    shunt = smartshunt(90.0)
    reader = SerialReader(shunt.port)
    x, y = load_bundled_samples()
    pool = WorkerPool(DigitsClassifier.load, x[:64], y[:64], max_workers=2)
    outbox = Outbox(tmp_path / "o.db")
    sensor = ThrottleSensor.find(sysfs_root(tmp_path, "0\n"))
    agent = Agent(sources=[reader], board=PI4, battery=BATTERY,
                  governor=GovernorConfig(max_workers=2), stale_after_s=5, pool=pool,
                  outbox=outbox, topics=Topics("edgeagent", "s", "n"), link=None,
                  telemetry_interval_s=0.0, throttle=sensor)
    agent.set_policy("always-on")
    reader.start()
    pool.start()
    try:
        deadline = time.monotonic() + 20
        decision = agent.tick()
        while agent.state.stale:  # until the shunt's first block is read
            assert time.monotonic() < deadline, "no reading from the shunt"
            time.sleep(0.05)
            decision = agent.tick()
        assert agent.state.under_voltage is False and decision.workers == 2
        (tmp_path / SYSFS).write_text("50005\n")
        decision = agent.tick()
        assert agent.state.under_voltage is True
        assert decision.workers < 2 and "always-on" not in decision.reason
        assert agent.telemetry()["power"]["under_voltage"] is True
    finally:
        reader.stop()
        pool.stop()
        outbox.close()
        shunt.stop()
