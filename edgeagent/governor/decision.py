"""What the governor decides each tick: the work level and every knob that follows from it.

Plain data, shared by the live agent (which applies it through the actuators) and the simulator
(which applies it to its board and battery models).
"""

from __future__ import annotations

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
