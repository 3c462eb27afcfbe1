"""The agent's loop, shared by ``edgeagent run`` and ``edgeagent demo``: one tick reads the
site's state, asks the governor, applies the decision to the workers and queues telemetry."""

from __future__ import annotations

import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from edgeagent.actuators import ActuatorSet, WorkerPoolActuator
from edgeagent.boards import BoardProfile
from edgeagent.config import BatteryConfig, GovernorConfig, WorkloadConfig
from edgeagent.governor import Decision, Forecaster, GovernorMemory, decide
from edgeagent.infer.energy import estimate_basis
from edgeagent.power.source import PowerSource
from edgeagent.state import SiteState
from edgeagent.telemetry.mqtt import MqttLink, Topics
from edgeagent.telemetry.outbox import Outbox
from edgeagent.workloads.desk import JobDesk
from edgeagent.workloads.energy import EnergyLedger, solar_share_now
from edgeagent.workloads.pool import WorkerPool


class Agent:
    def __init__(self, *, sources: Sequence[PowerSource], board: BoardProfile,
                 battery: BatteryConfig, governor: GovernorConfig, stale_after_s: float,
                 pool: WorkerPool, outbox: Outbox, topics: Topics, link: MqttLink | None,
                 telemetry_interval_s: float, workload: WorkloadConfig | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 epoch: Callable[[], float] = time.time,
                 forecaster: Forecaster | None = None, actuators: ActuatorSet | None = None,
                 desk: JobDesk | None = None) -> None:
        """``clock`` drives telemetry cadence and time-at-level: wall time on a board,
        simulated time in the demo. Staleness always uses the monotonic wall clock; the
        governor plans in UTC epoch seconds from ``epoch`` (the emulated sun's in the demo).
        ``forecaster``: the site's solar forecast (None without coordinates), fed with the PV
        the site reports. ``actuators`` apply each decision (default: the worker pool only);
        ``desk`` takes jobs in and expires them."""
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
        self.workload = workload or WorkloadConfig(model=pool.model)
        self.clock = clock
        self.epoch = epoch
        self.actuators = actuators or ActuatorSet([WorkerPoolActuator(pool, clock=clock)])
        self.desk = desk
        self.energy = EnergyLedger()
        self._cpu_s_seen = 0.0
        self.forecaster = forecaster
        self.memory = GovernorMemory()
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
        self._account_energy()
        epoch = self.epoch()
        forecast = None
        if self.forecaster is not None:
            if self.state.pv_power_w is not None:
                # In float the charger holds the panel back: the PV seen is the load's, not
                # the sun's, and must teach the forecast neither capacity nor clearness.
                self.forecaster.observe(epoch, self.state.pv_power_w,
                                        curtailed=self.state.charger_state == "float")
            forecast = self.forecaster.forecast(epoch)
        urgent = False
        try:
            if self.desk is not None:
                self.desk.tick(epoch, self.state, self.decision, forecast)
                urgent = self.desk.urgent_waiting(epoch)
        except sqlite3.Error as exc:  # the job queue's disk: count it, keep governing
            self.outbox_errors += 1
            self.last_outbox_error = f"jobs: {exc}"
        self.decision, self.memory = decide(self.state, epoch, forecast, self.board,
                                            self.battery, self.governor, self.workload,
                                            self.memory, urgent_waiting=urgent)
        self.actuators.apply(self.decision)
        self.pool.set_admitted(self.decision.admit)
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

    def _account_energy(self) -> None:
        """Book the inference energy since the last tick at the solar share seen now."""
        stats = self.pool.stats()
        cpu_s = stats.cpu_s + stats.jobs.cpu_s
        spent_j = (cpu_s - self._cpu_s_seen) * self.board.watts_per_core
        self._cpu_s_seen = cpu_s
        if spent_j > 0:
            board_w = self.board.load_w(self.pool.busy_cores())
            self.energy.add(spent_j, solar_share_now(self.state, board_w))

    @property
    def energy_basis(self) -> str:
        """How the joules are known: an estimate from the board profile, not a meter reading."""
        return "estimate: " + estimate_basis(self.board)

    def joules_per_inference(self) -> float | None:
        """Marginal energy per inference: CPU-seconds times one busy core's watts."""
        stats = self.pool.stats()
        return stats.joules_per(stats.inferences, self.board.watts_per_core)

    def joules_per_job(self) -> float | None:
        """The same per job (one batch of the workload)."""
        stats = self.pool.stats()
        return stats.joules_per(stats.batches, self.board.watts_per_core)

    @staticmethod
    def _device_health(source: PowerSource) -> dict[str, Any]:
        """Counters per configured port, with the identity of the device answering on it."""
        latest = source.latest
        return {**source.counters(),
                "device_id": None if latest is None else latest.device_id}

    def _workload_telemetry(self) -> dict[str, Any]:
        stats = self.pool.stats()
        watts = self.board.watts_per_core
        share = self.energy.solar_share
        return {
            "model": self.pool.model, "inferences": stats.inferences, "jobs": stats.batches,
            "cpu_s": round(stats.cpu_s, 3), "energy_j": round(self.energy.energy_j, 3),
            "j_per_inference": self.joules_per_inference(), "j_per_job": self.joules_per_job(),
            "solar_share": None if share is None else round(share, 4),
            "energy_basis": self.energy_basis,
            "models": {name: {"inferences": s.inferences, "jobs": s.batches,
                              "accuracy": s.accuracy,
                              "j_per_inference": s.joules_per(s.inferences, watts)}
                       for name, s in stats.by_model.items()},
            "errors": stats.errors, "last_error": self.pool.last_error,
        }

    def telemetry(self) -> dict[str, Any]:
        decision = self.decision
        power = {k: v for k, v in asdict(self.state).items() if v is not None}
        return {
            "ts": time.time(),
            "power": power,
            "decision": None if decision is None else {
                "workers": decision.workers, "level": round(decision.level, 4),
                "budget_w": round(decision.budget_w, 3), "model": decision.model,
                "admit": sorted(decision.admit), "reserve_pct": decision.reserve_pct,
                "sleep_until": decision.sleep_until, "reason": decision.reason},
            "workload": self._workload_telemetry(),
            "devices": {s.name: self._device_health(s) for s in self.sources},
            "actuators": self.actuators.telemetry(),
            "queue": None if self.desk is None else self.desk.queue.counts(),
            "outbox": {"pending": self.outbox.pending_count(), "dropped": self.outbox.dropped,
                       "errors": self.outbox_errors,
                       "rejected": 0 if self.link is None else len(self.link.rejected)},
        }
