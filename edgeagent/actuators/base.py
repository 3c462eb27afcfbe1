"""The one small interface every actuator has, and the engine the machine knobs share.

An actuator turns the governor's Decision into writes on the machine. It never raises into the
agent: a missing file, a permission the systemd unit has not granted yet, or a value that does
not read back as written becomes an error in its result, counted and logged once, and the agent
keeps governing. Each knob is written only when its value changes, every write is read back,
and raising a knob is rate-limited (lowering it, the safe direction, is not), so a flapping
decision stream costs a bounded number of writes.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from edgeagent.governor.decision import Decision

log = logging.getLogger("edgeagent.actuators")

Clock = Callable[[], float]
DEFAULT_MIN_INTERVAL_S = 30.0


@dataclass(frozen=True)
class Write:
    """One knob changed (or, in a dry run, what would have been written)."""

    knob: str
    target: str  # the file written, or the command run
    old: str
    new: str
    verified: bool  # read back as written (always False in a dry run: nothing was written)
    dry_run: bool = False


@dataclass(frozen=True)
class ActuatorResult:
    """What one actuator did with one decision."""

    name: str
    writes: tuple[Write, ...] = ()
    errors: tuple[str, ...] = ()
    deferred: tuple[str, ...] = ()  # knobs whose raise waits for the rate limit

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def verified(self) -> bool:
        """Every real write read back as written, and nothing failed."""
        return self.ok and all(w.verified for w in self.writes if not w.dry_run)


class Actuator(Protocol):
    """A plugin that applies the part of a Decision it owns; it must not raise."""

    name: str

    def apply(self, decision: Decision) -> ActuatorResult: ...


class KnobError(Exception):
    """A knob could not be read or written; the message says what to do about it."""


def describe_os_error(exc: OSError, target: str, action: str,
                      missing: str = "this knob does not exist on this machine or kernel") -> str:
    """A message an operator can act on: root-only knobs are the usual cause on a board."""
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (f"permission denied {action} {target}: the agent's user needs write access "
                "(granted by the udev/tmpfiles rules that come with the systemd unit)")
    if exc.errno == errno.ENOENT:
        return f"missing {target}: {missing}"
    return f"{action} {target} failed: {exc.strerror or exc}"


def read_value(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def write_value(path: str, value: str) -> None:
    """One write(2) of the whole value: sysfs and cgroupfs take a value per write."""
    with open(path, "w") as f:
        f.write(value)


@dataclass(frozen=True)
class Knob:
    """One value on the machine, as the engine sees it."""

    name: str
    target: str
    read: Callable[[], str]
    write: Callable[[str], None]
    allows: Callable[[str], float]  # how much power a value allows: lowering is never delayed
    confirm: Callable[[str], str | None] | None = None  # after a write: None, or what is wrong
    show: Callable[[str], str] = repr  # a value as the log shows it
    missing: str = "this knob does not exist on this machine or kernel"  # why it may be absent


@dataclass
class _KnobState:
    last_write: float | None = None
    pretend: str | None = None  # dry run: the value we would have written
    error: str | None = None  # the last error logged, so a repeated failure logs once


@dataclass
class _Outcome:
    writes: list[Write] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)
    failed: set[str] = field(default_factory=set)


class KnobActuator:
    """Base of the actuators that write knobs: subclasses say which knobs get which values."""

    name = "knobs"

    def __init__(self, *, dry_run: bool = False, min_interval_s: float = DEFAULT_MIN_INTERVAL_S,
                 clock: Clock = time.monotonic) -> None:
        """``min_interval_s`` is the least time between a write to a knob and the next write
        that raises it (a lowering always goes through at once)."""
        self.dry_run = dry_run
        self.min_interval_s = min_interval_s
        self.clock = clock
        self._states: dict[str, _KnobState] = {}
        self._outcome = _Outcome()

    def apply(self, decision: Decision) -> ActuatorResult:
        self._outcome = out = _Outcome()
        try:
            self._apply(decision)
        except (OSError, KnobError) as exc:  # a failure outside any one knob (discovery)
            self._error(self.name, str(exc))
        for key, state in self._states.items():  # a failure that stopped is logged anew
            if key not in out.failed:
                state.error = None
        return ActuatorResult(self.name, tuple(out.writes), tuple(out.errors), tuple(out.deferred))

    def _apply(self, decision: Decision) -> None:
        raise NotImplementedError

    def _error(self, knob: str, message: str) -> None:
        state = self._states.setdefault(knob, _KnobState())
        self._outcome.failed.add(knob)
        if state.error != message:
            log.warning("%s: %s", self.name, message)
            state.error = message
        self._outcome.errors.append(message)

    def _set(self, knob: Knob, desired: str) -> None:
        """Bring ``knob`` to ``desired`` if it differs, unless the rate limit holds a raise."""
        state = self._states.setdefault(knob.name, _KnobState())
        try:
            current = state.pretend if self.dry_run and state.pretend is not None else knob.read()
        except (OSError, KnobError) as exc:
            self._error(knob.name, self._describe(exc, knob, "reading"))
            return
        if current == desired:
            return
        now = self.clock()
        raising = knob.allows(desired) >= knob.allows(current)
        if (raising and state.last_write is not None
                and now - state.last_write < self.min_interval_s):
            self._outcome.deferred.append(knob.name)
            return
        if self.dry_run:
            state.pretend, state.last_write = desired, now
            log.info("%s: %s: %s -> %s (dry run, not written)", self.name, knob.target,
                     knob.show(current), knob.show(desired))
            self._outcome.writes.append(Write(knob.name, knob.target, current, desired,
                                              verified=False, dry_run=True))
            return
        try:
            knob.write(desired)
        except (OSError, KnobError) as exc:  # nothing changed: the next tick may try again
            self._error(knob.name, self._describe(exc, knob, "writing"))
            return
        state.last_write = now
        try:
            after = knob.read()
        except (OSError, KnobError) as exc:
            after = f"unreadable ({self._describe(exc, knob, 'reading')})"
        if after != desired:
            problem: str | None = f"wrote {desired!r} to {knob.target}; it reads back {after!r}"
        else:
            problem = knob.confirm(desired) if knob.confirm else None
        self._outcome.writes.append(Write(knob.name, knob.target, current, desired,
                                          verified=problem is None))
        if problem is None:
            log.info("%s: %s: %s -> %s (verified)", self.name, knob.target, knob.show(current),
                     knob.show(desired))
        else:
            self._error(knob.name, problem)

    @staticmethod
    def _describe(exc: OSError | KnobError, knob: Knob, action: str) -> str:
        if isinstance(exc, OSError):
            return describe_os_error(exc, knob.target, action, knob.missing)
        return str(exc)
