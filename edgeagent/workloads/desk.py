"""The job desk: once per tick, expire what is late, take the inbox in under admission control,
and write the results of finished jobs. The workers claim the admitted jobs themselves."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edgeagent.boards import BoardProfile
from edgeagent.config import BatteryConfig, GovernorConfig
from edgeagent.governor.decision import Capacity, Decision, Due
from edgeagent.governor.forecast import Forecast
from edgeagent.governor.policy import planned_capacity
from edgeagent.state import SiteState
from edgeagent.workloads.admission import (
    Outlook,
    Verdict,
    Work,
    admit,
    battery_above_reserve_wh,
    due,
)
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

    def due(self) -> tuple[Due, ...]:
        """The accepted deferrable work and its deadlines, for ``decide(..., due=...)``: the
        plan serves it first, as admission counted on."""
        return due(self.queue.planned_work())


def admission(now: float, state: SiteState, decision: Decision | None,
              forecast: Forecast | None, board: BoardProfile, battery: BatteryConfig,
              governor: GovernorConfig) -> Admit:
    """Admission at ``now``: on the capacity the governor plans (the decision in force gives
    the reserve and the plan's hysteresis) for the queue with the newcomer. The live desk and
    the simulator both judge jobs through this."""
    reserve = (decision.reserve_pct if decision is not None and decision.reserve_pct
               is not None else battery.reserve_soc_pct)

    # Admission counts on the forecast's cautious sun (Cucumber's conservative forecast).
    cautious = forecast.cautious() if forecast is not None else None

    def plan(jobs: Sequence[Work]) -> Capacity:
        return planned_capacity(state, now, cautious, board, battery, governor,
                                previous=decision, due=due(jobs))

    # Without coordinates there is no forecast: the plan counts on no sun beyond what it sees.
    outlook = Outlook(plan, cautious if cautious is not None else Forecast(now, 600.0, (), ()),
                      battery_above_reserve_wh(state.battery_soc_pct, reserve,
                                               battery.capacity_wh),
                      board.idle_w, board.watts_per_core,
                      blind=state.stale or state.battery_soc_pct is None)

    def judge(queued: Sequence[Work], job: Work) -> Verdict:
        return admit(queued, job, now, outlook)

    return judge
