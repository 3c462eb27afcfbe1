"""Property-based: the EPEver and Renogy register mappings never raise on any register values,
scale every field as research/serial-protocols.md §2 documents, and round-trip signed values.

The mappings get whole blocks (``ModbusCharger`` rejects short answers before mapping), so the
strategies draw blocks of the documented lengths with any 16-bit values.
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from edgeagent.power.modbus import (
    EPEVER_BLOCKS,
    RENOGY_BLOCKS,
    epever_reading,
    renogy_reading,
)
from edgeagent.power.reading import Reading

U16 = st.integers(0, 0xFFFF)
FAST = settings(max_examples=300, deadline=None)


def blocks_of(layout: dict[int, int]) -> st.SearchStrategy[dict[int, list[int]]]:
    return st.fixed_dictionaries({a: st.lists(U16, min_size=n, max_size=n)
                                  for a, n in layout.items()})


def u32(low: int, high: int) -> int:
    return high << 16 | low


def words(value: int) -> tuple[int, int]:
    """A signed 32-bit value as the (low, high) register pair EPEver sends."""
    raw = value & 0xFFFF_FFFF
    return raw & 0xFFFF, raw >> 16


def round_trips(reading: Reading) -> bool:
    return Reading(**json.loads(reading.to_json())) == reading


@FAST
@given(blocks_of(EPEVER_BLOCKS))
def test_epever_any_registers_map_and_scale_as_documented(b: dict[int, list[int]]) -> None:
    r = epever_reading(b, ts=1.0, device_id="x")
    live, soc, status, energy, bat = (b[a] for a in EPEVER_BLOCKS)
    assert round_trips(r)
    # unsigned x100 values, 32-bit ones low word first
    assert r.pv_voltage_v == live[0] / 100 and r.pv_current_a == live[1] / 100
    assert r.pv_power_w == u32(live[2], live[3]) / 100
    assert r.load_voltage_v == live[0x0C] / 100 and r.load_current_a == live[0x0D] / 100
    assert r.load_power_w == u32(live[0x0E], live[0x0F]) / 100
    assert r.battery_voltage_v == bat[0] / 100
    assert r.yield_today_kwh == u32(energy[0], energy[1]) / 100
    assert r.yield_total_kwh == u32(energy[6], energy[7]) / 100
    for value in (r.pv_voltage_v, r.pv_current_a, r.load_voltage_v, r.battery_voltage_v):
        assert value is not None and 0 <= value <= 655.35
    # signed: temperature 16-bit, net battery current 32-bit (+ = charging)
    assert r.battery_temp_c is not None and -327.68 <= r.battery_temp_c <= 327.67
    assert r.battery_current_a is not None
    assert -21_474_836.48 <= r.battery_current_a <= 21_474_836.47
    assert r.battery_power_w is not None and r.battery_voltage_v is not None
    power = r.battery_voltage_v * r.battery_current_a  # rounded to mW by the mapping
    assert abs(r.battery_power_w - power) <= 0.0011 + 1e-9 * abs(power)
    # integer %, not x100 (v2.5 document); beyond 100 it is no state of charge: absent
    assert r.battery_soc_pct == (float(soc[0]) if soc[0] <= 100 else None)
    # status: D1 and D4-D13 are faults, D2-D3 the stage
    faults = status[1] & 0x3FF2
    assert r.error_code == faults
    stage = ("off", "float", "absorption", "equalize")[(status[1] >> 2) & 3]
    assert r.charger_state == ("fault" if faults else stage)


@FAST
@given(blocks_of(EPEVER_BLOCKS), st.integers(-(2**31), 2**31 - 1), st.integers(-(2**15), 2**15 - 1))
def test_epever_signed_values_round_trip(b: dict[int, list[int]], centiamps: int,
                                          centidegrees: int) -> None:
    b[0x331A][1:3] = words(centiamps)
    b[0x3100][0x10] = centidegrees & 0xFFFF
    r = epever_reading(b, ts=0.0)
    assert r.battery_current_a == centiamps / 100
    assert r.battery_temp_c == centidegrees / 100


@FAST
@given(blocks_of(EPEVER_BLOCKS), st.integers(0, 100), st.integers(0, 0xFFFF))
def test_epever_fields_stay_in_range_when_the_device_is_in_range(
        b: dict[int, list[int]], soc: int, status: int) -> None:
    b[0x311A][0] = soc
    b[0x3200][1] = status
    r = epever_reading(b, ts=0.0)
    assert r.battery_soc_pct is not None and 0 <= r.battery_soc_pct <= 100
    assert r.charger_state in {"off", "float", "absorption", "equalize", "fault"}


@FAST
@given(blocks_of(RENOGY_BLOCKS))
def test_renogy_any_registers_map_and_scale_as_documented(b: dict[int, list[int]]) -> None:
    r = renogy_reading(b, ts=1.0, device_id="x")
    reg = b[0x0100]
    assert round_trips(r)
    assert r.battery_soc_pct == (float(reg[0]) if reg[0] <= 100 else None)
    assert r.battery_voltage_v == reg[1] / 10 and r.load_voltage_v == reg[4] / 10
    assert r.pv_voltage_v == reg[7] / 10 and r.pv_current_a == reg[8] / 100
    assert r.load_current_a == reg[5] / 100
    assert r.load_power_w == float(reg[6]) and r.pv_power_w == float(reg[9])
    assert r.max_power_today_w == float(reg[0x0F]) and r.cycles == reg[0x17]
    assert r.yield_today_kwh == reg[0x13] / 1000  # real units report Wh (renogy-klient)
    # the battery sees charge current minus load current
    assert r.battery_current_a == round(reg[2] / 100 - reg[5] / 100, 2)
    assert r.battery_temp_c is not None and -127 <= r.battery_temp_c <= 127
    assert r.load_on is bool(reg[0x20] & 0x8000)
    faults = reg[0x21] << 16 | reg[0x22]  # 32-bit, high word first
    assert r.error_code == faults
    state = reg[0x20] & 0xFF
    known = {0: "off", 1: "activated", 2: "bulk", 3: "equalize", 4: "absorption", 5: "float",
             6: "current_limiting"}
    assert r.charger_state == ("fault" if faults else known.get(state, f"unknown_{state}"))


@FAST
@given(blocks_of(RENOGY_BLOCKS), st.integers(-127, 127), st.integers(0, 0xFF))
def test_renogy_sign_magnitude_temperature_round_trips(b: dict[int, list[int]], celsius: int,
                                                       controller: int) -> None:
    magnitude = (0x80 | -celsius) if celsius < 0 else celsius
    b[0x0100][3] = controller << 8 | magnitude  # high byte: the controller's own temperature
    assert renogy_reading(b, ts=0.0).battery_temp_c == celsius
