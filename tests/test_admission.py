"""Admission control: a deferrable job is accepted only if the work the governor plans for the
queue with it lets every job meet its deadline; urgent and best-effort jobs are always
accepted. The plan is the governor's own (``planned_capacity``): admission counts on the
slots the governor will really work, not on every worker whenever the battery has charge."""

from __future__ import annotations

import calendar
import math
from collections.abc import Sequence

import numpy as np
import pytest

from edgeagent.boards import load_board
from edgeagent.config import BatteryConfig, GovernorConfig
from edgeagent.governor.decision import Capacity, Decision
from edgeagent.governor.forecast import Forecast, clear_sky_ghi
from edgeagent.governor.policy import planned_capacity
from edgeagent.state import SiteState
from edgeagent.workloads.admission import (
    Outlook,
    Work,
    admit,
    battery_above_reserve_wh,
    due,
    simulate,
)
from edgeagent.workloads.desk import admission

PI4 = load_board("raspberry-pi-4")  # idle 2.7 W, 0.925 W per busy core
STEP = 600.0
HOUR = 3600.0


def capacity(workers: Sequence[int], start: float = 0.0) -> Capacity:
    """A plan of ``workers`` per 10-minute slot from ``start``."""
    return Capacity(start, start + STEP, STEP, tuple(workers))


def hours_of(workers: int, hours: float) -> list[int]:
    return [workers] * round(hours * HOUR / STEP)


def outlook(plan: Capacity, battery_wh: float = 0.0, pv_w: float = 0.0) -> Outlook:
    """What admission sees when the governor plans ``plan`` whatever the queue."""
    sun = Forecast(0.0, STEP, (pv_w,) * 288, (pv_w,) * 288)
    return Outlook(lambda jobs: plan, sun, battery_wh, PI4.idle_w, PI4.watts_per_core)


def deferrable(job_id: str, work_cpu_s: float, deadline: float, submitted: float = 0.0) -> Work:
    return Work(job_id, "deferrable", work_cpu_s, deadline, submitted=submitted)


# --- on a given plan -----------------------------------------------------------------------


def test_accepts_when_the_planned_work_finishes_it_and_says_when() -> None:
    verdict = admit([], deferrable("a", 1800, HOUR), 0.0, outlook(capacity(hours_of(1, 2))))
    assert verdict.accepted
    assert verdict.finish_at == pytest.approx(1800)  # one worker, right away
    assert "before its deadline" in verdict.reason


def test_only_the_slots_the_plan_works_count() -> None:
    # Asleep for the first 40 minutes, then one worker: the job finishes at 40 + 30 minutes.
    plan = capacity([0] * 4 + hours_of(1, 2))
    verdict = admit([], deferrable("a", 1800, HOUR + 600), 0.0, outlook(plan))
    assert verdict.accepted and verdict.finish_at == pytest.approx(4200)
    assert not admit([], deferrable("a", 1800, HOUR), 0.0, outlook(plan)).accepted


def test_rejects_naming_the_plan_and_the_energy_behind_it() -> None:
    # The plan works 20 minutes of the hour; the job needs 30.
    plan = capacity([1, 1] + [0] * 10)
    verdict = admit([], deferrable("a", 1800, HOUR), 0.0,
                    outlook(plan, battery_wh=1.5, pv_w=3.0))
    assert not verdict.accepted
    reason = verdict.reason
    assert "miss its deadline 1970-01-01T01:00:00Z: 600 of its 1800 CPU-s" in reason
    assert "plan work for 0.3 of the 1.0 h (1200 worker-s)" in reason
    assert "0.3 Wh of PV surplus above idle" in reason
    assert "1.5 Wh above its reserve" in reason


def test_workers_run_jobs_in_parallel_one_each() -> None:
    jobs = [deferrable("a", 600, HOUR), deferrable("b", 1200, HOUR), deferrable("c", 600, HOUR)]
    plan = simulate(jobs, 0.0, capacity(hours_of(2, 2)), HOUR)
    assert plan.finish == pytest.approx({"a": 600, "b": 1200, "c": 1200})
    assert plan.left_at_deadline == {}


