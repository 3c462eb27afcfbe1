"""The agent's loop, shared by ``edgeagent run`` and ``edgeagent demo``: one tick reads the
site's state, asks the governor, applies the decision to the workers and queues telemetry."""

from __future__ import annotations

import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from typing import Any

from edgeagent.actuators import ActuatorSet, WorkerPoolActuator
from edgeagent.boards import BoardProfile
from edgeagent.config import BatteryConfig, Config, GovernorConfig, WorkloadConfig
from edgeagent.governor import Decision, Forecaster, GovernorMemory, decide
from edgeagent.governor.decision import JOB_CLASSES, Due
from edgeagent.governor.forecast import Forecast
from edgeagent.infer.energy import estimate_basis
from edgeagent.power.source import PowerSource
from edgeagent.power.throttle import ThrottleSensor
from edgeagent.state import SiteState
from edgeagent.telemetry.clock import Clock
from edgeagent.telemetry.commands import CommandFailed, FieldError, Policy
from edgeagent.telemetry.drain import battery_full, drain_allowance
from edgeagent.telemetry.homeassistant import HomeAssistant
from edgeagent.telemetry.mqtt import MqttLink, Topics
from edgeagent.telemetry.outbox import Outbox
from edgeagent.telemetry.remote_config import Health
from edgeagent.workloads.desk import JobDesk, admission
from edgeagent.workloads.energy import EnergyLedger, solar_share_now
from edgeagent.workloads.fleet_jobs import FleetJobs
from edgeagent.workloads.jobs import Job, JobSpec
from edgeagent.workloads.pool import WorkerPool


