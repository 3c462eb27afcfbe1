"""``edgeagent read``: read a real device once or a few times and print normalized readings.

What a site operator runs first to check that the charge controller talks. Streaming devices
(VE.Direct) are listened to; polled ones (JBD, Daly, EPEver, Renogy) are asked, with read-only
requests only. Exit 0 after ``--count`` readings; exit 1 with the reason when no valid reading
came within ``--timeout``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TextIO

import serial

from edgeagent.power import daly, jbd
from edgeagent.power.modbus import MODBUS_DRIVERS, ModbusCharger, ModbusReadError
from edgeagent.power.reading import Reading
from edgeagent.power.vedirect import VEDirectDecoder, VEDirectDevice

DRIVERS = ("vedirect", "jbd", "daly", *MODBUS_DRIVERS)
DEFAULT_BAUD = {"vedirect": 19200, "jbd": 9600, "daly": 9600}


@dataclass(frozen=True)
class ReadOptions:
    driver: str
    port: str
    baud: int | None = None
    unit: int = 1
    count: int = 1
    timeout_s: float = 5.0
    interval_s: float = 1.0


def _vedirect(opts: ReadOptions, deadline: float) -> Iterator[Reading]:
    decoder, device = VEDirectDecoder(), VEDirectDevice(device_id=opts.port)
    with serial.Serial(opts.port, opts.baud or 19200, timeout=0.2, exclusive=True) as port:
        while time.monotonic() < deadline:
            for block in decoder.feed(port.read(max(port.in_waiting, 1))):
                yield device.update(block, ts=time.time())


def _polled_bms(opts: ReadOptions, deadline: float) -> Iterator[Reading]:
    """Ask for each register in turn; one reading per full round of answers."""
    if opts.driver == "jbd":
        requests = [jbd.encode_request(r) for r in (jbd.BASIC_INFO, jbd.CELL_VOLTAGES)]
        jdecoder = jbd.JBDDecoder()
        jdevice = jbd.JBDDevice(device_id=opts.port, stats=jdecoder.stats)
    else:
        requests = [daly.encode_request(i) for i in (daly.SOC, daly.TEMPERATURE_RANGE,
                                                     daly.MOSFET, daly.STATUS,
                                                     daly.CELL_VOLTAGES)]
        ddecoder = daly.DalyDecoder()
        ddevice = daly.DalyDevice(device_id=opts.port, stats=ddecoder.stats)
    with serial.Serial(opts.port, opts.baud or 9600, timeout=0.2, exclusive=True) as port:
        while time.monotonic() < deadline:
            answered = 0
            reading: Reading | None = None
            for request in requests:
                port.reset_input_buffer()  # a stale answer must not pass for this one
                port.write(request)
                until = min(time.monotonic() + 0.5, deadline)
                got = False
                while not got and time.monotonic() < until:
                    data = port.read(max(port.in_waiting, 1))
                    if opts.driver == "jbd":
                        for jframe in jdecoder.feed(data):
                            reading, got = jdevice.update(jframe, ts=time.time()), True
                    else:
                        for dframe in ddecoder.feed(data):
                            reading, got = ddevice.update(dframe, ts=time.time()), True
                answered += got
            if reading is not None and answered == len(requests):
                yield reading
                time.sleep(opts.interval_s)


def _modbus(opts: ReadOptions, deadline: float) -> Iterator[Reading]:
    charger = ModbusCharger(opts.driver, opts.port, unit=opts.unit, baud=opts.baud,
                            timeout_s=min(1.0, opts.timeout_s))
    try:
        while time.monotonic() < deadline:
            try:
                yield charger.read()
            except ModbusReadError:
                time.sleep(0.2)
                continue
            time.sleep(opts.interval_s)
    finally:
        charger.close()


def readings(opts: ReadOptions) -> Iterator[Reading]:
    deadline = time.monotonic() + opts.timeout_s
    if opts.driver == "vedirect":
        return _vedirect(opts, deadline)
    if opts.driver in ("jbd", "daly"):
        return _polled_bms(opts, deadline)
    return _modbus(opts, deadline)


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
