"""``edgeagent probe``: find which supported device answers on which serial port.

What a site operator runs before writing ``[[power.devices]]``: it lists the serial ports under
``/dev`` by their stable names (research/serial-protocols.md §5: ``ttyUSBn`` changes after a
replug), tries every driver on each port and prints the config to paste.

Per port the drivers are tried in a safe order, each with a short, bounded wait, and the first
valid answer wins. VE.Direct comes first and is only listened to, so a Victron device (which
talks unasked) is never written to. The polled protocols follow, each asked with the read-only
requests of the existing clients: JBD and Daly at 9600, Renogy (Modbus FC03) at 9600, EPEver
(FC04) at 115200. A device ignores requests of a protocol it does not speak, so asking a Daly in
JBD first is harmless. Ports are probed in parallel, so the whole run takes about as long as one
silent port.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from edgeagent.power.modbus import MODBUS_DRIVERS, ModbusCharger
from edgeagent.power.poller import BmsClient, Poller, PollError
from edgeagent.power.read import ReadOptions, open_poller, readings
from edgeagent.power.reading import Reading

VEDIRECT_BAUD = 19200
# Every block arrives about 1 s after the previous one and the decoder skips the first block it
# sees (it may be cut), so two blocks need up to ~2.1 s.
LISTEN_S = 2.5
TIMEOUT_S = 0.5  # per Modbus request; the BMS client has its own (poller.ANSWER_TIMEOUT_S)
MODBUS_UNIT = 1
POLLED = (("jbd", 9600), ("daly", 9600),
          ("renogy", MODBUS_DRIVERS["renogy"][3]), ("epever", MODBUS_DRIVERS["epever"][3]))
DRIVERS = ("vedirect", *(driver for driver, _ in POLLED))
# Links first: their names survive a replug. serial0 is the Raspberry Pi's stable name for its
# GPIO UART, so it goes before the ttyAMA it points to.
LINK_DIRS = ("serial/by-id", "serial/by-path")
RAW_PATTERNS = ("serial0", "ttyUSB*", "ttyACM*", "ttyAMA*", "ttyTHS*")


@dataclass(frozen=True)
class Candidate:
    port: str  # the name to configure: a stable link when one exists
    tty: str  # what it points to now


@dataclass(frozen=True)
class ProbeResult:
    candidate: Candidate
    driver: str | None = None
    baud: int | None = None
    unit: int | None = None
    reading: Reading | None = None
    error: str | None = None

    @property
    def device_id(self) -> str | None:
        """The device's own serial number (VE.Direct ``SER#``, Renogy's serial register); None
        where the client fell back to naming the device after its port."""
        found = self.reading.device_id if self.reading else None
        return found if found and self.candidate.port not in found else None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"port": self.candidate.port, "tty": self.candidate.tty,
                               "driver": self.driver}
        if self.error is not None:
            out["error"] = self.error
        if self.reading is not None:
            out.update(baud=self.baud, unit=self.unit, device_id=self.device_id,
                       product=self.reading.product, firmware=self.reading.firmware,
                       reading=self.reading.to_dict())
        return out


def _natural(path: Path) -> tuple[str, int]:
    """ttyUSB2 before ttyUSB10."""
    match = re.fullmatch(r"(.*?)(\d*)", path.name)
    assert match is not None
    return match[1], int(match[2] or -1)


def candidate_ports(dev: Path = Path("/dev")) -> list[Candidate]:
    """Every serial port under ``dev`` once, by its most stable name: by-id links, then by-path
    links to ttys no by-id link covers, then raw ttys no link covers. Dangling links (an
    unplugged adapter) are left out, and so is a Raspberry Pi's ``serial1``: that UART drives
    the Bluetooth chip, which must not receive probe requests (``--port`` can still name it)."""
    found: dict[str, Candidate] = {}
    if (dev / "serial1").exists():
        found[os.path.realpath(dev / "serial1")] = Candidate("", "")  # taken: never probed
    paths = [p for d in LINK_DIRS for p in sorted((dev / d).glob("*"))]
    paths += [p for pattern in RAW_PATTERNS for p in sorted(dev.glob(pattern), key=_natural)]
    for path in paths:
        tty = os.path.realpath(path)
        if os.path.exists(tty) and tty not in found:
            found[tty] = Candidate(str(path), tty)
    return [c for c in found.values() if c.port]


def resolve_ports(ports: Sequence[str], dev: Path = Path("/dev")) -> list[Candidate]:
    """The ports the operator named, each under its stable name when a link covers it; raises
    FileNotFoundError for a port that does not exist."""
    stable = {c.tty: c for c in candidate_ports(dev)}
    found: dict[str, Candidate] = {}
    for port in ports:
        if not os.path.exists(port):
            raise FileNotFoundError(port)
        tty = os.path.realpath(port)
        found.setdefault(tty, stable.get(tty, Candidate(port, tty)))
    return list(found.values())


def describe_open_error(exc: OSError) -> str:
    """Why a port could not be used, with what to do about it."""
    if exc.errno in (errno.EACCES, errno.EPERM):
        return ("permission denied: add the user to the dialout group "
                "(sudo usermod -aG dialout $USER, then log in again)")
    if exc.errno in (errno.EAGAIN, errno.EBUSY):  # pyserial's exclusive lock, or TIOCEXCL
        return "busy: another program has it open (the edgeagent service? stop it to probe)"
    return str(exc)


def _listen_vedirect(port: str, listen_s: float) -> Reading | None:
    """The device's first complete state (a BMV's or SmartShunt's takes its live and its
    history block), as ``edgeagent read`` gets it; None when none came in time."""
    with contextlib.closing(readings(ReadOptions("vedirect", port, timeout_s=listen_s))) as found:
        return next(found, None)  # closing: the port is free for the next driver at once


def _ask(driver: str, port: str, baud: int, timeout_s: float) -> Reading:
    """One poll with the driver's own client; PollError when it got no valid frame at all."""
    device: Poller = (ModbusCharger(driver, port, unit=MODBUS_UNIT, baud=baud,
                                    timeout_s=timeout_s, retries=0)
                      if driver in MODBUS_DRIVERS else open_poller(driver, port, baud))
    try:
        return device.poll()
    except PollError:
        if isinstance(device, BmsClient) and device.valid_frames:
            return device.reading()  # it answers in this protocol, only implausibly (asleep)
        raise
    finally:
        device.close()


