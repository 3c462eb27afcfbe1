"""Admission control for deferrable jobs, after Cucumber (research/energy-aware-scheduling.md §2.1).

A deferrable job is accepted only if the queue, run earliest-deadline-first on the energy the
site expects, lets every job meet its deadline: accepting it and missing later would be worse
than telling the submitter "no" now. The energy is the forecast PV surplus above the board's
idle draw plus the battery above its reserve, which is a store (research §8): work drains it,
the idle board drains it when the sun does not cover it, unused surplus refills it up to full.
Urgent jobs are always accepted (they run first, whenever the governor admits them, and their
work is counted against later jobs); best-effort jobs are accepted and not planned at all:
they run on surplus only and may wait until their TTL runs out.

Cost unit: ``work_cpu_s``, CPU-seconds on one core of the board. Its energy is
``work_cpu_s * watts_per_core`` joules on top of the idle board, the same accounting as
``workloads.energy``; one job runs on one worker, so it uses at most one core at a time.

Pure functions of their inputs: no clock (``now`` is given), no I/O, deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from edgeagent.boards import BoardProfile
from edgeagent.governor.decision import JobClass
from edgeagent.governor.forecast import DAY_S, Forecast

EPS = 1e-9
DEFAULT_EFFICIENCY = 0.95  # each way, as GovernorConfig assumes (LiFePO4; research §4.2)


@dataclass(frozen=True)
class Work:
    """A job as admission sees it: its remaining work and its deadline (UTC epoch seconds)."""

    id: str
    job_class: JobClass
    work_cpu_s: float
    deadline: float | None = None
    running: bool = False  # a running job keeps its worker (non-preemptive)
    submitted: float = 0.0


@dataclass(frozen=True)
class Budget:
    """What pays for the work: the board's power model and the battery above its reserve."""

    battery_wh: float  # stored energy above the reserve now
    idle_w: float
    watts_per_core: float
    workers: int  # jobs that can run at once, one core each
    battery_max_wh: float | None = None  # above-reserve energy when full; None: no recharge
    charge_efficiency: float = DEFAULT_EFFICIENCY
    discharge_efficiency: float = DEFAULT_EFFICIENCY

    @classmethod
    def for_board(cls, board: BoardProfile, workers: int, battery_wh: float,
                  battery_max_wh: float | None = None, *,
                  charge_efficiency: float = DEFAULT_EFFICIENCY,
                  discharge_efficiency: float = DEFAULT_EFFICIENCY) -> Budget:
        return cls(battery_wh, board.idle_w, board.watts_per_core, workers, battery_max_wh,
                   charge_efficiency, discharge_efficiency)


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    reason: str
    finish_at: float | None = None  # projected completion of the job, when it is planned


@dataclass(frozen=True)
class Projection:
    """When each planned job finishes (absent: not by the end of the simulation), and how much
    of each late job's work is left at its deadline."""

    finish: dict[str, float]
    left_at_deadline: dict[str, float]

    def misses(self, jobs: Sequence[Work]) -> list[Work]:
        return [w for w in jobs if w.job_class == "deferrable" and w.id in self.left_at_deadline]


def battery_above_reserve_wh(soc_pct: float | None, reserve_pct: float,
                             capacity_wh: float) -> float:
    """Stored energy above the reserve; an unknown state of charge counts as none."""
    if soc_pct is None:
        return 0.0
    return max(0.0, (soc_pct - reserve_pct) / 100.0 * capacity_wh)


def plan_order(jobs: Sequence[Work]) -> list[Work]:
    """The order the queue serves jobs: running ones first, then by class, then EDF."""
    rank = {"urgent": 0, "deferrable": 1, "best-effort": 2}
    return sorted(jobs, key=lambda w: (not w.running, rank[w.job_class],
                                       math.inf if w.deadline is None else w.deadline,
                                       w.submitted, w.id))


def _pv_slot(forecast: Forecast, t: float) -> tuple[float, float]:
    """Forecast PV watts at ``t`` and the end of its slot. Past the horizon the last whole day
    repeats (the forecaster's days ahead share one clearness anyway); with less than a day of
    forecast there is no sun to count on."""
    step = forecast.step_s
    i = max(0, math.floor((t - forecast.start) / step + EPS))
    end = forecast.start + (i + 1) * step
    n = len(forecast.pv_w)
    if i < n:
        return forecast.pv_w[i], end
    day = round(DAY_S / step)
    if n < day:
        return 0.0, end
    return forecast.pv_w[n - day + (i - n) % day], end


