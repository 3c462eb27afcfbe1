"""The governor: safe when blind, never below the reserve, more work with more sun, no flapping,
a reserve that adapts, sleep only when the plan has nothing for the board, knobs that agree."""

from __future__ import annotations

import calendar
import itertools
import math

import numpy as np
import pytest

from edgeagent.boards import load_board
from edgeagent.config import BatteryConfig, GovernorConfig, ModelFallback, WorkloadConfig
from edgeagent.governor import (
    Decision,
    Forecast,
    Forecaster,
    GovernorMemory,
    choose_model,
    decide,
    planner,
)
from edgeagent.governor.decision import Due
from edgeagent.governor.forecast import clear_sky_ghi
from edgeagent.governor.policy import battery_life, bus_board
from edgeagent.state import SiteState

BOARD = load_board("raspberry-pi-4")
BATTERY = BatteryConfig(capacity_wh=100, reserve_soc_pct=30, resume_margin_pct=5)
GOV = GovernorConfig(max_workers=4, allow_sleep=True)
DAY = 86400.0
EQUINOX = float(calendar.timegm((2023, 3, 20, 0, 0, 0)))
NOON, EVENING, MIDNIGHT = EQUINOX + 12 * 3600, EQUINOX + 20 * 3600, EQUINOX + DAY
PANEL_W = 40.0  # PV watts at 1000 W/m² of clear sky


def sky(now: float, clearness: float = 1.0, panel_w: float = PANEL_W) -> Forecast:
    """Two days of forecast at the equator on the Greenwich meridian (sunrise ~06:00 UTC)."""
    start = math.floor(now / 600) * 600
    clear = clear_sky_ghi(start + (np.arange(288) + 0.5) * 600, 0.0, 0.0) * panel_w / 1000
    return Forecast(start, 600.0, tuple((clear * clearness).tolist()), tuple(clear.tolist()))


def state(soc: float | None, pv: float = 0.0, stale: bool = False) -> SiteState:
    return SiteState(pv_power_w=pv, battery_soc_pct=soc, stale=stale)


def run(soc: float, now: float, pv: float = 0.0, forecast: Forecast | None = None,
        governor: GovernorConfig = GOV, memory: GovernorMemory | None = None,
        **kwargs: bool) -> Decision:
    forecast = sky(now) if forecast is None else forecast
    return decide(state(soc, pv), now, forecast, BOARD, BATTERY, governor, memory=memory,
                  **kwargs)[0]


def test_stale_or_missing_power_data_is_the_safe_decision() -> None:
    for blind in (state(90, pv=40, stale=True), state(None, pv=40, stale=False)):
        d, _ = decide(blind, NOON, sky(NOON), BOARD, BATTERY, GOV)
        assert d.workers == 0 and d.level == 0 and "stale" in d.reason
        assert d.admit == frozenset()  # not even urgent jobs: the battery may be at its floor
        assert d.freeze and d.sleep_until is None  # no planned wake-up without data: stay up
        assert d.cpufreq_max_pct == GOV.cpufreq_min_pct


def test_at_or_below_the_reserve_nothing_runs_even_in_full_sun() -> None:
    for soc in (30, 10):
        d = run(soc, NOON, pv=40)
        assert d.workers == 0 and d.holding_reserve and d.admit == frozenset()
        assert d.sleep_until is not None and d.sleep_until >= NOON + GOV.min_sleep_s


def test_after_the_reserve_work_resumes_only_above_the_margin() -> None:
    low, memory = decide(state(29), NOON, sky(NOON), BOARD, BATTERY, GOV)
    assert low.holding_reserve
    recovering, memory = decide(state(33, pv=40), NOON + 3600, sky(NOON), BOARD, BATTERY, GOV,
                                memory=memory)
    assert recovering.workers == 0 and recovering.holding_reserve
    resumed, _ = decide(state(36, pv=40), NOON + 7200, sky(NOON), BOARD, BATTERY, GOV,
                        memory=memory)
    assert resumed.workers == GOV.max_workers and not resumed.holding_reserve


