"""The offline solar forecast: the sun where it should be, and what the site teaches it."""

from __future__ import annotations

import calendar

import numpy as np
import pytest
from pydantic import ValidationError

from edgeagent.config import SiteConfig
from edgeagent.governor import Forecast, Forecaster, clear_sky_ghi

DAY = 86400.0
EQUINOX = float(calendar.timegm((2023, 3, 20, 0, 0, 0)))
JUNE = float(calendar.timegm((2023, 6, 21, 0, 0, 0)))
DECEMBER = float(calendar.timegm((2023, 12, 21, 0, 0, 0)))


def minutes(day_start: float) -> np.ndarray:
    return day_start + np.arange(0, DAY, 60.0)


def test_the_sun_peaks_at_solar_noon_and_is_down_at_night() -> None:
    ghi = clear_sky_ghi(minutes(EQUINOX), 0.0, 0.0)
    # Solar noon on the Greenwich meridian in March: ~12:07 UTC (equation of time, -7 min).
    assert 12 * 60 <= int(np.argmax(ghi)) <= 12 * 60 + 15
    assert 950 < ghi.max() < 1100  # the sun overhead at the equator: ~1035 W/m² (Haurwitz)
    assert ghi[0] == 0 and ghi[23 * 60] == 0  # midnight and 23:00 UTC are dark
    east = clear_sky_ghi(minutes(EQUINOX), 0.0, 90.0)
    assert 6 * 60 <= int(np.argmax(east)) <= 6 * 60 + 15  # 90° east: noon six hours earlier


def test_seasons_follow_the_hemisphere() -> None:
    def daily_kwh(day: float, latitude: float) -> float:
        return float(clear_sky_ghi(minutes(day), latitude, 0.0).sum()) / 60 / 1000

    assert daily_kwh(JUNE, 36.1) > 2 * daily_kwh(DECEMBER, 36.1)  # Greensboro
    assert daily_kwh(DECEMBER, -33.9) > 2 * daily_kwh(JUNE, -33.9)  # Cape Town
    assert 0.4 < daily_kwh(DECEMBER, 55.3) < 1.0  # Sand Point in December: a short low sun
    assert 8.0 < daily_kwh(JUNE, 36.1) < 9.5  # a clear June day in North Carolina


def test_the_sun_agrees_with_pvlib() -> None:
    pvlib = pytest.importorskip("pvlib")
    pd = pytest.importorskip("pandas")
    t = JUNE + np.arange(0, DAY, 600.0)
    position = pvlib.solarposition.get_solarposition(pd.to_datetime(t, unit="s", utc=True),
                                                     36.1, -79.9)
    reference = pvlib.clearsky.haurwitz(position["apparent_zenith"])["ghi"].to_numpy()
    assert np.abs(clear_sky_ghi(t, 36.1, -79.9) - reference).max() < 15.0


def sunny(forecaster: Forecaster, start: float, days: int, clearness: list[float],
          capacity_w: float, curtailed: bool = False) -> None:
    """Feed ``days`` days of PV at 10-minute ticks: clear sky times each day's clearness."""
    for day in range(days):
        t = start + day * DAY + np.arange(0, DAY, 600.0)
        pv = clear_sky_ghi(t, forecaster.latitude, forecaster.longitude) * capacity_w / 1000
        for ti, p in zip(t.tolist(), pv.tolist(), strict=True):
            forecaster.observe(ti, p * clearness[day % len(clearness)], curtailed=curtailed)


def test_capacity_is_learned_from_the_best_hours() -> None:
    forecaster = Forecaster(36.1, 0.0)
    assert forecaster.capacity_w is None
    sunny(forecaster, JUNE, 3, [1.0, 0.4], capacity_w=80.0)
    assert forecaster.capacity_w == pytest.approx(80.0, rel=0.03)
    # A prior from the panel's rating holds until the data show more.
    prior = Forecaster(36.1, 0.0, capacity_w=100.0)
    sunny(prior, JUNE, 2, [0.5], capacity_w=80.0)
    assert prior.capacity_w == 100.0


def test_a_curtailed_reading_teaches_nothing() -> None:
    forecaster = Forecaster(36.1, 0.0, capacity_w=80.0)
    sunny(forecaster, JUNE, 3, [0.1], capacity_w=80.0, curtailed=True)
    assert forecaster.capacity_w == 80.0
    assert forecaster.clearness_today() is None  # no uncurtailed sun seen today


def test_days_ahead_take_the_clearness_quantile_of_past_days() -> None:
    days = [0.2, 0.4, 0.6, 0.8, 1.0]
    ratios = {}
    for quantile in (0.2, 0.5, 0.85):
        forecaster = Forecaster(0.0, 0.0, capacity_w=100.0, quantile=quantile)
        sunny(forecaster, EQUINOX, 10, days, capacity_w=100.0)
        forecaster.observe(EQUINOX + 10 * DAY, 0.0)  # the next midnight closes the 10th day
        ahead = forecaster.forecast(EQUINOX + 10 * DAY + DAY / 2)  # noon after the history
        pv, clear = np.array(ahead.pv_w), np.array(ahead.clear_w)
        tomorrow = slice(144, 288)
        ratios[quantile] = pv[tomorrow].sum() / clear[tomorrow].sum()
        assert ratios[quantile] == pytest.approx(np.quantile(days * 2, quantile), abs=0.03)
    assert ratios[0.2] < ratios[0.5] < ratios[0.85]