def simulate(jobs: Sequence[Work], now: float, forecast: Forecast, budget: Budget,
             until: float) -> Projection:
    """Run ``jobs`` in ``plan_order`` as a fluid from ``now`` to ``until`` on the forecast.

    Each job takes at most one core; the cores that run are as many as there are jobs, up to
    ``budget.workers``, while the battery holds energy, and only what the PV surplus pays for
    once it is empty. Events: slot boundaries, completions, deadlines, an empty battery.
    """
    order = [w for w in plan_order(jobs) if w.job_class != "best-effort"]
    left = {w.id: w.work_cpu_s for w in order}
    finish: dict[str, float] = {}
    late: dict[str, float] = {}
    store_j = max(0.0, budget.battery_wh) * 3600.0
    cap_j = max(store_j, (budget.battery_max_wh or 0.0) * 3600.0)
    per_core, eff = budget.watts_per_core, budget.discharge_efficiency
    charge = budget.charge_efficiency if budget.battery_max_wh is not None else 0.0
    active = list(order)  # unfinished, in order; the first ``workers`` of them hold a worker
    t = now
    while active and t < until - EPS:
        window = active[:budget.workers]
        pv_w, slot_end = _pv_slot(forecast, t)
        surplus_w = max(0.0, pv_w - budget.idle_w)
        deficit_w = max(0.0, budget.idle_w - pv_w)
        demand_w = len(window) * per_core
        if store_j > EPS:
            cores = float(len(window))
            from_sun_w = min(surplus_w, demand_w)
            net_w = (surplus_w - from_sun_w) * charge - (demand_w - from_sun_w + deficit_w) / eff
        else:  # empty battery: the sun alone pays for work; the idle deficit is the governor's
            cores = min(float(len(window)), surplus_w / per_core)
            net_w = (surplus_w - cores * per_core) * charge
        rates = [min(1.0, max(0.0, cores - k)) for k in range(len(window))]
        dt = min(slot_end, until) - t
        for w, rate in zip(window, rates, strict=True):
            if rate > EPS:
                dt = min(dt, left[w.id] / rate)
            if w.deadline is not None and w.deadline > t + EPS:
                dt = min(dt, w.deadline - t)
        if net_w < 0 and store_j > EPS:
            dt = min(dt, store_j / -net_w)
        t += dt
        store_j = min(max(0.0, store_j + net_w * dt), cap_j)
        for w, rate in zip(window, rates, strict=True):
            left[w.id] -= rate * dt
            if left[w.id] <= EPS * max(1.0, w.work_cpu_s):
                finish[w.id] = t
                active.remove(w)
            elif w.deadline is not None and t >= w.deadline - EPS:
                late.setdefault(w.id, left[w.id])
    for w in order:  # late without ever holding a worker before its deadline: nothing done
        if w.deadline is None or w.id in late:
            continue
        done = finish.get(w.id)
        if (w.deadline <= until + EPS) if done is None else (done > w.deadline + EPS):
            late[w.id] = w.work_cpu_s
    return Projection(finish, late)


def usable_wh(forecast: Forecast, budget: Budget, now: float, until: float) -> tuple[float, float]:
    """PV surplus above idle from ``now`` to ``until`` and the battery above its reserve (Wh):
    the two resources the reason for a rejection names."""
    surplus_j = 0.0
    t = now
    while t < until - EPS:
        pv_w, slot_end = _pv_slot(forecast, t)
        end = min(slot_end, until)
        surplus_j += max(0.0, pv_w - budget.idle_w) * (end - t)
        t = end
    return surplus_j / 3600.0, max(0.0, budget.battery_wh)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds").replace(
        "+00:00", "Z")


def admit(queue: Sequence[Work], job: Work, now: float, forecast: Forecast,
          budget: Budget) -> Verdict:
    """Accept or reject ``job`` given the jobs already queued or running (``queue``)."""
    if job.job_class == "urgent":
        return Verdict(True, "urgent jobs are always accepted; they run when the governor "
                             "admits urgent work")
    if job.job_class == "best-effort":
        return Verdict(True, "best-effort: runs on surplus only, expires after its TTL")
    if job.deadline is None:
        return Verdict(False, "a deferrable job needs a deadline")
    if job.deadline <= now:
        return Verdict(False, f"its deadline {_iso(job.deadline)} has passed")
    planned = [*queue, job]
    until = max(w.deadline for w in planned if w.deadline is not None
                and w.job_class == "deferrable")
    with_job = simulate(planned, now, forecast, budget, until)
    if job.id in with_job.left_at_deadline:
        sun_wh, battery_wh = usable_wh(forecast, budget, now, job.deadline)
        ahead = [w for w in plan_order(planned) if w.job_class != "best-effort"]
        ahead_s = sum(w.work_cpu_s for w in ahead[:ahead.index(job)])
        left = with_job.left_at_deadline[job.id]
        return Verdict(False, (
            f"it would miss its deadline {_iso(job.deadline)}: {left:.0f} of its "
            f"{job.work_cpu_s:.0f} CPU-s would be left. Until then the forecast pays for "
            f"{sun_wh:.1f} Wh of PV surplus above idle and the battery holds {battery_wh:.1f} Wh "
            f"above its reserve; {ahead_s:.0f} CPU-s of work is queued ahead of it "
            f"(one CPU-s costs {budget.watts_per_core:.2f} J)"))
    missed = with_job.misses(planned)
    if missed:
        before = set(simulate(queue, now, forecast, budget, until).left_at_deadline)
        caused = [w for w in missed if w.id not in before]
        if caused:
            w = caused[0]
            assert w.deadline is not None  # misses() holds only jobs with deadlines
            return Verdict(False, f"accepting it would make job {w.id} miss its deadline "
                                  f"{_iso(w.deadline)}")
    finish = with_job.finish[job.id]
    return Verdict(True, f"projected to finish at {_iso(finish)}, "
                         f"{(job.deadline - finish) / 60:.0f} min before its deadline", finish)
