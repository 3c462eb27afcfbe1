"""Jetson power modes through ``nvpmodel``: the mode whose budget best fits the governor's watts.

Mode ids differ between boards and JetPack releases (mode 0 is MAXN on a Nano, 15 W on an Orin
Nano), so the modes are read from ``/etc/nvpmodel.conf`` (``< POWER_MODEL ID=1 NAME=7W >``;
``nvpmodel -p --verbose`` lists the same when the file is unreadable) and matched by the watts
in their names. A mode without watts in its name (MAXN, MAXN_SUPER) is the unconstrained one:
it is worth the board profile's top budget when that is above every named mode (the Nano's
MAXN is its 10 W mode), and otherwise more than any budget, so the governor never picks it by
watts. The command goes through an injectable runner: tests cannot have a real nvpmodel.
"""

from __future__ import annotations

import math
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgeagent.actuators.base import (
    DEFAULT_MIN_INTERVAL_S,
    Clock,
    Knob,
    KnobActuator,
    KnobError,
    describe_os_error,
)
from edgeagent.governor.decision import Decision

Runner = Callable[[Sequence[str]], subprocess.CompletedProcess[str]]
COMMAND_TIMEOUT_S = 30.0

_POWER_MODEL = re.compile(r"POWER_MODEL\b(?P<attrs>[^>]*)")
_ATTR = re.compile(r"\b(ID|NAME)=([^\s>]+)")
_WATTS = re.compile(r"(\d+(?:\.\d+)?)W(?=_|$)")
_CPU_MAX = re.compile(r"^CPU_\w+\s+MAX_FREQ\s+(-?\d+)")
_QUERY = re.compile(r"NV Power Mode:\s*(\S+)")


@dataclass(frozen=True)
class PowerMode:
    id: int
    name: str
    watts: float | None  # from the name ("15W", "MODE_15W_6CORE"); None for MAXN-style names
    cpu_max_khz: int | None = None  # the mode's CPU frequency cap; None: uncapped or unknown


def parse_modes(text: str) -> list[PowerMode]:
    """The power modes in an nvpmodel.conf (or ``nvpmodel -p --verbose`` output)."""
    modes: list[PowerMode] = []
    current: dict[str, str] | None = None
    caps: list[int] = []

    def close() -> None:
        if current is not None:
            name = current["NAME"]
            watts = _WATTS.search(name)
            modes.append(PowerMode(int(current["ID"]), name,
                                   float(watts.group(1)) if watts else None,
                                   min(caps) if caps else None))

    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        header = _POWER_MODEL.search(line)
        if header is not None or line.startswith("<"):
            close()
            current, caps = None, []
            attrs = dict(_ATTR.findall(header["attrs"])) if header else {}
            if attrs.get("ID", "").isdigit() and "NAME" in attrs:
                current = attrs
            continue
        cap = _CPU_MAX.match(line)
        if current is not None and cap is not None and int(cap.group(1)) > 0:
            caps.append(int(cap.group(1)))
    close()
    return sorted({m.id: m for m in modes}.values(), key=lambda m: m.id)


def mode_budgets(modes: Sequence[PowerMode], board_modes_w: Sequence[float] = ()
                 ) -> dict[int, float]:
    """Each mode's budget in watts (see the module docstring for modes without watts)."""
    top_named = max((m.watts for m in modes if m.watts is not None), default=0.0)
    top_board = max(board_modes_w, default=0.0)
    unnamed = top_board if top_board > top_named else math.inf
    return {m.id: m.watts if m.watts is not None else unnamed for m in modes}


def choose_mode(modes: Sequence[PowerMode], watts: float, board_modes_w: Sequence[float] = (),
                exclude: frozenset[int] = frozenset()) -> PowerMode:
    """The mode with the largest budget within ``watts`` (the smallest mode if none fits); at
    equal budgets a mode with its watts in its name wins, then the lower id."""
    budgets = mode_budgets(modes, board_modes_w)
    candidates = [m for m in modes if m.id not in exclude] or list(modes)
    if not candidates:
        raise KnobError("nvpmodel lists no power modes")
    fits = [m for m in candidates if budgets[m.id] <= watts + 1e-9]
    if fits:
        return max(fits, key=lambda m: (budgets[m.id], m.watts is not None, -m.id))
    return min(candidates, key=lambda m: (budgets[m.id], m.watts is None, m.id))