def test_the_projection_says_how_much_is_left_at_a_deadline() -> None:
    half_the_time = capacity([1, 0] * 12)  # one worker every other slot
    plan = simulate([deferrable("a", 3600, HOUR)], 0.0, half_the_time, 3 * HOUR)
    assert plan.left_at_deadline == {"a": pytest.approx(1800)}
    assert plan.finish == {"a": pytest.approx(2 * HOUR - STEP)}  # done, late


def test_urgent_and_best_effort_jobs_are_always_accepted() -> None:
    nothing = outlook(capacity([0] * 12))
    assert admit([], Work("u", "urgent", 1e6), 0.0, nothing).accepted
    assert admit([], Work("b", "best-effort", 1e6), 0.0, nothing).accepted


def test_urgent_work_in_the_queue_runs_first_and_is_counted() -> None:
    queue = [Work("u", "urgent", 3000)]
    job = deferrable("d", 1200, HOUR)
    assert not admit(queue, job, 0.0, outlook(capacity(hours_of(1, 2)))).accepted
    assert admit(queue, job, 0.0, outlook(capacity(hours_of(2, 2)))).accepted


def test_best_effort_work_is_not_planned() -> None:
    queue = [Work("b", "best-effort", 1e6)]
    assert admit(queue, deferrable("d", 1200, HOUR), 0.0,
                 outlook(capacity(hours_of(1, 2)))).accepted


def test_rejects_a_job_that_would_make_an_accepted_one_miss() -> None:
    queue = [deferrable("a", 1800, HOUR)]
    one = outlook(capacity(hours_of(1, 2)))
    # EDF runs the newcomer first; A still finishes at 3000 s.
    assert admit(queue, deferrable("b", 1200, 1500), 0.0, one).accepted
    verdict = admit(queue, deferrable("c", 2000, 2100), 0.0, one)
    assert not verdict.accepted
    assert "make job a miss its deadline 1970-01-01T01:00:00Z" in verdict.reason


def test_a_miss_the_newcomer_does_not_cause_does_not_block_it() -> None:
    queue = [deferrable("late", 1200, 600)]  # cannot make it whatever happens
    assert admit(queue, deferrable("b", 600, 3 * HOUR), 0.0,
                 outlook(capacity(hours_of(1, 4)))).accepted


def test_a_deadline_in_the_past_is_rejected() -> None:
    verdict = admit([], deferrable("a", 1, 100.0), 200.0, outlook(capacity([1])))
    assert not verdict.accepted and "has passed" in verdict.reason


def test_past_the_plans_horizon_its_last_day_repeats() -> None:
    day = [0] * 36 + [1] * 72 + [0] * 36  # one worker for 12 h of each day from midnight
    two_days = Capacity(0.0, STEP, STEP, tuple(day * 2))
    job = deferrable("a", 30 * HOUR, 3 * 86400.0)  # needs a third day's work
    assert admit([], job, 0.0, outlook(two_days)).accepted
    short = Capacity(0.0, STEP, STEP, tuple(day[:72]))  # less than a day: nothing after it
    assert not admit([], deferrable("a", 8 * HOUR, 2 * 86400.0), 0.0, outlook(short)).accepted


def test_admission_plans_the_queue_with_the_newcomer() -> None:
    seen: list[list[str]] = []

    def plan(jobs: Sequence[Work]) -> Capacity:
        seen.append([w.id for w in jobs])
        return capacity(hours_of(1, 4))

    sun = Forecast(0.0, STEP, (), ())
    verdict = admit([deferrable("a", 600, 2 * HOUR)], deferrable("b", 600, 3 * HOUR), 0.0,
                    Outlook(plan, sun, 0.0, PI4.idle_w, PI4.watts_per_core))
    assert verdict.accepted and seen == [["a", "b"]]
    assert due([deferrable("a", 600, 2 * HOUR), Work("u", "urgent", 60)])[0].work_cpu_s == 600


def test_the_battery_above_the_reserve() -> None:
    assert battery_above_reserve_wh(50.0, 30.0, 1000.0) == pytest.approx(200.0)
    assert battery_above_reserve_wh(20.0, 30.0, 1000.0) == 0.0
    assert battery_above_reserve_wh(None, 30.0, 1000.0) == 0.0


def test_many_queued_jobs_are_checked_quickly() -> None:
    queue = [deferrable(f"j{i}", 60, 3600.0 * 24 + i, submitted=i) for i in range(300)]
    verdict = admit(queue, deferrable("new", 60, 86400.0 * 2), 0.0,
                    outlook(capacity(hours_of(2, 72))))
    assert verdict.accepted


