"""cpufreq: cap ``scaling_max_freq`` of every policy at a share of the hardware maximum.

Capping the frequency lets the voltage drop too, the cheapest watts a board gives up per unit
of throughput. The cap is a share of ``cpuinfo_max_freq``, rounded down to a frequency the
driver offers (``scaling_available_frequencies``) so the value reads back exactly as written,
and never below ``cpuinfo_min_freq``. On a Jetson the power mode caps the CPUs too: a
``ceiling_khz`` (the current nvpmodel mode's CPU maximum) keeps us from lifting its cap.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

from edgeagent.actuators.base import (
    DEFAULT_MIN_INTERVAL_S,
    Clock,
    Knob,
    KnobActuator,
    KnobError,
    read_value,
    write_value,
)
from edgeagent.governor.decision import Decision


def cap_khz(pct: float, hw_min: int, hw_max: int, available: Sequence[int] = (),
            ceiling: int | None = None) -> int:
    """The ``scaling_max_freq`` for ``pct`` % of ``hw_max``: rounded down to an available
    frequency when the driver lists them, never below ``hw_min`` nor above ``ceiling``."""
    target = int(hw_max * min(max(pct, 0.0), 100.0) / 100.0)
    if ceiling is not None:
        target = min(target, ceiling)
    target = max(target, hw_min)
    offered = sorted(f for f in available if hw_min <= f <= hw_max)
    if not offered:
        return target
    below = [f for f in offered if f <= target]
    return below[-1] if below else offered[0]


def _int_or_inf(value: str) -> float:
    try:
        return int(value)
    except ValueError:
        return float("inf")


class CpufreqActuator(KnobActuator):
    name = "cpufreq"

    def __init__(self, sysfs_root: Path, *, dry_run: bool = False,
                 min_interval_s: float = DEFAULT_MIN_INTERVAL_S, clock: Clock = time.monotonic,
                 ceiling_khz: Callable[[], int | None] | None = None) -> None:
        """``sysfs_root`` is ``/sys`` on a board, a temporary tree in tests."""
        super().__init__(dry_run=dry_run, min_interval_s=min_interval_s, clock=clock)
        self.cpufreq_dir = sysfs_root / "devices" / "system" / "cpu" / "cpufreq"
        self.ceiling_khz = ceiling_khz

    def policies(self) -> list[Path]:
        """Every cpufreq policy (one per cluster of CPUs that share a clock)."""
        found = sorted(self.cpufreq_dir.glob("policy*"), key=lambda p: (len(p.name), p.name))
        if not found:
            raise KnobError(f"missing {self.cpufreq_dir}/policy*: no cpufreq on this machine "
                            "(or its driver is not loaded)")
        return found

    def _apply(self, decision: Decision) -> None:
        ceiling = self.ceiling_khz() if self.ceiling_khz else None
        for policy in self.policies():
            try:
                hw_min = int(read_value(str(policy / "cpuinfo_min_freq")))
                hw_max = int(read_value(str(policy / "cpuinfo_max_freq")))
            except (OSError, ValueError) as exc:
                self._error(policy.name, f"cannot read the limits of {policy}: {exc}")
                continue
            try:
                available = [int(f) for f in
                             read_value(str(policy / "scaling_available_frequencies")).split()]
            except (OSError, ValueError):  # many drivers (e.g. CPPC, intel_pstate) list none
                available = []
            path = str(policy / "scaling_max_freq")
            knob = Knob(f"{policy.name}/scaling_max_freq", path,
                        read=partial(read_value, path), write=partial(write_value, path),
                        allows=_int_or_inf)
            self._set(knob, str(cap_khz(decision.cpufreq_max_pct, hw_min, hw_max, available,
                                        ceiling)))
