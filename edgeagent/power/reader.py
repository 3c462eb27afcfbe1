"""A serial reader for a streaming device (VE.Direct): a thread that never raises into the agent.

Bad bytes become decoder counters; an unplugged or vanished port is closed, counted and
reopened with exponential backoff (the by-id symlink is re-resolved on every open). The agent
asks for ``latest`` and ``last_valid_monotonic`` and decides itself whether that is stale:
research/serial-protocols.md §5 warns against serving an old value as if it were current.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import serial

from edgeagent.power.reading import Reading
from edgeagent.power.vedirect import DecoderStats, VEDirectDecoder, VEDirectDevice


class SerialReader:
    def __init__(self, port: str, *, baud: int = 19200,
                 on_reading: Callable[[Reading], None] | None = None,
                 min_backoff_s: float = 0.5, max_backoff_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.port = port
        self.baud = baud
        self.on_reading = on_reading
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.clock = clock
        self.wall_clock = wall_clock
        self.decoder = VEDirectDecoder()
        self.device = VEDirectDevice(device_id=port)
        self.latest: Reading | None = None
        self.last_valid_monotonic: float | None = None
        self.reopens = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"serial {port}", daemon=True)

    @property
    def stats(self) -> DecoderStats:
        return self.decoder.stats

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def stale(self, now_monotonic: float, max_age_s: float) -> bool:
        valid = self.last_valid_monotonic
        return valid is None or now_monotonic - valid > max_age_s

    def _open(self) -> serial.Serial:
        # exclusive: a second agent or a probe must not interleave reads on our port
        return serial.Serial(self.port, self.baud, timeout=0.5, exclusive=True)

    def _run(self) -> None:
        backoff = self.min_backoff_s
        while not self._stop.is_set():
            try:
                with self._open() as port:
                    backoff = self.min_backoff_s
                    self.decoder.resync()  # the first block after opening is partial
                    while not self._stop.is_set():
                        data = port.read(max(port.in_waiting, 1))
                        if data:
                            self._consume(data)
            except (serial.SerialException, OSError, ValueError) as exc:
                self.last_error = str(exc)
                self.reopens += 1
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)

    def _consume(self, data: bytes) -> None:
        for block in self.decoder.feed(data):
            reading = self.device.update(block, ts=self.wall_clock())
            self.latest = reading
            self.last_valid_monotonic = self.clock()
            if self.on_reading is not None:
                self.on_reading(reading)
