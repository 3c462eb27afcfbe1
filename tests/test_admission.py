"""Admission control: a deferrable job is accepted only if the energy the site expects lets
every job meet its deadline; urgent and best-effort jobs are always accepted."""

from __future__ import annotations

import pytest

from edgeagent.boards import load_board
from edgeagent.governor.forecast import Forecast
from edgeagent.workloads.admission import (
    Budget,
    Work,
    admit,
    battery_above_reserve_wh,
    simulate,
)

PI4 = load_board("raspberry-pi-4")  # idle 2.7 W, 0.925 W per busy core
STEP = 600.0
HOUR = 3600.0


def forecast(pv_w: list[float], start: float = 0.0) -> Forecast:
    return Forecast(start, STEP, tuple(pv_w), tuple(pv_w))


def flat(watts: float, hours: float = 48.0) -> Forecast:
    return forecast([watts] * int(hours * HOUR / STEP))


def budget(battery_wh: float = 0.0, workers: int = 1,
           battery_max_wh: float | None = None) -> Budget:
    return Budget.for_board(PI4, workers, battery_wh, battery_max_wh)


def deferrable(job_id: str, work_cpu_s: float, deadline: float, submitted: float = 0.0) -> Work:
    return Work(job_id, "deferrable", work_cpu_s, deadline, submitted=submitted)


def test_accepts_when_the_forecast_pays_and_says_when_it_will_finish() -> None:
    verdict = admit([], deferrable("a", 1800, HOUR), 0.0, flat(10.0), budget())
    assert verdict.accepted
    assert verdict.finish_at == pytest.approx(1800)  # one core, from the sun, right away
    assert "before its deadline" in verdict.reason


def test_rejects_with_the_reason_when_the_sun_cannot_pay() -> None:
    # 3 W of PV is 0.3 W above idle: a third of a core, ~1170 CPU-s in the hour; 1800 are asked.
    verdict = admit([], deferrable("a", 1800, HOUR), 0.0, flat(3.0), budget())
    assert not verdict.accepted
    assert "miss its deadline 1970-01-01T01:00:00Z" in verdict.reason
    assert "0.3 Wh of PV surplus" in verdict.reason and "0.0 Wh above its reserve" in verdict.reason


def test_the_battery_above_its_reserve_counts_as_a_resource() -> None:
    job = deferrable("a", 1800, HOUR)
    # The battery covers what the sun does not: (0.925 - 0.3) W / 0.95 for half an hour.
    assert admit([], job, 0.0, flat(3.0), budget(battery_wh=0.5)).accepted
    assert not admit([], job, 0.0, flat(3.0), budget(battery_wh=0.1)).accepted


def test_at_night_the_idle_board_drains_the_battery_too() -> None:
    job = deferrable("a", 1800, HOUR)
    # (2.7 W idle + 0.925 W work) / 0.95 for half an hour is ~1.91 Wh.
    assert admit([], job, 0.0, flat(0.0), budget(battery_wh=2.5)).accepted
    assert not admit([], job, 0.0, flat(0.0), budget(battery_wh=1.5)).accepted


def test_unused_surplus_recharges_the_battery_only_when_its_room_is_known() -> None:
    sunny_hour_then_night = forecast([10.0] * 6 + [0.0] * 300)
    job = deferrable("a", 2 * HOUR, 2 * HOUR)  # one core for two hours, the second one dark
    assert not admit([], job, 0.0, sunny_hour_then_night, budget()).accepted
    assert admit([], job, 0.0, sunny_hour_then_night, budget(battery_max_wh=100.0)).accepted


def test_urgent_and_best_effort_jobs_are_always_accepted() -> None:
    dark, empty = flat(0.0), budget()
    assert admit([], Work("u", "urgent", 1e6), 0.0, dark, empty).accepted
    assert admit([], Work("b", "best-effort", 1e6), 0.0, dark, empty).accepted


