"""Actuators: apply the governor's Decision to the machine, one small plugin per knob family.

Each actuator has a ``name`` and ``apply(decision) -> ActuatorResult`` (what it wrote, whether
it read back as written, what failed, what the rate limit held back). ``ActuatorSet`` applies a
decision through every enabled actuator and never raises into the agent: a failure is counted,
logged and reported, and the next tick tries again. ``build_actuators`` makes the set a config
asks for; every knob that writes to the machine is off until the config turns it on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from edgeagent.actuators.base import (
    Actuator,
    ActuatorResult,
    Clock,
    KnobActuator,
    KnobError,
    Write,
)
from edgeagent.actuators.cgroup import CgroupActuator
from edgeagent.actuators.cpufreq import CpufreqActuator
from edgeagent.actuators.nvpmodel import NvpmodelActuator, PowerMode, Runner, run_command
from edgeagent.actuators.sleep import BeforeHalt, SleepActuator
from edgeagent.actuators.workers import Pool, WorkerPoolActuator
from edgeagent.boards import BoardProfile
from edgeagent.config import ActuatorConfig
from edgeagent.governor.decision import Decision

log = logging.getLogger("edgeagent.actuators")

__all__ = ["Actuator", "ActuatorCounts", "ActuatorResult", "ActuatorSet", "CgroupActuator",
           "CpufreqActuator", "KnobActuator", "KnobError", "NvpmodelActuator", "PowerMode",
           "SleepActuator", "WorkerPoolActuator", "Write", "build_actuators"]


@dataclass
class ActuatorCounts:
    """Running totals of one actuator, for telemetry."""

    writes: int = 0
    unverified: int = 0
    errors: int = 0
    deferred: int = 0
    last_error: str | None = None


@dataclass
class ActuatorSet:
    """Every enabled actuator, applied in order (the worker pool first: our own load drops
    before the machine's knobs move; sleep last: it may halt the board)."""

    actuators: Sequence[Actuator]
    dry_run: bool = False
    counts: dict[str, ActuatorCounts] = field(default_factory=dict)
    last: list[ActuatorResult] = field(default_factory=list)

    def apply(self, decision: Decision) -> list[ActuatorResult]:
        """Apply ``decision`` through every actuator; never raises."""
        results = []
        for actuator in self.actuators:
            try:
                result = actuator.apply(decision)
            except Exception as exc:  # a bug in one plugin must not stop the governor
                log.exception("%s: failed to apply the decision", actuator.name)
                result = ActuatorResult(actuator.name, errors=(f"{type(exc).__name__}: {exc}",))
            counts = self.counts.setdefault(actuator.name, ActuatorCounts())
            counts.writes += len(result.writes)
            counts.unverified += sum(1 for w in result.writes if not w.verified and not w.dry_run)
            counts.errors += len(result.errors)
            counts.deferred += len(result.deferred)
            if result.errors:
                counts.last_error = result.errors[-1]
            results.append(result)
        self.last = results
        return results

    @property
    def halting(self) -> bool:
        """An actuator has begun halting the board (its before-halt hook ran): the agent's
        outbox, queue and workers may be closed, and nothing more should touch them."""
        return any(getattr(a, "halting", False) for a in self.actuators)

    @property
    def halted(self) -> bool:
        """The halt command was accepted: the board is going down."""
        return any(getattr(a, "halted", False) for a in self.actuators)

    def telemetry(self) -> dict[str, Any]:
        """Totals per actuator, and whether the last decision is fully in force."""
        return {
            "dry_run": self.dry_run,
            "in_force": all(r.verified and not r.deferred for r in self.last),
            **{name: asdict(c) for name, c in self.counts.items()},
        }


def build_actuators(config: ActuatorConfig, *, pool: Pool | None = None,
                    board: BoardProfile | None = None, clock: Clock = time.monotonic,
                    runner: Runner = run_command, epoch: Clock = time.time,
                    on_before_halt: BeforeHalt | None = None) -> ActuatorSet:
    """The actuators ``config`` enables, plus the worker pool when one is given.

    ``clock`` times the rate limit and the sleep's start grace period: the agent's clock, so
    an accelerated demo is limited in its own time. ``board`` gives the budgets of nvpmodel
    modes named without watts. ``runner`` runs nvpmodel and the halt command; ``epoch`` is the
    UTC clock wake times are checked against; ``on_before_halt(wake_epoch)`` stops the agent
    cleanly once the wake alarm is armed, before the halt command runs.
    """
    common: dict[str, Any] = {"min_interval_s": config.min_interval_s, "clock": clock}
    machine: dict[str, Any] = {**common, "dry_run": config.dry_run}
    actuators: list[Actuator] = []
    if pool is not None:
        actuators.append(WorkerPoolActuator(pool, **common))
    nvpmodel = None
    if config.nvpmodel:
        nvpmodel = NvpmodelActuator(config.nvpmodel_conf, command=config.nvpmodel_command,
                                    runner=runner,
                                    board_modes_w=board.knobs.power_modes_w if board else (),
                                    **machine)
        actuators.append(nvpmodel)  # before cpufreq: a mode change resets the CPU caps
    if config.cpufreq:
        actuators.append(CpufreqActuator(
            config.sysfs_root, ceiling_khz=nvpmodel.cpu_max_khz if nvpmodel else None, **machine))
    if config.cgroup:
        actuators.append(CgroupActuator(config.sysfs_root / "fs" / "cgroup",
                                        config.cgroup_slice, **machine))
    if config.sleep:  # last: nothing after it runs on a board that is going down
        actuators.append(SleepActuator(
            config.sysfs_root, rtc=config.rtc, command=config.sleep_command, runner=runner,
            on_before_halt=on_before_halt, min_sleep_s=config.sleep_min_s,
            max_sleep_s=config.sleep_max_s, grace_s=config.sleep_grace_s,
            dry_run=config.dry_run, clock=clock, epoch=epoch))
    if board is not None:
        for knob in ("cpufreq", "cgroup", "nvpmodel"):
            if getattr(config, knob) and not getattr(board.knobs, knob):
                log.warning("actuators.%s is on but board %s has no such knob", knob, board.name)
    return ActuatorSet(actuators, dry_run=config.dry_run)
