"""The agent loop keeps governing when the disk under the outbox fails."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from edgeagent.agent import Agent
from edgeagent.boards import load_board
from edgeagent.config import BatteryConfig, GovernorConfig, parse_config
from edgeagent.governor.forecast import Forecaster
from edgeagent.infer.bundled import load_bundled_samples
from edgeagent.infer.classifier import DigitsClassifier
from edgeagent.telemetry.mqtt import MqttLink, Topics
from edgeagent.telemetry.outbox import Outbox
from edgeagent.workloads.desk import JobDesk
from edgeagent.workloads.fleet_jobs import FleetJobs, Ledger
from edgeagent.workloads.jobs import JobQueue
from edgeagent.workloads.pool import WorkerPool


def test_a_full_disk_is_counted_and_the_governor_keeps_deciding(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.db")
    pages = outbox._db.execute("PRAGMA page_count").fetchone()[0]
    outbox._db.execute(f"PRAGMA max_page_count = {pages + 2}")  # a nearly full disk
    stored = 0
    with pytest.raises(sqlite3.OperationalError, match="full"):
        while True:
            outbox.enqueue("t", b"x" * 200)
            stored += 1
    x, y = load_bundled_samples()
    pool = WorkerPool(DigitsClassifier.load, x, y, max_workers=1)
    agent = Agent(sources=[], board=load_board("raspberry-pi-4"), battery=BatteryConfig(),
                  governor=GovernorConfig(max_workers=1), stale_after_s=5, pool=pool,
                  outbox=outbox, topics=Topics("edgeagent", "s", "n"), link=None,
                  telemetry_interval_s=0.0)
    for _ in range(3):
        decision = agent.tick()
        assert decision.workers == 0 and "stale" in decision.reason
    assert agent.outbox_errors == 3
    assert agent.last_outbox_error is not None and "full" in agent.last_outbox_error
    assert outbox.pending_count() == stored  # what was stored before is still there


def test_a_live_config_change_reaches_the_forecast_and_the_fleet_jobs(tmp_path: Path) -> None:
    """A remote config that changes the model or the admission quantile is what the node
    takes fleet jobs for and admits by from the next tick, not after a restart."""
    x, y = load_bundled_samples()
    topics = Topics("edgeagent", "s", "n")
    board = load_board("raspberry-pi-4")
    outbox, queue = Outbox(tmp_path / "o.db"), JobQueue(tmp_path / "jobs.db")
    desk = JobDesk(queue, None, board, BatteryConfig(), GovernorConfig(max_workers=1))
    link = MqttLink("mqtt://127.0.0.1:1", topics)  # never started: nothing is sent
    fleet = FleetJobs(link, outbox, desk, Ledger(tmp_path / "fleet.db"),
                      inputs_dir=tmp_path / "inputs", models={"digits-int8"}, epoch=time.time)
    forecaster = Forecaster(36.1, -79.8)
    agent = Agent(sources=[], board=board, battery=BatteryConfig(),
                  governor=GovernorConfig(max_workers=1), stale_after_s=5,
                  pool=WorkerPool(DigitsClassifier.load, x, y, max_workers=1), outbox=outbox,
                  topics=topics, link=None, telemetry_interval_s=10.0, forecaster=forecaster,
                  desk=desk, fleet_jobs=fleet)
    agent.apply_config(parse_config(
        '[governor]\nmax_workers = 1\nforecast_quantile = 0.4\nadmission_quantile = 0.1\n'
        '[workload]\nmodel = "digits-large-int8"\nfallbacks = [{model = "digits-int8", '
        'below_budget_w = 2}]\n'))
    try:
        assert (forecaster.quantile, forecaster.admission_quantile) == (0.4, 0.1)
        assert set(fleet.models) == {"digits-large-int8", "digits-int8"}
    finally:
        fleet.ledger.close()
        queue.close()
        outbox.close()
