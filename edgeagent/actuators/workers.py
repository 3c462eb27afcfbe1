"""The in-process worker pool as an actuator: the decision's worker count and model variant.

It is an actuator like the others so the agent applies a decision in one place, with the same
rate limit (a raise waits, a cut is immediate) and the same report. It touches nothing outside
the process, so a dry run does not apply to it: the agent still does its own work.
"""

from __future__ import annotations

import time
from typing import Protocol

from edgeagent.actuators.base import DEFAULT_MIN_INTERVAL_S, Clock, Knob, KnobActuator
from edgeagent.governor.decision import Decision


class Pool(Protocol):
    """What the actuator needs of ``edgeagent.workloads.pool.WorkerPool``."""

    max_workers: int

    @property
    def workers(self) -> int: ...

    @property
    def model(self) -> str: ...

    def set_workers(self, n: int) -> None: ...

    def set_model(self, model: str) -> None: ...


def _worker_count(value: str) -> float:
    return int(value)


class WorkerPoolActuator(KnobActuator):
    name = "workers"

    def __init__(self, pool: Pool, *, min_interval_s: float = DEFAULT_MIN_INTERVAL_S,
                 clock: Clock = time.monotonic) -> None:
        super().__init__(dry_run=False, min_interval_s=min_interval_s, clock=clock)
        self.pool = pool

    def _apply(self, decision: Decision) -> None:
        # The model first: extra workers allowed afterwards start on the chosen variant.
        self._set(Knob("model", "worker pool model", read=lambda: self.pool.model,
                       write=self.pool.set_model, allows=lambda _: 1.0), decision.model)
        workers = Knob("workers", "worker pool", read=lambda: str(self.pool.workers),
                       write=lambda v: self.pool.set_workers(int(v)), allows=_worker_count)
        self._set(workers, str(min(max(decision.workers, 0), self.pool.max_workers)))
