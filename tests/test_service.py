"""`edgeagent run --config`: the service reads a real pty, governs, publishes, stops cleanly."""

from __future__ import annotations

import io
import json
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgeagent.service
from conftest import Broker, edgeagent_command, retained
from edgeagent.config import parse_config
from edgeagent.infer.bundled import load_bundled_samples
from edgeagent.service import build_site, run_service
from emulated_devices import smartshunt


def test_run_reads_the_device_publishes_and_goes_offline_on_sigterm(
        broker: Broker, subscriber_factory: Any, tmp_path: Path) -> None:
    shunt = smartshunt(90.0)
    config = tmp_path / "edgeagent.toml"
    config.write_text(f"""
[site]
id = "s1"
node = "n1"
[[power.devices]]
driver = "vedirect"
port = "{shunt.port}"
[governor]
tick_s = 0.2
[workload]
model = "digits-large-int8"
[[workload.fallbacks]]
model = "digits-int8-tflite"   # a budget under 100 W: always, here
below_budget_w = 100
[telemetry]
broker = "{broker.url}"
interval_s = 0.2
outbox_path = "{tmp_path / 'outbox.db'}"
""")
    sub = subscriber_factory("edgeagent/s1/n1/telemetry")
    proc = subprocess.Popen([*edgeagent_command(), "run", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        body = sub.wait_for("edgeagent/s1/n1/telemetry",
                            lambda m: m["power"].get("battery_soc_pct") == 90.0, timeout=60)
        assert body["decision"]["workers"] == 2  # 90 % of 1200 Wh pays for both workers
        assert body["decision"]["model"] == "digits-int8-tflite"  # 60 W: the fallback's band
        body = sub.wait_for("edgeagent/s1/n1/telemetry",
                            lambda m: m["workload"]["inferences"] > 0, timeout=60)
        assert set(body["workload"]["models"]) == {"digits-int8-tflite"}
        assert body["workload"]["j_per_inference"] > 0
        status = retained(broker, "edgeagent/s1/n1/status")
        assert status is not None and status["state"] == "online"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        assert proc.returncode == 0
        status = retained(broker, "edgeagent/s1/n1/status")
        assert status is not None and status["state"] == "offline"
        time.sleep(0.3)
        seqs = [m["seq"] for m in sub.json_on("edgeagent/s1/n1/telemetry")]
        assert seqs == list(range(len(seqs)))
    finally:
        if proc.poll() is None:
            proc.kill()
        shunt.stop()


def test_run_refuses_a_model_file_it_cannot_load(tmp_path: Path) -> None:
    model = tmp_path / "broken.onnx"
    model.write_bytes(b"this is not a protobuf")
    config = tmp_path / "edgeagent.toml"
    config.write_text(f'[workload]\nmodel = "{model}"\n[telemetry]\n'
                      f'outbox_path = "{tmp_path / "o.db"}"\n')
    done = subprocess.run([*edgeagent_command(), "run", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "workload model" in done.stderr and "onnxruntime cannot load it" in done.stderr
    assert "Traceback" not in done.stderr


def test_run_refuses_a_broken_config(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[battery]\nreserve_soc_pct = 2\n")
    result = subprocess.run([*edgeagent_command(), "run", "--config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "battery.reserve_soc_pct" in result.stderr


def test_run_with_an_unusable_outbox_path_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    config = tmp_path / "edgeagent.toml"
    config.write_text(f'[telemetry]\noutbox_path = "{blocker / "outbox.db"}"\n')
    result = subprocess.run([*edgeagent_command(), "run", "--config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "cannot open the outbox" in result.stderr and "Traceback" not in result.stderr


def test_run_with_an_unusable_jobs_path_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    config = tmp_path / "edgeagent.toml"
    config.write_text(f'[jobs]\npath = "{blocker / "jobs.db"}"\n'
                      f'[telemetry]\noutbox_path = "{tmp_path / "outbox.db"}"\n')
    result = subprocess.run([*edgeagent_command(), "run", "--config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "cannot open the job queue" in result.stderr and "check jobs.path" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "outbox.db-wal").exists()  # the outbox closed: its WAL checkpointed


def _record_stores(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every outbox, job queue and fleet ledger the service opens, in order, kept alive so
    that a close the service forgot shows (no garbage collection closes them meanwhile)."""
    opened: list[Any] = []

    def recording(cls: Callable[..., Any]) -> Callable[..., Any]:
        def make(*args: Any, **kwargs: Any) -> Any:
            store = cls(*args, **kwargs)
            opened.append(store)
            return store
        return make

    for name in ("Outbox", "JobQueue", "Ledger"):
        monkeypatch.setattr(edgeagent.service, name,
                            recording(getattr(edgeagent.service, name)))
    return opened


def _closed(store: Any) -> bool:
    try:
        store._db.execute("SELECT 1")
    except sqlite3.ProgrammingError:  # "Cannot operate on a closed database."
        return True
    return False


@pytest.mark.parametrize("broken", ["jobs.path", "fleet ledger"])
def test_a_start_up_error_closes_what_was_opened_before_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broken: str) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    telemetry = f'[telemetry]\noutbox_path = "{tmp_path / "outbox.db"}"\n'
    if broken == "jobs.path":
        text = f'[jobs]\npath = "{blocker / "jobs.db"}"\n' + telemetry
        said, stores = "cannot open the job queue", ["Outbox"]
    else:  # the queue opens, the ledger next to it cannot (a directory is in the way)
        (tmp_path / "fleet-jobs.db").mkdir()
        text = ('[jobs.fleet]\nenabled = true\n' + telemetry
                + 'broker = "mqtt://127.0.0.1:1"\n')  # built, never started: no connection
        said, stores = "cannot open the fleet job ledger", ["Outbox", "JobQueue"]
    opened = _record_stores(monkeypatch)
    out = io.StringIO()
    assert run_service(parse_config(text), out) == 2
    assert f"edgeagent run: {said}" in out.getvalue()
    assert [type(s).__name__ for s in opened] == stores
    assert all(map(_closed, opened))


def test_any_failure_while_building_closes_the_stores(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened = _record_stores(monkeypatch)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("no actuators today")

    monkeypatch.setattr(edgeagent.service, "build_actuators", broken)
    config = parse_config(f'[telemetry]\noutbox_path = "{tmp_path / "outbox.db"}"\n')
    with pytest.raises(RuntimeError, match="no actuators today"):
        build_site(config, io.StringIO(), None)
    assert [type(s).__name__ for s in opened] == ["Outbox", "JobQueue"]
    assert all(map(_closed, opened))


def test_a_site_closes_its_stores_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened = _record_stores(monkeypatch)
    config = parse_config(f'[telemetry]\noutbox_path = "{tmp_path / "outbox.db"}"\n')
    site = build_site(config, io.StringIO(), None)
    assert not any(map(_closed, opened))
    site.close()  # never started: nothing to stop, the stores to close
    site.close()
    assert site.closed and [type(s).__name__ for s in opened] == ["Outbox", "JobQueue"]
    assert all(map(_closed, opened))


def test_run_polls_a_modbus_charger_and_reports_device_counters(
        broker: Broker, subscriber_factory: Any, tmp_path: Path) -> None:
    from test_modbus import epever_tables

    from rtu_responder import RtuResponder

    with RtuResponder(epever_tables(-250)) as device:
        config = tmp_path / "edgeagent.toml"
        config.write_text(f"""
[site]
id = "s1"
node = "n1"
[[power.devices]]
driver = "epever"
port = "{device.port}"
poll_interval_s = 0.2
[governor]
tick_s = 0.2
[telemetry]
broker = "{broker.url}"
interval_s = 0.2
outbox_path = "{tmp_path / 'outbox.db'}"
""")
        sub = subscriber_factory("edgeagent/s1/n1/telemetry")
        proc = subprocess.Popen([*edgeagent_command(), "run", "--config", str(config)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            body = sub.wait_for("edgeagent/s1/n1/telemetry",
                                lambda m: m["devices"][device.port]["valid"] >= 2, timeout=60)
            assert body["power"]["battery_soc_pct"] == 87.0
            assert body["power"]["battery_current_a"] == -2.5
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    assert proc.returncode == 0


def test_a_job_dropped_in_the_inbox_is_run_and_its_result_written(tmp_path: Path) -> None:
    """The whole path: inbox file -> admission -> queue -> a worker claims it -> results/."""
    shunt = smartshunt(90.0)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    pixels, labels = load_bundled_samples()
    np.save(inbox / "five.npy", pixels[:5])
    (inbox / "job.json.tmp").write_text(json.dumps(
        {"id": "job-1", "class": "urgent", "model": "digits-int8", "input": "five.npy"}))
    (inbox / "job.json.tmp").rename(inbox / "job.json")  # complete files only, by rename
    config = tmp_path / "edgeagent.toml"
    config.write_text(f"""
[[power.devices]]
driver = "vedirect"
port = "{shunt.port}"
[governor]
tick_s = 0.2
[jobs]
inbox_dir = "{inbox}"
[telemetry]
outbox_path = "{tmp_path / 'outbox.db'}"
""")
    proc = subprocess.Popen([*edgeagent_command(), "run", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    result = inbox / "results" / "job-1.json"
    try:
        deadline = time.monotonic() + 60
        while not result.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert result.exists(), proc.stderr.read() if proc.poll() is not None else "no result"
        record = json.loads(result.read_text())
        assert record["state"] == "done"
        assert record["result"]["labels"] == labels[:5].tolist()
        assert "input" not in record  # input data stays on the site
        assert (inbox / "accepted" / "job.json").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        shunt.stop()
