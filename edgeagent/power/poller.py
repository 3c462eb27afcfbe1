"""Polled devices (BMSes, Modbus chargers): ask, wait for the answer, and never raise.

``BmsClient`` speaks the JBD and Daly request/response protocols over pyserial; the Modbus
chargers use ``ModbusCharger``. ``PolledReader`` runs any of them in a thread at a fixed
interval, with the same ``latest`` / ``last_valid_monotonic`` face as the streaming reader, so
the agent treats every device alike.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Protocol

import serial

from edgeagent.power import daly, jbd
from edgeagent.power.reading import Reading

ANSWER_TIMEOUT_S = 0.5


class PollError(Exception):
    """The device did not answer every request with a valid frame."""


class Poller(Protocol):
    def poll(self) -> Reading: ...

    def close(self) -> None: ...


class BmsClient:
    """One JBD or Daly BMS on a serial port; ``poll()`` asks for each register once."""

    def __init__(self, driver: str, port: str, baud: int | None = None) -> None:
        if driver not in ("jbd", "daly"):
            raise ValueError(f"{driver!r} is not a polled BMS driver (jbd, daly)")
        self.driver = driver
        self.port = serial.Serial(port, baud or 9600, timeout=0.05, exclusive=True)
        self.jbd_decoder = jbd.JBDDecoder()
        self.jbd_device = jbd.JBDDevice(device_id=port, stats=self.jbd_decoder.stats)
        self.daly_decoder = daly.DalyDecoder()
        self.daly_device = daly.DalyDevice(device_id=port, stats=self.daly_decoder.stats)
        self._asked_model = False
        if driver == "jbd":
            self.requests = [jbd.encode_request(r) for r in (jbd.BASIC_INFO, jbd.CELL_VOLTAGES)]
        else:
            self.requests = [daly.encode_request(i) for i in (
                daly.SOC, daly.TEMPERATURE_RANGE, daly.MOSFET, daly.STATUS, daly.CELL_VOLTAGES)]

    def close(self) -> None:
        self.port.close()

    @property
    def valid_frames(self) -> int:
        """Checksum-valid frames received, plausible or not: the device speaks this protocol
        even when its values are refused (a sleeping Daly's zeros)."""
        decoder = self.jbd_decoder if self.driver == "jbd" else self.daly_decoder
        return decoder.stats.frames_ok

    def reading(self) -> Reading:
        """The state merged so far, without asking."""
        device = self.jbd_device if self.driver == "jbd" else self.daly_device
        return device.reading(time.time())

    def _ask(self, request: bytes, frames: int = 1) -> Reading:
        """Send one request and merge the ``frames`` valid frames that answer it (a Daly sends
        its cell voltages as one frame per three cells).

        Raises PollError when they do not all come in time, or when one is implausible: a
        sleeping Daly answers every request with zeros, and counting that as an answer would
        keep its last real values looking fresh (dbus-serialbattery #193).
        """
        self.port.reset_input_buffer()  # a late answer to an earlier request must not count
        self.port.write(request)
        stats = self.jbd_decoder.stats if self.driver == "jbd" else self.daly_decoder.stats
        implausible = stats.implausible
        got = 0
        reading: Reading | None = None
        until = time.monotonic() + ANSWER_TIMEOUT_S
        while got < frames and time.monotonic() < until:
            data = self.port.read(max(self.port.in_waiting, 1))
            now = time.time()
            if self.driver == "jbd":
                for jframe in self.jbd_decoder.feed(data):
                    reading, got = self.jbd_device.update(jframe, ts=now), got + 1
            else:
                for dframe in self.daly_decoder.feed(data):
                    reading, got = self.daly_device.update(dframe, ts=now), got + 1
        if stats.implausible != implausible:
            raise PollError(f"{self.port.port}: implausible answer to {request.hex(' ')} "
                            "(a sleeping BMS answers with zeros)")
        if reading is None or got < frames:
            raise PollError(f"{self.port.port}: {got} of {frames} valid answer(s) to "
                            f"{request.hex(' ')}")
        return reading

    def poll(self) -> Reading:
        if self.driver == "jbd" and self.jbd_device.model is None and not self._asked_model:
            # The model string names the product; once per connection, and optional: some
            # firmware does not answer it.
            self._asked_model = True
            with contextlib.suppress(PollError):
                self._ask(jbd.encode_request(jbd.MODEL))
        reading = None
        for request in self.requests:
            frames = 1
            if self.driver == "daly" and request[2] == daly.CELL_VOLTAGES:
                frames = -(-(self.daly_device.cell_count or 1) // 3)  # asked after STATUS
            reading = self._ask(request, frames)
        assert reading is not None
        return reading


class PolledReader:
    """Polls a device every ``interval_s`` in a thread; errors become counters and a reopen."""

    def __init__(self, open_device: Callable[[], Poller], *, name: str,
                 interval_s: float = 2.0, max_backoff_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.open_device = open_device
        self.name = name
        self.interval_s = interval_s
        self.max_backoff_s = max_backoff_s
        self.clock = clock
        self.latest: Reading | None = None
        self.last_valid_monotonic: float | None = None
        self.polls_ok = 0
        self.polls_failed = 0
        self.reopens = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"poll {name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    @property
    def running(self) -> bool:
        """The polling thread is alive (it only ends through ``stop``)."""
        return self._thread.is_alive()

    def counters(self) -> dict[str, int]:
        return {"valid": self.polls_ok, "invalid": self.polls_failed, "reopens": self.reopens}

    def _run(self) -> None:
        backoff = self.interval_s
        while not self._stop.is_set():
            device: Poller | None = None
            try:
                device = self.open_device()
                while not self._stop.is_set():
                    try:
                        reading = device.poll()
                    except PollError as exc:  # a missed answer: count it, keep the port
                        self.polls_failed += 1
                        self.last_error = str(exc)
                    else:
                        self.latest = reading
                        self.last_valid_monotonic = self.clock()
                        self.polls_ok += 1
                        backoff = self.interval_s
                    self._stop.wait(self.interval_s)
            except Exception as exc:  # the port vanished or cannot be opened: reopen later
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.reopens += 1
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
            finally:
                if device is not None:
                    try:
                        device.close()
                    except Exception:  # closing a vanished port may fail too
                        self.last_error = self.last_error or "close failed"
