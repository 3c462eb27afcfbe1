"""A serial reader for a streaming device (VE.Direct): a thread that never raises into the agent.

Bad bytes become decoder counters; an unplugged or vanished port is closed, counted and
reopened with exponential backoff (the by-id symlink is re-resolved on every open), and the
decoder hunts for a block end again after every reopen. The agent asks for ``latest`` and
``last_valid_monotonic`` and decides itself whether that is stale: research/serial-protocols.md
§5 warns against serving an old value as if it were current.

It is VE.Direct's reader today; a later streaming protocol only needs another decoder/device
pair here. Polled protocols (Modbus, BMS) write requests and live elsewhere.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

import serial

from edgeagent.power.reading import Reading
from edgeagent.power.vedirect import DecoderStats, VEDirectDecoder, VEDirectDevice

log = logging.getLogger(__name__)


class SerialReader:
    """Reads one port in a daemon thread and keeps the device's latest merged reading.

    ``port`` should be a stable name (``/dev/serial/by-id/...``). ``exclusive`` takes a lock on
    the port so a second agent or a probe cannot interleave reads; it is a parameter because
    some drivers refuse the lock. ``clock`` stamps ``last_valid_monotonic`` (staleness);
    ``wall_clock`` stamps the readings' ``ts``. Backoff between reopen attempts doubles from
    ``min_backoff_s`` to ``max_backoff_s`` and drops back once data flows again.

    ``coalesce_s``: after the first byte of a burst, wait this long and take everything that
    arrived, so a block costs one wake-up instead of one per USB packet (a USB serial adapter
    hands over ~32 bytes every 16 ms; a ~190-byte block takes ~100 ms at 19200 baud). Readings
    come at most this much later, which nothing needs sooner from a 1 Hz device; it cut the
    reader's CPU per block about 3x (benchmarks/vedirect_read.py).
    """

    def __init__(self, port: str, *, baud: int | None = None,
                 on_reading: Callable[[Reading], None] | None = None,
                 min_backoff_s: float = 0.5, max_backoff_s: float = 30.0,
                 read_timeout_s: float = 0.5, exclusive: bool = True,
                 device_id: str | None = None, coalesce_s: float = 0.12,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.port = port
        self.name = port
        self.baud = baud or 19200  # VE.Direct is 19200 8N1 on every product
        self.on_reading = on_reading
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.read_timeout_s = read_timeout_s
        self.exclusive = exclusive
        self.coalesce_s = coalesce_s
        self.clock = clock
        self.wall_clock = wall_clock
        self.decoder = VEDirectDecoder()
        # A SmartShunt sends no SER#: the port's stable name identifies it then.
        self.device = VEDirectDevice(device_id=device_id or port)
        self.latest: Reading | None = None
        self.last_valid_monotonic: float | None = None
        self.connected = False
        self.opens = 0  # successful opens; > 1 means it came back after a failure
        self.reopens = 0  # failures (open or read) after which the port is closed and retried
        self.callback_errors = 0
        self.last_error: str | None = None
        self._failing = False  # log the first failure of an outage, not every retry
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"serial {port}", daemon=True)

    @property
    def stats(self) -> DecoderStats:
        """The decoder's line-health counters (valid and bad blocks, HEX frames, corruption)."""
        return self.decoder.stats

    @property
    def running(self) -> bool:
        """The reading thread is alive (it only ends through ``stop``)."""
        return self._thread.is_alive()

    def counters(self) -> dict[str, int]:
        """Health counters for telemetry, with the same ``valid``/``invalid``/``reopens`` keys as
        the polled readers."""
        s = self.stats
        return {"valid": s.valid, "invalid": s.invalid, "reopens": self.reopens,
                "hex_frames": s.hex_frames, "corrupt": s.corrupt,
                "callback_errors": self.callback_errors}

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask the thread to end and join it (it notices within ``read_timeout_s``)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s)

    def stale(self, now_monotonic: float, max_age_s: float) -> bool:
        """True when no valid block arrived in the last ``max_age_s`` (or ever)."""
        valid = self.last_valid_monotonic
        return valid is None or now_monotonic - valid > max_age_s

    def _open(self) -> serial.Serial:
        return serial.Serial(self.port, self.baud, timeout=self.read_timeout_s,
                             exclusive=self.exclusive)

    def _run(self) -> None:
        backoff = self.min_backoff_s
        while not self._stop.is_set():
            try:
                port = self._open()
            except Exception as exc:  # SerialException/OSError mostly; nothing may end the thread
                self._failed("open", exc)
            else:
                self.opens += 1
                self.connected = True
                self.decoder.resync()  # the first bytes after opening are mid-block
                try:
                    while not self._stop.is_set():
                        data = port.read(max(port.in_waiting, 1))
                        if data and self.coalesce_s > 0 and not self._stop.wait(self.coalesce_s):
                            data += port.read(port.in_waiting)
                        if data:
                            backoff = self.min_backoff_s  # the line works again
                            self._failing = False
                            self._consume(data)
                except Exception as exc:  # unplugged: SerialException (EIO, "no data") / OSError
                    self._failed("read", exc)
                finally:
                    self.connected = False
                    with contextlib.suppress(Exception):
                        port.close()
            if self._stop.wait(backoff):
                break
            backoff = min(backoff * 2, self.max_backoff_s)

    def _failed(self, what: str, exc: Exception) -> None:
        self.reopens += 1
        self.last_error = f"{what}: {exc}"
        expected = isinstance(exc, (serial.SerialException, OSError, ValueError))
        if not self._failing or not expected:
            log.warning("serial %s: %s failed, retrying with backoff: %s", self.port, what, exc,
                        exc_info=not expected)
        self._failing = True

    def _consume(self, data: bytes) -> None:
        for block in self.decoder.feed(data):
            reading = self.device.update(block, ts=self.wall_clock())
            self.latest = reading
            self.last_valid_monotonic = self.clock()
            if self.on_reading is not None:
                try:
                    self.on_reading(reading)
                except Exception:  # the caller's bug must not stop the port being read
                    self.callback_errors += 1
                    log.exception("serial %s: on_reading callback failed", self.port)