# --- on the governor's plan ----------------------------------------------------------------

EQUINOX = float(calendar.timegm((2023, 3, 20, 0, 0, 0)))
EVENING = EQUINOX + 20 * HOUR  # at longitude 0: the sun set two hours ago
BATTERY = BatteryConfig(capacity_wh=100, reserve_soc_pct=30, resume_margin_pct=5)
GOV = GovernorConfig(max_workers=4, allow_sleep=True)


def sky(now: float, clearness: float) -> Forecast:
    """Two days of sun for a 40 W panel at the equator, ``clearness`` of clear sky."""
    start = math.floor(now / STEP) * STEP
    clear = clear_sky_ghi(start + (np.arange(288) + 0.5) * STEP, 0.0, 0.0) * 40 / 1000
    return Forecast(start, STEP, tuple((clear * clearness).tolist()), tuple(clear.tolist()))


def judge(soc: float, forecast: Forecast, queue: Sequence[Work], job: Work,
          decision: Decision | None = None) -> tuple[bool, str]:
    state = SiteState(pv_power_w=0.0, battery_soc_pct=soc, stale=False)
    verdict = admission(EVENING, state, decision, forecast, PI4, BATTERY, GOV)(queue, job)
    return verdict.accepted, verdict.reason


def test_rejects_a_job_the_plan_cannot_finish_though_the_battery_alone_would() -> None:
    # 15 Wh above the reserve; two hours of one core tonight take (2.7 + 0.925) W / 0.95 * 2 h
    # = 7.6 Wh of it. But under a grey sky the plan keeps most of that charge to sleep through
    # a storm, and the board works at full load or sleeps: it can work well under two hours
    # tonight, so the job cannot be done by midnight.
    job = deferrable("a", 2 * HOUR, EVENING + 4 * HOUR)
    grey = sky(EVENING, 0.1)
    assert battery_above_reserve_wh(45.0, 30.0, 100.0) > 7.6
    accepted, reason = judge(45.0, grey, [], job)
    assert not accepted
    assert "would miss its deadline 2023-03-21T00:00:00Z" in reason and "of the 4.0 h" in reason
    assert "15.0 Wh above its reserve" in reason
    # With a full battery the same night the plan pays for it.
    assert judge(95.0, grey, [], job)[0]


def test_the_plan_admission_counts_on_works_the_slots_the_queue_needs_first() -> None:
    # A grey day ahead: with nothing due the plan sleeps tonight and saves the charge for
    # tomorrow's sun. A job due by midnight gets its three hours tonight, on the battery, at
    # the price of a little of tomorrow's work.
    state = SiteState(pv_power_w=0.0, battery_soc_pct=60.0, stale=False)
    grey = sky(EVENING, 0.15)
    job = deferrable("a", 3 * HOUR, EVENING + 4 * HOUR)
    idle = planned_capacity(state, EVENING, grey, PI4, BATTERY, GOV, previous=None, due=())
    busy = planned_capacity(state, EVENING, grey, PI4, BATTERY, GOV, previous=None,
                            due=due([job]))
    tonight = slice(0, 24)  # the four hours to the deadline
    assert not any(idle.workers[tonight])
    assert sum(w > 0 for w in busy.workers[tonight]) == 18
    assert sum(idle.workers) - 4 * 18 < sum(busy.workers) < sum(idle.workers)
    # Blind or holding the reserve: nothing to count on now.
    blind = SiteState(pv_power_w=0.0, battery_soc_pct=None)
    assert set(planned_capacity(blind, EVENING, grey, PI4, BATTERY, GOV, previous=None,
                                due=due([job])).workers) == {0}
    # A job judged blind is refused for what it is, not for a lack of sun or charge.
    for seen in (blind, SiteState(pv_power_w=0.0, battery_soc_pct=80.0, stale=True)):
        verdict = admission(EVENING, seen, None, grey, PI4, BATTERY, GOV)([], job)
        assert not verdict.accepted and "stale or missing" in verdict.reason, verdict.reason
    low = SiteState(pv_power_w=0.0, battery_soc_pct=29.0, stale=False)
    assert planned_capacity(low, EVENING, grey, PI4, BATTERY, GOV, previous=None,
                            due=due([job])).workers[0] == 0
