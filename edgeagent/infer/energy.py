"""Joules per inference: measured from the board's power sensor, or estimated from its profile.

Measured follows research/quantized-inference.md section 5.3: sample board power at ~10 Hz in
a separate thread, integrate with the trapezoid rule over the timestamps actually sampled,
measure the idle baseline with the process alive, and report net energy ``(E - P_idle * T) / N``
(what the model costs) next to gross ``E / N`` (what the battery sees). Estimated is CPU-seconds
per inference times one busy core's watts from the board profile. Every figure says which it is.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

from edgeagent.boards import BoardProfile
from edgeagent.power.board_power import (
    BoardPower,
    read_hwmon,
    read_jetson_nano_iio,
    read_pi5_pmic,
)

Meter = Callable[[], BoardPower | None]
SAMPLE_PERIOD_S = 0.1  # 10 Hz: Zeus's rate; a Pi 5 PMIC read alone takes ~23 ms


@dataclass(frozen=True)
class Joules:
    """Energy per inference and how it is known."""

    per_inference_j: float
    basis: Literal["measured", "estimated"]
    detail: str
    gross_j: float | None = None  # measured only: including the idle board's share


def find_meter(root: Path = Path("/")) -> tuple[Meter, str] | None:
    """The board's power sensor, if it has one: hwmon INA, Jetson Nano IIO, or the Pi 5 PMIC."""
    readers: list[tuple[Meter, str]] = [(partial(read_hwmon, root), "hwmon"),
                                        (partial(read_jetson_nano_iio, root), "ina3221-iio")]
    for read, name in readers:
        if read() is not None:
            return read, name
    if root == Path("/") and read_pi5_pmic() is not None:
        return read_pi5_pmic, "pmic"
    return None


def estimate_basis(board: BoardProfile) -> str:
    """How an estimate is made, for labels: the board profile's marginal watts per core."""
    return (f"CPU-s x {board.watts_per_core:.3f} W per busy core (board profile "
            f"{board.name})")


def estimated(cpu_s_per_inference: float, board: BoardProfile) -> Joules:
    return Joules(cpu_s_per_inference * board.watts_per_core, "estimated",
                  f"per inference: {estimate_basis(board)}")


class EnergyWindow:
    """Integrates board power over a window from a sampling thread (``with`` starts/stops it)."""

    def __init__(self, meter: Meter, period_s: float = SAMPLE_PERIOD_S) -> None:
        self._meter = meter
        self._period_s = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="power-sampler", daemon=True)
        self._first: float | None = None
        self._last: tuple[float, float] | None = None
        self.joules = 0.0
        self.samples = 0

    def __enter__(self) -> EnergyWindow:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def seconds(self) -> float:
        """The span actually integrated: first to last sample."""
        return 0.0 if self._first is None or self._last is None else self._last[0] - self._first

    def _sample(self) -> None:
        """Sample until stopped, and once more after: the window ends when the work ends."""
        while True:
            stopping = self._stop.is_set()
            reading = self._meter()
            now = time.monotonic()
            if reading is not None:
                if self._last is None:
                    self._first = now
                else:
                    t0, p0 = self._last
                    self.joules += (now - t0) * (p0 + reading.power_w) / 2  # trapezoid
                self._last = (now, reading.power_w)
                self.samples += 1
            if stopping:
                return
            self._stop.wait(self._period_s)

    @property
    def mean_w(self) -> float | None:
        return self.joules / self.seconds if self.seconds > 0 else None


def measure(meter: Meter, source: str, work: Callable[[], int], idle_s: float,
            period_s: float = SAMPLE_PERIOD_S) -> Joules | None:
    """Idle baseline for ``idle_s``, then ``work()`` (returns how many inferences it ran) under
    the meter; None when the sensor gave too few samples to integrate."""
    with EnergyWindow(meter, period_s) as idle:
        time.sleep(idle_s)
    with EnergyWindow(meter, period_s) as busy:
        n = work()
    idle_w = idle.mean_w
    if idle_w is None or busy.seconds <= 0 or n <= 0:
        return None
    net = (busy.joules - idle_w * busy.seconds) / n
    return Joules(net, "measured",
                  f"{source}: {busy.samples} samples over {busy.seconds:.1f} s, idle "
                  f"{idle_w:.3f} W subtracted", gross_j=busy.joules / n)