def probe_port(candidate: Candidate, *, listen_s: float = LISTEN_S,
               timeout_s: float = TIMEOUT_S) -> ProbeResult:
    """Try each driver on one port until one answers; never raises for a port that fails."""
    try:
        reading = _listen_vedirect(candidate.port, listen_s)
        if reading is not None:
            return ProbeResult(candidate, "vedirect", VEDIRECT_BAUD, reading=reading)
        for driver, baud in POLLED:
            try:
                reading = _ask(driver, candidate.port, baud, timeout_s)
            except PollError:
                continue
            unit = MODBUS_UNIT if driver in MODBUS_DRIVERS else None
            return ProbeResult(candidate, driver, baud, unit, reading)
    except OSError as exc:  # pyserial's SerialException is one: busy, permission, vanished
        return ProbeResult(candidate, error=describe_open_error(exc))
    return ProbeResult(candidate)


def probe(candidates: Sequence[Candidate], *, listen_s: float = LISTEN_S,
          timeout_s: float = TIMEOUT_S, progress: TextIO | None = None) -> list[ProbeResult]:
    """Probe the ports in parallel (each has its own line); results in the given order."""

    def one(candidate: Candidate) -> ProbeResult:
        result = probe_port(candidate, listen_s=listen_s, timeout_s=timeout_s)
        if progress is not None:
            progress.write(f"  {candidate.port}: {_outcome(result)}\n")
            progress.flush()
        return result

    if not candidates:
        return []
    with ThreadPoolExecutor(max_workers=len(candidates)) as pool:
        return list(pool.map(one, candidates))


def _outcome(result: ProbeResult) -> str:
    if result.error is not None:
        return result.error
    if result.driver is None:
        return f"nothing answered ({', '.join(DRIVERS)})"
    return f"{result.driver} at {result.baud}"


