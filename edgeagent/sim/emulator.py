"""The emulated site: sun, battery, a SmartSolar MPPT and a SmartShunt on pseudo-terminals.

It stands in for hardware that cannot exist here. It speaks real VE.Direct TEXT on two emulated
lines (``edgeagent.sim.line``: ptys behind stable names, with fault injection), so the agent
reads it through the very driver and serial code it uses on a board. Time runs ``speed`` times
faster than the wall clock; the board's load comes from a callback, so the agent's real compute
drains the emulated battery. ``SiteEmulator.device_state`` hands the same physical state to the
other emulators (BMS, Modbus chargers), and ``VEDirectEmulator`` runs one VE.Direct device on
any ``DeviceState`` source.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from edgeagent.power.vedirect import encode_block
from edgeagent.sim.battery import Battery
from edgeagent.sim.device import DeviceEmulator, DeviceState, StateSource
from edgeagent.sim.line import EmulatedLine, Faults
from edgeagent.sim.solar import HOURS_PER_YEAR, SolarTrace

log = logging.getLogger(__name__)

PANEL_VMP_V = 17.5  # a 36-cell panel at its maximum-power point
NOMINAL_V = 12.8  # a 4S LiFePO4 bank: Ah = Wh / 12.8
CELLS = 4
CS_CODES = {"off": 0, "bulk": 3, "absorption": 4, "float": 5}


def mppt_block(s: DeviceState) -> bytes:
    """A SmartSolar MPPT 75/15's TEXT block for the state. The load hangs on its load output,
    so ``I`` is the battery's net current (negative at night) and ``IL`` the load's."""
    cs = CS_CODES[s.stage]
    return encode_block([
        ("PID", "0xA053"), ("FW", "159"), ("SER#", "HQ2242EMU01"),
        ("V", str(round(s.battery_voltage_v * 1000))),
        ("I", str(round(s.battery_current_a * 1000))),
        ("VPV", str(round(s.pv_voltage_v * 1000))), ("PPV", str(round(s.pv_power_w))),
        ("CS", str(cs)), ("MPPT", "2" if cs else "0"),
        ("OR", "0x00000000" if cs else "0x00000001"),  # off: no input power
        ("ERR", "0"), ("LOAD", "ON"), ("IL", str(round(s.load_current_a * 1000))),
        ("H19", str(round(s.yield_total_kwh * 100))),
        ("H20", str(round(s.yield_today_kwh * 100))),
        ("H21", str(round(s.max_power_today_w))),
        ("H22", str(round(s.yield_yesterday_kwh * 100))),
        ("H23", "0"), ("HSDS", str(s.day % 365)),
    ])


def shunt_blocks(s: DeviceState) -> tuple[bytes, bytes]:
    """A SmartShunt's two blocks (live values and history), each with its own checksum."""
    amps = s.battery_current_a
    ttg = round(s.remaining_ah / -amps * 60) if amps < -0.01 else -1
    live = encode_block([
        ("PID", "0xA389"), ("V", str(round(s.battery_voltage_v * 1000))),
        ("T", str(round(s.temp_c))), ("I", str(round(amps * 1000))),
        ("P", str(round(s.battery_voltage_v * amps))),
        ("CE", str(-round(s.consumed_ah * 1000))), ("SOC", str(round(s.soc_pct * 10))),
        ("TTG", str(ttg)), ("Alarm", "OFF"), ("AR", "0"), ("BMV", "SmartShunt 500A/50mV"),
        ("FW", "0405"), ("MON", "0"),
    ])
    history = encode_block([
        ("H1", "0"), ("H2", "0"), ("H3", "0"), ("H4", str(s.cycles)),
        ("H17", str(round(s.discharged_kwh * 100))), ("H18", str(round(s.charged_kwh * 100))),
    ])
    return live, history


class VEDirectEmulator(DeviceEmulator):
    """One VE.Direct device streaming TEXT blocks every ``interval_s``: an MPPT (one block) or
    a SmartShunt (live and history blocks, each one frame for the line's faults)."""

    def __init__(self, state: StateSource, *, product: Literal["mppt", "shunt"] = "mppt",
                 port: str | os.PathLike[str] | None = None, faults: Faults | None = None,
                 interval_s: float = 0.05) -> None:
        super().__init__(state, port=port, faults=faults)
        self.product = product
        self.interval_s = interval_s

    def step(self) -> None:
        s = self.state()
        for block in (mppt_block(s),) if self.product == "mppt" else shunt_blocks(s):
            self.line.write(block)
        self._stop.wait(self.interval_s)


@dataclass
class SiteTotals:
    """What happened in the emulated world, for the demo's summary."""

    pv_wh: float = 0.0
    load_wh: float = 0.0
    min_soc_pct: float = 100.0
    max_soc_pct: float = 0.0