class Agent:
    def __init__(self, *, sources: Sequence[PowerSource], board: BoardProfile,
                 battery: BatteryConfig, governor: GovernorConfig, stale_after_s: float,
                 pool: WorkerPool, outbox: Outbox, topics: Topics, link: MqttLink | None,
                 telemetry_interval_s: float, workload: WorkloadConfig | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 epoch: Callable[[], float] = time.time,
                 forecaster: Forecaster | None = None, actuators: ActuatorSet | None = None,
                 desk: JobDesk | None = None, fleet_jobs: FleetJobs | None = None,
                 homeassistant: HomeAssistant | None = None,
                 throttle: ThrottleSensor | None = None) -> None:
        """``clock`` drives telemetry cadence and time-at-level: wall time on a board,
        simulated time in the demo. Staleness always uses the monotonic wall clock; the
        governor plans in UTC epoch seconds from ``epoch`` (the emulated sun's in the demo).
        ``forecaster``: the site's solar forecast (None without coordinates), fed with the PV
        the site reports. ``actuators`` apply each decision (default: the worker pool only);
        ``desk`` takes jobs in and expires them; ``fleet_jobs`` takes jobs from the fleet while
        there is energy to spare; ``homeassistant`` announces the node and its state;
        ``throttle`` reads a Raspberry Pi's under-voltage flag into the state."""
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
        self.fleet_jobs = fleet_jobs
        self.homeassistant = homeassistant
        self.throttle = throttle
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
        self.policy: Policy = "governor"  # commands: set_policy, pause, resume
        self.paused = False
        self.forecast: Forecast | None = None
        self.reporters: dict[str, Callable[[], dict[str, Any]]] = {}  # telemetry sections
        self.timestamps = Clock()  # ts, mono, boot_id, clock_synced of each telemetry message
        self._last_tick = clock()
        self._next_telemetry = self._last_tick

    def site_state(self) -> SiteState:
        now = time.monotonic()
        pairs = []
        for source in self.sources:
            valid = source.last_valid_monotonic
            pairs.append((source.latest, None if valid is None else now - valid))
        state = SiteState.from_readings(pairs, self.stale_after_s)
        flags = None if self.throttle is None else self.throttle.read()
        return state if flags is None else replace(state, under_voltage=flags.under_voltage)

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
            forecast = self.forecast = self.forecaster.forecast(epoch)
        urgent = False
        due: tuple[Due, ...] = ()  # accepted deferrable work the plan must serve
        try:
            if self.desk is not None:
                self.desk.tick(epoch, self.state, self.decision, forecast)
                urgent, due = self.desk.urgent_waiting(epoch), self.desk.due()
        except sqlite3.Error as exc:  # the job queue's disk: count it, keep governing
            self.outbox_errors += 1
            self.last_outbox_error = f"jobs: {exc}"
        self.decision, self.memory = decide(self.state, epoch, forecast, self.board,
                                            self.battery, self.governor, self.workload,
                                            self.memory, urgent_waiting=urgent, due=due)
        self.decision = self._steered(self.decision)
        self.actuators.apply(self.decision)
        if self.actuators.halting:  # the before-halt hook closed the outbox, queue and pool
            return self.decision
        self.pool.set_admitted(self.decision.admit)
        try:
            if self.fleet_jobs is not None:
                self.fleet_jobs.tick(epoch, self.state, self.decision, forecast)
            if now >= self._next_telemetry:
                self._next_telemetry = now + self.telemetry_interval_s
                body = self.telemetry()
                self.outbox.enqueue_telemetry(self.topics.telemetry, body)
                self.telemetry_queued += 1
                if self.homeassistant is not None:
                    self.homeassistant.update(body)
            if self.homeassistant is not None:
                self.homeassistant.tick()
            if self.link is not None:
                self.link.allow_backlog(drain_allowance(
                    self.outbox.pending_count(), self.decision, battery_full(self.state)))
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
            **self.timestamps.stamp(),
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
            "fleet_jobs": None if self.fleet_jobs is None else self.fleet_jobs.telemetry(),
            "outbox": {**self.outbox.report(), "errors": self.outbox_errors,
                       "rejected": 0 if self.link is None else len(self.link.rejected)},
            "link": None if self.link is None else self.link.report(),
            "control": {"policy": self.policy, "paused": self.paused,
                        "reserve_pct": self.battery.reserve_soc_pct},
            **{name: report() for name, report in self.reporters.items()},
        }

    # Remote control (edgeagent.telemetry.commands, .remote_config): runtime changes only.
    def _steered(self, decision: Decision) -> Decision:
        """Commands over the plan: paused runs nothing; always-on runs every worker unless
        the reserve is held, the power data are stale or the supply sags (the governor's safety
        stays)."""
        if self.paused:
            return replace(decision, workers=0, level=0.0, admit=frozenset(), freeze=True,
                           reason="paused by command")
        if (self.policy == "always-on" and not decision.holding_reserve and not self.state.stale
                and not self.state.under_voltage):
            return replace(decision, workers=self.governor.max_workers, level=1.0,
                           admit=frozenset(JOB_CLASSES), freeze=False, cpu_max=None,
                           cpufreq_max_pct=100.0, sleep_until=None, reason="always-on by command")
        return decision

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def set_policy(self, policy: Policy) -> None:
        self.policy = policy

    def set_reserve(self, pct: float) -> None:
        self.battery = self.battery.model_copy(update={"reserve_soc_pct": pct})
        if self.desk is not None:
            self.desk.battery = self.battery

    def submit_job(self, spec: JobSpec) -> tuple[Job, bool]:
        """Into the queue through the inbox's checks and admission: (the job, whether it is
        new); ``CommandFailed`` names what this site cannot take."""
        intake = None if self.desk is None else self.desk.intake
        if self.desk is None or intake is None:
            raise CommandFailed([FieldError(field="args.input", message="this site takes no "
                                            "jobs: jobs.inbox_dir, where inputs live, is unset")])
        errors = []
        if intake.models is not None and spec.model not in intake.models:
            errors.append(FieldError(field="args.model", message=f"unknown model {spec.model!r}"
                                     "; this site runs: " + ", ".join(sorted(intake.models))))
        problem = intake.input_problem(spec.input)
        if problem:
            errors.append(FieldError(field="args.input", message=problem))
        if errors:
            raise CommandFailed(errors)
        now = self.epoch()
        judge = admission(now, self.state, self.decision, self.forecast, self.board,
                          self.battery, self.governor)
        local = spec.model_copy(update={"input": str((intake.inbox / spec.input).resolve())})
        try:
            submitted = self.desk.queue.submit(local, now, judge)
        except sqlite3.Error as exc:
            raise CommandFailed([FieldError(field="(queue)", message=str(exc))]) from exc
        return submitted.job, submitted.created

    def apply_config(self, config: Config) -> None:
        """Take the sections a running agent can change (``remote_config.LIVE``)."""
        self.battery, self.governor, self.workload = config.battery, config.governor, \
            config.workload
        self.stale_after_s = config.power.stale_after_s
        self.telemetry_interval_s = config.telemetry.interval_s
        self._next_telemetry = min(self._next_telemetry, self.clock() + self.telemetry_interval_s)
        if self.forecaster is not None:
            self.forecaster.quantile = config.governor.forecast_quantile
            self.forecaster.admission_quantile = config.governor.admission_quantile
        if self.fleet_jobs is not None:  # a fleet job names the model it needs
            self.fleet_jobs.models = config.workload.models()
        if self.desk is not None:
            self.desk.battery, self.desk.governor = config.battery, config.governor
            jobs, queue = config.jobs, self.desk.queue
            queue.max_attempts, queue.default_work_cpu_s = jobs.max_attempts, \
                jobs.default_work_cpu_s
            queue.best_effort_ttl_s = jobs.best_effort_ttl_h * 3600
            if self.desk.intake is not None:
                self.desk.intake.models = config.workload.models()
                self.desk.intake.share_inputs = jobs.share_inputs

    def health(self) -> Health:
        """What a remote config's probation watches."""
        return Health(power_fresh=not self.state.stale, worker_errors=self.pool.stats().errors,
                      outbox_errors=self.outbox_errors,
                      last_error=self.pool.last_error or self.last_outbox_error)
