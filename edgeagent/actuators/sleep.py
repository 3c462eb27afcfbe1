"""Sleep: arm the RTC wake alarm for the governor's ``sleep_until``, then halt the board.

The board is halted only when it can wake itself: its RTC's alarm
(``<sysfs_root>/class/rtc/<rtc>/wakealarm``) is cleared (``0``: the kernel refuses a new alarm
while one is set), set to the wake time in UTC epoch seconds (the RTC keeps UTC, as Linux sets
it), and read back. Then the service's ``on_before_halt`` hook runs (it stops the workers, says
offline, closes the outbox and the job queue), the alarm is read back again (still armed, and
at least ``HALT_LEAD_S`` ahead: stopping may take a while) and the halt command does the rest.
A board with no RTC alarm (a Raspberry Pi 4 without an RTC HAT; a Pi 5 and the Jetsons have
one) is never halted: the refusal is logged and reported, and the board stays up. Waking by
the charge controller's load-output timer is out of scope: nothing here programs a charger.

Safety: no halt within ``grace_s`` of the agent's start (a misconfigured site cannot boot-loop
into sleep), none for less than ``min_sleep_s``, and none to a wake time in the past or more
than ``max_sleep_s`` away (a wrong clock must not cost days). Every write is read back and
logged; one that does not read back as written means no halt. A dry run logs what it would do
and writes nothing.

The halt command (``systemctl poweroff`` by default) runs through an injectable runner, like
nvpmodel's: tests use a fake. The agent runs unprivileged, so on a board the command must be
allowed by a polkit rule for the agent's user or go through a small privileged helper (issue 7
ships it); until then it fails, and the failure is reported. A failed attempt clears the alarm
and the next waits ``RETRY_S``; if the hook had already closed the agent's resources, the
actuator never tries again: the service exits non-zero so systemd restarts it (and the grace
period keeps it up for a while).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from edgeagent.actuators.base import (
    ActuatorResult,
    Clock,
    KnobError,
    Write,
    describe_os_error,
    read_value,
    write_value,
)
from edgeagent.actuators.nvpmodel import Runner, run_command
from edgeagent.governor.decision import Decision

log = logging.getLogger("edgeagent.actuators")

DEFAULT_SLEEP_COMMAND = ("systemctl", "poweroff")
DEFAULT_MIN_SLEEP_S = 20 * 60.0
DEFAULT_MAX_SLEEP_S = 36 * 3600.0
DEFAULT_GRACE_S = 30 * 60.0
SLOPPY_RTC_S = 60  # an RTC with minute resolution may read back up to this much earlier
RETRY_S = 600.0  # after a failed attempt to arm or halt, the next one waits this long
HALT_LEAD_S = 120.0  # the alarm must be at least this far ahead when the halt command runs

BeforeHalt = Callable[[float], None]


def utc(epoch_s: float) -> str:
    return dt.datetime.fromtimestamp(epoch_s, tz=dt.timezone.utc).isoformat(timespec="seconds")


class SleepActuator:
    name = "sleep"

    def __init__(self, sysfs_root: Path = Path("/sys"), *, rtc: str = "rtc0",
                 command: Sequence[str] = DEFAULT_SLEEP_COMMAND, runner: Runner = run_command,
                 on_before_halt: BeforeHalt | None = None,
                 min_sleep_s: float = DEFAULT_MIN_SLEEP_S,
                 max_sleep_s: float = DEFAULT_MAX_SLEEP_S, grace_s: float = DEFAULT_GRACE_S,
                 dry_run: bool = False, clock: Clock = time.monotonic,
                 epoch: Clock = time.time) -> None:
        """``clock`` times the grace period from now (the agent's start); ``epoch`` is the
        UTC wall clock the wake time is checked against."""
        self.wakealarm = sysfs_root / "class" / "rtc" / rtc / "wakealarm"
        self.command = tuple(command)
        self.runner = runner
        self.on_before_halt = on_before_halt
        self.min_sleep_s = min_sleep_s
        self.max_sleep_s = max_sleep_s
        self.grace_s = grace_s
        self.dry_run = dry_run
        self.clock = clock
        self.epoch = epoch
        self.started = clock()
        self.halting = False  # the before-halt hook ran: the agent's resources are closed
        self.halted = False  # the halt command was accepted: the board is going down
        self.wake_at: int | None = None  # the wake time armed for the halt
        self._said: str | None = None  # the last message logged, so a repeat is not
        self._failed: tuple[str, float] | None = None  # the last failed attempt, retry time

    def apply(self, decision: Decision) -> ActuatorResult:
        if decision.sleep_until is None or self.halting or self.halted:
            self._said = None
            return ActuatorResult(self.name)
        if not math.isfinite(decision.sleep_until):
            return self._refuse(f"wake time {decision.sleep_until} is not a time; staying up")
        wake = math.ceil(decision.sleep_until)
        left = self.grace_s - (self.clock() - self.started)
        if left > 0:
            self._say(logging.INFO, f"sleep until {utc(wake)} held: no halt within "
                                    f"{self.grace_s:g} s of the agent's start")
            return ActuatorResult(self.name, deferred=("sleep",))
        problem = self._refusal(wake)
        if problem is not None:
            return self._refuse(problem)
        if self._failed is not None and self.clock() < self._failed[1]:
            return self._refuse(self._failed[0])  # the last attempt failed: not every tick
        if self.dry_run:
            self._say(logging.INFO, f"would write 0 then {wake} ({utc(wake)}) to "
                                    f"{self.wakealarm}, stop the agent and run "
                                    f"`{' '.join(self.command)}` (dry run: nothing written)")
            return ActuatorResult(self.name, writes=(
                Write("wakealarm", str(self.wakealarm), "", str(wake), False, dry_run=True),
                Write("halt", " ".join(self.command), "up", f"halted until {utc(wake)}", False,
                      dry_run=True)))
        return self._sleep(wake)

    def _refusal(self, wake: int) -> str | None:
        """Why the board must not halt until ``wake`` (None: it may)."""
        if not self.wakealarm.exists():
            return (f"no RTC wake alarm at {self.wakealarm}: this board could not wake itself "
                    "(a Raspberry Pi 4 has no RTC without a HAT; see actuators.rtc), so it "
                    "stays up")
        span = wake - self.epoch()
        if span <= 0:
            return f"wake time {utc(wake)} is in the past; staying up"
        if span < self.min_sleep_s:
            return (f"the sleep until {utc(wake)} is shorter than "
                    f"actuators.sleep_min_s ({self.min_sleep_s:g} s); staying up")
        if span > self.max_sleep_s:
            return (f"wake time {utc(wake)} is {span / 3600:.1f} h away, beyond "
                    f"actuators.sleep_max_s ({self.max_sleep_s / 3600:g} h); staying up")
        return None

    def _sleep(self, wake: int) -> ActuatorResult:
        target = str(self.wakealarm)
        writes: list[Write] = []
        try:
            old = read_value(target)
            for value in ("0", str(wake)):
                write_value(target, value)
                after = read_value(target)
                ok = after in ("", "0") if value == "0" else _armed(after, wake)
                writes.append(Write("wakealarm", target, old, value, verified=ok))
                if not ok:
                    return self._fail(f"wrote {value!r} to {target}; it reads back "
                                        f"{after!r}; staying up", writes)
                log.info("sleep: %s: %r -> %r (verified)", target, old, value)
                old = after
        except OSError as exc:
            return self._fail(describe_os_error(
                exc, target, "writing", "this RTC has no alarm (see actuators.rtc)"), writes)
        self.wake_at = wake
        if self.on_before_halt is not None:
            self.halting = True  # from here the agent's outbox and queue may be closed
            try:
                self.on_before_halt(wake)
            except Exception as exc:  # the halt waits for a clean stop, or does not happen
                log.exception("sleep: stopping the agent before the halt failed")
                return self._fail(f"stopping the agent before the halt failed "
                                    f"({type(exc).__name__}: {exc}); not halted", writes)
            # Stopping may have taken a while: the alarm must still be armed, and far enough
            # ahead that it does not fire before the board is down (it would never wake).
            problem = self._still_armed(wake)
            if problem is not None:
                return self._fail(problem, writes)
        command = " ".join(self.command)
        try:
            done = self.runner(self.command)
        except (OSError, KnobError) as exc:
            problem = (describe_os_error(exc, command, "running") if isinstance(exc, OSError)
                       else str(exc))
            return self._fail(f"halt failed: {problem}", writes)
        if done.returncode != 0:
            output = f"{done.stdout}\n{done.stderr}".strip()
            last = output.splitlines()[-1] if output else "no output"
            return self._fail(
                f"`{command}` failed (exit {done.returncode}): {last} (the agent runs "
                "unprivileged: allow the command with a polkit rule or set "
                "actuators.sleep_command to a privileged helper)", writes)
        self.halted = True
        log.warning("sleep: `%s` accepted: halting until %s (RTC %s armed, verified)", command,
                    utc(wake), target)
        writes.append(Write("halt", command, "up", f"halted until {utc(wake)}", verified=True))
        return ActuatorResult(self.name, writes=tuple(writes))

    def _still_armed(self, wake: int) -> str | None:
        """Why the armed alarm no longer does for a halt now (None: it still does)."""
        try:
            after = read_value(str(self.wakealarm))
        except OSError as exc:
            return describe_os_error(exc, str(self.wakealarm), "reading")
        if not _armed(after, wake):
            return (f"{self.wakealarm} reads back {after!r} after stopping the agent, not "
                    f"{wake}; not halted")
        if wake - self.epoch() < HALT_LEAD_S:
            return (f"stopping the agent took until {utc(self.epoch())}, too close to the wake "
                    f"time {utc(wake)} for the board to be down before the alarm; not halted")
        return None

    def _disarm(self) -> None:
        """Clear an alarm we may have set: the board stays up, and nothing is left armed."""
        try:
            write_value(str(self.wakealarm), "0")
        except OSError as exc:
            log.warning("sleep: could not clear %s: %s", self.wakealarm, exc)

    def _fail(self, problem: str, writes: Sequence[Write] = ()) -> ActuatorResult:
        """An attempt failed midway: clear the alarm, report, and wait before the next."""
        self._disarm()
        self._failed = (problem, self.clock() + RETRY_S)
        return self._refuse(problem, writes)

    def _refuse(self, problem: str, writes: Sequence[Write] = ()) -> ActuatorResult:
        self._say(logging.WARNING, problem)
        return ActuatorResult(self.name, writes=tuple(writes), errors=(problem,))

    def _say(self, level: int, message: str) -> None:
        """Log ``message`` unless it is the one logged last (the governor asks every tick)."""
        if message != self._said:
            log.log(level, "sleep: %s", message)
            self._said = message


def _armed(readback: str, wake: int) -> bool:
    """The alarm reads back as ``wake``, or a little earlier on an RTC with coarse alarms."""
    try:
        return wake - SLOPPY_RTC_S <= int(readback) <= wake
    except ValueError:
        return False
