"""cgroup v2 ``cpu.max`` and ``cgroup.freeze`` of the workloads slice.

The slice holds work that is not ours (containers, batch jobs the site runs): capping its CPU
quota and freezing it is how the governor sheds that work. Our own workers are throttled by
the worker pool actuator instead. The kernel reports ``cpu.max`` as "$QUOTA $PERIOD" in µs or
"max $PERIOD"; a freeze is complete when ``cgroup.events`` says ``frozen 1``.
"""

from __future__ import annotations

import math
import time
from functools import partial
from pathlib import Path

from edgeagent.actuators.base import (
    DEFAULT_MIN_INTERVAL_S,
    Clock,
    Knob,
    KnobActuator,
    describe_os_error,
    read_value,
    write_value,
)
from edgeagent.governor.decision import Decision

PERIOD_US = 100_000  # the kernel's default period
MIN_QUOTA_US = 1_000  # the kernel refuses a smaller quota


def cpu_max_value(cpus: float | None, period_us: int = PERIOD_US) -> str:
    """``cpu.max`` for a quota of ``cpus`` CPUs (None: unlimited)."""
    if cpus is None:
        return f"max {period_us}"
    quota = max(MIN_QUOTA_US, round(cpus * period_us))
    return f"{quota} {period_us}"


def cpus_allowed(cpu_max: str) -> float:
    """The CPUs a ``cpu.max`` value allows (inf for "max"; inf for a value we cannot parse, so
    that any parsable target counts as a lowering and is written at once)."""
    try:
        quota, period = cpu_max.split()
        return math.inf if quota == "max" else int(quota) / int(period)
    except ValueError:
        return math.inf


def _events_frozen(text: str) -> str | None:
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "frozen":
            return value.strip()
    return None


class CgroupActuator(KnobActuator):
    name = "cgroup"

    def __init__(self, cgroup_root: Path, slice_path: str, *, dry_run: bool = False,
                 min_interval_s: float = DEFAULT_MIN_INTERVAL_S, clock: Clock = time.monotonic,
                 freeze_wait_s: float = 0.5) -> None:
        """``cgroup_root`` is the cgroup2 mount (``/sys/fs/cgroup``); ``slice_path`` the slice
        under it. A freeze is given ``freeze_wait_s`` to complete before it counts as failed."""
        super().__init__(dry_run=dry_run, min_interval_s=min_interval_s, clock=clock)
        self.path = cgroup_root / slice_path
        self.freeze_wait_s = freeze_wait_s

    def _apply(self, decision: Decision) -> None:
        if not self.path.is_dir():
            self._error("slice", f"missing cgroup {self.path}: create the workloads slice "
                                 "(a systemd .slice unit) or fix actuators.cgroup_slice")
            return
        freeze_path = str(self.path / "cgroup.freeze")
        cpu_max_path = str(self.path / "cpu.max")
        freeze = Knob("cgroup.freeze", freeze_path,
                      read=partial(read_value, freeze_path),
                      write=partial(write_value, freeze_path),
                      allows=lambda v: 0.0 if v == "1" else 1.0,
                      confirm=self._confirm_frozen)
        cpu_max = Knob("cpu.max", cpu_max_path,
                       read=partial(read_value, cpu_max_path),
                       write=partial(write_value, cpu_max_path),
                       allows=cpus_allowed,
                       missing="the cpu controller is not enabled for this cgroup (its parent's "
                               "cgroup.subtree_control lacks +cpu)")
        # Freeze before changing the quota and thaw after it: thawed work meets the new
        # quota, never the old one.
        if decision.freeze:
            self._set(freeze, "1")
            self._set(cpu_max, cpu_max_value(decision.cpu_max))
        else:
            self._set(cpu_max, cpu_max_value(decision.cpu_max))
            self._set(freeze, "0")

    def _confirm_frozen(self, desired: str) -> str | None:
        """The kernel freezes asynchronously: wait briefly for ``cgroup.events`` to agree."""
        events = self.path / "cgroup.events"
        deadline = time.monotonic() + self.freeze_wait_s
        while True:
            try:
                frozen = _events_frozen(read_value(str(events)))
            except OSError as exc:
                return "cannot confirm the freeze: " + describe_os_error(exc, str(events),
                                                                         "reading")
            if frozen == desired:
                return None
            if time.monotonic() >= deadline:
                return (f"{events} says frozen {frozen} {self.freeze_wait_s:g} s after writing "
                        f"cgroup.freeze {desired}")
            time.sleep(0.02)
