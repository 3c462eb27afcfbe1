"""The simulated site's power plant: panel -> charge controller -> battery -> board.

Everything meets on the battery's DC bus. The PV the charger harvests feeds the load first; the
rest charges a linear, lossy battery (separate charge and discharge efficiencies, C-rate limits:
research note §4.2) and what neither takes is curtailed. The load is the charge controller's own
draw plus its load output: the board behind a 12 V -> 5 V converter, awake at a work level
(idle to full load, from the board profile, plus the agent's own draw) or halted with only its
wake timer powered. When the battery reaches its hard cut-off the load output opens (a
brownout) and closes again once the battery has recovered ``RECONNECT_PCT`` above it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edgeagent.boards import BoardProfile
from edgeagent.sim.battery import OCV_CURVE
from edgeagent.state import SiteState

CONTROLLER_W = 0.15  # a small MPPT's self-consumption, ~10-20 mA at 12 V (datasheet-typical)
CONVERTER_EFFICIENCY = 0.90  # 12 V -> 5 V buck converter feeding the board (§4.2)
AGENT_W = 0.1  # edgeagent's own draw on the board while it is awake
RECONNECT_PCT = 10.0  # the load output closes again this far above the cut-off


@dataclass(frozen=True)
class Chemistry:
    """What the simulator needs to know about a battery type (research note §4.1-4.2)."""

    name: str  # as --battery-chem spells it
    label: str
    charge_efficiency: float
    discharge_efficiency: float
    max_charge_c: float  # charge power limit, W per Wh of capacity
    max_discharge_c: float
    cutoff_pct: float  # the hard cut-off (BMS or the load output's low-voltage disconnect)
    reserve_pct: float  # the usual reserve for daily cycling
    ocv: tuple[tuple[float, float], ...]  # (SoC %, resting volts), for the readings


CHEMISTRIES = {
    # ~96 % each way (Vessim's C-L-C defaults); 0.5 C charge, 1 C discharge; the BMS cuts at
    # empty, and a 20 % reserve keeps margin for a clean shutdown and the cold.
    "lifepo4": Chemistry("lifepo4", "LiFePO4", 0.96, 0.96, 0.5, 1.0, 0.0, 20.0, OCV_CURVE),
    # ~81 % round trip (coulombic ~85 %, PVEducation); C/5 charge; the load output disconnects
    # at 20 %, and daily cycling stays above 50 % (§4.1).
    "leadacid": Chemistry("leadacid", "lead-acid", 0.85, 0.95, 0.2, 0.5, 20.0, 50.0,
                          ((0.0, 11.8), (25.0, 12.0), (50.0, 12.2), (75.0, 12.4),
                           (100.0, 12.7))),
}


@dataclass(frozen=True)
class PlantSpec:
    """The site's hardware: board, battery and its reserve."""

    board: BoardProfile
    battery_wh: float
    chemistry: Chemistry
    reserve_pct: float
    initial_soc_pct: float = 100.0

    @property
    def sleep_w(self) -> float:
        """The halted board, from its profile."""
        return self.board.sleep_w

    @property
    def asleep_w(self) -> float:
        """Bus power with the board halted."""
        return CONTROLLER_W + self.sleep_w

    def awake_w(self, level: float) -> float:
        """Bus power with the board awake at work ``level`` (0..1)."""
        board = self.board
        return CONTROLLER_W + (board.idle_w + AGENT_W
                               + level * (board.full_load_w - board.idle_w)) / CONVERTER_EFFICIENCY

    def energy_wh(self, soc_pct: float) -> float:
        return self.battery_wh * soc_pct / 100.0