class Site:
    """A small battery-and-board model to close the loop around the governor in tests."""

    def __init__(self, soc: float, governor: GovernorConfig = GOV) -> None:
        self.energy = BATTERY.capacity_wh * soc / 100
        self.bus = bus_board(BOARD, governor)
        self.governor = governor

    @property
    def soc(self) -> float:
        return 100 * self.energy / BATTERY.capacity_wh

    def step(self, pv: float, decision: Decision, now: float, dt_s: float) -> None:
        asleep = decision.sleep_until is not None and decision.sleep_until > now
        load = self.bus.sleep_w if asleep else (
            self.bus.idle_w + decision.level * (self.bus.full_w - self.bus.idle_w))
        net = pv - load
        eff = self.governor.charge_efficiency if net > 0 else 1 / self.governor.discharge_efficiency
        self.energy = min(self.energy + net * eff * dt_s / 3600, BATTERY.capacity_wh)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_cloudy_week_never_takes_the_battery_below_the_reserve(seed: int) -> None:
    rng = np.random.default_rng(seed)
    site, memory = Site(60.0), None
    forecaster = Forecaster(50.0, 10.0, capacity_w=PANEL_W)
    start, worked, wake = EQUINOX, 0.0, 0.0
    weather = rng.choice([0.05, 0.3, 0.7, 1.0], size=10)  # one sky per day, storms included
    lowest = 100.0
    for k in range(10 * 144):
        now = start + k * 600
        pv = float(clear_sky_ghi(now, 50.0, 10.0)) * PANEL_W / 1000 * weather[k // 144]
        pv *= float(np.clip(rng.normal(1, 0.3), 0, 1.3))
        if now >= wake:  # asleep, the board decides nothing
            forecaster.observe(now, pv)
            d, memory = decide(state(site.soc, pv), now, forecaster.forecast(now), BOARD,
                               BATTERY, GOV, memory=memory)
            wake = d.sleep_until or now
        site.step(pv, d, now, 600)
        worked += 0 if d.sleep_until else d.level
        lowest = min(lowest, site.soc)
    assert lowest >= BATTERY.reserve_soc_pct - 0.5  # within one tick's overshoot
    assert worked > 100  # and it did work: more than ~17 hours at full level


def test_more_sun_means_more_work() -> None:
    power = bus_board(BOARD, GOV)
    bank = planner.Battery(50.0, 100.0, 0.95, 0.95)
    hours = np.full(288, 1 / 6)
    slots = []
    for clearness in (0.0, 0.2, 0.5, 1.0):
        pv = np.asarray(sky(EVENING, clearness).pv_w)
        slots.append(planner.plan(pv, hours, np.full(288, 31.0), power, bank,
                                  can_sleep=True).slots)
    assert slots == sorted(slots) and slots[0] < slots[-1]
    # At night: a bright tomorrow refills the battery, so tonight's charge is spent now;
    # a dark one needs it kept for tomorrow's brightest hours.
    assert run(70, EVENING, forecast=sky(EVENING, 1.0)).level == 1.0
    dark = run(70, EVENING, forecast=sky(EVENING, 0.15))
    assert dark.level == 0.0 and dark.sleep_until is not None


def test_the_plan_works_the_brightest_slots_first() -> None:
    power = bus_board(BOARD, GOV)
    pv = np.asarray(sky(MIDNIGHT, 0.3).pv_w)
    plan = planner.plan(pv, np.full(288, 1 / 6), np.full(288, 31.0), power,
                        planner.Battery(40.0, 100.0, 0.95, 0.95), can_sleep=True)
    assert 0 < plan.slots < 288
    worked, rest = pv[plan.work], pv[~plan.work & (pv > 0)]
    assert worked.min() >= rest.max()  # water-filling: no unworked slot is brighter


def test_accepted_work_is_served_before_its_deadline_even_on_the_battery() -> None:
    # A grey day ahead: with nothing due the governor sleeps tonight to save the charge for
    # tomorrow's sun; three hours of accepted work due by midnight are done tonight instead.
    grey = sky(EVENING, 0.15)
    assert run(70, EVENING, forecast=grey).sleep_until is not None
    job = Due(EVENING + 4 * 3600, 3 * 3600)
    d = decide(state(70), EVENING, grey, BOARD, BATTERY, GOV, due=[job])[0]
    assert d.level == 1.0 and d.sleep_until is None and "deadline" in d.reason
    assert "deferrable" in d.admit
    # Work due by a later deadline waits for the brightest slots before it.
    later = Due(EVENING + 20 * 3600, 3 * 3600)
    assert decide(state(70), EVENING, grey, BOARD, BATTERY, GOV, due=[later])[0].level == 0


def test_work_due_now_does_not_wait_out_the_dwell() -> None:
    # Awake and idle (no sleep) since a minute ago on a grey evening: the dwell would hold the
    # idle level for half an hour, but the slots the job needs start now, and admission
    # counted on them.
    awake = GovernorConfig(max_workers=4, allow_sleep=False)
    grey = sky(EVENING, 0.6)
    idle, memory = decide(state(70), EVENING - 60, grey, BOARD, BATTERY, awake)
    assert idle.level == 0 and idle.sleep_until is None
    job = Due(EVENING + 4 * 3600, 3 * 3600)
    d, memory = decide(state(70), EVENING, grey, BOARD, BATTERY, awake, memory=memory,
                       due=[job])
    assert d.level == 1.0 and "dwell" not in d.reason, d.reason
    # A raise the plan makes with nothing due waits out the dwell.
    memory = decide(state(70), EVENING - 60, grey, BOARD, BATTERY, awake)[1]
    held = decide(state(90), EVENING, grey, BOARD, BATTERY, awake, memory=memory)[0]
    assert held.level == 0 and "dwell" in held.reason, held.reason


def test_accepted_work_never_takes_the_battery_below_the_floor() -> None:
    # Just above the reserve on a dark night: a job due soon cannot be paid for, so it waits.
    job = Due(EVENING + 4 * 3600, 3 * 3600)
    d = decide(state(33), EVENING, sky(EVENING, 0.1), BOARD, BATTERY, GOV, due=[job])[0]
    assert d.level == 0


def test_the_slots_work_needs_are_the_brightest_before_each_deadline() -> None:
    pv = np.array([0.0, 0.0, 5.0, 9.0, 7.0, 0.0, 20.0, 20.0])
    hours = np.ones(8)
    # Two hours due in five: the two brightest slots before the deadline.
    assert np.flatnonzero(planner.must_work(pv, hours, [(5.0, 2.0)], 4)).tolist() == [3, 4]
    # Among equally dark slots the earliest; a deadline cutting a slot counts its part.
    assert np.flatnonzero(planner.must_work(pv, hours, [(1.5, 1.5)], 4)).tolist() == [0, 1]
    # Three two-hour jobs on two workers need three hours by the deadline.
    three = [(5.0, 2.0)] * 3
    assert np.flatnonzero(planner.must_work(pv, hours, three, 2)).tolist() == [2, 3, 4]
    # A job that cannot make it gets every slot before its deadline; one overdue gets none.
    assert planner.must_work(pv, hours, [(3.0, 9.0)], 4).tolist() == [True] * 3 + [False] * 5
    assert not planner.must_work(pv, hours, [(-1.0, 2.0)], 4).any()
    # The plan works them first, as far as the floor allows.
    must = planner.must_work(pv, hours, [(2.0, 2.0)], 4)
    power = bus_board(BOARD, GOV)
    for energy_wh, met in ((60.0, True), (40.0, False)):
        plan = planner.plan(pv, hours, np.full(8, 31.0), power,
                            planner.Battery(energy_wh, 100.0, 0.95, 0.95), can_sleep=True,
                            must=must)
        assert plan.meets_deadlines == met and plan.work[0]
    # Those the floor refuses go last: the rest of the plan (the sun's slots) still works.
    short = planner.plan(pv, hours, np.full(8, 31.0), power,
                         planner.Battery(40.0, 100.0, 0.95, 0.95), can_sleep=True, must=must)
    assert short.work.astype(int).tolist() == [1, 0, 0, 1, 1, 0, 1, 1]


def test_sleep_lasts_until_the_next_planned_slot() -> None:
    d = run(45, EVENING, forecast=sky(EVENING, 0.3))
    assert d.level == 0 and d.sleep_until is not None and d.admit == frozenset()
    assert d.sleep_until >= EVENING + GOV.min_sleep_s
    tomorrow_sunrise = EQUINOX + DAY + 6 * 3600
    assert tomorrow_sunrise <= d.sleep_until <= tomorrow_sunrise + 6 * 3600  # in the morning


def test_no_sleep_without_permission_a_forecast_or_with_urgent_jobs_waiting() -> None:
    dark = sky(EVENING, 0.15)
    assert run(45, EVENING, forecast=dark,
               governor=GovernorConfig(max_workers=4)).sleep_until is None
    blind = decide(state(45), EVENING, None, BOARD, BATTERY, GOV)[0]
    assert blind.sleep_until is None and blind.level == 0
    urgent = run(45, EVENING, forecast=dark, urgent_waiting=True)
    assert urgent.sleep_until is None and urgent.workers == 1 and "urgent" in urgent.admit


def test_a_full_battery_in_daylight_runs_flat_out_and_takes_any_job() -> None:
    d = run(100, NOON, pv=2.0, forecast=sky(NOON, 0.1))  # curtailed: the charger reports less
    assert d.level == 1 and d.workers == GOV.max_workers
    assert d.admit == frozenset({"urgent", "deferrable", "best-effort"})


def test_flapping_is_bounded_on_a_noisy_sun() -> None:
    rng = np.random.default_rng(7)
    site, memory = Site(40.0), None
    forecaster = Forecaster(0.0, 0.0, capacity_w=PANEL_W)
    for k in range(0, 3 * 144):  # three days to learn the sky, at 10-minute ticks
        now = EQUINOX - 3 * DAY + k * 600
        forecaster.observe(now, float(clear_sky_ghi(now, 0.0, 0.0)) * PANEL_W / 1000 * 0.4)
    levels, wake = [], 0.0
    for k in range(12 * 60):  # 06:00 to 18:00 at one-minute ticks: the live agent's pace
        now = EQUINOX + 6 * 3600 + k * 60
        pv = float(clear_sky_ghi(now, 0.0, 0.0)) * PANEL_W / 1000 * rng.choice([0.1, 0.9])
        if now >= wake:
            forecaster.observe(now, pv)
            d, memory = decide(state(site.soc, pv), now, forecaster.forecast(now), BOARD,
                               BATTERY, GOV, memory=memory)
            wake = d.sleep_until or now
        site.step(pv, d, now, 60)
        levels.append(0.0 if d.sleep_until else d.level)
    changes = np.flatnonzero(np.diff(levels)) + 1
    per_hour = np.bincount(changes // 60, minlength=12)
    # A level holds min_dwell_s (30 min) unless the reserve overrides: two changes an hour.
    assert per_hour.max() <= 2, per_hour
    assert len(changes) > 0  # it did follow the sun


def test_a_dwell_gives_way_to_the_reserve() -> None:
    working, memory = decide(state(80, pv=7), NOON, sky(NOON), BOARD, BATTERY, GOV)
    assert working.level == 1
    # Minutes later, a storm and a battery suddenly near the floor: no waiting out the dwell.
    d, _ = decide(state(33), NOON + 300, sky(NOON, 0.0), BOARD, BATTERY, GOV, memory=memory)
    assert d.level == 0


def test_the_reserve_rises_after_days_without_a_full_charge_and_falls_after_full_ones() -> None:
    memory = GovernorMemory()
    for day in range(8):  # a grey week at 60 %
        memory = battery_life(memory, 60.0, EQUINOX + day * DAY, GOV)
    assert memory.raise_pct == GOV.reserve_max_raise_pct  # +2 %/day, bounded at +10 %
    assert memory.days_without_full == 7
    d = run(60, NOON + 8 * DAY, memory=memory)
    assert d.reserve_pct == BATTERY.reserve_soc_pct + GOV.reserve_max_raise_pct
    for day in range(8, 10):  # two days that reach full
        memory = battery_life(memory, 100.0, EQUINOX + day * DAY, GOV)
    memory = battery_life(memory, 60.0, EQUINOX + 10 * DAY, GOV)
    assert memory.raise_pct == GOV.reserve_max_raise_pct - 2 * GOV.reserve_step_pct
    assert memory.days_without_full == 0


def test_the_storm_floor_pays_for_sleeping_through_the_dark() -> None:
    power = bus_board(BOARD, GOV)
    bank = planner.Battery(50.0, 100.0, 0.95, 0.95)
    hours = np.full(24, 1.0)
    floor = planner.storm_floor(30.0, np.zeros(24), hours, power, bank)
    assert floor[0] == pytest.approx(30.0 + power.sleep_w * 23 / 0.95)
    assert floor[-1] == 30.0 and np.all(np.diff(floor) <= 0)
    sunny = planner.storm_floor(30.0, np.full(24, 10.0), hours, power, bank)
    assert np.all(sunny == 30.0)  # a storm's sun that still pays for the sleep costs nothing


@pytest.mark.parametrize("board_name", ["raspberry-pi-4", "jetson-orin-nano", "jetson-nano"])
def test_knobs_follow_the_level(board_name: str) -> None:
    board = load_board(board_name)
    governor = GovernorConfig(max_workers=board.cores, allow_sleep=True)
    decisions = [decide(state(soc, pv), now, sky(now, k, panel_w=4 * board.full_load_w), board,
                        BATTERY, governor)[0]
                 for soc in (32, 50, 70, 100) for pv in (0.0, 5.0, 40.0)
                 for now in (NOON, EVENING) for k in (0.1, 1.0)]
    assert {d.level for d in decisions} >= {0.0, 1.0}
    for d in decisions:
        assert d.workers == round(d.level * governor.max_workers)
        assert d.budget_w == pytest.approx(d.level * (board.full_load_w - board.idle_w))
        assert d.freeze == (d.level == 0)
        assert d.cpu_max == (None if d.level == 0 else pytest.approx(d.level * board.cores))
        assert governor.cpufreq_min_pct <= d.cpufreq_max_pct <= 100
        if d.sleep_until is not None or d.holding_reserve:
            assert d.admit == frozenset() and d.level == 0
        elif d.level > 0:
            assert {"urgent", "deferrable"} <= d.admit
        assert (d.telemetry_interval_s is not None) == (d.level == 0 and "full" not in d.reason)
        if board.knobs.nvpmodel:
            assert d.power_mode_w in board.knobs.power_modes_w
        else:
            assert d.power_mode_w is None
    by_level = sorted(decisions, key=lambda d: d.level)
    for lower, higher in itertools.pairwise(by_level):
        assert lower.cpufreq_max_pct <= higher.cpufreq_max_pct
        if board.knobs.nvpmodel:
            assert (lower.power_mode_w or 0) <= (higher.power_mode_w or 0)


def test_the_governor_is_a_pure_function() -> None:
    memory = decide(state(60, pv=3), NOON - 600, sky(NOON), BOARD, BATTERY, GOV)[1]
    first = decide(state(60, pv=10), NOON, sky(NOON), BOARD, BATTERY, GOV, memory=memory)
    again = decide(state(60, pv=10), NOON, sky(NOON), BOARD, BATTERY, GOV, memory=memory)
    assert first == again


WORKLOAD = WorkloadConfig(model="digits-large-int8", fallbacks=[
    ModelFallback(model="digits-int8", below_budget_w=3.0),
    ModelFallback(model="digits-int8-tflite", below_budget_w=1.0)])


def test_the_main_model_runs_while_the_budget_allows_it() -> None:
    assert choose_model(10.0, WORKLOAD, None) == "digits-large-int8"
    d, _ = decide(state(90, pv=40), NOON, sky(NOON), BOARD, BATTERY, GOV, WORKLOAD)
    assert d.level == 1 and d.model == "digits-large-int8"  # 3.7 W of work budget


def test_a_short_budget_picks_the_fallback_of_its_band() -> None:
    assert choose_model(2.0, WORKLOAD, None) == "digits-int8"
    assert choose_model(0.5, WORKLOAD, None) == "digits-int8-tflite"
    # Near the reserve, running on the sun alone at 3/4 of the board's work power (2.8 W).
    d, _ = decide(state(31.5, pv=7.0), NOON, sky(NOON, 0.2), BOARD, BATTERY, GOV, WORKLOAD)
    assert d.level == 0.75 and d.model == "digits-int8"


def test_leaving_a_fallback_needs_a_margin_above_its_band() -> None:
    assert choose_model(3.2, WORKLOAD, "digits-int8") == "digits-int8"  # within 10 %
    assert choose_model(3.5, WORKLOAD, "digits-int8") == "digits-large-int8"
    assert choose_model(1.05, WORKLOAD, "digits-int8-tflite") == "digits-int8-tflite"
    # Going down to a cheaper model needs no margin: energy is short now.
    assert choose_model(2.9, WORKLOAD, "digits-large-int8") == "digits-int8"


def test_no_work_keeps_the_model_it_had() -> None:
    running, memory = decide(state(90, pv=40), NOON, sky(NOON), BOARD, BATTERY, GOV, WORKLOAD)
    blind, _ = decide(state(60, stale=True), NOON + 60, sky(NOON), BOARD, BATTERY, GOV,
                      WORKLOAD, memory)
    assert blind.workers == 0 and blind.model == running.model
