"""The normalized reading: one device's state in the design's contract (SI units in the names).

Every field but ``ts`` and ``driver`` is optional: absent means unknown, never 0.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict


class Reading(BaseModel):
    """What every driver produces. Frozen so a snapshot handed to the governor cannot change;
    ``extra="forbid"`` so a misspelt field fails in tests instead of vanishing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ts: float
    driver: str
    device_id: str | None = None
    product: str | None = None
    firmware: str | None = None
    battery_voltage_v: float | None = None
    battery_current_a: float | None = None  # positive = charging
    battery_power_w: float | None = None
    battery_soc_pct: float | None = None
    battery_temp_c: float | None = None
    time_to_go_min: float | None = None
    consumed_ah: float | None = None
    pv_voltage_v: float | None = None
    pv_current_a: float | None = None
    pv_power_w: float | None = None
    load_voltage_v: float | None = None
    load_current_a: float | None = None
    load_power_w: float | None = None
    load_on: bool | None = None
    charger_state: str | None = None
    error_code: int | None = None
    yield_today_kwh: float | None = None
    yield_yesterday_kwh: float | None = None
    yield_total_kwh: float | None = None
    max_power_today_w: float | None = None
    charged_kwh: float | None = None
    discharged_kwh: float | None = None
    cell_voltages_v: list[float] | None = None
    cycles: int | None = None
    capacity_ah: float | None = None
    remaining_ah: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The contract's JSON object: unknown fields are left out, never sent as 0 or null."""
        return self.model_dump(exclude_none=True)

    def to_json(self) -> str:
        """One compact JSON line (``edgeagent read --json``, ``decode``, telemetry)."""
        return json.dumps(self.to_dict(), separators=(",", ":"))
