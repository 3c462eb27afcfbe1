"""The governor: safe when blind, never below the reserve, more work with more sun."""

from __future__ import annotations

from edgeagent.boards import load_board
from edgeagent.config import BatteryConfig, GovernorConfig, ModelFallback, WorkloadConfig
from edgeagent.governor import choose_model, decide
from edgeagent.state import SiteState

BOARD = load_board("raspberry-pi-4")
BATTERY = BatteryConfig(capacity_wh=100, reserve_soc_pct=30, resume_margin_pct=5)
GOV = GovernorConfig(max_workers=2, horizon_h=12)


def state(soc: float | None, pv: float = 0.0, stale: bool = False) -> SiteState:
    return SiteState(pv_power_w=pv, battery_soc_pct=soc, stale=stale)


def test_stale_power_data_means_no_work() -> None:
    d = decide(state(90, pv=40, stale=True), BOARD, BATTERY, GOV)
    assert d.workers == 0 and "stale" in d.reason


def test_at_or_below_the_reserve_nothing_runs_even_in_full_sun() -> None:
    assert decide(state(30, pv=40), BOARD, BATTERY, GOV).workers == 0
    assert decide(state(10, pv=40), BOARD, BATTERY, GOV).workers == 0


def test_after_the_reserve_work_resumes_only_above_the_margin() -> None:
    low = decide(state(29), BOARD, BATTERY, GOV)
    recovering = decide(state(33, pv=40), BOARD, BATTERY, GOV, previous=low)
    assert recovering.workers == 0 and recovering.holding_reserve
    resumed = decide(state(36, pv=40), BOARD, BATTERY, GOV, previous=recovering)
    assert resumed.workers == 2


def test_night_on_a_modest_battery_throttles_down() -> None:
    # 100 Wh at 40 %: 10 Wh above reserve over 12 h is 0.83 W, less than one core's 0.925 W.
    assert decide(state(40), BOARD, BATTERY, GOV).workers == 0
    # at 50 %: 20 Wh / 12 h = 1.67 W pays for one worker
    assert decide(state(50), BOARD, BATTERY, GOV).workers == 1


def test_solar_surplus_pays_for_workers_up_to_the_cap() -> None:
    assert decide(state(40, pv=BOARD.idle_w + 1.0), BOARD, BATTERY, GOV).workers == 1
    assert decide(state(40, pv=30), BOARD, BATTERY, GOV).workers == GOV.max_workers


def test_no_surplus_is_not_negative_work() -> None:
    d = decide(state(31, pv=0.5), BOARD, BATTERY, GOV)
    assert d.workers == 0 and d.budget_w >= 0


def test_the_governor_is_a_pure_function() -> None:
    s = state(60, pv=10)
    assert decide(s, BOARD, BATTERY, GOV) == decide(s, BOARD, BATTERY, GOV)


WORKLOAD = WorkloadConfig(model="digits-large-int8", fallbacks=[
    ModelFallback(model="digits-int8", below_budget_w=4.0),
    ModelFallback(model="digits-int8-tflite", below_budget_w=2.0)])


def test_the_main_model_runs_while_the_budget_allows_it() -> None:
    assert choose_model(10.0, WORKLOAD, None) == "digits-large-int8"
    assert decide(state(90, pv=40), BOARD, BATTERY, GOV, workload=WORKLOAD).model \
        == "digits-large-int8"


def test_a_short_budget_picks_the_fallback_of_its_band() -> None:
    assert choose_model(3.0, WORKLOAD, None) == "digits-int8"
    assert choose_model(1.0, WORKLOAD, None) == "digits-int8-tflite"
    # 40 % battery, no sun: 10 Wh above the reserve over 12 h is 0.83 W, the scarcest band.
    assert decide(state(40), BOARD, BATTERY, GOV, workload=WORKLOAD).model \
        == "digits-int8-tflite"


def test_leaving_a_fallback_needs_a_margin_above_its_band() -> None:
    assert choose_model(4.2, WORKLOAD, "digits-int8") == "digits-int8"  # within 10 %
    assert choose_model(4.5, WORKLOAD, "digits-int8") == "digits-large-int8"
    assert choose_model(2.1, WORKLOAD, "digits-int8-tflite") == "digits-int8-tflite"
    # Going down to a cheaper model needs no margin: energy is short now.
    assert choose_model(3.9, WORKLOAD, "digits-large-int8") == "digits-int8"


def test_no_work_keeps_the_model_it_had() -> None:
    running = decide(state(60), BOARD, BATTERY, GOV, workload=WORKLOAD)
    blind = decide(state(60, stale=True), BOARD, BATTERY, GOV, previous=running,
                   workload=WORKLOAD)
    assert blind.workers == 0 and blind.model == running.model
