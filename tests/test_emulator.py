"""The emulated site: a battery that keeps its books, real weather, and valid VE.Direct."""

from __future__ import annotations

import pytest

from edgeagent.power.vedirect import VEDirectDecoder, VEDirectDevice
from edgeagent.sim.battery import Battery, open_circuit_voltage
from edgeagent.sim.emulator import SiteEmulator
from edgeagent.sim.solar import SolarTrace, hour_of_year


def test_the_battery_never_leaves_its_bounds_and_counts_losses() -> None:
    b = Battery(capacity_wh=100, soc_pct=50)
    assert b.step(1000, 3600) < 1000  # full: it refuses the rest
    assert b.soc_pct == 100
    b.step(-10, 3600)
    assert b.soc_pct == pytest.approx(100 - 10 / 0.96, rel=1e-6)  # discharge losses
    b.step(-1000, 3600 * 10)
    assert b.soc_pct == pytest.approx(0, abs=1e-9)
    assert b.step(-5, 60) == pytest.approx(0, abs=1e-6)


def test_open_circuit_voltage_is_monotonic() -> None:
    volts = [open_circuit_voltage(s) for s in range(0, 101, 5)]
    assert volts == sorted(volts) and volts[0] >= 10 and volts[-1] <= 14


def test_the_bundled_trace_is_a_real_year_with_nights_and_noons() -> None:
    trace = SolarTrace.bundled()
    assert len(trace.ghi_w_m2) == 8760
    solstice = hour_of_year(6, 21)
    assert trace.ghi_at(solstice + 2) == 0  # night
    assert 500 < max(trace.ghi_at(solstice + h) for h in range(10, 16)) < 1200
    assert sum(trace.ghi_w_m2) / 1000 == pytest.approx(1600, rel=0.15)  # kWh/m2/yr, NC


def test_emulated_devices_speak_valid_vedirect_that_our_driver_reads() -> None:
    trace = SolarTrace.bundled()
    emu = SiteEmulator(trace, Battery(100, 70), start_hour=hour_of_year(6, 21) + 12,
                       speed=1.0, panel_wp=40, load_w=lambda: 4.0)
    try:
        emu.advance(60)
        decoder, mppt = VEDirectDecoder(), VEDirectDevice()
        blocks = decoder.feed(emu.mppt_block() * 2)
        assert len(blocks) == 2 and decoder.stats.blocks_bad_checksum == 0
        reading = mppt.update(blocks[0])
        assert reading.pv_power_w == pytest.approx(emu.pv_w, abs=1)
        assert reading.charger_state in {"bulk", "absorption", "float"}
        shunt_decoder, shunt = VEDirectDecoder(), VEDirectDevice()
        live, history = emu.shunt_blocks()
        for block in shunt_decoder.feed(history + live + history):
            reading = shunt.update(block)
        assert reading.battery_soc_pct == pytest.approx(emu.battery.soc_pct, abs=0.1)
        assert reading.charged_kwh is not None  # the history block merged into the state
    finally:
        emu.stop()


def test_the_agents_load_drains_the_emulated_battery_at_night() -> None:
    emu = SiteEmulator(SolarTrace.bundled(), Battery(100, 70), start_hour=hour_of_year(6, 21),
                       speed=1.0, panel_wp=40, load_w=lambda: 5.0)
    try:
        emu.advance(3600)
        assert emu.pv_w == 0
        assert emu.battery.soc_pct == pytest.approx(70 - 5 / 0.96, rel=1e-3)
        assert emu.totals.load_wh == pytest.approx(5.0)
    finally:
        emu.stop()
