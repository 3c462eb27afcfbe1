"""Solar forecast without a network: clear-sky sun for the site, scaled by what it has seen.

The clear-sky shape comes from the sun's position for the site's coordinates (NOAA's
approximations) and the Haurwitz clear-sky irradiance, which needs only the zenith angle. The
site's own history supplies the rest: its PV capacity (how many watts it makes per clear-sky
W/m², learned from the best hours seen, seeded by the panel rating when known), today's
clearness (PV energy so far over the clear-sky energy so far), and the clearness of past days,
whose quantile (the pessimism setting) forecasts the days ahead. Days run from local solar
midnight (from the longitude), so a day's clearness covers its whole daylight. A second,
cautious series takes a low quantile instead (``admission_quantile``): admission counts on it,
Cucumber's "conservative" forecast, so the jobs it takes are met on most days that turn out
darker than the plan hoped (research/energy-aware-scheduling.md §2.1). ``Forecaster``
is the stateful learner both the live agent and the simulator feed; ``Forecast`` is the plain
data the pure governor reads.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

DAY_S = 86400.0
MIN_CLEAR_W_M2 = 20.0  # below this the sun is down for our purposes
LEARN_CLEAR_W_M2 = 300.0  # capacity is learned only from hours with the sun this high
PRIOR_CLEARNESS = 0.5  # before any full day is seen
HISTORY_DAYS = 14
MAX_GAP_S = 1800.0  # observations further apart than this do not integrate into a day's energy
ADMISSION_QUANTILE = 0.25  # the clearness quantile of the cautious series admission counts on
SKY_CACHE_S = 3 * DAY_S  # clear-sky sun computed this far beyond the horizon at a time


def clear_sky_ghi(times: npt.ArrayLike, latitude: float, longitude: float
                  ) -> npt.NDArray[np.float64]:
    """Clear-sky global horizontal irradiance (W/m²) at UTC epoch seconds ``times``.

    Solar position from NOAA's fractional-year approximations (within ~0.5° of zenith), the
    Haurwitz model GHI = 1098 cos z exp(-0.059 / cos z) for the irradiance.
    """
    t = np.asarray(times, dtype=np.float64)
    stamps = t.astype("datetime64[s]")
    day_of_year = (stamps.astype("datetime64[D]") - stamps.astype("datetime64[Y]")).astype(
        np.float64)  # 0 on January 1st
    hour = (t / DAY_S % 1.0) * 24.0
    gamma = 2 * math.pi / 365.0 * (day_of_year + (hour - 12) / 24)
    eqtime = 229.18 * (0.000075 + 0.001868 * np.cos(gamma) - 0.032077 * np.sin(gamma)
                       - 0.014615 * np.cos(2 * gamma) - 0.040849 * np.sin(2 * gamma))
    decl = (0.006918 - 0.399912 * np.cos(gamma) + 0.070257 * np.sin(gamma)
            - 0.006758 * np.cos(2 * gamma) + 0.000907 * np.sin(2 * gamma)
            - 0.002697 * np.cos(3 * gamma) + 0.00148 * np.sin(3 * gamma))
    true_solar_min = hour * 60 + eqtime + 4 * longitude
    hour_angle = np.radians(true_solar_min / 4 - 180)
    lat = math.radians(latitude)
    cos_z = np.sin(lat) * np.sin(decl) + np.cos(lat) * np.cos(decl) * np.cos(hour_angle)
    with np.errstate(divide="ignore", over="ignore"):
        ghi = np.where(cos_z > 0.01, 1098.0 * cos_z * np.exp(-0.059 / np.maximum(cos_z, 0.01)),
                       0.0)
    return ghi


@dataclass(frozen=True)
class Forecast:
    """Expected PV power in slots of ``step_s`` from ``start`` (UTC epoch seconds).

    ``pv_w`` is the expected PV (the configured clearness quantile for the days ahead);
    ``clear_w`` what a clear sky would give the same panel; ``cautious_w`` what admission counts
    on (a low quantile; empty: the same as ``pv_w``).
    """

    start: float
    step_s: float
    pv_w: tuple[float, ...]
    clear_w: tuple[float, ...]
    cautious_w: tuple[float, ...] = ()

    def cautious(self) -> Forecast:
        """This forecast with the cautious PV as its expected PV."""
        if not self.cautious_w:
            return self
        return Forecast(self.start, self.step_s, self.cautious_w, self.clear_w)

    def energy_wh(self, until: float) -> float:
        """Forecast PV energy from ``start`` to ``until`` (whole slots)."""
        n = max(0, min(len(self.pv_w), math.ceil((until - self.start) / self.step_s)))
        return sum(self.pv_w[:n]) * self.step_s / 3600.0

    def next_sunrise(self) -> float | None:
        """Start of the first slot after a dark one whose clear-sky PV is up; None if the
        horizon holds none (polar night, or the sun already up all along)."""
        dark = False
        for i, w in enumerate(self.clear_w):
            if w <= 0:
                dark = True
            elif dark:
                return self.start + i * self.step_s
        return None


class Forecaster:
    """Learns the site's PV capacity and clearness from observed PV power; forecasts from them.

    ``observe`` every tick (any spacing), ``forecast`` when a decision is due. Deterministic
    and cheap: the simulator calls it tens of thousands of times per simulated year, so the
    clear-sky sun is computed a few days at a time and reused.
    """

    def __init__(self, latitude: float, longitude: float, *, quantile: float = 0.5,
                 capacity_w: float | None = None, horizon_h: float = 48.0,
                 step_s: float = 600.0, admission_quantile: float = ADMISSION_QUANTILE) -> None:
        """``capacity_w``: the PV watts at 1000 W/m² clear-sky GHI, as a prior (the panel's
        rating times its derate); learned from the data when omitted or when data show more.
        ``quantile``: the pessimism, the clearness quantile of past days used for days ahead
        (0.5 = median; lower is more cautious). ``admission_quantile``: the same for the
        cautious series admission counts on."""
        for name, q in (("quantile", quantile), ("admission_quantile", admission_quantile)):
            if not 0 < q < 1:
                raise ValueError(f"{name} must be in (0, 1), got {q}")
        self.latitude, self.longitude = latitude, longitude
        self._midnight_s = -longitude / 360.0 * DAY_S  # local solar midnight, UTC seconds
        self.quantile = quantile
        self.admission_quantile = admission_quantile
        self.step_s = step_s
        self.slots = int(horizon_h * 3600 / step_s)
        self._prior_capacity = capacity_w
        self._ratios: deque[float] = deque(maxlen=HISTORY_DAYS * 24 * 6)  # pv W per clear W/m²
        self._capacity: float | None = capacity_w
        self._days: deque[float] = deque(maxlen=HISTORY_DAYS)  # clearness of whole past days
        self._ahead = self._ahead_low = PRIOR_CLEARNESS
        self._day: int | None = None
        self._day_pv_wh = 0.0
        self._day_clear_wh = 0.0
        self._last_t: float | None = None
        self._sky_first = 0  # slot index of _sky[0]
        self._sky = np.zeros(0)  # clear-sky GHI at the middle of each slot

    @property
    def capacity_w(self) -> float | None:
        return self._capacity

    def clearness_today(self) -> float | None:
        if self._day_clear_wh <= 0 or self._capacity is None:
            return None
        return self._day_pv_wh / (self._day_clear_wh * self._capacity / 1000.0)

    def observe(self, t: float, pv_w: float, *, curtailed: bool = False) -> None:
        """PV power seen at ``t``. ``curtailed``: the charger was holding back (a full
        battery), so the power is what the load took, not what the sun offered: it teaches
        neither capacity nor clearness."""
        day = int((t - self._midnight_s) // DAY_S)
        if self._day is not None and day != self._day:
            self._close_day()
        self._day = day
        last, self._last_t = self._last_t, t
        if curtailed:
            return
        ghi = float(clear_sky_ghi(t, self.latitude, self.longitude))
        if last is not None and 0 < t - last <= MAX_GAP_S:
            # Only what was seen counts: a gap (the board asleep) is neither sun nor cloud.
            hours = (t - last) / 3600.0
            self._day_pv_wh += max(pv_w, 0.0) * hours
            self._day_clear_wh += ghi * hours
        if ghi >= LEARN_CLEAR_W_M2:
            self._ratios.append(max(pv_w, 0.0) / ghi)
            if self._capacity is None or len(self._ratios) % 6 == 0:
                self._learn_capacity()

    def _learn_capacity(self) -> None:
        learned = float(np.percentile(self._ratios, 98)) * 1000.0
        # Learned capacity replaces the prior when it is higher, or after two full weeks
        # (a panel that never reaches its rating is smaller, or shaded).
        full = len(self._ratios) == self._ratios.maxlen
        if self._prior_capacity is None or learned > self._prior_capacity or full:
            self._capacity = learned

    def _close_day(self) -> None:
        clearness = self.clearness_today()
        if clearness is not None and self._day_clear_wh > 1000:  # a day with real daylight
            self._days.append(min(clearness, 1.5))
            days = list(self._days)
            self._ahead = float(np.quantile(days, self.quantile))
            self._ahead_low = float(np.quantile(days, self.admission_quantile))
        self._day_pv_wh = self._day_clear_wh = 0.0

    def _clear_sky(self, first: int) -> npt.NDArray[np.float64]:
        """Clear-sky GHI for the ``slots`` slots from slot index ``first``."""
        if not self._sky_first <= first <= self._sky_first + len(self._sky) - self.slots:
            count = self.slots + int(SKY_CACHE_S / self.step_s)
            mids = (first + np.arange(count) + 0.5) * self.step_s
            self._sky_first, self._sky = first, clear_sky_ghi(mids, self.latitude,
                                                               self.longitude)
        offset = first - self._sky_first
        return self._sky[offset:offset + self.slots]

    def forecast(self, t: float) -> Forecast:
        first = math.floor(t / self.step_s)
        start = first * self.step_s
        capacity = self._capacity or 0.0
        clear = self._clear_sky(first) * (capacity / 1000.0)
        same_day = int((t - self._midnight_s) // DAY_S) == self._day
        today = self.clearness_today() if same_day else None  # not a day seen long ago
        pv, low = clear * self._ahead, clear * self._ahead_low
        if today is not None:
            # The rest of today looks like today so far, weighted by how much of it was seen.
            seen = min(self._day_clear_wh / 6000.0, 1.0)  # ~6 kWh/m² is a full clear day
            rest = int((DAY_S - (t - self._midnight_s) % DAY_S) // self.step_s) + 1
            pv[:rest] = clear[:rest] * (seen * min(today, 1.2) + (1 - seen) * self._ahead)
            low[:rest] = clear[:rest] * (seen * min(today, 1.2) + (1 - seen) * self._ahead_low)
        return Forecast(start, self.step_s, tuple(pv.tolist()), tuple(clear.tolist()),
                        tuple(low.tolist()))
