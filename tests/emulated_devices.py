"""Victron devices for tests and benchmarks: the package's own VE.Direct emulator on a fixed
``DeviceState``, streaming on an emulated line (a pty behind ``port``) until ``stop()``. It sends
what a real device does: a SmartShunt's live and history blocks (``FW``, ``H4``...), a SmartSolar's
block with its ``SER#``, ``CS`` and yields."""

from __future__ import annotations

from typing import Literal

from edgeagent.sim.device import DeviceState
from edgeagent.sim.emulator import VEDirectEmulator


def vedirect(product: Literal["mppt", "shunt"], state: DeviceState,
             interval_s: float = 0.1) -> VEDirectEmulator:
    """A SmartSolar MPPT or a SmartShunt reporting ``state``, a block (pair) every
    ``interval_s``, already streaming."""
    device = VEDirectEmulator(lambda: state, product=product, interval_s=interval_s)
    device.start()
    return device


def smartshunt(soc_pct: float, *, volts: float = 13.2, amps: float = 2.0, cycles: int = 0,
               interval_s: float = 0.1) -> VEDirectEmulator:
    """A SmartShunt at ``soc_pct`` %, ``volts`` V and ``amps`` A (+: charging), already
    streaming."""
    state = DeviceState(battery_voltage_v=volts, battery_current_a=amps, soc_pct=soc_pct,
                        cycles=cycles)
    return vedirect("shunt", state, interval_s)
