"""`edgeagent probe`: which supported device answers on which serial port, asked read-only.

A temporary /dev tree holds serial/by-id and by-path links and raw tty names that point to
pseudo-terminals: a VE.Direct charger, a JBD and a Daly BMS (and a sleeping Daly), a Renogy and
an EPEver controller, and a silent port. A pty ignores the baud rate, so every device also hears
the requests meant for the other protocols and, like a real device, ignores what it does not
understand.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import subprocess
import threading
import time
import tty
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import serial

from conftest import edgeagent_command
from edgeagent import tomlfile
from edgeagent.cli import main
from edgeagent.config import PowerDevice
from edgeagent.power import daly, jbd
from edgeagent.power.modbus import MODBUS_DRIVERS
from edgeagent.power.probe import (
    Candidate,
    candidate_ports,
    describe_open_error,
    resolve_ports,
    run_probe,
    summary,
)
from edgeagent.power.reading import Reading
from edgeagent.power.vedirect import encode_block
from rtu_responder import RtuResponder, crc16
from test_bms import DALY, JBD_BASIC

FAST = {"listen_s": 0.5, "timeout_s": 0.2}  # a silent port then costs about 2.5 s


class PtyDevice:
    """A device on a pseudo-terminal: answers the requests it knows, ignores the rest, talks
    unasked if given ``talk`` (VE.Direct, ten times faster than a real device), and records
    every byte it receives."""

    def __init__(self, answers: dict[bytes, bytes] | None = None,
                 talk: bytes | None = None) -> None:
        self.answers = answers or {}
        self.talk = talk
        self.received = bytearray()
        self.master, self._slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self._slave)
        self.port = os.ttyname(self._slave)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> PtyDevice:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        os.close(self.master)
        os.close(self._slave)

    def _serve(self) -> None:
        os.set_blocking(self.master, False)
        pending = b""
        next_talk = 0.0
        while not self._stop.wait(0.005):
            if self.talk is not None and time.monotonic() >= next_talk:
                next_talk = time.monotonic() + 0.1
                with contextlib.suppress(BlockingIOError):  # nobody listens: the bytes are lost
                    os.write(self.master, self.talk)
            try:
                data = os.read(self.master, 256)
            except BlockingIOError:
                continue
            self.received += data
            pending += data
            for request, answer in self.answers.items():
                at = pending.find(request)
                if at >= 0:
                    pending = pending[at + len(request):]
                    os.write(self.master, answer)


VEDIRECT_BLOCK = encode_block([("PID", "0xA053"), ("FW", "159"), ("SER#", "HQ2211ABCDE"),
                               ("V", "12950"), ("I", "850"), ("VPV", "17900"), ("PPV", "14"),
                               ("CS", "3")])


def jbd_answers() -> dict[bytes, bytes]:
    cells = jbd.encode_response(jbd.CELL_VOLTAGES, bytes.fromhex("0CE4 0CE5 0CE6 0CE3"))
    return {jbd.encode_request(jbd.MODEL): jbd.encode_response(jbd.MODEL, b"SP04S020-L4S-100A"),
            jbd.encode_request(jbd.BASIC_INFO): JBD_BASIC,
            jbd.encode_request(jbd.CELL_VOLTAGES): cells}


def daly_answers() -> dict[bytes, bytes]:
    by_id = {frame[2]: frame for frame in DALY}
    answers = {daly.encode_request(i): by_id[i] for i in (0x90, 0x92, 0x93, 0x94)}
    answers[daly.encode_request(daly.CELL_VOLTAGES)] = daly.encode(
        1, daly.CELL_VOLTAGES, bytes.fromhex("01 0F01 0EE1 0EF0 00"))
    return answers


def modbus_tables(driver: str, values: dict[int, int]) -> dict[int, dict[int, int]]:
    """What RtuResponder serves for ``driver``: every register the driver reads, 0 unless
    given."""
    function, blocks = MODBUS_DRIVERS[driver][:2]
    table = {a: 0 for start, count in blocks.items() for a in range(start, start + count)}
    return {function: table | values}


RENOGY_MODEL = b"RNG-CTRL-RVR20".ljust(16)
RENOGY = modbus_tables("renogy", {
    0x0100: 76, 0x0101: 132, 0x0109: 71,  # SoC 76 %, battery 13.2 V, PV 71 W
    **{0x000C + i: int.from_bytes(RENOGY_MODEL[2 * i:2 * i + 2], "big") for i in range(8)},
    0x0018: 0x00BC, 0x0019: 0x614E})  # serial number 12345678, high word first
EPEVER = modbus_tables("epever", {0x3102: 3936, 0x311A: 87, 0x331A: 1305})  # PV 39.36 W


@dataclass
class Site:
    dev: Path
    ports: dict[str, str]  # device -> the stable name probe must report it under
    devices: dict[str, PtyDevice | RtuResponder]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    dev = tmp_path_factory.mktemp("dev")
    (dev / "serial" / "by-id").mkdir(parents=True)
    (dev / "serial" / "by-path").mkdir()
    with contextlib.ExitStack() as stack:
        devices: dict[str, PtyDevice | RtuResponder] = {
            "vedirect": stack.enter_context(PtyDevice(talk=VEDIRECT_BLOCK)),
            "jbd": stack.enter_context(PtyDevice(jbd_answers())),
            "daly": stack.enter_context(PtyDevice(daly_answers())),
            "renogy": stack.enter_context(RtuResponder(RENOGY)),
            "epever": stack.enter_context(RtuResponder(EPEVER)),
            "sleeping": stack.enter_context(PtyDevice({  # a Daly BMS asleep: zeros only
                daly.encode_request(i): daly.encode(daly.BMS_ADDRESS, i, bytes(8))
                for i in daly.READS})),
            "silent": stack.enter_context(PtyDevice()),
        }
        links = {  # name in the tree -> device; probe must report each device by this name
            "serial/by-id/usb-VictronEnergy_BV_VE_Direct_cable_VE4XJ2K1-if00-port0": "vedirect",
            "serial/by-id/usb-FTDI_FT232R_USB_UART_A10KZ3P1-if00-port0": "jbd",
            "serial/by-id/usb-Prolific_Technology_Inc._USB-Serial_12AB-if00-port0": "renogy",
            "serial/by-id/usb-1a86_USB_Serial-if00-port0": "silent",
            "serial/by-id/usb-Silicon_Labs_CP2102_USB_to_UART_0001-if00-port0": "sleeping",
            "serial/by-path/platform-xhci-hcd.0-usb-0:1.4:1.0-port0": "daly",  # a CH340: no id
            "ttyUSB3": "epever",  # no link at all
        }
        aliases = {  # more names for ttys that a by-id link above covers
            "serial/by-path/platform-xhci-hcd.0-usb-0:1.3:1.0-port0": "jbd",
            "ttyACM0": "vedirect",
        }
        for name, device in (links | aliases).items():
            (dev / name).symlink_to(devices[device].port)
        (dev / "serial/by-id/usb-FTDI_unplugged-if00-port0").symlink_to(dev / "ttyUSB9")
        stable = {device: str(dev / name) for name, device in links.items()}
        yield Site(dev, stable, devices)


def probe_json(site: Site, ports: list[str] | None = None) -> tuple[int, list[dict[str, Any]],
                                                                     str]:
    out, err = io.StringIO(), io.StringIO()
    code = run_probe(ports or [], True, out, err, dev=site.dev, **FAST)
    return code, [json.loads(line) for line in out.getvalue().splitlines()], err.getvalue()


def read_only_requests(stream: bytes) -> list[bytes]:
    """Split what a device heard into requests; fails on any byte that is not part of a
    read-only request (JBD and Daly reads, Modbus function 03 or 04)."""
    reads = ({jbd.encode_request(r) for r in jbd.REGISTERS}
             | {daly.encode_request(i) for i in daly.READS})
    requests = []
    while stream:
        request = next((r for r in reads if stream.startswith(r)), stream[:8])
        if request not in reads:
            assert len(request) == 8 and request[1] in (3, 4) and crc16(request) == 0, (
                f"not a read-only request: {stream.hex(' ')}")
        requests.append(request)
        stream = stream[len(request):]
    return requests


def test_candidates_are_listed_once_each_by_their_most_stable_name(site: Site) -> None:
    tty_of = {name: device.port for name, device in site.devices.items()}
    assert candidate_ports(site.dev) == [
        Candidate(site.ports["silent"], tty_of["silent"]),
        Candidate(site.ports["jbd"], tty_of["jbd"]),
        Candidate(site.ports["renogy"], tty_of["renogy"]),
        Candidate(site.ports["sleeping"], tty_of["sleeping"]),
        Candidate(site.ports["vedirect"], tty_of["vedirect"]),
        Candidate(site.ports["daly"], tty_of["daly"]),  # by-path: no by-id link for it
        Candidate(site.ports["epever"], tty_of["epever"]),  # raw: no link at all
    ]  # the unplugged adapter's dangling link is left out


def test_probe_finds_each_device_with_its_driver_baud_and_identity(site: Site) -> None:
    code, results, err = probe_json(site)
    assert code == 0, err
    by_port = {r["port"]: r for r in results}
    assert len(results) == 7 and set(by_port) == set(site.ports.values())
    found = {name: by_port[port] for name, port in site.ports.items()}
    assert {name: (r["driver"], r.get("baud"), r.get("unit")) for name, r in found.items()} == {
        "vedirect": ("vedirect", 19200, None), "jbd": ("jbd", 9600, None),
        "daly": ("daly", 9600, None), "renogy": ("renogy", 9600, 1),
        "epever": ("epever", 115200, 1), "sleeping": ("daly", 9600, None),
        "silent": (None, None, None)}
    ve = found["vedirect"]
    assert (ve["device_id"], ve["product"], ve["firmware"]) == (
        "HQ2211ABCDE", "SmartSolar MPPT 75/15", "159")
    assert ve["reading"]["battery_voltage_v"] == 12.95 and ve["reading"]["pv_power_w"] == 14
    assert found["jbd"]["product"] == "SP04S020-L4S-100A" and found["jbd"]["firmware"] == "1.0"
    assert found["jbd"]["device_id"] is None  # the BMS has no serial number: the port names it
    assert found["jbd"]["reading"]["battery_soc_pct"] == 72.0
    assert found["daly"]["reading"]["battery_voltage_v"] == 11.4
    assert (found["renogy"]["device_id"], found["renogy"]["product"]) == (
        "12345678", "RNG-CTRL-RVR20")
    assert found["renogy"]["reading"]["pv_power_w"] == 71.0
    assert found["epever"]["reading"]["pv_power_w"] == 39.36
    asleep = Reading.model_validate(found["sleeping"]["reading"])  # found, but no values
    assert summary(asleep) == "answers, but no plausible values (a sleeping BMS?)"
    assert found["silent"] == {"port": site.ports["silent"],
                               "tty": site.devices["silent"].port, "driver": None}
    assert "6 device(s) on 7 port(s)" in err


def test_probe_only_listens_to_a_talker_and_only_reads_from_the_others(site: Site) -> None:
    probe_json(site, [site.ports["vedirect"], site.ports["silent"]])
    vedirect, silent = site.devices["vedirect"], site.devices["silent"]
    assert isinstance(vedirect, PtyDevice) and isinstance(silent, PtyDevice)
    assert vedirect.received == b""  # a VE.Direct device is never written to
    heard = read_only_requests(bytes(silent.received))  # the silent port heard every protocol
    assert jbd.encode_request(jbd.BASIC_INFO) in heard
    assert daly.encode_request(daly.SOC) in heard
    assert {r[1] for r in heard if len(r) == 8} == {3, 4}  # Renogy and EPEver reads


def test_a_named_port_is_probed_alone_under_its_stable_name(site: Site) -> None:
    code, results, _ = probe_json(site, [site.devices["daly"].port, site.ports["daly"]])
    assert code == 0
    assert [(r["port"], r["driver"]) for r in results] == [(site.ports["daly"], "daly")]


def test_a_silent_port_finds_nothing_and_exits_1(site: Site) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = run_probe([site.ports["silent"]], False, out, err, dev=site.dev, **FAST)
    assert code == 1
    assert "nothing answered (vedirect, jbd, daly, renogy, epever)" in out.getvalue()
    assert "[[power.devices]]" not in out.getvalue()
    assert "0 device(s) on 1 port(s)" in err.getvalue()


def test_a_busy_port_is_reported_with_the_reason_and_left_alone(site: Site) -> None:
    daly_device = site.devices["daly"]
    assert isinstance(daly_device, PtyDevice)
    before = len(daly_device.received)
    with serial.Serial(daly_device.port, exclusive=True):  # the running service holds it
        code, results, _ = probe_json(site, [site.ports["daly"]])
    assert code == 1
    assert results[0]["driver"] is None and results[0]["error"].startswith("busy")
    assert len(daly_device.received) == before


def test_permission_denied_points_to_the_dialout_group() -> None:
    exc = serial.SerialException(errno.EACCES, "could not open port /dev/ttyUSB0: "
                                 "[Errno 13] Permission denied: '/dev/ttyUSB0'")
    assert "dialout" in describe_open_error(exc)


def test_no_serial_port_at_all_exits_1(tmp_path: Path) -> None:
    err = io.StringIO()
    assert run_probe([], False, io.StringIO(), err, dev=tmp_path, **FAST) == 1
    assert "no serial ports" in err.getvalue()


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe", "--timeout", "0"]) == 2
    assert main(["probe", "--port", "/dev/does-not-exist"]) == 2
    captured = capsys.readouterr()
    assert "/dev/does-not-exist: no such port" in captured.err and captured.out == ""


def test_cli_prints_a_table_and_the_config_to_paste(site: Site) -> None:
    ports = [site.ports["vedirect"], site.ports["renogy"], site.ports["jbd"]]
    result = subprocess.run([*edgeagent_command(), "probe", "--listen", "0.5", "--timeout",
                             "0.2", *(a for p in ports for a in ("--port", p))],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    table, _, snippet = result.stdout.partition("\n\n")
    rows = table.splitlines()
    assert rows[0].split() == ["PORT", "TTY", "DRIVER", "BAUD", "DEVICE", "READING"]
    assert rows[1].split()[:4] == [site.ports["vedirect"], site.devices["vedirect"].port,
                                   "vedirect", "19200"]
    assert "SmartSolar MPPT 75/15 s/n HQ2211ABCDE fw 159" in rows[1] and "12.95 V" in rows[1]
    assert rows[2].split()[:4] == [site.ports["renogy"], site.devices["renogy"].port,
                                   "renogy", "9600"]
    assert "13.2 V  SoC 76 %  PV 71 W" in rows[2]
    devices = [PowerDevice.model_validate(d) for d in tomlfile.loads(snippet)["power"]["devices"]]
    assert [(d.driver, d.port, d.baud, d.unit, d.serial) for d in devices] == [
        ("jbd", site.ports["jbd"], 9600, 1, None),  # the battery monitor first
        ("vedirect", site.ports["vedirect"], 19200, 1, "HQ2211ABCDE"),
        ("renogy", site.ports["renogy"], 9600, 1, "12345678")]


def test_a_pis_bluetooth_uart_is_never_probed_unless_named(tmp_path: Path) -> None:
    with PtyDevice() as bluetooth, PtyDevice() as gpio:
        (tmp_path / "serial0").symlink_to(gpio.port)
        (tmp_path / "serial1").symlink_to(bluetooth.port)  # the UART wired to the BT chip
        (tmp_path / "ttyAMA0").symlink_to(bluetooth.port)
        assert [c.port for c in candidate_ports(tmp_path)] == [str(tmp_path / "serial0")]
        assert [c.tty for c in resolve_ports([str(tmp_path / "serial1")], tmp_path)] == [
            bluetooth.port]
