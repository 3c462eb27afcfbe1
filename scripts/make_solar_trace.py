"""Derive the bundled solar trace from NREL's TMY3 file for Greensboro, NC (shipped in pvlib).

The source is `pvlib/data/723170TYA.CSV` inside the pvlib wheel (TMY3, NREL National Solar
Radiation Database, 1991-2005 update; US government work, public domain). We keep one row per
hour of the typical year with the columns a PV model needs, so the agent ships real weather
without depending on pvlib at run time.

    pip install pvlib && python scripts/make_solar_trace.py
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "edgeagent" / "sim" / "data" / "greensboro_tmy3.csv"


def tmy3_path() -> Path:
    import pvlib

    return Path(pvlib.__file__).parent / "data" / "723170TYA.CSV"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=None, help="TMY3 CSV (default: pvlib's)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    source = args.source or tmy3_path()
    with source.open(newline="") as f:
        rows = list(csv.reader(f))
    header = rows[1]
    col = {name: header.index(name) for name in header}
    with args.out.open("w", newline="") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(["month", "day", "hour", "ghi_w_m2", "dni_w_m2", "dhi_w_m2",
                      "temp_air_c", "wind_m_s"])
        for row in rows[2:]:
            month, day, _year = row[0].split("/")
            hour = int(row[1].split(":")[0]) - 1  # TMY3 hour 01:00 ends the interval 00:00-01:00
            out.writerow([int(month), int(day), hour, row[col["GHI (W/m^2)"]],
                          row[col["DNI (W/m^2)"]], row[col["DHI (W/m^2)"]],
                          row[col["Dry-bulb (C)"]], row[col["Wspd (m/s)"]]])
    print(f"wrote {args.out} ({len(rows) - 2} hours) from {source}")


if __name__ == "__main__":
    main()
