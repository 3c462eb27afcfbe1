"""The agent's loop, shared by ``edgeagent run`` and ``edgeagent demo``: one tick reads the
site's state, asks the governor, applies the decision to the workers and queues telemetry."""

from __future__ import annotations

import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from edgeagent.boards import BoardProfile
from edgeagent.config import BatteryConfig, GovernorConfig
from edgeagent.governor import Decision, decide
from edgeagent.power.source import PowerSource
from edgeagent.state import SiteState
from edgeagent.telemetry.mqtt import MqttLink, Topics
from edgeagent.telemetry.outbox import Outbox
from edgeagent.workloads.pool import WorkerPool


class Agent:
    def __init__(self, *, sources: Sequence[PowerSource], board: BoardProfile,
                 battery: BatteryConfig, governor: GovernorConfig, stale_after_s: float,
                 pool: WorkerPool, outbox: Outbox, topics: Topics, link: MqttLink | None,
                 telemetry_interval_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``clock`` drives telemetry cadence and time-at-level: wall time on a board,
        simulated time in the demo. Staleness always uses the monotonic wall clock."""
        self.sources = sources
        self.board = board
        self.battery = battery
        self.governor = governor
        self.stale_after_s = stale_after_s
        self.pool = pool
        self.outbox = outbox
        self.topics = topics
        self.link = link
        self.telemetry_interval_s = telemetry_interval_s
        self.clock = clock
        self.decision: Decision | None = None
        self.state = SiteState()
        self.time_at_level: defaultdict[int, float] = defaultdict(float)
        self.telemetry_queued = 0
        self.outbox_errors = 0
        self.last_outbox_error: str | None = None
        self._last_tick = clock()
        self._next_telemetry = self._last_tick

    def site_state(self) -> SiteState:
        now = time.monotonic()
        pairs = []
        for source in self.sources:
            valid = source.last_valid_monotonic
            pairs.append((source.latest, None if valid is None else now - valid))
        return SiteState.from_readings(pairs, self.stale_after_s)

    def tick(self) -> Decision:
        now = self.clock()
        if self.decision is not None:
            self.time_at_level[self.decision.workers] += now - self._last_tick
        self._last_tick = now
        self.state = self.site_state()
        self.decision = decide(self.state, self.board, self.battery, self.governor, self.decision)
        self.pool.set_workers(self.decision.workers)
        try:
            if now >= self._next_telemetry:
                self._next_telemetry = now + self.telemetry_interval_s
                self.outbox.enqueue_telemetry(self.topics.telemetry, self.telemetry())
                self.telemetry_queued += 1
            if self.link is not None:
                self.link.pump(self.outbox)
        except sqlite3.Error as exc:
            # A full or failing disk must not stop the governor: count it, keep deciding.
            self.outbox_errors += 1
            self.last_outbox_error = str(exc)
        return self.decision

    def joules_per_inference(self) -> float | None:
        """Marginal energy: CPU-seconds of inference times one busy core's watts, per inference.

        An estimate from the board profile, not a meter reading: boards with a power sensor
        replace it in a later issue.
        """
        stats = self.pool.stats()
        if not stats.inferences:
            return None
        return stats.cpu_s * self.board.watts_per_core / stats.inferences

    @staticmethod
    def _device_health(source: PowerSource) -> dict[str, Any]:
        """Counters per configured port, with the identity of the device answering on it."""
        latest = source.latest
        return {**source.counters(),
                "device_id": None if latest is None else latest.device_id}

    def telemetry(self) -> dict[str, Any]:
        stats = self.pool.stats()
        decision = self.decision
        power = {k: v for k, v in asdict(self.state).items() if v is not None}
        return {
            "ts": time.time(),
            "power": power,
            "decision": None if decision is None else {
                "workers": decision.workers, "budget_w": round(decision.budget_w, 3),
                "reason": decision.reason},
            "workload": {"inferences": stats.inferences, "cpu_s": round(stats.cpu_s, 3),
                         "j_per_inference": self.joules_per_inference()},
            "devices": {s.name: self._device_health(s) for s in self.sources},
            "outbox": {"pending": self.outbox.pending_count(), "dropped": self.outbox.dropped,
                       "errors": self.outbox_errors,
                       "rejected": 0 if self.link is None else len(self.link.rejected)},
        }
