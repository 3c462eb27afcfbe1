"""Solar traces for the planner: a CSV the user recorded, or a typical year shipped with pvlib.

A CSV holds ``timestamp`` (ISO 8601, UTC unless it carries an offset) and either ``ghi``
(W/m², optional ``temp_air`` in °C) or ``pv_w`` (the panel's DC watts, used as is). Values are
instantaneous at their timestamp and linear in between. The bundled sites are the three
full-year TMY files inside pvlib's wheel (research note §4.5): hourly means in local standard
time, placed here at the middle of their hour in UTC and repeated year after year, so a run may
start on any date and wrap around New Year.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import numpy.typing as npt

YEAR_S = 365 * 86400.0
HOUR_S = 3600.0

Array = npt.NDArray[np.float64]


class TraceError(ValueError):
    """A trace that cannot be used; the message names the file, line or column."""


@dataclass(frozen=True)
class Trace:
    """A solar trace: irradiance (``ghi``, ``temp_air``) or PV power (``pv_w``) at ``times``.

    ``times`` are UTC epoch seconds, or seconds into the year when ``periodic`` (a typical year
    that repeats). ``latitude``/``longitude`` are None when the source does not say.
    """

    name: str
    times: Array
    ghi: Array | None
    temp_air: Array | None
    pv_w: Array | None
    latitude: float | None = None
    longitude: float | None = None
    periodic: bool = False

    def sample(self, values: Array, t: Array) -> Array:
        """``values`` (one of this trace's columns) at UTC epoch seconds ``t``."""
        if not self.periodic:
            return np.interp(t, self.times, values)
        # Seconds into the year of the first sample; later ones run on and wrap.
        return np.interp(t - _year_start(float(t[0])), self.times, values, period=YEAR_S)


def _year_start(t: float) -> float:
    year = datetime.fromtimestamp(t, timezone.utc).year
    return datetime(year, 1, 1, tzinfo=timezone.utc).timestamp()


# name -> (file in pvlib/data, what it is)
SITES = {
    "sand-point": ("703165TY.csv", "TMY3 Sand Point, Alaska (55.3° N)"),
    "greensboro": ("723170TYA.CSV", "TMY3 Greensboro, North Carolina (36.1° N)"),
    "miami": ("12839.tm2", "TMY2 Miami, Florida (25.8° N)"),
}


def load_site(name: str) -> Trace:
    """One of ``SITES``: a typical year of hourly GHI and air temperature."""
    if name not in SITES:
        raise TraceError(f"unknown site {name!r}; known sites: {', '.join(SITES)}")
    import pvlib
    from pvlib.iotools import read_tmy2, read_tmy3

    path = Path(pvlib.__file__).parent / "data" / SITES[name][0]
    if path.suffix == ".tm2":
        data, meta = read_tmy2(str(path))
        ghi, temp = data["GHI"], data["DryBulb"] / 10.0  # TMY2 keeps tenths of °C
        mid_offset_s = HOUR_S / 2  # pvlib labels TMY2 hours by their start
    else:
        data, meta = read_tmy3(str(path), coerce_year=2023, map_variables=True)
        ghi, temp = data["ghi"], data["temp_air"]
        mid_offset_s = -HOUR_S / 2  # TMY3 labels hours by their end
    index = data.index
    local_s = ((index.day_of_year.to_numpy() - 1) * 86400.0 + index.hour.to_numpy() * HOUR_S
               + index.minute.to_numpy() * 60.0)
    utc_s = (local_s + mid_offset_s - float(meta["TZ"]) * HOUR_S) % YEAR_S
    order = np.argsort(utc_s)
    return Trace(name, utc_s[order], ghi.to_numpy(np.float64)[order],
                 temp.to_numpy(np.float64)[order], None, float(meta["latitude"]),
                 float(meta["longitude"]), periodic=True)


def parse_timestamp(text: str) -> float:
    """UTC epoch seconds of an ISO 8601 timestamp; one without an offset is UTC."""
    text = text.strip()
    if text.endswith(("Z", "z")):  # Python 3.10's fromisoformat does not take the Z
        text = text[:-1] + "+00:00"
    stamp = datetime.fromisoformat(text)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return stamp.timestamp()


_WHAT = {"timestamp": "an ISO 8601 timestamp", "ghi": "a number (W/m²)",
         "pv_w": "a number (W)", "temp_air": "a number (°C)"}


def load_csv(path: Path) -> Trace:
    """Read a CSV trace; ``TraceError`` names the line and column of the first problem."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(f"{path}: cannot read: {exc}") from exc
    reader = csv.reader(text.splitlines())
    header = [h.strip() for h in next(reader, [])]
    if "timestamp" not in header:
        raise TraceError(f"{path}: line 1: no 'timestamp' column (columns: {', '.join(header)})")
    if ("ghi" in header) == ("pv_w" in header):
        raise TraceError(f"{path}: line 1: needs a 'ghi' or a 'pv_w' column (one, not both)")
    value = "ghi" if "ghi" in header else "pv_w"
    columns = ["timestamp", value] + (["temp_air"] if value == "ghi" and "temp_air" in header
                                      else [])
    where = {c: header.index(c) for c in columns}
    rows: dict[str, list[float]] = {c: [] for c in columns}
    for line, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        for column in columns:
            cell = row[where[column]].strip() if where[column] < len(row) else ""
            try:
                number = parse_timestamp(cell) if column == "timestamp" else float(cell)
            except ValueError:
                raise TraceError(f"{path}: line {line}: column '{column}': "
                                 f"{cell!r} is not {_WHAT[column]}") from None
            if not math.isfinite(number):
                raise TraceError(f"{path}: line {line}: column '{column}': {cell!r} is not a "
                                 "finite number")
            rows[column].append(number)
        times = rows["timestamp"]
        if len(times) > 1 and times[-1] <= times[-2]:
            raise TraceError(f"{path}: line {line}: column 'timestamp': not after the row "
                             "before (timestamps must increase)")
    if len(rows["timestamp"]) < 2:
        raise TraceError(f"{path}: needs at least two rows of data")
    arrays = {c: np.asarray(v, dtype=np.float64) for c, v in rows.items()}
    if value == "pv_w":
        arrays["pv_w"] = np.clip(arrays["pv_w"], 0.0, None)
    return Trace(path.name, arrays["timestamp"], arrays.get("ghi"), arrays.get("temp_air"),
                 arrays.get("pv_w"))
