"""The agent loop keeps governing when the disk under the outbox fails."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edgeagent.agent import Agent
from edgeagent.boards import load_board
from edgeagent.config import BatteryConfig, GovernorConfig
from edgeagent.infer.bundled import load_bundled_samples
from edgeagent.infer.classifier import DigitsClassifier
from edgeagent.telemetry.mqtt import Topics
from edgeagent.telemetry.outbox import Outbox
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
