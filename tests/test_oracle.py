"""The oracle's LP folds the awake share into the work and curtailment into an inequality: it
must reach the same optimum as the relaxation written out in full."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linprog
from scipy.sparse import eye_array, hstack, vstack

from edgeagent.boards import load_board
from edgeagent.governor.forecast import clear_sky_ghi
from edgeagent.sim.oracle import solve
from edgeagent.sim.plant import CHEMISTRIES, PlantSpec, asleep_energy_wh, reserve_floor_wh
from edgeagent.sim.pv import pv_power_w


def full_relaxation(pv: np.ndarray, spec: PlantSpec, step_s: float,
                    floor: np.ndarray) -> float:
    """max sum w_t over a_t, w_t <= a_t, charge, discharge, curtailment u_t and energy E_t,
    with the plant's load P_asleep + a_t (P_idle - P_asleep) + w_t (P_full - P_idle)."""
    n, h = len(pv), step_s / 3600
    chem = spec.chemistry
    i, z = eye_array(n, format="csr"), eye_array(n, format="csr") * 0
    asleep, idle, full = spec.asleep_w, spec.awake_w(0.0), spec.awake_w(1.0)
    shift = eye_array(n, k=-1, format="csr")
    # columns: a, w, c, d, u, E
    awake_bound = hstack([-i, i, z, z, z, z])
    balance = hstack([i * (idle - asleep), i * (full - idle), i, -i, i, z])
    battery = hstack([z, z, -h * chem.charge_efficiency * i, h / chem.discharge_efficiency * i,
                      z, i - shift])
    b_eq = np.concatenate([pv - asleep, np.zeros(n)])
    b_eq[n] = spec.energy_wh(spec.initial_soc_pct)
    bounds = ([(0, 1)] * 2 * n + [(0, chem.max_charge_c * spec.battery_wh)] * n
              + [(0, chem.max_discharge_c * spec.battery_wh)] * n + [(0, None)] * n
              + [(f, spec.battery_wh) for f in floor])
    objective = np.concatenate([np.zeros(n), -np.ones(n), np.zeros(4 * n)])
    result = linprog(objective, A_ub=awake_bound, b_ub=np.zeros(n),
                     A_eq=vstack([balance, battery]), b_eq=b_eq, bounds=bounds,
                     method="highs")
    assert result.status == 0, result.message
    return float(-result.fun)


@pytest.mark.parametrize(("chem", "panel_wp", "battery_wh"),
                         [("lifepo4", 40.0, 120.0), ("leadacid", 50.0, 720.0),
                          ("lifepo4", 300.0, 60.0)])
def test_the_folded_lp_reaches_the_full_relaxations_optimum(chem: str, panel_wp: float,
                                                            battery_wh: float) -> None:
    step_s = 1800.0
    t = 1673308800.0 + (np.arange(3 * 48) + 0.5) * step_s
    clearness = np.repeat([0.8, 0.2, 0.5], 48)
    pv = pv_power_w(clear_sky_ghi(t, 36.1, -79.95) * clearness, np.full(len(t), 10.0),
                    panel_wp)
    spec = PlantSpec(load_board("raspberry-pi-4"), battery_wh, CHEMISTRIES[chem],
                     CHEMISTRIES[chem].reserve_pct, initial_soc_pct=60.0)
    asleep, brownouts = asleep_energy_wh(spec, pv, step_s)
    assert brownouts == 0
    floor = reserve_floor_wh(spec, asleep)
    folded = solve(pv, spec, step_s, floor)
    assert 0 < folded.work_steps < len(pv)  # neither starved nor flat out: the LP decides
    assert folded.work_steps == pytest.approx(full_relaxation(pv, spec, step_s, floor),
                                              rel=1e-6)
    assert (folded.energy_wh >= floor - 1e-6).all()
