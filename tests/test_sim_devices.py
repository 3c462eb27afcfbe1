"""Every serial driver against an emulated device on a pseudo-terminal: what the emulated site
measures is what the agent reads, whatever the line does to the bytes on the way.

The devices are edgeagent.sim's emulators (VE.Direct MPPT and SmartShunt, JBD, Daly, EPEver,
Renogy), each behind a stable name like /dev/serial/by-id/..., read by the agent's real readers
(SerialReader, PolledReader over open_poller) and by `edgeagent read`. Faults are seeded and
every wait is a bounded poll, so the tests are deterministic and fast.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import serial

from conftest import edgeagent_command
from edgeagent.power import daly, jbd
from edgeagent.power.modbus import MODBUS_DRIVERS, ModbusCharger
from edgeagent.power.poller import PolledReader, Poller
from edgeagent.power.read import open_poller
from edgeagent.power.reader import SerialReader
from edgeagent.power.reading import Reading
from edgeagent.sim.battery import Battery
from edgeagent.sim.bms import DalyEmulator, JBDEmulator
from edgeagent.sim.device import DeviceEmulator, DeviceState
from edgeagent.sim.emulator import SiteEmulator, VEDirectEmulator
from edgeagent.sim.line import Faults
from edgeagent.sim.modbus import EPEverEmulator, RenogyEmulator, crc16, rtu_frame
from edgeagent.sim.solar import SolarTrace, hour_of_year
from test_reader import wait_until

# An emulator or reader thread that dies with a traceback fails the test that caused it.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")

# Values every protocol can carry exactly: 0.1 V, 0.1 A, whole % and whole degrees.
CHARGING = DeviceState(battery_voltage_v=13.4, battery_current_a=4.2, soc_pct=76.0, temp_c=21.0,
                       pv_power_w=71.0, pv_voltage_v=18.8, load_current_a=1.2, cells=4,
                       capacity_ah=50.0, cycles=33, yield_today_kwh=0.41, yield_total_kwh=123.45,
                       max_power_today_w=95.0)
DISCHARGING = DeviceState(battery_voltage_v=12.9, battery_current_a=-3.5, soc_pct=41.0,
                          temp_c=-7.0, load_current_a=3.5, cells=4, capacity_ah=50.0, cycles=34,
                          yield_today_kwh=0.2, yield_total_kwh=123.65, max_power_today_w=60.0)
STATES = {"charging": CHARGING, "discharging": DISCHARGING}

KINDS = ("vedirect-mppt", "vedirect-shunt", "jbd", "daly", "epever", "renogy")
EMULATORS: dict[str, Callable[..., DeviceEmulator]] = {
    "vedirect-mppt": lambda state, **kw: VEDirectEmulator(state, product="mppt", **kw),
    "vedirect-shunt": lambda state, **kw: VEDirectEmulator(state, product="shunt", **kw),
    "jbd": JBDEmulator, "daly": DalyEmulator, "epever": EPEverEmulator, "renogy": RenogyEmulator,
}
# EPEver has no "bulk": an MPPT in bulk reports boost, which the driver calls absorption.
EPEVER_STAGE = {"off": "off", "bulk": "absorption", "absorption": "absorption", "float": "float"}


def driver_of(kind: str) -> str:
    return kind.split("-")[0]


def expected(kind: str, s: DeviceState) -> dict[str, Any]:
    """The reading each driver must produce from the emulated state: its view of the battery,
    plus whatever else that device measures."""
    battery = {"battery_voltage_v": s.battery_voltage_v, "battery_current_a": s.battery_current_a,
               "battery_soc_pct": s.soc_pct, "battery_temp_c": s.temp_c}
    charger = {"pv_voltage_v": s.pv_voltage_v, "pv_power_w": s.pv_power_w,
               "load_current_a": s.load_current_a, "yield_today_kwh": s.yield_today_kwh}
    if kind == "vedirect-mppt":  # no SOC or temperature on an MPPT
        return {"battery_voltage_v": s.battery_voltage_v,
                "battery_current_a": s.battery_current_a, **charger,
                "yield_total_kwh": s.yield_total_kwh, "charger_state": s.stage,
                "product": "SmartSolar MPPT 75/15", "device_id": "HQ2242EMU01"}
    if kind == "vedirect-shunt":
        return {**battery, "cycles": s.cycles, "product": "SmartShunt 500A/50mV"}
    if kind == "jbd":
        return {**battery, "cell_voltages_v": [s.cell_voltage_v] * s.cells,
                "capacity_ah": s.capacity_ah, "remaining_ah": s.remaining_ah,
                "cycles": s.cycles, "product": "JBD-SP04S020A-L4S"}
    if kind == "daly":  # cell voltages: see test_a_daly_with_four_cells_reports_all_four
        return {**battery, "remaining_ah": s.remaining_ah, "cycles": s.cycles}
    if kind == "epever":
        return {**battery, **charger, "yield_total_kwh": s.yield_total_kwh,
                "charger_state": EPEVER_STAGE[s.stage], "error_code": 0}
    return {**battery, **charger, "cycles": s.cycles, "charger_state": s.stage,
            "max_power_today_w": s.max_power_today_w, "load_on": True, "error_code": 0,
            "product": "RNG-CTRL-RVR40", "device_id": str(0x0134_5678)}


def assert_reads(reading: Reading | dict[str, Any] | None, want: dict[str, Any],
                 *, partial: bool = False) -> None:
    """Every wanted value was read exactly; with ``partial``, a value may be absent (unknown,
    e.g. before a SmartShunt's second block), but never different."""
    assert reading is not None
    got = reading if isinstance(reading, dict) else reading.to_dict()
    for key, value in want.items():
        if partial and key not in got:
            continue
        if isinstance(value, (str, bool)):
            assert got.get(key) == value, f"{key}: read {got.get(key)!r}, emulated {value!r}"
        else:
            assert got.get(key) == pytest.approx(value, abs=1e-9), (
                f"{key}: read {got.get(key)!r}, emulated {value!r}")


class Site:
    """The emulated physical state, turned like a knob by the test."""

    def __init__(self, state: DeviceState) -> None:
        self.state = state

    def __call__(self) -> DeviceState:
        return self.state


class Recording:
    """A poller that keeps every reading it hands to the PolledReader."""

    def __init__(self, inner: Poller, seen: list[Reading]) -> None:
        self.inner = inner
        self.seen = seen

    def poll(self) -> Reading:
        reading = self.inner.poll()
        self.seen.append(reading)
        return reading

    def close(self) -> None:
        self.inner.close()


Reader = SerialReader | PolledReader


@contextmanager
def device(kind: str, state: Callable[[], DeviceState], tmp_path: Path,
           faults: Faults | None = None) -> Iterator[DeviceEmulator]:
    by_id = tmp_path / "by-id"
    by_id.mkdir(exist_ok=True)
    emu = EMULATORS[kind](state, port=by_id / f"usb-emulated-{kind}-if00-port0", faults=faults)
    with emu:
        yield emu
    assert emu.errors == 0, emu.last_error


@contextmanager
def reader(kind: str, port: str, seen: list[Reading] | None = None,
           modbus_retries: int | None = None) -> Iterator[Reader]:
    """The agent's reader for ``kind``, recording every reading that reaches its state.
    ``modbus_retries`` replaces open_poller's Modbus client by one with that many retries."""
    record = [] if seen is None else seen
    driver = driver_of(kind)
    r: Reader

    def open_device() -> Poller:
        if modbus_retries is not None and driver in MODBUS_DRIVERS:
            return ModbusCharger(driver, port, timeout_s=0.1, retries=modbus_retries)
        return open_poller(driver, port, timeout_s=0.2)

    if driver == "vedirect":
        r = SerialReader(port, on_reading=record.append, min_backoff_s=0.02, max_backoff_s=0.1)
    else:
        r = PolledReader(lambda: Recording(open_device(), record), name=port, interval_s=0.02,
                         max_backoff_s=0.1)
    r.start()
    try:
        yield r
    finally:
        r.stop()


def fresh(r: Reader, within_s: float = 0.3) -> bool:
    valid = r.last_valid_monotonic
    return valid is not None and time.monotonic() - valid < within_s


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("kind", KINDS)
def test_every_driver_reads_back_the_emulated_values(kind: str, state: str,
                                                     tmp_path: Path) -> None:
    """Scaled and signed: a discharging battery's current is negative, -7 degC is below zero."""
    with device(kind, Site(STATES[state]), tmp_path) as emu, reader(kind, emu.port) as r:
        wait_until(lambda: r.latest is not None and r.counters()["valid"] >= 2, timeout=5)
        assert_reads(r.latest, expected(kind, STATES[state]))


def test_the_reading_follows_the_site_as_it_changes(tmp_path: Path) -> None:
    site = Site(CHARGING)
    with device("jbd", site, tmp_path) as emu, reader("jbd", emu.port) as r:
        wait_until(lambda: r.latest is not None and r.latest.battery_current_a == 4.2)
        site.state = DISCHARGING
        wait_until(lambda: r.latest is not None and r.latest.battery_current_a == -3.5)
        assert_reads(r.latest, expected("jbd", DISCHARGING))


@pytest.mark.parametrize("kind", [
    "vedirect-mppt", "vedirect-shunt", "jbd", "daly", "epever", "renogy"])
def test_edgeagent_read_prints_the_emulated_values(kind: str, tmp_path: Path) -> None:
    # A SmartShunt's state is two blocks (live, history): read prints once the live one is in.
    with device(kind, Site(DISCHARGING), tmp_path) as emu:
        result = subprocess.run([*edgeagent_command(), "read", "--driver", driver_of(kind),
                                 "--port", emu.port, "--count", "1", "--json"],
                                capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert_reads(json.loads(lines[0]), expected(kind, DISCHARGING))


IDENTITY = ("device_id", "product")


@pytest.mark.parametrize("kind", KINDS)
def test_damaged_frames_never_reach_the_state_and_valid_ones_still_do(kind: str,
                                                                      tmp_path: Path) -> None:
    """Garbage before frames, one changed byte in a frame, and (VE.Direct) valid async HEX
    frames anywhere in the blocks: every value the reader takes is exactly the device's.

    A polled device sends several frames per reading and a lost answer costs a timeout, so it
    gets fewer faults per frame. The identity is left out: see
    test_a_renogy_whose_identity_answer_was_lost_is_identified_later."""
    streaming = driver_of(kind) == "vedirect"
    faults = (Faults(noise=0.2, corrupt=0.2, hex_frames=0.3, seed=7) if streaming
              else Faults(noise=0.05, corrupt=0.05, seed=7))
    want = {k: v for k, v in expected(kind, DISCHARGING).items() if k not in IDENTITY}
    seen: list[Reading] = []
    # No Modbus retries, so that damaged answers show as failed polls, not only as delays.
    with device(kind, Site(DISCHARGING), tmp_path, faults) as emu, \
            reader(kind, emu.port, seen, modbus_retries=0) as r:
        wait_until(lambda: len(seen) >= 8 and r.counters()["invalid"] > 0, timeout=5)
        injected = emu.line.injected
    assert injected.noise > 0 and injected.corrupted > 0
    for reading in seen:
        assert_reads(reading, want, partial=True)
    assert_reads(seen[-1], want)
    if isinstance(r, SerialReader):
        assert injected.hex_frames > 0 and r.stats.hex_frames > 0


@pytest.mark.parametrize("kind", ["vedirect-shunt", "jbd", "daly", "epever", "renogy"])
def test_a_silent_device_goes_stale_and_recovers_when_it_talks_again(kind: str,
                                                                     tmp_path: Path) -> None:
    with device(kind, Site(CHARGING), tmp_path) as emu, reader(kind, emu.port) as r:
        wait_until(lambda: fresh(r))
        emu.line.faults = Faults(silent=True)
        wait_until(lambda: not fresh(r), timeout=5)  # stale: no fresh reading comes
        assert emu.line.injected.silenced > 0
        emu.line.faults = Faults()
        wait_until(lambda: fresh(r), timeout=5)
        assert_reads(r.latest, expected(kind, CHARGING))


@pytest.mark.parametrize("kind", ["vedirect-shunt", "jbd"])
def test_an_unplugged_device_is_reopened_after_replug_without_restarting_the_reader(
        kind: str, tmp_path: Path) -> None:
    site = Site(CHARGING)
    with device(kind, site, tmp_path) as emu, reader(kind, emu.port) as r:
        wait_until(lambda: fresh(r))
        emu.line.unplug()
        assert not Path(emu.port).exists()
        wait_until(lambda: r.reopens >= 2 and not fresh(r))
        site.state = DISCHARGING  # what changed while it was away must show after the replug
        emu.line.replug()
        wait_until(lambda: fresh(r, 0.1) and r.latest is not None
                   and r.latest.battery_current_a == -3.5, timeout=5)
        assert_reads(r.latest, expected(kind, DISCHARGING))
        assert r.counters()["reopens"] >= 2
        if isinstance(r, SerialReader):
            assert r.opens >= 2 and r.running


def test_an_unplugged_modbus_charger_comes_back_after_replug(tmp_path: Path) -> None:
    """The vanished port is closed and reopened with backoff (counted as reopens), not polled
    through pymodbus's silent reconnects; after the replug the charger is read afresh."""
    site = Site(CHARGING)
    with device("renogy", site, tmp_path) as emu, reader("renogy", emu.port) as r:
        wait_until(lambda: fresh(r))
        emu.line.unplug()
        wait_until(lambda: r.counters()["reopens"] >= 2 and not fresh(r))
        site.state = DISCHARGING
        emu.line.replug()
        wait_until(lambda: fresh(r, 0.1) and r.latest is not None
                   and r.latest.battery_current_a == -3.5, timeout=5)
        assert_reads(r.latest, expected("renogy", DISCHARGING))


def test_a_sleeping_dalys_zero_frames_never_reach_the_state(tmp_path: Path) -> None:
    """All-zero data with a valid checksum would be 0 V, -3000 A, -40 degC, an empty pack."""
    with device("daly", Site(DISCHARGING), tmp_path) as emu, reader("daly", emu.port) as r:
        wait_until(lambda: r.latest is not None)
        assert isinstance(emu, DalyEmulator)
        emu.asleep = True
        asked = len(emu.requests)
        wait_until(lambda: len(emu.requests) > asked + 10)
        assert_reads(r.latest, expected("daly", DISCHARGING))


def test_a_sleeping_daly_goes_stale(tmp_path: Path) -> None:
    with device("daly", Site(DISCHARGING), tmp_path) as emu, reader("daly", emu.port) as r:
        wait_until(lambda: fresh(r))
        assert isinstance(emu, DalyEmulator)
        emu.asleep = True
        wait_until(lambda: not fresh(r), timeout=3)


class RoverLosingItsFirstIdentityAnswers(RenogyEmulator):
    """A Rover whose answers to the identity registers are lost while it is first asked (the
    driver's try and its two retries), as on a noisy line; later ones get through."""

    lost = 0

    def handle(self, data: bytes) -> list[bytes]:
        asked = len(self.requests)
        answers = super().handle(data)
        if self.lost < 3 and self.requests[asked:] and self.requests[-1][2:4] == b"\x00\x0c":
            self.lost += 1
            return []
        return answers


def test_a_renogy_whose_identity_answer_was_lost_is_identified_later(tmp_path: Path) -> None:
    rover = RoverLosingItsFirstIdentityAnswers(Site(CHARGING), port=tmp_path / "rover")
    with rover, reader("renogy", rover.port) as r:
        wait_until(lambda: rover.lost == 3 and r.counters()["valid"] >= 3, timeout=4)
        assert r.latest is not None and r.latest.device_id == str(0x0134_5678)


def test_a_daly_with_four_cells_reports_all_four(tmp_path: Path) -> None:
    with device("daly", Site(CHARGING), tmp_path) as emu, reader("daly", emu.port) as r:
        wait_until(lambda: r.counters()["valid"] >= 3)
        assert_reads(r.latest, {"cell_voltages_v": [3.35] * 4})


def ask(port: str, request: bytes, size: int, timeout_s: float = 1.0) -> bytes:
    """One raw request/response exchange, as a host on the bus."""
    with serial.Serial(port, 9600, timeout=timeout_s) as s:
        s.write(request)
        return bytes(s.read(size))


def test_the_rtu_framing_matches_published_frames(tmp_path: Path) -> None:
    """Frames from mvysny/renogy-klient's tests and the EPEver manual (research note §2)."""
    assert rtu_frame(bytes.fromhex("01 03 00 0A 00 01")) == bytes.fromhex("01 03 00 0A 00 01 A4 08")
    assert rtu_frame(bytes.fromhex("01 03 90 00 00 0F")) == bytes.fromhex("01 03 90 00 00 0F 28 CE")
    assert crc16(bytes.fromhex("01 03 02 18 1E 32 4C")) == 0
    rover = RenogyEmulator(Site(CHARGING), model="    MT4830      ",
                           port=tmp_path / "rover")
    with rover:
        model = ask(rover.port, bytes.fromhex("01 03 00 0C 00 08 84 0F"), 21)
        assert model == bytes.fromhex("01 03 10 20 20 20 20 4D 54 34 38 33 30 20 20 20 20 20 20"
                                      " EE 98")
        undefined = ask(rover.port, rtu_frame(bytes.fromhex("01 03 02 00 00 01")), 5)
        assert undefined == bytes.fromhex("01 83 02 C0 F1")  # illegal data address
        wrong_function = ask(rover.port, rtu_frame(bytes.fromhex("01 04 01 00 00 01")), 5)
        assert wrong_function[:3] == bytes.fromhex("01 84 01")  # illegal function
        asked = len(rover.requests)
        assert ask(rover.port, rtu_frame(bytes.fromhex("02 03 01 00 00 01")), 1, 0.3) == b""
        assert len(rover.requests) == asked  # another unit's request: silence


def test_the_renogy_identity_registers_name_the_device(tmp_path: Path) -> None:
    with device("renogy", Site(CHARGING), tmp_path) as emu:
        charger = ModbusCharger("renogy", emu.port, timeout_s=0.5)
        try:
            reading = charger.poll()
        finally:
            charger.close()
    assert reading.product == "RNG-CTRL-RVR40" and reading.device_id == str(0x0134_5678)
    assert isinstance(emu, RenogyEmulator)
    assert {req[1] for req in emu.requests} == {3}  # read-only: holding registers only


def test_the_bms_answers_are_the_real_frames_for_the_same_values(tmp_path: Path) -> None:
    """The Daly capture of dbus-serialbattery #53 (11.4 V, 0 A, 49.5 %) comes back byte for
    byte; JBD answers carry the documented checksum and end byte."""
    state = Site(DeviceState(battery_voltage_v=11.4, battery_current_a=0.0, soc_pct=49.5))
    with DalyEmulator(state, port=tmp_path / "daly") as bms:
        assert ask(bms.port, daly.encode_request(daly.SOC), 13) == bytes.fromhex(
            "A5 01 90 08 00 72 00 00 75 30 01 EF 45")
    with JBDEmulator(state, port=tmp_path / "jbd") as bms:
        answer = ask(bms.port, jbd.encode_request(jbd.CELL_VOLTAGES), 15)
        assert jbd.JBDDecoder().feed(answer) == [jbd.Frame(jbd.CELL_VOLTAGES, 0,
                                                           bytes.fromhex("0B22") * 4)]
        mos_off = bytes.fromhex("DD 5A E1 02 00 02 FF 1B 77")  # a write: never answered
        assert ask(bms.port, mos_off, 1, 0.3) == b""


def test_a_bms_and_a_modbus_charger_on_the_sites_battery_agree_with_its_smartshunt(
        tmp_path: Path) -> None:
    """SiteEmulator.device_state drives other emulators from the same solar trace and battery
    as its VE.Direct devices: three drivers, one battery."""
    site = SiteEmulator(SolarTrace.bundled(), Battery(100, 70),
                        start_hour=hour_of_year(6, 21) + 12, speed=1.0, panel_wp=40,
                        load_w=lambda: 4.0, shunt_port=tmp_path / "shunt")
    site.advance(600)
    site.start()
    try:
        with device("jbd", site.device_state, tmp_path) as bms, \
                device("epever", site.device_state, tmp_path) as charger, \
                reader("vedirect", site.shunt.port) as shunt_r, \
                reader("jbd", bms.port) as bms_r, reader("epever", charger.port) as charger_r:
            readers = (shunt_r, bms_r, charger_r)
            wait_until(lambda: all(r.latest is not None and r.latest.battery_soc_pct is not None
                                   and r.latest.battery_voltage_v is not None
                                   for r in readers), timeout=5)
            s = site.device_state()
            for r in readers:
                assert r.latest is not None
                assert r.latest.battery_soc_pct == pytest.approx(s.soc_pct, abs=0.5)
                assert r.latest.battery_voltage_v == pytest.approx(s.battery_voltage_v, abs=0.01)
                assert r.latest.battery_current_a == pytest.approx(s.battery_current_a, abs=0.01)
                assert r.latest.battery_temp_c == pytest.approx(s.temp_c, abs=0.5)
            assert s.battery_current_a > 0 and s.pv_power_w > 0  # a sunny noon: charging
    finally:
        site.stop()
    assert site.errors == 0


def test_the_sites_vedirect_goes_through_a_fault_injecting_line(tmp_path: Path) -> None:
    site = SiteEmulator(SolarTrace.bundled(), Battery(100, 70),
                        start_hour=hour_of_year(6, 21) + 12, speed=1.0, panel_wp=40,
                        load_w=lambda: 4.0, mppt_port=tmp_path / "mppt")
    site.advance(600)
    site.mppt.faults = Faults(noise=0.2, corrupt=0.2, hex_frames=0.5, seed=3)
    seen: list[Reading] = []
    site.start()
    try:
        with reader("vedirect", site.mppt.port, seen) as r:
            wait_until(lambda: len(seen) >= 10 and r.counters()["invalid"] > 0, timeout=5)
            assert isinstance(r, SerialReader) and r.stats.hex_frames > 0
        assert all(x.pv_power_w == pytest.approx(site.pv_w, abs=1) for x in seen)
        assert all(x.product == "SmartSolar MPPT 75/15" for x in seen)
    finally:
        site.stop()
    assert not Path(site.mppt.port).exists()  # stop pulls the cable