def test_the_rest_of_today_looks_like_today_so_far() -> None:
    forecaster = Forecaster(0.0, 0.0, capacity_w=100.0, quantile=0.5)
    sunny(forecaster, EQUINOX, 7, [1.0], capacity_w=100.0)  # a sunny week...
    t = EQUINOX + 7 * DAY + np.arange(0, 14 * 3600, 600.0)
    for ti in t.tolist():  # ...then a grey morning at 30 % of clear sky
        forecaster.observe(ti, 0.3 * float(clear_sky_ghi(ti, 0.0, 0.0)) / 10)
    assert forecaster.clearness_today() == pytest.approx(0.3, abs=0.02)
    ahead = forecaster.forecast(float(t[-1]) + 600)
    pv, clear = np.array(ahead.pv_w), np.array(ahead.clear_w)
    afternoon = slice(0, 24)  # 14:10 to 18:00
    assert 0.3 < pv[afternoon].sum() / clear[afternoon].sum() < 0.8  # mostly today's grey
    tomorrow = slice(80, 200)
    assert pv[tomorrow].sum() / clear[tomorrow].sum() == pytest.approx(1.0, abs=0.02)


def test_admission_counts_on_a_cautious_quantile_of_past_days() -> None:
    forecaster = Forecaster(0.0, 0.0, capacity_w=100.0, quantile=0.85, admission_quantile=0.25)
    sunny(forecaster, EQUINOX, 8, [1.0, 0.2, 0.6, 0.9], capacity_w=100.0)
    ahead = forecaster.forecast(EQUINOX + 8 * DAY)  # midnight: tomorrow is all days ahead
    pv, low, clear = (np.array(x) for x in (ahead.pv_w, ahead.cautious_w, ahead.clear_w))
    lit = clear > 1.0
    seen = [1.0, 0.2, 0.6, 0.9, 1.0, 0.2, 0.6]  # the seven whole days closed so far
    assert (pv[lit] / clear[lit]) == pytest.approx(np.quantile(seen, 0.85), abs=0.03)
    assert (low[lit] / clear[lit]) == pytest.approx(np.quantile(seen, 0.25), abs=0.03)
    assert ahead.cautious().pv_w == ahead.cautious_w and ahead.cautious().clear_w == ahead.clear_w
    plain = Forecast(0.0, 600.0, (1.0,), (2.0,))
    assert plain.cautious() is plain  # a forecast with no cautious series is its own
    with pytest.raises(ValueError, match="admission_quantile"):
        Forecaster(0.0, 0.0, admission_quantile=1.0)


def test_the_forecast_is_aligned_to_its_slots_and_spans_the_horizon() -> None:
    forecaster = Forecaster(36.1, -79.9, capacity_w=86.0, horizon_h=48, step_s=600)
    ahead = forecaster.forecast(JUNE + 1234.0)
    assert ahead.start == JUNE + 1200.0 and ahead.step_s == 600
    assert len(ahead.pv_w) == len(ahead.clear_w) == 288
    assert max(ahead.clear_w) == pytest.approx(86.0 * 0.95, rel=0.1)  # June noon, ~1000 W/m²
    assert all(p <= c + 1e-9 for p, c in zip(ahead.pv_w, ahead.clear_w, strict=True))


def test_next_sunrise_is_the_first_light_after_the_dark() -> None:
    forecaster = Forecaster(0.0, 0.0, capacity_w=100.0)
    night = forecaster.forecast(EQUINOX + 20 * 3600)  # 20:00 UTC at longitude 0
    sunrise = night.next_sunrise()
    assert sunrise is not None
    assert EQUINOX + DAY + 5.5 * 3600 <= sunrise <= EQUINOX + DAY + 6.5 * 3600
    day = forecaster.forecast(EQUINOX + 12 * 3600)  # at noon: tomorrow's sunrise
    assert day.next_sunrise() == pytest.approx(sunrise, abs=600)
    always_light = Forecast(0.0, 600.0, (1.0,) * 10, (1.0,) * 10)
    assert always_light.next_sunrise() is None  # midsummer at the pole: no sunrise to wait for


def test_energy_sums_whole_slots() -> None:
    ahead = Forecast(0.0, 600.0, (6.0,) * 12, (6.0,) * 12)
    assert ahead.energy_wh(3600.0) == pytest.approx(6.0)
    assert ahead.energy_wh(10 * 3600.0) == pytest.approx(12.0)  # only two hours forecast


def test_site_coordinates_come_in_pairs_and_in_range() -> None:
    assert SiteConfig(latitude=36.1, longitude=-79.9).latitude == 36.1
    assert SiteConfig().latitude is None
    with pytest.raises(ValidationError, match="both or neither"):
        SiteConfig(latitude=36.1)
    with pytest.raises(ValidationError):
        SiteConfig(latitude=91.0, longitude=0.0)
    with pytest.raises(ValidationError):
        SiteConfig(latitude=0.0, longitude=-181.0)
