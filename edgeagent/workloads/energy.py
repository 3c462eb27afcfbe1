"""Energy accounting for the workload: joules per inference and per job, and their solar share.

Joules are estimated from the board profile (CPU-seconds of inference times one busy core's
watts): the marginal energy the work costs on top of the idle board, which is what choosing a
model or declining a job saves. The solar share is the part of that energy that came straight
from the panel rather than out of the battery. On an off-grid site all of it is solar in the end,
but energy through the battery costs round-trip losses and cycle wear, and at night it is the
reserve being spent.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeagent.state import SiteState


def solar_share_now(state: SiteState, board_load_w: float) -> float | None:
    """Share of the site's consumption the panel covers now (0..1); None when PV is unknown.

    Energy balance: consumption = PV - battery power (positive = charging). A battery that is
    charging or idle means every watt drawn comes from the panel. Without battery power or
    current, the board's own estimated draw stands in for the consumption.
    """
    pv = state.pv_power_w
    if pv is None or state.stale:
        return None
    if pv <= 0:
        return 0.0
    battery_w = state.battery_power_w
    if battery_w is None and state.battery_voltage_v is not None \
            and state.battery_current_a is not None:
        battery_w = state.battery_voltage_v * state.battery_current_a
    if battery_w is not None:
        return 1.0 if battery_w >= 0 else pv / (pv - battery_w)
    return min(1.0, pv / board_load_w) if board_load_w > 0 else None


@dataclass
class EnergyLedger:
    """Running totals of the workload's estimated energy, and of the part the sun paid for.

    ``solar_j`` counts only energy spent while the solar share was known (``shared_j``), so an
    outage of the charger's data does not count as battery energy.
    """

    energy_j: float = 0.0
    shared_j: float = 0.0
    solar_j: float = 0.0

    def add(self, energy_j: float, solar_share: float | None) -> None:
        self.energy_j += energy_j
        if solar_share is not None:
            self.shared_j += energy_j
            self.solar_j += energy_j * solar_share

    @property
    def solar_share(self) -> float | None:
        return self.solar_j / self.shared_j if self.shared_j > 0 else None
