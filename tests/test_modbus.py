"""EPEver and Renogy over Modbus RTU: scaled, signed values from an independent responder."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import edgeagent_command
from edgeagent.power.modbus import epever_reading, renogy_reading
from rtu_responder import RtuResponder, crc16, frame


def test_the_responders_crc_matches_published_frames() -> None:
    assert frame(bytes.fromhex("01 03 00 0A 00 01")) == bytes.fromhex("01 03 00 0A 00 01 A4 08")
    assert frame(bytes.fromhex("01 03 90 00 00 0F")) == bytes.fromhex("01 03 90 00 00 0F 28 CE")
    assert crc16(bytes.fromhex("01 03 02 18 1E 32 4C")) == 0  # a frame plus its CRC checks to 0


def epever_tables(net_current_centiamps: int) -> dict[int, dict[int, int]]:
    live = {0x3100 + i: 0 for i in range(0x12)}
    # PV 18.34 V, 2.15 A, 39.36 W (a 32-bit value, low word first)
    live.update({0x3100: 1834, 0x3101: 215, 0x3102: 0x0F60, 0x3103: 0x0000,
                 0x310C: 1302, 0x310D: 150, 0x310E: 1953, 0x310F: 0,  # load 13.02 V 1.5 A 19.53 W
                 0x3110: (-525) & 0xFFFF})  # battery at -5.25 degC: signed
    net = net_current_centiamps & 0xFFFFFFFF
    live.update({0x311A: 87, 0x3200: 0, 0x3201: 0b0101, 0x3202: 1,  # running, float
                 0x330C: 0x04D2, 0x330D: 0, 0x330E: 0, 0x330F: 0, 0x3310: 0, 0x3311: 0,
                 0x3312: 0x86A0, 0x3313: 0x0001,  # today 12.34 kWh, total 1000.00 kWh
                 0x331A: 1305, 0x331B: net & 0xFFFF, 0x331C: net >> 16})
    return {4: live}


def read_json(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*edgeagent_command(), "read", *args, "--count", "1", "--json",
                           "--timeout", "10"], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("net,expected", [(-1234, -12.34), (65, 0.65), (-70000, -700.0)])
def test_read_epever_from_an_independent_responder(net: int, expected: float) -> None:
    with RtuResponder(epever_tables(net)) as device:
        result = read_json("--driver", "epever", "--port", device.port)
    assert result.returncode == 0, result.stderr
    r = json.loads(result.stdout)
    assert (r["pv_voltage_v"], r["pv_current_a"], r["pv_power_w"]) == (18.34, 2.15, 39.36)
    assert r["battery_voltage_v"] == 13.05 and r["battery_current_a"] == expected
    assert r["battery_temp_c"] == -5.25 and r["battery_soc_pct"] == 87.0
    assert (r["load_voltage_v"], r["load_current_a"], r["load_power_w"]) == (13.02, 1.5, 19.53)
    assert r["charger_state"] == "float" and r["error_code"] == 0
    assert r["yield_today_kwh"] == 12.34 and r["yield_total_kwh"] == 1000.0
    assert all(req[1] == 4 for req in device.requests)  # live data is function 04 only


def renogy_tables() -> dict[int, dict[int, int]]:
    regs = {0x0100 + i: 0 for i in range(0x23)}
    regs.update({0x0100: 76, 0x0101: 132, 0x0102: 540,  # 76 %, 13.2 V, 5.40 A charging
                 0x0103: (25 << 8) | 0x85,  # controller 25 degC, battery -5 degC (sign-magnitude)
                 0x0104: 132, 0x0105: 120, 0x0106: 16,  # load 13.2 V 1.20 A 16 W
                 0x0107: 188, 0x0108: 380, 0x0109: 71,  # PV 18.8 V 3.80 A 71 W
                 0x010F: 95, 0x0113: 412, 0x0117: 33,
                 0x0120: 0x8000 | 2})  # load on, MPPT (bulk)
    return {3: regs}


def renogy_identity_registers(model: bytes, serial: int) -> dict[int, int]:
    padded = model.ljust(16)
    regs = {0x000C + i: int.from_bytes(padded[2 * i:2 * i + 2], "big") for i in range(8)}
    regs.update({0x0018: serial >> 16, 0x0019: serial & 0xFFFF})  # high word first
    return regs


def test_read_renogy_from_an_independent_responder() -> None:
    with RtuResponder(renogy_tables()) as device:
        result = read_json("--driver", "renogy", "--port", device.port)
    assert result.returncode == 0, result.stderr
    r = json.loads(result.stdout)
    # This responder has no identity registers: the port names the device.
    assert r["device_id"] == f"renogy@{device.port}#1" and "product" not in r
    assert (r["battery_soc_pct"], r["battery_voltage_v"]) == (76.0, 13.2)
    assert r["battery_current_a"] == 4.2  # 5.40 A in, 1.20 A to the load
    assert r["battery_temp_c"] == -5.0
    assert (r["pv_voltage_v"], r["pv_current_a"], r["pv_power_w"]) == (18.8, 3.8, 71.0)
    assert r["load_on"] is True and r["charger_state"] == "bulk"
    assert r["max_power_today_w"] == 95.0 and r["yield_today_kwh"] == 0.412 and r["cycles"] == 33
    assert all(req[1] == 3 for req in device.requests)


def test_a_renogy_is_identified_by_its_serial_number_not_its_port() -> None:
    tables = renogy_tables()
    tables[3].update(renogy_identity_registers(b"RNG-CTRL-RVR40", 1907012345))
    with RtuResponder(tables) as device:
        result = read_json("--driver", "renogy", "--port", device.port)
    assert result.returncode == 0, result.stderr
    r = json.loads(result.stdout)
    assert r["device_id"] == "1907012345" and r["product"] == "RNG-CTRL-RVR40"
    assert r["battery_voltage_v"] == 13.2


def test_a_silent_or_refusing_device_is_a_clear_failure_not_a_hang() -> None:
    with RtuResponder({4: {}}) as device:  # answers every read with "illegal data address"
        result = subprocess.run([*edgeagent_command(), "read", "--driver", "epever", "--port",
                                 device.port, "--timeout", "3"],
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "0 of 1 reading" in result.stderr and "Traceback" not in result.stderr


def test_mapping_functions_take_register_blocks() -> None:
    blocks = {a: [epever_tables(100)[4].get(a + i, 0) for i in range(n)]
              for a, n in {0x3100: 0x12, 0x311A: 1, 0x3200: 3, 0x330C: 8, 0x331A: 3}.items()}
    assert epever_reading(blocks, 0.0).battery_current_a == 1.0
    regs = renogy_tables()[3]
    r = renogy_reading({0x0100: [regs[0x0100 + i] for i in range(0x23)]}, 0.0)
    assert r.driver == "renogy" and r.pv_power_w == 71.0
