"""``edgeagent read``: read a real device once or a few times and print normalized readings.

What a site operator runs first to check that the charge controller talks. Streaming devices
(VE.Direct) are listened to; polled ones (JBD, Daly, EPEver, Renogy) are asked, with read-only
requests only. Exit 0 after ``--count`` readings; exit 1 with the reason when no valid reading
came within ``--timeout``.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import TextIO

import serial

from edgeagent.power.modbus import MODBUS_DRIVERS, ModbusCharger
from edgeagent.power.poller import BmsClient, Poller, PollError
from edgeagent.power.reading import Reading
from edgeagent.power.vedirect import VEDirectDecoder, VEDirectDevice

DRIVERS = ("vedirect", "jbd", "daly", *MODBUS_DRIVERS)


@dataclass(frozen=True)
class ReadOptions:
    driver: str
    port: str
    baud: int | None = None
    unit: int = 1
    count: int = 1
    timeout_s: float = 5.0
    interval_s: float = 1.0


def _vedirect(opts: ReadOptions, deadline: float) -> Generator[Reading, None, None]:
    decoder, device = VEDirectDecoder(), VEDirectDevice(device_id=opts.port)
    with serial.Serial(opts.port, opts.baud or 19200, timeout=0.2, exclusive=True) as port:
        while time.monotonic() < deadline:
            for block in decoder.feed(port.read(max(port.in_waiting, 1))):
                reading = device.update(block, ts=time.time())
                if device.complete:  # a BMV's state is two blocks: print once both are in
                    yield reading


def open_poller(driver: str, port: str, baud: int | None = None, unit: int = 1,
                timeout_s: float = 1.0) -> Poller:
    """The client for a polled driver (BMS or Modbus charger); opening may raise OSError."""
    if driver in MODBUS_DRIVERS:
        return ModbusCharger(driver, port, unit=unit, baud=baud, timeout_s=timeout_s)
    return BmsClient(driver, port, baud)


def _polled(opts: ReadOptions, deadline: float) -> Generator[Reading, None, None]:
    device = open_poller(opts.driver, opts.port, opts.baud, opts.unit, min(1.0, opts.timeout_s))
    try:
        while time.monotonic() < deadline:
            try:
                yield device.poll()
            except PollError:
                time.sleep(0.2)
                continue
            time.sleep(opts.interval_s)
    finally:
        device.close()


def readings(opts: ReadOptions) -> Generator[Reading, None, None]:
    """Readings until the timeout; close the generator to release the port early."""
    deadline = time.monotonic() + opts.timeout_s
    if opts.driver == "vedirect":
        return _vedirect(opts, deadline)
    return _polled(opts, deadline)


def run_read(opts: ReadOptions, as_json: bool, out: TextIO, err: TextIO) -> int:
    if opts.driver not in DRIVERS:
        print(f"edgeagent read: unknown driver {opts.driver!r}; known: {', '.join(DRIVERS)}",
              file=err)
        return 2
    got = 0
    try:
        for reading in readings(opts):
            if as_json:
                print(reading.to_json(), file=out, flush=True)
            else:
                print("  ".join(f"{k}={v}" for k, v in reading.to_dict().items()), file=out,
                      flush=True)
            got += 1
            if got >= opts.count:
                return 0
    except (serial.SerialException, OSError) as exc:
        print(f"edgeagent read: {opts.port}: {exc}", file=err)
        return 1
    print(f"edgeagent read: {got} of {opts.count} reading(s) from {opts.port} within "
          f"{opts.timeout_s:g} s (driver {opts.driver}); check wiring, baud and unit", file=err)
    return 1
