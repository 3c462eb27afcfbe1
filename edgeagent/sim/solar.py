"""Real solar weather for the emulator: the bundled TMY3 trace of Greensboro, NC.

See ``data/SOURCE.md`` for where the numbers come from. PV power uses the PVWatts-style
approximation P = P_stc * GHI / 1000 * derate, on horizontal irradiance (no transposition): a
crude but honest model for a small flat-mounted panel; issue 5 brings pvlib for the planner.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import date
from importlib import resources

HOURS_PER_YEAR = 8760
DEFAULT_DERATE = 0.86  # PVWatts default system losses of ~14 % (research note §4.4)


@dataclass(frozen=True)
class SolarTrace:
    """Hourly global horizontal irradiance for one typical year, indexed by hour of year."""

    ghi_w_m2: tuple[float, ...]
    temp_air_c: tuple[float, ...]

    @classmethod
    def bundled(cls) -> SolarTrace:
        text = (resources.files("edgeagent.sim") / "data" / "greensboro_tmy3.csv").read_text()
        rows = list(csv.DictReader(text.splitlines()))
        return cls(tuple(float(r["ghi_w_m2"]) for r in rows),
                   tuple(float(r["temp_air_c"]) for r in rows))

    def ghi_at(self, hour_of_year: float) -> float:
        """Irradiance at a fractional hour, linear between hourly means (wraps at year end).

        TMY3 hour h holds the mean over [h, h+1), so it is placed at the middle, h + 0.5.
        """
        t = (hour_of_year - 0.5) % HOURS_PER_YEAR
        i = int(t)
        frac = t - i
        a = self.ghi_w_m2[i]
        b = self.ghi_w_m2[(i + 1) % HOURS_PER_YEAR]
        return a + (b - a) * frac

    def pv_power_w(self, hour_of_year: float, panel_wp: float,
                   derate: float = DEFAULT_DERATE) -> float:
        return panel_wp * self.ghi_at(hour_of_year) / 1000.0 * derate


def hour_of_year(month: int, day: int, hour: float = 0.0) -> float:
    """Hour of a non-leap year (TMY years have 365 days)."""
    return (date(2001, month, day).timetuple().tm_yday - 1) * 24 + hour