class SiteEmulator:
    """The site's world (sun, battery, load) and its VE.Direct MPPT and SmartShunt.

    ``mppt`` and ``shunt`` are the two emulated lines (``port`` to open, ``faults``,
    ``unplug``/``replug``); ``mppt_port``/``shunt_port`` choose their stable names.
    """

    def __init__(self, trace: SolarTrace, battery: Battery, *, start_hour: float, speed: float,
                 panel_wp: float, load_w: Callable[[], float],
                 block_interval_s: float = 0.05,
                 mppt_port: str | os.PathLike[str] | None = None,
                 shunt_port: str | os.PathLike[str] | None = None) -> None:
        self.trace = trace
        self.battery = battery
        self.speed = speed
        self.panel_wp = panel_wp
        self.load_w = load_w
        self.block_interval_s = block_interval_s
        self.sim_hour = start_hour
        self.pv_w = 0.0
        self.totals = SiteTotals(min_soc_pct=battery.soc_pct, max_soc_pct=battery.soc_pct)
        self.mppt = EmulatedLine(mppt_port)
        self.shunt = EmulatedLine(shunt_port)
        self.errors = 0
        self._yield_today_wh = 0.0
        self._yield_yesterday_wh = 0.0
        self._yield_total_wh = 0.0
        self._max_power_today_w = 0.0
        self._day = int(start_hour // 24)
        self._consumed_ah = 0.0
        self._load_w = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="site-emulator", daemon=True)
        self._lock = threading.Lock()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.mppt.close()
        self.shunt.close()

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.block_interval_s):
            try:
                now = time.monotonic()
                self.advance((now - last) * self.speed)
                last = now
                state = self.device_state()
                self.mppt.write(mppt_block(state))
                for block in shunt_blocks(state):
                    self.shunt.write(block)
            except Exception:  # a failing load callback must not stop the world
                self.errors += 1
                log.exception("site emulator: step failed")

    def advance(self, dt_s: float) -> None:
        """Move the world forward by ``dt_s`` simulated seconds."""
        with self._lock:
            hours = dt_s / 3600.0
            available_w = self.trace.pv_power_w(self.sim_hour, self.panel_wp)
            load_w = self.load_w()
            # The MPPT feeds the load first and charges with the rest; a full battery curtails PV.
            flowed = self.battery.step(available_w - load_w, dt_s)
            self.pv_w = max(load_w + flowed, 0.0) if available_w > 0 else 0.0
            self.pv_w = min(self.pv_w, available_w)
            self.sim_hour += hours
            day = int(self.sim_hour // 24)
            if day != self._day:
                self._day = day
                self._yield_yesterday_wh = self._yield_today_wh
                self._yield_today_wh = 0.0
                self._max_power_today_w = 0.0
            self._yield_today_wh += self.pv_w * hours
            self._yield_total_wh += self.pv_w * hours
            self._max_power_today_w = max(self._max_power_today_w, self.pv_w)
            self._consumed_ah -= self.battery.current_a * hours
            self._consumed_ah = max(self._consumed_ah, 0.0)
            self._load_w = load_w
            t = self.totals
            t.pv_wh += self.pv_w * hours
            t.load_wh += load_w * hours
            t.min_soc_pct = min(t.min_soc_pct, self.battery.soc_pct)
            t.max_soc_pct = max(t.max_soc_pct, self.battery.soc_pct)

    def device_state(self) -> DeviceState:
        """The site as every device measures it now; pass ``emulator.device_state`` as the
        ``state`` of a BMS or Modbus emulator to put it on the same battery and panel. The
        battery sits outdoors: its temperature is the trace's air temperature."""
        with self._lock:
            b = self.battery
            volts = b.voltage_v
            return DeviceState(
                battery_voltage_v=volts, battery_current_a=b.current_a, soc_pct=b.soc_pct,
                temp_c=self.trace.temp_air_c[int(self.sim_hour) % HOURS_PER_YEAR],
                pv_power_w=self.pv_w, pv_voltage_v=PANEL_VMP_V if self.pv_w > 0 else 0.0,
                load_current_a=self._load_w / volts, cells=CELLS,
                capacity_ah=b.capacity_wh / NOMINAL_V,
                cycles=int(b.discharged_wh // b.capacity_wh),
                yield_today_kwh=self._yield_today_wh / 1000,
                yield_yesterday_kwh=self._yield_yesterday_wh / 1000,
                yield_total_kwh=self._yield_total_wh / 1000,
                max_power_today_w=self._max_power_today_w, consumed_ah=self._consumed_ah,
                charged_kwh=b.charged_wh / 1000, discharged_kwh=b.discharged_wh / 1000,
                day=self._day,
            )

    def mppt_block(self) -> bytes:
        return mppt_block(self.device_state())

    def shunt_blocks(self) -> tuple[bytes, bytes]:
        """The SmartShunt's two blocks: live values and history, each with its own checksum."""
        return shunt_blocks(self.device_state())
