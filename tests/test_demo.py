"""`edgeagent demo` end to end: emulated charger on ptys, real driver, governor, model, broker."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import Broker, edgeagent_command, retained


def demo(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*edgeagent_command(), "demo", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_demo_without_a_broker_prints_progress_and_a_summary(tmp_path: Path) -> None:
    proc = demo("--duration", "6", "--speed", "7200", "--state-dir", str(tmp_path))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert re.search(r"day 1 \d\d:\d\d  PV +[\d.]+ W  SoC +[\d.]+ %  workers \d/2 ", out), out
    for line in ("PV energy", "state of charge", "inferences", "energy/inference",
                 "time at work level", "telemetry"):
        assert line in out
    energy = re.search(r"energy/inference +([\d.]+) uJ   per job ([\d.]+) mJ   total ([\d.]+) J"
                       r"   solar share (\d+)% \(estimate: CPU-s x", out)
    assert energy is not None, out
    assert float(energy[1]) > 0 and float(energy[2]) > 0 and 0 <= int(energy[4]) <= 100
    assert re.search(r"model digits-(large-)?int8: \d+ inferences in \d+ jobs", out), out
    inferences = int(re.search(r"inferences +(\d+)", out).group(1))  # type: ignore[union-attr]
    assert inferences > 0
    queued = int(re.search(r"queued (\d+)", out).group(1))  # type: ignore[union-attr]
    pending = int(re.search(r"pending (\d+)", out).group(1))  # type: ignore[union-attr]
    assert queued > 0 and pending == queued  # no broker: everything waits in the outbox
    assert (tmp_path / "outbox.db").exists()


def test_demo_with_a_broker_publishes_status_and_gapless_telemetry(
        broker: Broker, subscriber_factory: Any, tmp_path: Path) -> None:
    sub = subscriber_factory("edgeagent/s1/n1/#")
    proc = demo("--broker", broker.url, "--site", "s1", "--node", "n1", "--duration", "8",
                "--speed", "7200", "--state-dir", str(tmp_path))
    sub.wait_for("edgeagent/s1/n1/telemetry", lambda m: True, timeout=60)
    status = retained(broker, "edgeagent/s1/n1/status")
    assert status is not None and status["state"] == "online"  # retained while running
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    time.sleep(0.5)
    status = retained(broker, "edgeagent/s1/n1/status")
    assert status is not None and status["state"] == "offline"  # and offline after
    telemetry = sub.json_on("edgeagent/s1/n1/telemetry")
    seqs = [m["seq"] for m in telemetry]
    assert seqs == list(range(len(seqs))), "telemetry seq has gaps or repeats"
    published = int(re.search(r"published (\d+)", out).group(1))  # type: ignore[union-attr]
    assert published == len(telemetry) > 0
    first = telemetry[-1]
    assert {"ts", "power", "decision", "workload", "outbox"} <= first.keys()
    assert "battery_soc_pct" in first["power"]
    workload = first["workload"]
    assert {"model", "inferences", "jobs", "energy_j", "j_per_inference", "j_per_job",
            "solar_share", "energy_basis", "models", "errors", "last_error"} <= workload.keys()
    assert workload["inferences"] > 0, "the morning sun should have paid for some work"
    assert workload["j_per_inference"] > 0 and 0 <= workload["solar_share"] <= 1
    assert set(workload["models"]) <= {"digits-large-int8", "digits-int8"}
    assert {"level", "admit", "reserve_pct", "sleep_until"} <= first["decision"].keys()
    assert "actuators" in first and "queue" in first


def test_demo_seq_continues_after_a_restart_on_the_same_state_dir(
        broker: Broker, subscriber_factory: Any, tmp_path: Path) -> None:
    sub = subscriber_factory("edgeagent/s1/n1/telemetry")
    for _ in range(2):
        proc = demo("--broker", broker.url, "--site", "s1", "--node", "n1", "--duration", "4",
                    "--state-dir", str(tmp_path))
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    time.sleep(0.5)
    seqs = [m["seq"] for m in sub.json_on("edgeagent/s1/n1/telemetry")]
    assert len(seqs) > 2 and seqs == list(range(len(seqs)))


def test_a_bad_broker_url_is_a_clear_error() -> None:
    proc = demo("--broker", "http://nope", "--duration", "1")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "mqtt://" in err and "Traceback" not in err


def test_an_unusable_state_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = demo("--duration", "1", "--state-dir", str(blocker / "state"))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "Traceback" not in err and str(blocker) in err


@pytest.mark.parametrize(("charger", "monitor"), [("renogy", "daly"), ("epever", "jbd")])
def test_demo_runs_on_any_emulated_charger_and_battery_monitor(charger: str, monitor: str,
                                                               tmp_path: Path) -> None:
    proc = demo("--duration", "6", "--speed", "10800", "--state-dir", str(tmp_path),
                "--charger", charger, "--monitor", monitor)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    # The sun shows up through the charger, the state of charge through the monitor.
    assert re.search(r"PV +[1-9][\d.]* W  SoC +[\d.]+ %", out), out
    devices = re.findall(r"device \S+: valid (\d+)   invalid (\d+)   reopens (\d+)", out)
    assert len(devices) == 2 and all(int(valid) > 0 for valid, _, _ in devices), out
