"""A battery model for the emulator and the simulator: a linear energy bucket with losses.

Per research/energy-aware-scheduling.md §4.2 a linear model with separate charge and discharge
efficiencies and SoC bounds matches physics models on short horizons; a lossless bucket would
over-credit storage. Terminal voltage follows a 12 V LiFePO4 (4S) open-circuit curve plus an
internal resistance, so the emulated charger reports plausible volts and amps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise

# (SoC %, open-circuit volts) for a 4S LiFePO4 bank: flat plateau, steep ends.
OCV_CURVE = ((0.0, 10.0), (10.0, 12.4), (20.0, 12.9), (50.0, 13.1), (90.0, 13.3), (100.0, 13.6))


def open_circuit_voltage(soc_pct: float) -> float:
    soc = min(max(soc_pct, 0.0), 100.0)
    for (s0, v0), (s1, v1) in pairwise(OCV_CURVE):
        if soc <= s1:
            return v0 + (v1 - v0) * (soc - s0) / (s1 - s0)
    return OCV_CURVE[-1][1]


@dataclass
class Battery:
    capacity_wh: float
    soc_pct: float
    charge_efficiency: float = 0.96
    discharge_efficiency: float = 0.96
    internal_resistance_ohm: float = 0.02
    charged_wh: float = field(default=0.0, init=False)
    discharged_wh: float = field(default=0.0, init=False)
    current_a: float = field(default=0.0, init=False)

    @property
    def energy_wh(self) -> float:
        return self.capacity_wh * self.soc_pct / 100.0

    @property
    def voltage_v(self) -> float:
        return open_circuit_voltage(self.soc_pct) + self.current_a * self.internal_resistance_ohm

    def step(self, power_w: float, dt_s: float) -> float:
        """Apply ``power_w`` at the terminals (positive charges) for ``dt_s``; return what flowed.

        A full battery refuses charge and an empty one refuses discharge (the charger curtails
        PV; the low-voltage disconnect cuts the load), so the returned power can be smaller.
        """
        hours = dt_s / 3600.0
        if power_w >= 0:
            room_wh = self.capacity_wh - self.energy_wh
            stored_wh = min(power_w * hours * self.charge_efficiency, room_wh)
            flowed_w = stored_wh / self.charge_efficiency / hours if hours else 0.0
            self.charged_wh += flowed_w * hours
        else:
            stored_wh = -min(-power_w * hours / self.discharge_efficiency, self.energy_wh)
            flowed_w = stored_wh * self.discharge_efficiency / hours if hours else 0.0
            self.discharged_wh -= flowed_w * hours
        self.soc_pct = min(max(self.soc_pct + 100.0 * stored_wh / self.capacity_wh, 0.0), 100.0)
        self.current_a = flowed_w / open_circuit_voltage(self.soc_pct)
        return flowed_w
