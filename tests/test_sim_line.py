"""The emulated serial line: a pty behind a stable name that survives unplug and replug, and
faults that are seeded, counted and only ever damage what they say they damage."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import serial

from edgeagent.power import jbd
from edgeagent.power.vedirect import VEDirectDecoder, encode_block
from edgeagent.sim.bms import JBDEmulator
from edgeagent.sim.device import DeviceState
from edgeagent.sim.line import EmulatedLine, Faults, Injected, apply_faults, async_hex_frame
from test_reader import wait_until

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")

BLOCK = encode_block([("PID", "0xA389"), ("V", "12900"), ("I", "-3500"), ("T", "-7"),
                      ("SOC", "410"), ("BMV", "SmartShunt 500A/50mV")])


def test_the_stable_name_follows_the_device_across_unplug_and_replug(tmp_path: Path) -> None:
    line = EmulatedLine(tmp_path / "serial" / "by-id" / "usb-emulated-if00-port0")
    try:
        with serial.Serial(line.port, timeout=1) as host:
            line.write(b"hello")
            assert host.read(5) == b"hello"
            host.write(b"ask")
            got = b""

            def asked() -> bool:
                nonlocal got
                got += line.read()
                return got == b"ask"

            wait_until(asked, timeout=2)
            line.unplug()  # the cable is pulled under an open port
            assert not os.path.lexists(line.port)
            with pytest.raises(serial.SerialException):
                host.read(1)
        line.write(b"lost")  # nobody is there: the bytes are lost, nothing raises
        assert line.dropped_bytes == 4 and line.read() == b""
        line.replug()
        assert line.plugs == 2 and os.path.exists(line.port)
        with serial.Serial(line.port, timeout=1) as host:
            line.write(b"again")
            assert host.read(5) == b"again"
    finally:
        line.close()
    assert not os.path.lexists(line.port)


def test_a_line_without_a_chosen_name_gets_a_private_one_and_removes_it() -> None:
    line = EmulatedLine()
    assert os.path.exists(line.port)
    line.close()
    assert not os.path.exists(os.path.dirname(line.port))


def test_bytes_nobody_reads_are_lost_without_blocking_the_device() -> None:
    line = EmulatedLine()
    try:
        started = time.monotonic()
        for _ in range(100):
            line.write(b"x" * 1000)
        assert time.monotonic() - started < 1.0
        assert 0 < line.dropped_bytes < 100_000  # the pty buffered some, the rest was lost
    finally:
        line.close()


def damage(seed: int, faults: Faults | None = None) -> tuple[list[bytes], Injected]:
    f = faults or Faults(noise=0.5, corrupt=0.5, seed=seed)
    injected = Injected()
    return [apply_faults(BLOCK, f, injected) for _ in range(200)], injected


def test_faults_are_seeded_counted_and_damage_only_what_they_say() -> None:
    sent, injected = damage(1)
    assert damage(1) == (sent, injected)  # the same seed: the same damage, every run
    assert damage(2)[0] != sent
    assert injected.frames == 200 and 50 < injected.noise < 150 and 50 < injected.corrupted < 150
    prefixed = changed = 0
    for wire in sent:
        prefix, tail = wire[:-len(BLOCK)], wire[-len(BLOCK):]
        assert len(prefix) <= 12  # noise only comes before the frame
        diff = sum(a != b for a, b in zip(tail, BLOCK, strict=True))
        assert diff <= 1  # corruption changes one byte, never more
        prefixed += bool(prefix)
        changed += diff
    assert (prefixed, changed) == (injected.noise, injected.corrupted)


def test_a_silent_line_sends_nothing() -> None:
    sent, injected = damage(0, Faults(noise=1.0, corrupt=1.0, silent=True))
    assert set(sent) == {b""} and injected.silenced == 200


def test_the_hex_frame_builder_matches_a_real_async_frame() -> None:
    """From a SmartSolar 150/100 log (emonhub #160): register 0xEDDB, value 0x0D1A."""
    assert async_hex_frame(0xEDDB, bytes.fromhex("1A0D")) == b":ADBED001A0D5C\n"


def test_an_async_hex_frame_anywhere_but_before_the_checksum_byte_leaves_the_block_intact(
) -> None:
    """Every place the line may put one, checked with our decoder: the block still passes and
    the HEX frame is counted valid."""
    frame = async_hex_frame(0xEDD5, bytes.fromhex("0C05"))
    for at in (i for i in range(len(BLOCK) + 1) if i != len(BLOCK) - 1):
        decoder = VEDirectDecoder()
        blocks = decoder.feed(BLOCK + BLOCK[:at] + frame + BLOCK[at:] + BLOCK)
        assert len(blocks) == 3 and decoder.stats.hex_frames == 1, at
        assert decoder.stats.invalid == 0, at


def test_injected_hex_frames_are_valid_and_never_cost_a_block() -> None:
    sent, injected = damage(5, Faults(hex_frames=1.0, seed=5))
    decoder = VEDirectDecoder()
    blocks = decoder.feed(BLOCK + b"".join(sent))
    assert injected.hex_frames == 200 and decoder.stats.hex_frames == 200
    assert len(blocks) == 201 and decoder.stats.invalid == 0  # and the leading BLOCK


def test_a_failing_state_never_kills_the_device_thread(tmp_path: Path) -> None:
    broken = True

    def state() -> DeviceState:
        if broken:
            raise RuntimeError("site model bug")
        return DeviceState(battery_voltage_v=13.2, battery_current_a=1.0, soc_pct=80.0)

    with JBDEmulator(state, port=tmp_path / "bms") as bms, \
            serial.Serial(bms.port, 9600, timeout=0.3) as host:
        host.write(jbd.encode_request(jbd.BASIC_INFO))
        assert host.read(1) == b""
        wait_until(lambda: bms.errors == 1, timeout=2)
        assert "site model bug" in (bms.last_error or "")
        broken = False
        host.write(jbd.encode_request(jbd.BASIC_INFO))
        frames = jbd.JBDDecoder().feed(host.read(34))
        assert jbd.parse_basic_info(frames[0].data).soc_pct == 80.0
