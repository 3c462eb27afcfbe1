"""The oracle: the most work the site could have done, knowing the whole trace in advance.

A linear program (HiGHS through SciPy) over every step t of length h hours:

    maximize   sum_t w_t
    subject to P_asleep + K w_t + c_t - d_t <= PV_t        (what is not used is curtailed)
               E_t = E_{t-1} + h (eta_c c_t - d_t / eta_d)  (lossy battery)
               floor_t <= E_t <= capacity                  (the reserve; ``reserve_floor_wh``)
               0 <= w_t <= 1, 0 <= c_t <= C-rate, 0 <= d_t <= C-rate

It is the relaxation the issue asks for: the board may be awake for a fraction a_t of a step
at a work level l_t, both in [0, 1], with work a_t l_t. Being awake without working only costs
energy, so some optimum has the board awake exactly while it works at full level (a_t = w_t,
l_t = 1, K = P_awake(1) - P_asleep): the variable a_t is folded into w_t. No wake-up costs, no
minimum dwell, perfect foresight: every real policy that respects the reserve does at most this
much work, which makes the oracle the yardstick of ``work_ratio``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edgeagent.sim.plant import PlantSpec

Array = npt.NDArray[np.float64]


class OracleError(RuntimeError):
    """The solver found no schedule (it should always find one: the board asleep all along
    respects every constraint)."""


@dataclass(frozen=True)
class OracleSchedule:
    work: Array  # w_t: share of each step awake at full work
    energy_wh: Array  # battery energy at the end of each step, as the LP planned it
    work_steps: float  # sum of w_t


def solve(pv_w: Array, spec: PlantSpec, step_s: float, floor_wh: Array) -> OracleSchedule:
    """The LP above for available PV ``pv_w`` per step and the reserve floor per step."""
    from scipy.optimize import linprog
    from scipy.sparse import coo_array, csr_array

    n = len(pv_w)
    h = step_s / 3600.0
    chem = spec.chemistry
    asleep_w, full_w = spec.asleep_w, spec.awake_w(1.0)
    t = np.arange(n)
    w, c, d, e = t, n + t, 2 * n + t, 3 * n + t  # column of each variable at step t
    # Power balance rows: K w_t + c_t - d_t <= PV_t - P_asleep.
    balance = coo_array(
        (np.concatenate([np.full(n, full_w - asleep_w), np.ones(n), -np.ones(n)]),
         (np.tile(t, 3), np.concatenate([w, c, d]))), shape=(n, 4 * n))
    # Battery rows: E_t - E_{t-1} - h eta_c c_t + h / eta_d d_t = 0 (E_{-1} is the start).
    battery = coo_array(
        (np.concatenate([np.ones(n), -np.ones(n - 1), np.full(n, -h * chem.charge_efficiency),
                         np.full(n, h / chem.discharge_efficiency)]),
         (np.concatenate([t, t[1:], t, t]), np.concatenate([e, e[:-1], c, d]))),
        shape=(n, 4 * n))
    b_eq = np.zeros(n)
    b_eq[0] = spec.energy_wh(spec.initial_soc_pct)
    bounds = np.empty((4 * n, 2))
    bounds[w] = (0.0, 1.0)
    bounds[c] = (0.0, chem.max_charge_c * spec.battery_wh)
    bounds[d] = (0.0, chem.max_discharge_c * spec.battery_wh)
    bounds[e, 0], bounds[e, 1] = floor_wh, spec.battery_wh
    objective = np.zeros(4 * n)
    objective[w] = -1.0
    result = linprog(objective, A_ub=csr_array(balance), b_ub=pv_w - asleep_w,
                     A_eq=csr_array(battery), b_eq=b_eq, bounds=bounds, method="highs")
    if result.status != 0:
        raise OracleError(f"the oracle's linear program failed: {result.message}")
    x = np.asarray(result.x, dtype=np.float64)
    work = np.clip(x[w], 0.0, 1.0)
    return OracleSchedule(work, x[e], float(work.sum()))