class Plant:
    """One run's plant state; ``step`` advances it. Energy totals are in Wh on the DC bus."""

    def __init__(self, spec: PlantSpec, step_s: float) -> None:
        chem = spec.chemistry
        self.spec = spec
        self.step_s = step_s
        self._h = step_s / 3600.0
        self._eta_c, self._eta_d = chem.charge_efficiency, chem.discharge_efficiency
        self._max_charge_w = chem.max_charge_c * spec.battery_wh
        self._max_discharge_w = chem.max_discharge_c * spec.battery_wh
        self._asleep_w, self._idle_w = spec.asleep_w, spec.awake_w(0.0)
        self._work_w = spec.awake_w(1.0) - self._idle_w
        self.capacity_wh = spec.battery_wh
        self.cutoff_wh = spec.energy_wh(chem.cutoff_pct)
        self._reconnect_wh = spec.energy_wh(min(chem.cutoff_pct + RECONNECT_PCT, 100.0))
        self.energy_wh = spec.energy_wh(spec.initial_soc_pct)
        self._ocv = np.array(chem.ocv).T
        self.cut_off = False
        self.pv_wh = self.curtailed_wh = self.load_wh = 0.0
        self.charged_wh = self.discharged_wh = 0.0  # at the battery's terminals
        self.brownouts = 0
        self.brownout_s = 0.0
        # What the charger and battery monitor last reported (averages over the last step).
        self.harvest_w = self.battery_w = self.load_out_w = 0.0

    @property
    def soc_pct(self) -> float:
        return 100.0 * self.energy_wh / self.capacity_wh

    @property
    def losses_wh(self) -> float:
        """Charge and discharge losses so far: PV = load + curtailed + losses + stored."""
        return (self.charged_wh * (1 - self._eta_c)
                + self.discharged_wh * (1 / self._eta_d - 1))

    def powered(self) -> bool:
        """Whether the load output is on for the next step (it recloses once the battery has
        recovered from a cut-off)."""
        if self.cut_off and self.energy_wh >= self._reconnect_wh:
            self.cut_off = False
        return not self.cut_off

    def step(self, pv_w: float, awake: float, level: float) -> float:
        """One step with ``pv_w`` available and the board awake for the share ``awake`` of it
        at work ``level``; returns the share of the step the board really ran (below 1 when
        the battery gave out: work is paid only for that share)."""
        h = self._h
        was_cut = self.cut_off
        demand = CONTROLLER_W if was_cut else (
            self._asleep_w + awake * (self._idle_w - self._asleep_w + level * self._work_w))
        net = pv_w - demand
        ran = 0.0 if was_cut else 1.0
        if net >= 0:
            room_w = (self.capacity_wh - self.energy_wh) / (self._eta_c * h)
            charge = max(min(net, self._max_charge_w, room_w), 0.0)
            self.energy_wh = min(self.energy_wh + charge * self._eta_c * h, self.capacity_wh)
            self.charged_wh += charge * h
            self.curtailed_wh += (net - charge) * h
            served, self.battery_w, self.harvest_w = demand, charge, demand + charge
        else:
            available_w = min(self._max_discharge_w,
                              max(self.energy_wh - self.cutoff_wh, 0.0) * self._eta_d / h)
            draw = min(-net, available_w)
            self.energy_wh = max(self.energy_wh - draw / self._eta_d * h, self.cutoff_wh)
            self.discharged_wh += draw * h
            served, self.battery_w, self.harvest_w = pv_w + draw, -draw, pv_w
            if served < demand * (1 - 1e-12) and not was_cut:
                # The load ran until the battery gave out, then the cut-off opened.
                ran = served / demand
                self.cut_off = True
                self.brownouts += 1
                self.brownout_s += (1 - ran) * self.step_s
        if was_cut:
            self.brownout_s += self.step_s
        self.pv_wh += pv_w * h
        self.load_wh += served * h
        self.load_out_w = max(served - CONTROLLER_W, 0.0)
        return ran

    def reading(self) -> SiteState:
        """What the charge controller and battery monitor report now: SoC, resting voltage,
        and the last step's average powers (the harvested PV, not what the sun offered: a
        charger with a full battery curtails and reports less)."""
        soc = self.soc_pct
        volts = float(np.interp(soc, *self._ocv))
        charger = "float" if soc >= 99.9 else "bulk" if self.harvest_w > 0 else "off"
        return SiteState(pv_power_w=self.harvest_w, battery_voltage_v=volts,
                         battery_current_a=self.battery_w / volts, battery_power_w=self.battery_w,
                         battery_soc_pct=soc, load_power_w=self.load_out_w,
                         charger_state=charger, age_s=0.0, stale=False)


def asleep_energy_wh(spec: PlantSpec, pv_w: npt.NDArray[np.float64], step_s: float
                     ) -> tuple[npt.NDArray[np.float64], int]:
    """Battery energy at the end of each step with the board halted all along, and how many
    brownouts even that suffers. It is the most charge any policy can have at each step, so
    the reserve counts only where this stays above it (``reserve_floor_wh``)."""
    plant = Plant(spec, step_s)
    energy = np.empty(len(pv_w))
    for k, pv in enumerate(pv_w.tolist()):
        plant.powered()
        plant.step(pv, 0.0, 0.0)
        energy[k] = plant.energy_wh
    return energy, plant.brownouts


def reserve_floor_wh(spec: PlantSpec, asleep_wh: npt.NDArray[np.float64]
                     ) -> npt.NDArray[np.float64]:
    """The lowest charge a policy may reach at each step without violating the reserve: the
    reserve, or less where even a board asleep all along could not hold it (a start below
    the reserve, a sleep draw through a long dark spell): that shortfall is no policy's doing.
    """
    return np.minimum(spec.energy_wh(spec.reserve_pct), asleep_wh)
