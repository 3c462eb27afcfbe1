"""JBD and Daly BMS frames: the documented examples decode, damage never reaches the state."""

from __future__ import annotations

import json
import struct
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import edgeagent_command
from edgeagent.power import daly, jbd

# JBD protocol document example (basic info), checksum verified in the research note.
JBD_BASIC = bytes.fromhex("DD 03 00 1B 17 00 00 00 02 D0 03 E8 00 00 20 78 00 00 00 00 00 00"
                          " 10 48 03 0F 02 0B 76 0B 82 FB FF 77")
# Real Daly captures (dbus-serialbattery issue #53), checksums verified in the research note.
DALY = [bytes.fromhex(h) for h in (
    "A5 01 90 08 00 72 00 00 75 30 01 EF 45", "A5 01 91 08 0F 01 02 0E E1 01 01 EF 31",
    "A5 01 92 08 40 01 40 01 DF 01 01 EF 92", "A5 01 93 08 00 01 01 2B 00 00 3A 02 AA",
    "A5 01 94 08 03 01 00 00 02 00 00 02 4A")]


def test_jbd_requests_match_the_documented_bytes() -> None:
    assert jbd.encode_request(jbd.BASIC_INFO) == bytes.fromhex("DD A5 03 00 FF FD 77")
    assert jbd.encode_request(jbd.CELL_VOLTAGES) == bytes.fromhex("DD A5 04 00 FF FC 77")
    with pytest.raises(ValueError, match="read-only"):
        jbd.encode_request(0xE1)  # MOS control: a monitor never sends it


def test_jbd_documented_basic_info_decodes() -> None:
    decoder, device = jbd.JBDDecoder(), jbd.JBDDevice()
    frames = decoder.feed(b"\x00\xddnoise" + jbd.encode_request(3) + JBD_BASIC)
    assert len(frames) == 1 and decoder.stats.frames_ok == 1
    info = jbd.parse_basic_info(frames[0].data)
    assert (info.voltage_v, info.current_a, info.remaining_ah, info.capacity_ah) == (
        58.88, 0.0, 7.2, 10.0)
    assert (info.cycles, info.soc_pct, info.cells, info.fets) == (0, 72.0, 15, 3)
    assert info.temperatures_c == [20.3, 21.5] and info.firmware == "1.0"
    r = device.update(frames[0])
    assert r.battery_soc_pct == 72.0 and r.battery_temp_c == 20.3 and r.capacity_ah == 10.0


def test_jbd_cells_merge_and_extra_bytes_after_the_temperatures_are_ignored() -> None:
    cells = jbd.encode_response(jbd.CELL_VOLTAGES, struct.pack(">4H", 3301, 3299, 3305, 3310))
    longer = jbd.encode_response(jbd.BASIC_INFO, jbd.JBDDecoder().feed(JBD_BASIC)[0].data
                                 + b"\x00\x01\x02")
    decoder, device = jbd.JBDDecoder(), jbd.JBDDevice()
    readings = [device.update(f) for f in decoder.feed(longer + cells)]
    assert readings[-1].cell_voltages_v == [3.301, 3.299, 3.305, 3.31]
    assert readings[-1].battery_voltage_v == 58.88


def test_jbd_discharge_current_is_negative() -> None:
    data = bytearray(jbd.JBDDecoder().feed(JBD_BASIC)[0].data)
    data[2:4] = struct.pack(">h", -1234)
    info = jbd.parse_basic_info(bytes(data))
    assert info.current_a == -12.34


def test_jbd_damaged_frames_are_dropped_whole() -> None:
    for i in range(1, len(JBD_BASIC)):
        bad = bytearray(JBD_BASIC)
        bad[i] ^= 0x10
        frames = jbd.JBDDecoder().feed(bytes(bad) + JBD_BASIC)
        assert frames[-1] == jbd.Frame(3, 0, JBD_BASIC[4:-3]), i
        assert len(frames) == 1 or frames[0].register != jbd.BASIC_INFO, i


def test_daly_requests_and_real_captures() -> None:
    assert daly.encode_request(daly.SOC) == bytes.fromhex("A5 40 90 08 00 00 00 00 00 00 00 00 7D")
    with pytest.raises(ValueError):
        daly.encode_request(0xD9)  # discharge MOS switch: never from a monitor
    decoder, device = daly.DalyDecoder(), daly.DalyDevice()
    echo = daly.encode_request(daly.SOC)  # a half-duplex adapter echoes the request
    for frame in decoder.feed(echo + b"".join(DALY)):
        r = device.update(frame)
    assert decoder.stats.frames_ok == 5
    assert (r.battery_voltage_v, r.battery_current_a, r.battery_soc_pct) == (11.4, 0.0, 49.5)
    assert r.battery_temp_c == 24.0 and r.remaining_ah == 14.85 and r.cycles == 0
    assert r.cell_voltages_v is None  # 3 cells announced, none seen yet