def test_urgent_work_in_the_queue_runs_first_and_is_counted() -> None:
    queue = [Work("u", "urgent", 3000)]
    job = deferrable("d", 1200, HOUR)
    assert not admit(queue, job, 0.0, flat(10.0), budget(workers=1)).accepted
    assert admit(queue, job, 0.0, flat(10.0), budget(workers=2)).accepted


def test_best_effort_work_is_not_planned() -> None:
    queue = [Work("b", "best-effort", 1e6)]
    assert admit(queue, deferrable("d", 1200, HOUR), 0.0, flat(10.0), budget()).accepted


def test_rejects_a_job_that_would_make_an_accepted_one_miss() -> None:
    queue = [deferrable("a", 1800, HOUR)]
    sun = flat(10.0)
    # EDF runs the newcomer first; A still finishes at 3000 s.
    assert admit(queue, deferrable("b", 1200, 1500), 0.0, sun, budget()).accepted
    verdict = admit(queue, deferrable("c", 2000, 2100), 0.0, sun, budget())
    assert not verdict.accepted
    assert "make job a miss its deadline 1970-01-01T01:00:00Z" in verdict.reason


def test_a_miss_the_newcomer_does_not_cause_does_not_block_it() -> None:
    queue = [deferrable("late", 1200, 600)]  # cannot make it whatever happens
    assert admit(queue, deferrable("b", 600, 3 * HOUR), 0.0, flat(10.0), budget()).accepted


def test_a_deadline_in_the_past_is_rejected() -> None:
    verdict = admit([], deferrable("a", 1, 100.0), 200.0, flat(10.0), budget())
    assert not verdict.accepted and "has passed" in verdict.reason


def test_past_the_horizon_the_last_day_repeats() -> None:
    # One day of forecast from midnight: 12 h of 3.625 W (one core's worth of surplus) by day.
    day = [0.0] * 36 + [PI4.idle_w + PI4.watts_per_core] * 72 + [0.0] * 36
    one_day = forecast(day)
    job = deferrable("a", 18 * HOUR, 2 * 86400.0)  # needs a day and a half of sun
    assert admit([], job, 0.0, one_day, budget()).accepted
    assert not admit([], deferrable("a", 18 * HOUR, 86400.0), 0.0, one_day, budget()).accepted
    short = forecast(day[:72])  # less than a day: nothing is assumed past its end
    assert not admit([], job, 0.0, short, budget()).accepted


def test_workers_run_jobs_in_parallel_one_core_each() -> None:
    jobs = [deferrable("a", 600, HOUR), deferrable("b", 1200, HOUR), deferrable("c", 600, HOUR)]
    plan = simulate(jobs, 0.0, flat(20.0), budget(workers=2), HOUR)
    assert plan.finish == pytest.approx({"a": 600, "b": 1200, "c": 1200})
    assert plan.left_at_deadline == {}


def test_the_projection_says_how_much_is_left_at_a_deadline() -> None:
    # Surplus pays exactly half a core: 1800 CPU-s in the hour of 3600 asked.
    half_core = PI4.idle_w + PI4.watts_per_core / 2
    plan = simulate([deferrable("a", 3600, HOUR)], 0.0, flat(half_core), budget(), 2 * HOUR)
    assert plan.left_at_deadline == {"a": pytest.approx(1800)}
    assert plan.finish == {"a": pytest.approx(2 * HOUR)}  # done, late


def test_the_battery_above_the_reserve() -> None:
    assert battery_above_reserve_wh(50.0, 30.0, 1000.0) == pytest.approx(200.0)
    assert battery_above_reserve_wh(20.0, 30.0, 1000.0) == 0.0
    assert battery_above_reserve_wh(None, 30.0, 1000.0) == 0.0


def test_many_queued_jobs_are_checked_quickly() -> None:
    queue = [deferrable(f"j{i}", 60, 3600.0 * 24 + i, submitted=i) for i in range(300)]
    sun = flat(PI4.idle_w + 2 * PI4.watts_per_core, hours=72)
    verdict = admit(queue, deferrable("new", 60, 86400.0 * 2), 0.0, sun, budget(workers=2))
    assert verdict.accepted
