"""SiteState: one immutable, timestamped snapshot of the site's power, built from readings.

It is what the governor sees. Staleness is part of the state, not an afterthought: a snapshot
whose power data is too old says so, and the governor treats it as unknown.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from edgeagent.power.reading import Reading


@dataclass(frozen=True)
class SiteState:
    """The site's power now. ``None`` means unknown (no device reported it, or it is stale)."""

    pv_power_w: float | None = None
    battery_voltage_v: float | None = None
    battery_current_a: float | None = None
    battery_power_w: float | None = None
    battery_soc_pct: float | None = None
    load_power_w: float | None = None
    charger_state: str | None = None
    age_s: float | None = None
    stale: bool = True
    # The board's supply sags now (a Raspberry Pi's firmware flag, power.throttle): shed load.
    under_voltage: bool | None = None

    @classmethod
    def from_readings(cls, readings: Iterable[tuple[Reading | None, float | None]],
                      stale_after_s: float) -> SiteState:
        """Merge the latest reading of each device, given as ``(reading, age_s)`` pairs.

        A device's fields count only while its reading is fresh. The first fresh device that
        reports a field wins (list the battery monitor before the charger for battery fields).
        The state is stale when no fresh device reports the battery's state of charge, the one
        quantity the governor cannot act safely without.
        """
        fields: dict[str, float | str] = {}
        ages: list[float] = []
        for reading, age in readings:
            if reading is None or age is None or age > stale_after_s:
                continue
            ages.append(age)
            for name in ("pv_power_w", "battery_voltage_v", "battery_current_a",
                         "battery_power_w", "battery_soc_pct", "load_power_w", "charger_state"):
                value = getattr(reading, name)
                if value is not None and name not in fields:
                    fields[name] = value
        age_s = max(ages) if ages else None
        stale = "battery_soc_pct" not in fields
        return cls(age_s=age_s, stale=stale, **fields)  # type: ignore[arg-type]