def summary(reading: Reading) -> str:
    """Battery voltage, state of charge and PV power, as far as the device told them."""
    parts = []
    if reading.battery_voltage_v is not None:
        parts.append(f"{reading.battery_voltage_v:g} V")
    if reading.battery_soc_pct is not None:
        parts.append(f"SoC {reading.battery_soc_pct:g} %")
    if reading.pv_power_w is not None:
        parts.append(f"PV {reading.pv_power_w:g} W")
    return "  ".join(parts) or "answers, but no plausible values (a sleeping BMS?)"


def _device(result: ProbeResult) -> str:
    reading = result.reading
    if reading is None:
        return "-"
    parts = [reading.product] if reading.product else []
    if result.device_id:
        parts.append(f"s/n {result.device_id}")
    if reading.firmware:
        parts.append(f"fw {reading.firmware}")
    return " ".join(parts) or "-"


def table(results: Sequence[ProbeResult]) -> str:
    rows = [("PORT", "TTY", "DRIVER", "BAUD", "DEVICE", "READING")]
    for r in results:
        rows.append((r.candidate.port, r.candidate.tty, r.driver or "-",
                     str(r.baud) if r.baud else "-", _device(r),
                     summary(r.reading) if r.reading else _outcome(r)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join([*(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)),
                                row[-1]]) for row in rows)


def _monitor_first(result: ProbeResult) -> bool:
    """BMSes and VE.Direct battery monitors (no PV) sort first: for battery fields the first
    fresh device in the config wins."""
    is_monitor = result.driver in ("jbd", "daly") or (
        result.driver == "vedirect" and result.reading is not None
        and result.reading.pv_power_w is None)
    return not is_monitor


def config_snippet(results: Sequence[ProbeResult]) -> str:
    """The ``[[power.devices]]`` tables for what was found (config.PowerDevice's fields)."""
    tables = []
    for r in sorted((r for r in results if r.driver), key=_monitor_first):
        lines = ["[[power.devices]]", f"driver = {json.dumps(r.driver)}",
                 f"port = {json.dumps(r.candidate.port)}", f"baud = {r.baud}"]
        if r.unit is not None:
            lines.append(f"unit = {r.unit}")
        if r.device_id is not None:  # believe only this device on this port
            lines.append(f"serial = {json.dumps(r.device_id)}")
        if Path(r.candidate.port).name.startswith(("ttyUSB", "ttyACM")):
            lines.insert(0, "# no stable link covers this port: its number may change after a "
                            "replug (add a udev SYMLINK rule)")
        tables.append("\n".join(lines))
    return "\n\n".join(tables)


def run_probe(ports: Sequence[str], as_json: bool, out: TextIO, err: TextIO, *,
              dev: Path = Path("/dev"), listen_s: float = LISTEN_S,
              timeout_s: float = TIMEOUT_S) -> int:
    """Exit 0 when a device was found, 1 when none, 2 when a named port does not exist."""
    try:
        candidates = resolve_ports(ports, dev) if ports else candidate_ports(dev)
    except FileNotFoundError as exc:
        print(f"edgeagent probe: {exc.args[0]}: no such port", file=err)
        return 2
    if not candidates:
        print(f"edgeagent probe: no serial ports under {dev} (by-id, by-path, "
              f"{', '.join(RAW_PATTERNS)}); is the adapter plugged in?", file=err)
        return 1
    print(f"edgeagent probe: {len(candidates)} port(s) in parallel, listening {listen_s:g} s "
          f"for VE.Direct, then asking {', '.join(DRIVERS[1:])}", file=err, flush=True)
    results = probe(candidates, listen_s=listen_s, timeout_s=timeout_s, progress=err)
    if as_json:
        for r in results:
            print(json.dumps(r.to_dict()), file=out)
    else:
        print(table(results), file=out)
        snippet = config_snippet(results)
        if snippet:
            print("\n# Paste into the config file (battery monitors first):\n" + snippet,
                  file=out)
    found = sum(r.driver is not None for r in results)
    print(f"edgeagent probe: {found} device(s) on {len(results)} port(s)", file=err)
    return 0 if found else 1
