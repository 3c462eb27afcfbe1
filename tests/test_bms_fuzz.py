"""Property-based, beyond test_bms.py's random bytes and single damaged frames: whole streams of
valid JBD and Daly frames split anywhere and damaged anywhere, and devices fed checksum-valid
frames with any content (random bytes almost never carry a valid checksum, so the content
checks behind it were barely reached)."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from edgeagent.power import daly, jbd

FAST = settings(max_examples=200, deadline=None)

JBD_FRAMES = st.one_of(
    st.builds(lambda d: jbd.Frame(jbd.BASIC_INFO, 0, d), st.binary(min_size=23, max_size=96)),
    st.builds(lambda cells: jbd.Frame(jbd.CELL_VOLTAGES, 0, struct.pack(f">{len(cells)}H", *cells)),
              st.lists(st.integers(2500, 4300), min_size=1, max_size=32)),
    st.builds(lambda d: jbd.Frame(jbd.MODEL, 0, d), st.binary(min_size=1, max_size=64)),
)
DALY_FRAMES = st.builds(daly.Frame, st.sampled_from(daly.READS), st.binary(min_size=8, max_size=8))


def jbd_bytes(frame: jbd.Frame) -> bytes:
    return jbd.encode_response(frame.register, frame.data)


def daly_bytes(frame: daly.Frame) -> bytes:
    return daly.encode(daly.BMS_ADDRESS, frame.data_id, frame.data)


def jbd_self_verifying(data: bytes) -> list[jbd.Frame]:
    """Independently: every ``DD reg 00 len ... ck 77`` in ``data`` whose checksum verifies."""
    found = []
    for i in range(len(data) - 6):
        end = i + 7 + data[i + 3]
        framed = data[i] == 0xDD and data[i + 2] == 0 and end <= len(data) and data[end - 1] == 0x77
        check = int.from_bytes(data[end - 3:end - 1], "big")
        if framed and (sum(data[i + 2:end - 3]) + check) % 65536 == 0:
            found.append(jbd.Frame(data[i + 1], 0, data[i + 4:end - 3]))
    return found


def daly_self_verifying(data: bytes) -> list[daly.Frame]:
    return [daly.Frame(data[i + 2], data[i + 4:i + 12]) for i in range(len(data) - 12)
            if data[i:i + 2] == b"\xa5\x01" and data[i + 3] == 8
            and sum(data[i:i + 12]) & 0xFF == data[i + 12]]


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def damage(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    buf = bytearray(data)
    for kind, pos, value in edits:
        pos %= len(buf) + 1
        if kind == 0 and pos < len(buf):
            buf[pos] ^= value or 1
        elif kind == 1:
            buf.insert(pos, value)
        else:
            del buf[pos:pos + 1 + value % 4]
    return bytes(buf)


EDITS = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 4000), st.integers(0, 255)),
                 min_size=1, max_size=3)
CUTS = st.lists(st.integers(0, 4000), max_size=8)


@FAST
@given(st.lists(JBD_FRAMES, min_size=1, max_size=6), CUTS, st.booleans(), EDITS)
def test_jbd_streams_split_anywhere_and_damaged_anywhere(
        frames: list[jbd.Frame], cuts: list[int], damaged: bool,
        edits: list[tuple[int, int, int]]) -> None:
    clean = b"".join(jbd_bytes(f) for f in frames)
    data = damage(clean, edits) if damaged else clean
    decoder = jbd.JBDDecoder()
    device = jbd.JBDDevice(stats=decoder.stats)
    got = [f for piece in pieces(data, cuts) for f in decoder.feed(piece)]
    for frame in got:
        device.update(frame)  # never raises, whatever the content
    if not damaged:
        assert got == frames
    allowed = frames + jbd_self_verifying(data)
    assert all(f in allowed for f in got)


@FAST
@given(st.lists(DALY_FRAMES, min_size=1, max_size=8), CUTS, st.booleans(), EDITS)
def test_daly_streams_split_anywhere_and_damaged_anywhere(
        frames: list[daly.Frame], cuts: list[int], damaged: bool,
        edits: list[tuple[int, int, int]]) -> None:
    clean = b"".join(daly_bytes(f) for f in frames)
    data = damage(clean, edits) if damaged else clean
    decoder = daly.DalyDecoder()
    device = daly.DalyDevice(stats=decoder.stats)
    got = [f for piece in pieces(data, cuts) for f in decoder.feed(piece)]
    for frame in got:
        device.update(frame)
    if not damaged:
        assert got == frames
    allowed = frames + daly_self_verifying(data)
    assert all(f in allowed for f in got)


GOOD_BASIC = jbd.Frame(jbd.BASIC_INFO, 0, bytes.fromhex(
    "17 00 00 00 02 D0 03 E8 00 00 20 78 00 00 00 00 00 00 10 48 03 0F 02 0B 76 0B 82"))


@FAST
@given(JBD_FRAMES)
def test_jbd_content_either_parses_or_leaves_the_state_alone(frame: jbd.Frame) -> None:
    device = jbd.JBDDevice()
    device.update(GOOD_BASIC)
    before = (device.info, device.cells, device.model)
    device.update(frame)
    after = (device.info, device.cells, device.model)
    if device.stats.implausible:
        assert after == before
    elif frame.register == jbd.BASIC_INFO:
        info = jbd.parse_basic_info(frame.data)
        assert device.info == info and 0 <= info.soc_pct <= 100 and 1 <= info.cells <= 32
    elif frame.register == jbd.CELL_VOLTAGES:
        assert device.cells is not None and all(0 < v < 5 for v in device.cells)
    else:
        assert device.model is not None and device.model.isprintable()


@FAST
@given(DALY_FRAMES)
def test_daly_content_never_raises_and_zeros_never_reach_the_state(frame: daly.Frame) -> None:
    device = daly.DalyDevice()
    r = device.update(frame)
    if not any(frame.data):
        assert device.stats.implausible == 1 and r == daly.DalyDevice().reading(0.0)
    if r.battery_voltage_v is not None:  # only from a plausible 0x90 frame
        assert 8.0 <= r.battery_voltage_v <= 100.0 and r.battery_current_a is not None
        assert abs(r.battery_current_a) < 1000 and 0 <= (r.battery_soc_pct or 0) <= 100
