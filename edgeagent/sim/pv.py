"""PV power from irradiance for the planner: PVWatts DC with a cell-temperature correction.

P = P_wp * G / 1000 * (1 + gamma * (T_cell - 25 °C)) * derate, with T_cell from the Ross/NOCT
model (T_air + G * (NOCT - 20) / 800). pvlib's own ``pvwatts_dc`` and ``temperature.ross`` do
the arithmetic, so the model is the one the research note cites (§4.4), not a look-alike.
Irradiance is horizontal GHI (no transposition to a tilted panel): crude for a steep winter sun,
honest for the small, often flat-mounted panels of these sites.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

DERATE = 0.86  # PVWatts default system losses (~14 %): soiling, wiring, mismatch, MPPT...
GAMMA_PER_C = -0.004  # power temperature coefficient of crystalline silicon
NOCT_C = 45.0  # nominal operating cell temperature of a typical small module
DEFAULT_TEMP_AIR_C = 20.0  # when a trace has no air temperature


def pv_power_w(ghi_w_m2: npt.ArrayLike, temp_air_c: npt.ArrayLike, panel_wp: float
               ) -> npt.NDArray[np.float64]:
    """DC power (W) a ``panel_wp`` panel delivers to the charger at these irradiances and air
    temperatures; negative irradiance (sensor offsets at night) counts as none."""
    from pvlib.pvsystem import pvwatts_dc
    from pvlib.temperature import ross

    ghi = np.clip(np.asarray(ghi_w_m2, dtype=np.float64), 0.0, None)
    temp_cell = ross(ghi, np.asarray(temp_air_c, dtype=np.float64), NOCT_C)
    dc = np.asarray(pvwatts_dc(ghi, temp_cell, panel_wp, GAMMA_PER_C), dtype=np.float64)
    return np.clip(dc * DERATE, 0.0, None)
