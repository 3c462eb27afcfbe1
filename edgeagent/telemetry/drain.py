"""How fast the outbox backlog drains: the governor's budget applies to the uplink too.

After an outage the backlog can be hours of rows, and sending it keeps the modem and the CPU
busy. Live rows (everything queued since the link began to hold) always go out at once; the
backlog drains freely when the site has surplus and trickles when the governor runs lean (its
decision stretches the telemetry interval) on a battery that is not full. Receivers order by
``seq``, so rows may arrive out of order while the link holds.
"""

from __future__ import annotations

from edgeagent.governor.decision import Decision
from edgeagent.state import SiteState

TRICKLE_ROWS = 10  # backlog rows per governor tick while lean
FULL_SOC_PCT = 98.0


def battery_full(state: SiteState) -> bool:
    """Full, or the charger holds the panel back (float): sending costs the battery nothing."""
    soc = state.battery_soc_pct
    return state.charger_state == "float" or (soc is not None and soc >= FULL_SOC_PCT)


def drain_allowance(backlog: int, decision: Decision | None, full: bool,
                    trickle: int = TRICKLE_ROWS) -> int | None:
    """Backlog rows the link may send until the next tick; None: as many as it can."""
    lean = decision is not None and decision.telemetry_interval_s is not None
    if not lean or full or backlog <= trickle:
        return None
    return trickle
