"""The emulated site: sun, battery, a SmartSolar MPPT and a SmartShunt on pseudo-terminals.

It stands in for hardware that cannot exist here. It speaks real VE.Direct TEXT on two ptys, so
the agent reads it through the very driver and serial code it uses on a board. Time runs
``speed`` times faster than the wall clock; the board's load comes from a callback, so the
agent's real compute drains the emulated battery.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass

from edgeagent.power.vedirect import encode_block
from edgeagent.sim.battery import Battery
from edgeagent.sim.solar import SolarTrace

PANEL_VMP_V = 17.5  # a 36-cell panel at its maximum-power point


class PseudoTerminal:
    """A pty pair; we write the device side, the agent opens ``port`` like any serial port."""

    def __init__(self) -> None:
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo or CR/LF translation: the bytes are binary-exact
        os.set_blocking(self.master, False)
        self.port = os.ttyname(self._slave)
        self.dropped_bytes = 0

    def write(self, data: bytes) -> None:
        """Write without blocking: bytes nobody reads are lost, as on a real unread line."""
        try:
            written = os.write(self.master, data)
        except BlockingIOError:
            written = 0
        self.dropped_bytes += len(data) - written

    def close(self) -> None:
        for fd in (self.master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)


@dataclass
class SiteTotals:
    """What happened in the emulated world, for the demo's summary."""

    pv_wh: float = 0.0
    load_wh: float = 0.0
    min_soc_pct: float = 100.0
    max_soc_pct: float = 0.0


class SiteEmulator:
    def __init__(self, trace: SolarTrace, battery: Battery, *, start_hour: float, speed: float,
                 panel_wp: float, load_w: Callable[[], float],
                 block_interval_s: float = 0.05) -> None:
        self.trace = trace
        self.battery = battery
        self.speed = speed
        self.panel_wp = panel_wp
        self.load_w = load_w
        self.block_interval_s = block_interval_s
        self.sim_hour = start_hour
        self.pv_w = 0.0
        self.totals = SiteTotals(min_soc_pct=battery.soc_pct, max_soc_pct=battery.soc_pct)
        self.mppt = PseudoTerminal()
        self.shunt = PseudoTerminal()
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
            now = time.monotonic()
            self.advance((now - last) * self.speed)
            last = now
            self.mppt.write(self.mppt_block())
            live, history = self.shunt_blocks()
            self.shunt.write(live + history)

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

    def _charger_state(self) -> tuple[int, str]:
        """CS code and OR (off reason) as a SmartSolar reports them."""
        if self.pv_w <= 0.0:
            return 0, "0x00000001"  # off: no input power
        soc = self.battery.soc_pct
        return (5 if soc >= 99.5 else 4 if soc >= 95.0 else 3), "0x00000000"

    def mppt_block(self) -> bytes:
        with self._lock:
            volts = self.battery.voltage_v
            cs, off_reason = self._charger_state()
            load_w = self._load_w
            return encode_block([
                ("PID", "0xA053"), ("FW", "159"), ("SER#", "HQ2242EMU01"),
                ("V", str(round(volts * 1000))),
                ("I", str(round(self.pv_w / volts * 1000))),
                ("VPV", str(round(PANEL_VMP_V * 1000 if self.pv_w > 0 else 0))),
                ("PPV", str(round(self.pv_w))),
                ("CS", str(cs)), ("MPPT", "2" if cs else "0"), ("OR", off_reason),
                ("ERR", "0"), ("LOAD", "ON"), ("IL", str(round(load_w / volts * 1000))),
                ("H19", str(round(self._yield_total_wh / 10))),
                ("H20", str(round(self._yield_today_wh / 10))),
                ("H21", str(round(self._max_power_today_w))),
                ("H22", str(round(self._yield_yesterday_wh / 10))),
                ("H23", "0"), ("HSDS", str(self._day % 365)),
            ])

    def shunt_blocks(self) -> tuple[bytes, bytes]:
        """The SmartShunt's two blocks: live values and history, each with its own checksum."""
        with self._lock:
            b = self.battery
            volts = b.voltage_v
            amps = b.current_a
            remaining_ah = b.energy_wh / volts
            ttg = round(remaining_ah / -amps * 60) if amps < -0.01 else -1
            live = encode_block([
                ("PID", "0xA389"), ("V", str(round(volts * 1000))), ("I", str(round(amps * 1000))),
                ("P", str(round(volts * amps))), ("CE", str(-round(self._consumed_ah * 1000))),
                ("SOC", str(round(b.soc_pct * 10))), ("TTG", str(ttg)), ("Alarm", "OFF"),
                ("AR", "0"), ("BMV", "SmartShunt 500A/50mV"), ("FW", "0405"), ("MON", "0"),
            ])
            history = encode_block([
                ("H1", "0"), ("H2", "0"), ("H3", "0"),
                ("H4", str(int(b.discharged_wh // b.capacity_wh))),
                ("H17", str(round(b.discharged_wh / 10))), ("H18", str(round(b.charged_wh / 10))),
            ])
            return live, history