def test_daly_cells_arrive_in_numbered_frames() -> None:
    decoder, device = daly.DalyDecoder(), daly.DalyDevice()
    status = daly.encode(1, daly.STATUS, bytes([4, 1, 0, 0, 2, 0, 7, 0]))
    f1 = daly.encode(1, daly.CELL_VOLTAGES, bytes([1]) + struct.pack(">3H", 3300, 3310, 3320)
                     + b"\x00")
    f2 = daly.encode(1, daly.CELL_VOLTAGES, bytes([2]) + struct.pack(">3H", 3330, 0, 0) + b"\x00")
    for frame in decoder.feed(status + f1 + f2):
        r = device.update(frame)
    assert r.cell_voltages_v == [3.3, 3.31, 3.32, 3.33] and r.cycles == 7


def test_daly_a_sleeping_bmss_zero_frame_never_reaches_the_state() -> None:
    decoder, device = daly.DalyDecoder(), daly.DalyDevice(stats=None)
    for frame in decoder.feed(DALY[0] + daly.encode(1, daly.SOC, bytes(8))):
        r = device.update(frame)
    assert r.battery_current_a == 0.0 and r.battery_voltage_v == 11.4  # not -3000 A, 0 V
    assert device.stats.implausible == 1


def test_daly_discharge_is_negative() -> None:
    frame = daly.encode(1, daly.SOC, struct.pack(">HHHH", 132, 0, 30000 + 125, 800))
    r = daly.DalyDevice().update(daly.DalyDecoder().feed(frame)[0])
    assert r.battery_current_a == -12.5 and r.battery_power_w == pytest.approx(-165.0)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1500))
def test_random_bytes_never_raise_in_either_bms_parser(data: bytes) -> None:
    for frame in jbd.JBDDecoder().feed(data):
        jbd.JBDDevice().update(frame)
    for frame in daly.DalyDecoder().feed(data):
        daly.DalyDevice().update(frame)


@settings(max_examples=500, deadline=None)
@given(st.integers(0, len(JBD_BASIC) - 1), st.integers(1, 255))
def test_a_corrupted_jbd_frame_never_reaches_the_state(pos: int, xor: int) -> None:
    bad = bytearray(JBD_BASIC)
    bad[pos] ^= xor
    decoder = jbd.JBDDecoder()
    device = jbd.JBDDevice(stats=decoder.stats)
    for frame in decoder.feed(bytes(bad)):
        device.update(frame)
    assert device.info is None and device.cells is None and device.model is None
    for frame in decoder.feed(JBD_BASIC):  # and the line recovers at the next frame
        device.update(frame)
    assert device.info == jbd.parse_basic_info(JBD_BASIC[4:-3])


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 12), st.integers(1, 255))
def test_a_corrupted_daly_frame_never_leaks(pos: int, xor: int) -> None:
    bad = bytearray(DALY[0])
    bad[pos] ^= xor
    frames = daly.DalyDecoder().feed(bytes(bad) + DALY[1])
    assert frames[-1] == daly.Frame(0x91, DALY[1][4:12])
    assert daly.Frame(0x90, bytes(bad[4:12])) not in frames


def test_decode_cli_reads_bms_captures() -> None:
    for driver, capture in (("jbd", JBD_BASIC * 2), ("daly", b"".join(DALY))):
        result = subprocess.run([*edgeagent_command(), "decode", "--driver", driver],
                                input=capture, capture_output=True, timeout=60)
        assert result.returncode == 0, result.stderr
        lines = [json.loads(line) for line in result.stdout.splitlines()]
        assert lines and all(line["driver"] == driver for line in lines)
        assert lines[-1]["battery_soc_pct"] in (72.0, 49.5)
        assert b"invalid" in result.stderr


def test_daly_a_sleeping_bmss_zero_frames_never_reach_the_state_for_any_frame_id() -> None:
    # Regression: only 0x90 was checked, so a sleeping BMS's zeros put -40 degC (0x92), an empty
    # pack (0x93) and an unknown cell count (0x94) into a state built from real frames.
    decoder = daly.DalyDecoder()
    device = daly.DalyDevice(stats=decoder.stats)
    for frame in decoder.feed(b"".join(DALY)):
        device.update(frame)
    before = device.reading(0.0)
    zeros = b"".join(daly.encode(daly.BMS_ADDRESS, i, bytes(8)) for i in daly.READS)
    for frame in decoder.feed(zeros):
        r = device.update(frame)
    assert decoder.stats.frames_ok == 5 + len(daly.READS)  # the checksums are valid
    assert device.stats.implausible == len(daly.READS)
    assert r == before
    assert (r.battery_temp_c, r.remaining_ah, device.cell_count) == (24.0, 14.85, 3)
