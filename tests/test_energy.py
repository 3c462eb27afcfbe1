"""Joules per inference: the solar share of the workload's energy, and the board-sensor path."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest

from edgeagent.boards import load_board
from edgeagent.infer.energy import EnergyWindow, estimated, find_meter, measure
from edgeagent.power.board_power import BoardPower
from edgeagent.state import SiteState
from edgeagent.workloads.energy import EnergyLedger, solar_share_now


def site(pv: float | None, battery_w: float | None = None, *, volts: float | None = None,
         amps: float | None = None) -> SiteState:
    return SiteState(pv_power_w=pv, battery_power_w=battery_w, battery_voltage_v=volts,
                     battery_current_a=amps, battery_soc_pct=70, stale=False)


def test_a_charging_battery_means_everything_comes_from_the_panel() -> None:
    assert solar_share_now(site(30, battery_w=20), board_load_w=5) == 1.0
    assert solar_share_now(site(5, battery_w=0), board_load_w=5) == 1.0


def test_a_discharging_battery_pays_its_part() -> None:
    # 3 W from the panel, 1 W out of the battery: the site draws 4 W, 75 % of it solar.
    assert solar_share_now(site(3, battery_w=-1), board_load_w=9) == pytest.approx(0.75)
    # Battery power from volts x amps when the monitor gives no power field.
    assert solar_share_now(site(3, volts=12.5, amps=-0.08), board_load_w=9) \
        == pytest.approx(0.75)
    assert solar_share_now(site(0, battery_w=-4), board_load_w=4) == 0.0  # night


def test_without_battery_data_the_boards_draw_stands_in() -> None:
    assert solar_share_now(site(2), board_load_w=4) == pytest.approx(0.5)
    assert solar_share_now(site(9), board_load_w=4) == 1.0


def test_unknown_or_stale_pv_is_unknown_not_zero() -> None:
    assert solar_share_now(site(None, battery_w=-2), board_load_w=4) is None
    stale = SiteState(pv_power_w=20, battery_power_w=5, stale=True)
    assert solar_share_now(stale, board_load_w=4) is None


def test_the_ledger_weighs_shares_by_energy_and_skips_unknown_shares() -> None:
    ledger = EnergyLedger()
    assert ledger.solar_share is None
    ledger.add(3.0, 1.0)   # 3 J at noon
    ledger.add(1.0, 0.0)   # 1 J at night
    ledger.add(5.0, None)  # 5 J while the charger was silent: not counted either way
    assert ledger.energy_j == 9.0
    assert ledger.solar_share == pytest.approx(0.75)


def test_estimated_joules_say_how_they_were_estimated() -> None:
    board = load_board("raspberry-pi-4")
    joules = estimated(0.001, board)
    assert joules.basis == "estimated"
    assert joules.per_inference_j == pytest.approx(0.001 * board.watts_per_core)
    assert "raspberry-pi-4" in joules.detail and "CPU-s" in joules.detail


def test_energy_window_integrates_sampled_power_with_the_trapezoid_rule() -> None:
    watts = itertools.cycle([4.0, 6.0])
    with EnergyWindow(lambda: BoardPower(next(watts), "test"), period_s=0.01) as window:
        time.sleep(0.3)
    assert window.samples >= 10
    assert window.mean_w == pytest.approx(5.0, abs=0.35)


def test_measured_joules_subtract_the_idle_baseline() -> None:
    """3 W idle, 5 W while working: the model costs 2 W over the busy window."""
    state = {"busy": False}

    def meter() -> BoardPower:
        return BoardPower(5.0 if state["busy"] else 3.0, "test")

    def work() -> int:
        state["busy"] = True
        time.sleep(0.5)
        state["busy"] = False
        return 100

    joules = measure(meter, "test sensor", work, idle_s=0.3, period_s=0.01)
    assert joules is not None and joules.basis == "measured"
    # ~0.5 s x 2 W / 100 inferences; the edges of the window blur it a little.
    assert joules.per_inference_j == pytest.approx(0.01, rel=0.2)
    assert joules.gross_j is not None and joules.gross_j == pytest.approx(0.025, rel=0.2)
    assert "idle 3.000 W subtracted" in joules.detail


def test_a_board_sensor_under_sysfs_is_found(tmp_path: Path) -> None:
    assert find_meter(tmp_path) is None
    device = tmp_path / "sys/class/hwmon/hwmon2"
    device.mkdir(parents=True)
    (device / "name").write_text("ina219\n")
    (device / "in1_input").write_text("5100\n")
    (device / "curr1_input").write_text("700\n")
    found = find_meter(tmp_path)
    assert found is not None
    read, source = found
    power = read()
    assert source == "hwmon" and power is not None and power.power_w == pytest.approx(3.57)
