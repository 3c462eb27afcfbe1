"""sd_notify for ``edgeagent run`` as a ``Type=notify`` unit, and a watchdog that pings only
while every loop of the agent makes progress.

Stdlib only (research/edge-agent-mqtt.md §6.4): one datagram per message to ``NOTIFY_SOCKET``
(a path, or an abstract name written ``@name``); nothing at all when it is unset, so the agent
runs the same outside systemd. ``WATCHDOG_USEC`` is honoured only when ``WATCHDOG_PID`` is
unset or names this process. The three variables are removed from the environment once read:
a child (the halt command, nvpmodel) must not speak for the agent.

The watchdog is pinged from the main loop, never from a timer thread that would keep pinging
while the work is stuck. Each loop answers a check: ``None`` while it progresses, otherwise why
not. A failed check stops the pings, so systemd kills the agent (SIGABRT) and restarts it.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from types import FrameType
from typing import NoReturn

import numpy as np
import numpy.typing as npt

from edgeagent.workloads.pool import Classifier

log = logging.getLogger(__name__)

ENV_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
STATUS_MIN_INTERVAL_S = 2.0  # STATUS= wakes PID 1: no more often than this
STALL_ENV = "EDGEAGENT_TEST_STALL"  # test-only: "worker" makes the workers' model hang

Check = Callable[[], str | None]


def _uint(text: str | None) -> int | None:
    """A decimal number as systemd writes one (ASCII digits only: ``str.isdigit`` would take
    "²" and ``int`` then raise), or None."""
    if not text or not text.isascii() or not text.isdigit():
        return None
    return int(text)


class SignalFlags:
    """Signals for the main loop to act on, recorded async-signal-safely.

    A Python handler runs in the main thread between two bytecodes, which may be inside a
    ``threading`` lock the main thread holds (``Event.wait``/``set``/``clear`` each take the
    Event's lock): a handler that calls ``Event.set()`` there deadlocks the agent. So the
    handler only appends the signal number to a list (one C call, no lock) and the main loop
    ``take``s them.
    """

    def __init__(self) -> None:
        self._pending: list[int] = []

    def install(self, signums: Sequence[int]) -> None:
        for signum in signums:
            signal.signal(signum, self.handler)

    def handler(self, signum: int, frame: FrameType | None) -> None:
        self._pending.append(signum)

    def take(self) -> list[int]:
        """The signals received since the last call, oldest first."""
        taken: list[int] = []
        while self._pending:
            taken.append(self._pending.pop(0))
        return taken


class Notifier:
    def __init__(self, environ: Mapping[str, str], pid: int) -> None:
        """Reads ``environ`` as systemd set it for process ``pid``."""
        address = environ.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        # As sd_watchdog_enabled: a WATCHDOG_PID that names another process (or is not a
        # number) means the watchdog is not ours; an unparsable WATCHDOG_USEC means none.
        usec, for_pid = _uint(environ.get("WATCHDOG_USEC")), environ.get("WATCHDOG_PID")
        ours = for_pid is None or _uint(for_pid) == pid
        self.watchdog_s: float | None = usec / 1e6 if usec and ours else None
        self._sock: socket.socket | None = None
        self._failed = False

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] = os.environ) -> Notifier:
        notifier = cls(environ, os.getpid())
        for name in ENV_VARS:
            environ.pop(name, None)
        return notifier

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *fields: str) -> bool:
        """One datagram of ``KEY=value`` lines; a failure is logged once, never raised."""
        if not self.address:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:
            if not self._failed:
                log.warning("sd_notify to %s failed: %s", self.address.replace("\0", "@"), exc)
            self._failed = True
            return False
        self._failed = False
        return True

    def ready(self) -> None:
        self.send("READY=1")

    def reloading(self) -> None:
        """``MONOTONIC_USEC`` lets systemd ≥ 253 tell this reload from an earlier one."""
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def stopping(self, why: str) -> None:
        self.send("STOPPING=1", f"STATUS={why}")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class StatusLine:
    """``STATUS=`` when the text changes, at most every ``min_interval_s``: a change that comes
    sooner goes out with the next ``update`` after the interval."""

    def __init__(self, notifier: Notifier, min_interval_s: float = STATUS_MIN_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.notifier = notifier
        self.min_interval_s = min_interval_s
        self.clock = clock
        self.sent: str | None = None
        self._sent_at = -float("inf")

    def update(self, text: str) -> None:
        now = self.clock()
        if text != self.sent and now - self._sent_at >= self.min_interval_s:
            self.notifier.status(text)
            self.sent, self._sent_at = text, now


class Watchdog:
    """Pings ``WATCHDOG=1`` every quarter interval (systemd asks for half at most; a quarter
    leaves room on a loaded board) while every check passes; stops at the first that fails,
    logs which once and keeps it in ``stuck`` (the service's ``STATUS`` says it)."""

    def __init__(self, notifier: Notifier, checks: Sequence[Check],
                 clock: Callable[[], float] = time.monotonic,
                 say: Callable[[str], None] = log.error) -> None:
        self.notifier = notifier
        self.checks = checks
        self.clock = clock
        self.say = say
        self.period_s = None if notifier.watchdog_s is None else notifier.watchdog_s / 4
        self.stuck: str | None = None
        self.pings = 0
        self._next = clock()

    def poll(self) -> None:
        """From the main loop, as often as it likes."""
        now = self.clock()
        if self.period_s is None or now < self._next:
            return
        self._next = now + self.period_s
        stuck = next((why for why in map(_run, self.checks) if why), None)
        if stuck is None:
            self.notifier.send("WATCHDOG=1")
            self.pings += 1
            if self.stuck is not None:
                self.say(f"watchdog: progressing again after {self.stuck}: pinging")
        elif self.stuck is None:  # logged when it happens, not at every poll
            self.say(f"watchdog: {stuck}: not pinging, systemd will restart the agent")
        self.stuck = stuck


def _run(check: Check) -> str | None:
    """A check that raises is a failed check (the pings stop, the journal says why), never an
    exception out of the main loop."""
    try:
        return check()
    except Exception as exc:
        name = getattr(check, "name", None) or getattr(check, "__name__", "check")
        return f"{name}: the watchdog check failed: {exc!r}"


class Heartbeat:
    """A loop that progresses while it ``beat``s at least every ``deadline_s()`` (a callable:
    a reload may change the loop's period). Calling it is its check."""

    def __init__(self, name: str, deadline_s: Callable[[], float],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.deadline_s = deadline_s
        self.clock = clock
        self.last = clock()

    def beat(self) -> None:
        self.last = self.clock()

    def __call__(self) -> str | None:
        age = self.clock() - self.last
        return f"{self.name}: no progress for {age:.0f} s" if age > self.deadline_s() else None


def alive(name: str, thread_alive: Callable[[], bool]) -> Check:
    """A thread that should run until the agent stops it."""
    return lambda: None if thread_alive() else f"{name}: thread died"


class _Hang:
    """A model that never answers: ``EDGEAGENT_TEST_STALL=worker`` (tests only) makes every
    worker block on it, to prove the watchdog stops pinging when a loop is stuck."""

    def classify(self, pixels_raw: npt.NDArray[np.uint8], k: int = 1) -> NoReturn:
        while True:
            threading.Event().wait()


def stall_seam(make_classifier: Callable[[str], Classifier],
               environ: Mapping[str, str] = os.environ) -> Callable[[str], Classifier]:
    if environ.get(STALL_ENV) == "worker":
        log.warning("%s=worker: the workers hang (a test seam, never for production)",
                    STALL_ENV)
        return lambda model: _Hang()
    return make_classifier
