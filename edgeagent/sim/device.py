"""What every emulated device reports, and the thread that runs one on an emulated line.

One ``DeviceState`` (the physical site: battery, panel, load) drives every emulator, so a test
or the demo can put a VE.Direct charger, a BMS and a Modbus charger on the same battery and
check that each driver reads back the same physical values.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

from edgeagent.sim.line import EmulatedLine, Faults

log = logging.getLogger(__name__)

Stage = Literal["off", "bulk", "absorption", "float"]


@dataclass(frozen=True)
class DeviceState:
    """The physical state the devices measure, in SI units (current: + = into the battery)."""

    battery_voltage_v: float
    battery_current_a: float
    soc_pct: float
    temp_c: float = 25.0
    pv_power_w: float = 0.0
    pv_voltage_v: float = 0.0
    load_current_a: float = 0.0
    cells: int = 4
    capacity_ah: float = 100.0
    cycles: int = 0
    yield_today_kwh: float = 0.0
    yield_yesterday_kwh: float = 0.0
    yield_total_kwh: float = 0.0
    max_power_today_w: float = 0.0
    consumed_ah: float = 0.0  # taken out since the last full charge (a shunt's CE)
    charged_kwh: float = 0.0
    discharged_kwh: float = 0.0
    day: int = 0  # days since the start: VE.Direct HSDS, Renogy operating days

    @property
    def remaining_ah(self) -> float:
        return self.capacity_ah * self.soc_pct / 100.0

    @property
    def cell_voltage_v(self) -> float:
        """A balanced pack: every cell at the same share of the pack voltage."""
        return self.battery_voltage_v / self.cells

    @property
    def charge_current_a(self) -> float:
        """The charger's output: what reaches the battery plus what the load draws."""
        return max(self.battery_current_a + self.load_current_a, 0.0)

    @property
    def pv_current_a(self) -> float:
        return self.pv_power_w / self.pv_voltage_v if self.pv_voltage_v > 0 else 0.0

    @property
    def stage(self) -> Stage:
        """The charge stage a charger would report: off without sun, then by state of charge."""
        if self.pv_power_w <= 0.0:
            return "off"
        return ("float" if self.soc_pct >= 99.5 else "absorption" if self.soc_pct >= 95.0
                else "bulk")


def fit(value: float, low: int, high: int) -> int:
    """``value`` rounded and saturated to what a register or byte can hold: an extreme state
    must not make an emulator raise, and a real device's counters saturate too."""
    return min(max(round(value), low), high)


StateSource = Callable[[], DeviceState]
_Device = TypeVar("_Device", bound="DeviceEmulator")


class DeviceEmulator:
    """A device on its own emulated line, run by a daemon thread that never raises.

    ``state`` is asked for the physical state each time the device sends or answers. ``port``
    is the stable name to create (a private one when omitted). An error in a step (a broken
    ``state`` callback, say) is counted in ``errors`` and the device carries on.
    """

    def __init__(self, state: StateSource, *, port: str | os.PathLike[str] | None = None,
                 faults: Faults | None = None) -> None:
        self.state = state
        self.line = EmulatedLine(port, faults)
        self.errors = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"{type(self).__name__} {self.line.port}")

    @property
    def port(self) -> str:
        return self.line.port

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """End the thread and pull the cable for good."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.line.close()

    def __enter__(self: _Device) -> _Device:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def step(self) -> None:
        """One turn of the device: send a block, or answer what the host asked."""
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception as exc:  # an emulator bug must not kill the device
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("%s: step failed", self._thread.name)
                self._stop.wait(0.05)


class PolledDevice(DeviceEmulator):
    """A request/response device: it reads what the host sends and answers each request."""

    def step(self) -> None:
        for answer in self.handle(self.line.read()):
            self.line.write(answer)

    def handle(self, data: bytes) -> list[bytes]:
        """The frames to send for ``data`` (any split of the host's byte stream)."""
        raise NotImplementedError
