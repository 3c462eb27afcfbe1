"""The governor: a pure function from site state to how much compute the site can afford now.

No I/O and no clock: the live agent and the simulator call this same code. The rule is simple
on purpose (issue 5 refines it):

* unknown or stale power data, or a battery at or below its reserve: no work (the safe choice);
* after hitting the reserve, stay off until the battery is back above reserve + margin;
* otherwise afford the solar surplus over the board's idle draw, plus the battery energy above
  the reserve spread over a horizon, and run as many workers as that power pays for;
* run the workload's main model, or the cheaper fallback whose budget band the budget is in.
"""

from __future__ import annotations

import math

from edgeagent.boards import BoardProfile
from edgeagent.config import BatteryConfig, GovernorConfig, WorkloadConfig
from edgeagent.governor.decision import Decision
from edgeagent.state import SiteState

#: Leaving a fallback for a costlier model needs the budget this much above the fallback's
#: threshold, so a budget hovering at a threshold does not reload models every tick.
MODEL_UP_MARGIN = 0.1
DEFAULT_WORKLOAD = WorkloadConfig()


def choose_model(budget_w: float, workload: WorkloadConfig, previous: str | None) -> str:
    """The main model, or the fallback for the scarcest budget band ``budget_w`` is in."""
    bands = {f.model: f.below_budget_w for f in workload.fallbacks}
    chosen, threshold = workload.model, math.inf
    for fallback in workload.fallbacks:
        if budget_w < fallback.below_budget_w < threshold:
            chosen, threshold = fallback.model, fallback.below_budget_w
    if previous is not None and previous != chosen:
        held = bands.get(previous)
        if held is not None and held < threshold and budget_w < held * (1 + MODEL_UP_MARGIN):
            return previous
    return chosen


def decide(state: SiteState, board: BoardProfile, battery: BatteryConfig,
           governor: GovernorConfig, previous: Decision | None = None,
           workload: WorkloadConfig = DEFAULT_WORKLOAD) -> Decision:
    # With no work to do there is nothing to gain from swapping models: keep the last one.
    idle_model = previous.model if previous is not None else workload.model
    if state.stale or state.battery_soc_pct is None:
        # Safe: no work. Not knowing is not a reserve hit, but a hit before it still counts.
        holding = previous is not None and previous.holding_reserve
        return Decision(0, 0.0, "power data stale or missing", holding_reserve=holding,
                        model=idle_model)
    soc = state.battery_soc_pct
    if soc <= battery.reserve_soc_pct:
        return Decision(0, 0.0, f"battery {soc:.0f}% at or below reserve", holding_reserve=True,
                        model=idle_model)
    recovering = previous is not None and previous.holding_reserve
    if recovering and soc < battery.reserve_soc_pct + battery.resume_margin_pct:
        return Decision(0, 0.0, f"battery {soc:.0f}% recovering above reserve",
                        holding_reserve=True, model=idle_model)
    surplus_w = (state.pv_power_w or 0.0) - board.idle_w
    above_reserve_wh = battery.capacity_wh * (soc - battery.reserve_soc_pct) / 100.0
    budget_w = max(surplus_w, 0.0) + above_reserve_wh / governor.horizon_h
    workers = min(governor.max_workers, math.floor(budget_w / board.watts_per_core))
    reason = f"budget {budget_w:.1f} W (surplus {surplus_w:.1f} W, battery {soc:.0f}%)"
    model = choose_model(budget_w, workload, None if previous is None else previous.model)
    return Decision(max(workers, 0), budget_w, reason, model=model)
