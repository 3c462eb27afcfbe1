"""What the governor decides each tick: the work level and every knob that follows from it.

Plain data, shared by the live agent (which applies it through the actuators) and the simulator
(which applies it to its board and battery models).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

JobClass = Literal["urgent", "deferrable", "best-effort"]
JOB_CLASSES: tuple[JobClass, ...] = ("urgent", "deferrable", "best-effort")
DEFAULT_MODEL = "digits-int8"


@dataclass(frozen=True)
class Decision:
    """What the site does until the next tick.

    ``level`` is the work level, the share of the board's compute the workloads may use (0..1);
    ``workers`` the in-process inference workers it means. The knobs below follow from it; None
    means "leave as configured".
    """

    workers: int
    budget_w: float
    reason: str
    holding_reserve: bool = False
    model: str = DEFAULT_MODEL
    level: float = 0.0
    admit: frozenset[JobClass] = field(default_factory=frozenset)  # job classes taken now
    cpu_max: float | None = None  # cgroup cpu.max of the workloads slice, in CPUs
    freeze: bool = False  # cgroup.freeze of the workloads slice
    cpufreq_max_pct: float = 100.0  # scaling_max_freq as % of the hardware maximum
    power_mode_w: float | None = None  # Jetson nvpmodel mode, chosen by its budget in watts
    telemetry_interval_s: float | None = None
    sleep_until: float | None = None  # halt the board until this UTC epoch second
    reserve_pct: float | None = None  # the reserve floor in force (it rises after bad weeks)


@dataclass(frozen=True)
class Due:
    """Accepted work the plan must place: CPU-seconds left on one worker, and the deadline
    (UTC epoch seconds) they are due by."""

    deadline: float
    work_cpu_s: float


@dataclass(frozen=True)
class Capacity:
    """The workers the governor's plan gives each coming slot (one job each): slot 0 runs
    from ``start`` to ``first_end``, slot i > 0 for ``step_s`` after ``first_end`` +
    (i - 1) ``step_s`` (UTC epoch seconds). Past the last slot the plan's last whole day
    repeats, or nothing when it holds less than a day."""

    start: float
    first_end: float
    step_s: float
    workers: tuple[int, ...]

    def slot(self, t: float) -> tuple[int, float]:
        """The workers planned at ``t`` and the end of their slot."""
        if t < self.first_end - 1e-9:
            return self.workers[0], self.first_end
        i = 1 + math.floor((t - self.first_end) / self.step_s + 1e-9)
        end = self.first_end + i * self.step_s
        n = len(self.workers)
        if i < n:
            return self.workers[i], end
        day = round(86400.0 / self.step_s)
        if n - 1 < day:
            return 0, end
        return self.workers[n - day + (i - n) % day], end