def parse_query(text: str, modes: Sequence[PowerMode]) -> int:
    """The current mode's id from ``nvpmodel -q [--verbose]``: "NV Power Mode: 15W" and the id
    on the next line (looked up by name when the id line is absent)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        found = _QUERY.search(line)
        if found is None:
            continue
        if i + 1 < len(lines) and lines[i + 1].isdigit():
            return int(lines[i + 1])
        for mode in modes:
            if mode.name == found.group(1):
                return mode.id
    raise KnobError(f"cannot tell the power mode from nvpmodel's answer: {text.strip()[:200]!r}")


def run_command(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run a command; stdin is closed so nvpmodel's "reboot now?" prompt reads end-of-file
    instead of waiting for an answer that never comes."""
    try:
        return subprocess.run(list(args), capture_output=True, text=True, check=False,
                              stdin=subprocess.DEVNULL, timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise KnobError(f"`{' '.join(args)}` did not finish in {COMMAND_TIMEOUT_S:g} s") from exc


class NvpmodelActuator(KnobActuator):
    name = "nvpmodel"

    def __init__(self, conf_path: Path = Path("/etc/nvpmodel.conf"), *,
                 command: Sequence[str] = ("nvpmodel",), runner: Runner = run_command,
                 board_modes_w: Sequence[float] = (), dry_run: bool = False,
                 min_interval_s: float = DEFAULT_MIN_INTERVAL_S, clock: Clock = time.monotonic,
                 recheck_s: float = 300.0) -> None:
        """``command`` may be a privileged helper (``sudo -n nvpmodel``): only root may switch
        modes. The current mode is asked again every ``recheck_s`` to notice an operator's
        change; in between the last answer stands, so a tick does not fork a process."""
        super().__init__(dry_run=dry_run, min_interval_s=min_interval_s, clock=clock)
        self.conf_path = conf_path
        self.command = tuple(command)
        self.runner = runner
        self.board_modes_w = tuple(board_modes_w)
        self.recheck_s = recheck_s
        self._modes: list[PowerMode] | None = None
        self._current: int | None = None
        self._asked_at = 0.0
        self._needs_reboot: set[int] = set()

    def modes(self) -> list[PowerMode]:
        if self._modes is None:
            try:
                modes = parse_modes(self.conf_path.read_text())
                where = str(self.conf_path)
            except OSError as exc:
                problem = describe_os_error(exc, str(self.conf_path), "reading")
                try:
                    _, listing = self._run("-p", "--verbose")
                except KnobError as also:
                    raise KnobError(f"cannot list the power modes: {problem}; {also}") from exc
                modes, where = parse_modes(listing), f"{problem}; nor in nvpmodel -p --verbose"
            if not modes:
                raise KnobError(f"no power modes (POWER_MODEL) in {where}")
            self._modes = modes
        return self._modes

    def cpu_max_khz(self) -> int | None:
        """The CPU frequency cap of the mode in force (None: uncapped or unknown). Asked even
        when the governor leaves the mode alone, so a cpufreq cap never lifts the mode's."""
        try:
            current = int(self._read())
            return next((m.cpu_max_khz for m in self.modes() if m.id == current), None)
        except KnobError:  # reported by apply() when a mode is to be set
            return None

    def _run(self, *args: str) -> tuple[int, str]:
        """Exit status and output. "NVPM ERROR" lines alone do not mean failure: a query by an
        unprivileged user prints some (EMC cap files it may not open) and still answers."""
        cmd = [*self.command, *args]
        try:
            done = self.runner(cmd)
        except OSError as exc:
            raise KnobError(describe_os_error(exc, " ".join(cmd), "running")) from exc
        return done.returncode, f"{done.stdout}\n{done.stderr}".strip()

    def _read(self) -> str:
        now = self.clock()
        if self._current is None or now - self._asked_at >= self.recheck_s:
            _, answer = self._run("-q")
            self._current = parse_query(answer, self.modes())
            self._asked_at = now
        return str(self._current)

    def _write(self, value: str) -> None:
        self._current = None  # the read-back asks nvpmodel, not our memory
        status, output = self._run("-m", value)
        if "reboot required" in output.lower():  # it asked "reboot now?" and read no answer
            self._needs_reboot.add(int(value))
            raise KnobError(f"power mode {self._show(value)} takes effect only after a reboot; "
                            "it is not chosen again while the agent runs")
        if status != 0 or "NVPM ERROR" in output:
            last = output.splitlines()[-1] if output else "no output"
            hint = (" (switching modes needs root: set actuators.nvpmodel_command to a "
                    "privileged helper such as [\"sudo\", \"-n\", \"nvpmodel\"])"
                    if re.search(r"permission|denied|: 13\b|root", output, re.I) else "")
            raise KnobError(f"`{' '.join([*self.command, '-m', value])}` failed "
                            f"(exit {status}): {last}{hint}")

    def _show(self, value: str) -> str:
        names = {str(m.id): m.name for m in self._modes or []}
        return f"{value} ({names[value]})" if value in names else value

    def _apply(self, decision: Decision) -> None:
        if decision.power_mode_w is None:
            return
        modes = self.modes()
        mode = choose_mode(modes, decision.power_mode_w, self.board_modes_w,
                           frozenset(self._needs_reboot))
        budgets = mode_budgets(modes, self.board_modes_w)
        knob = Knob("power mode", " ".join([*self.command, "-m"]), read=self._read,
                    write=self._write, allows=lambda v: budgets.get(int(v), math.inf),
                    show=self._show)
        self._set(knob, str(mode.id))
