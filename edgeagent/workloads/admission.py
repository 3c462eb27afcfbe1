"""Admission control for deferrable jobs, after Cucumber (research/energy-aware-scheduling.md §2.1).

A deferrable job is accepted only if the queue, run earliest-deadline-first on the capacity
the governor plans for it, lets every job meet its deadline: accepting it and missing later
would be worse than telling the submitter "no" now. The capacity is Cucumber's "usable
capacity": the workers the governor's own plan (``governor.policy.planned_capacity``, the same
pure code as ``decide``) gives each coming slot when the queue with the newcomer is the
accepted work. That plan works first the slots the jobs need by their deadlines, as far as the
battery above its floor and the forecast sun pay for them; it sleeps or throttles the rest. So
admission counts on exactly the work the governor will do, not on every worker running
whenever the battery is above its reserve.
Urgent jobs are always accepted (they run first, whenever the governor admits them, and their
work is counted against later jobs); best-effort jobs are accepted and not planned at all:
they run on surplus only and may wait until their TTL runs out.

Cost unit: ``work_cpu_s``, CPU-seconds on one core of the board; one job runs on one worker,
so it uses at most one core at a time.

Pure functions of their inputs: no clock (``now`` is given), no I/O, deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from edgeagent.governor.decision import Capacity, Due, JobClass
from edgeagent.governor.forecast import DAY_S, Forecast

EPS = 1e-9


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
class Outlook:
    """What admission counts on at ``now``: ``plan`` gives the capacity the governor plans when
    the given jobs are the accepted work; the rest names the resources behind it in a
    rejection's reason (the forecast sun, the battery above its reserve, the board's draw)."""

    plan: Callable[[Sequence[Work]], Capacity]
    forecast: Forecast
    battery_wh: float  # stored energy above the reserve now
    idle_w: float
    watts_per_core: float
    blind: bool = False  # the power data are stale or missing: the governor plans no work


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


def due(jobs: Sequence[Work]) -> tuple[Due, ...]:
    """The deferrable work the governor's plan must place by its deadlines."""
    return tuple(Due(w.deadline, w.work_cpu_s) for w in jobs
                 if w.job_class == "deferrable" and w.deadline is not None)


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


def simulate(jobs: Sequence[Work], now: float, capacity: Capacity, until: float) -> Projection:
    """Run ``jobs`` in ``plan_order`` as a fluid from ``now`` to ``until`` on ``capacity``.

    Each job takes one worker while it runs; in each slot the first jobs of the order take the
    workers the plan gives it. Events: slot boundaries, completions, deadlines.
    """
    order = [w for w in plan_order(jobs) if w.job_class != "best-effort"]
    left = {w.id: w.work_cpu_s for w in order}
    finish: dict[str, float] = {}
    late: dict[str, float] = {}
    active = list(order)  # unfinished, in order
    t = now
    while active and t < until - EPS:
        workers, slot_end = capacity.slot(t)
        window = active[:workers]
        dt = min(slot_end, until) - t
        for w in window:
            dt = min(dt, left[w.id])
        for w in active:
            if w.deadline is not None and w.deadline > t + EPS:
                dt = min(dt, w.deadline - t)
        t += dt
        for w in window:
            left[w.id] -= dt
            if left[w.id] <= EPS * max(1.0, w.work_cpu_s):
                finish[w.id] = t
                active.remove(w)
        for w in active:
            if w.deadline is not None and t >= w.deadline - EPS:
                late.setdefault(w.id, left[w.id])
    for w in order:  # past ``until`` unfinished, or finished after its deadline
        if w.deadline is None or w.id in late:
            continue
        done = finish.get(w.id)
        if (w.deadline <= until + EPS) if done is None else (done > w.deadline + EPS):
            late[w.id] = w.work_cpu_s
    return Projection(finish, late)


def planned_s(capacity: Capacity, now: float, until: float) -> tuple[float, float]:
    """Seconds from ``now`` to ``until`` that the plan works with any worker, and the
    worker-seconds it gives in all."""
    awake = worker_s = 0.0
    t = now
    while t < until - EPS:
        workers, slot_end = capacity.slot(t)
        end = min(slot_end, until)
        if workers > 0:
            awake += end - t
            worker_s += workers * (end - t)
        t = end
    return awake, worker_s


def usable_wh(outlook: Outlook, now: float, until: float) -> tuple[float, float]:
    """PV surplus above idle from ``now`` to ``until`` and the battery above its reserve (Wh):
    the two energy resources the reason for a rejection names."""
    surplus_j = 0.0
    t = now
    while t < until - EPS:
        pv_w, slot_end = _pv_slot(outlook.forecast, t)
        end = min(slot_end, until)
        surplus_j += max(0.0, pv_w - outlook.idle_w) * (end - t)
        t = end
    return surplus_j / 3600.0, max(0.0, outlook.battery_wh)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds").replace(
        "+00:00", "Z")


def admit(queue: Sequence[Work], job: Work, now: float, outlook: Outlook) -> Verdict:
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
    if outlook.blind:
        return Verdict(False, "the site's power data are stale or missing: the governor plans "
                              "no work until it reads the battery again, so no deadline can "
                              "be promised now")
    planned = [*queue, job]
    until = max(w.deadline for w in planned if w.deadline is not None
                and w.job_class == "deferrable")
    capacity = outlook.plan(planned)
    with_job = simulate(planned, now, capacity, until)
    if job.id in with_job.left_at_deadline:
        sun_wh, battery_wh = usable_wh(outlook, now, job.deadline)
        awake_s, worker_s = planned_s(capacity, now, job.deadline)
        ahead = [w for w in plan_order(planned) if w.job_class != "best-effort"]
        ahead_s = sum(w.work_cpu_s for w in ahead[:ahead.index(job)])
        left = with_job.left_at_deadline[job.id]
        return Verdict(False, (
            f"it would miss its deadline {_iso(job.deadline)}: {left:.0f} of its "
            f"{job.work_cpu_s:.0f} CPU-s would be left. Until then the governor can plan work "
            f"for {awake_s / 3600:.1f} of the {(job.deadline - now) / 3600:.1f} h "
            f"({worker_s:.0f} worker-s): the forecast pays for {sun_wh:.1f} Wh of PV surplus "
            f"above idle and the battery holds {battery_wh:.1f} Wh above its reserve; "
            f"{ahead_s:.0f} CPU-s of work is queued ahead of it (one CPU-s costs "
            f"{outlook.watts_per_core:.2f} J)"))
    missed = with_job.misses(planned)
    if missed:
        before = set(simulate(queue, now, outlook.plan(queue), until).left_at_deadline)
        caused = [w for w in missed if w.id not in before]
        if caused:
            w = caused[0]
            assert w.deadline is not None  # misses() holds only jobs with deadlines
            return Verdict(False, f"accepting it would make job {w.id} miss its deadline "
                                  f"{_iso(w.deadline)}")
    finish = with_job.finish[job.id]
    return Verdict(True, f"projected to finish at {_iso(finish)}, "
                         f"{(job.deadline - finish) / 60:.0f} min before its deadline", finish)
