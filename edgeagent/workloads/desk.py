"""The job desk: once per tick, expire what is late, take the inbox in under admission control,
and write the results of finished jobs. The workers claim the admitted jobs themselves."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edgeagent.boards import BoardProfile
from edgeagent.config import BatteryConfig, GovernorConfig
from edgeagent.governor.decision import Decision
from edgeagent.governor.forecast import Forecast
from edgeagent.state import SiteState
from edgeagent.workloads.admission import Budget, Verdict, Work, admit, battery_above_reserve_wh
from edgeagent.workloads.inbox import Intake
from edgeagent.workloads.jobs import Admit, JobQueue


@dataclass
class JobDesk:
    queue: JobQueue
    intake: Intake | None
    board: BoardProfile
    battery: BatteryConfig
    governor: GovernorConfig

    def tick(self, now: float, state: SiteState, decision: Decision | None,
             forecast: Forecast | None) -> None:
        self.queue.expire(now)
        if self.intake is not None:
            self.intake.poll(now, admission(now, state, decision, forecast, self.board,
                                            self.battery, self.governor))

    def urgent_waiting(self, now: float) -> bool:
        return self.queue.next_runnable({"urgent"}, now) is not None


def admission(now: float, state: SiteState, decision: Decision | None,
              forecast: Forecast | None, board: BoardProfile, battery: BatteryConfig,
              governor: GovernorConfig) -> Admit:
    """Admission at ``now``: the forecast, and the battery above the reserve in force. The
    live desk and the simulator both judge jobs through this."""
    reserve = (decision.reserve_pct if decision is not None and decision.reserve_pct
               is not None else battery.reserve_soc_pct)
    capacity = battery.capacity_wh
    budget = Budget.for_board(
        board, governor.max_workers,
        battery_above_reserve_wh(state.battery_soc_pct, reserve, capacity),
        battery_max_wh=capacity * (100 - reserve) / 100,
        charge_efficiency=governor.charge_efficiency,
        discharge_efficiency=governor.discharge_efficiency)
    # Without coordinates there is no forecast: admission counts on the battery alone.
    sun = forecast if forecast is not None else Forecast(now, 600.0, (), ())

    def judge(queued: Sequence[Work], job: Work) -> Verdict:
        return admit(queued, job, now, sun, budget)

    return judge
