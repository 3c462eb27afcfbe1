"""``edgeagent simulate``: a year of sun through the site's plant, under each policy.

Software in the loop: the governor policy is the live agent's own ``decide``, fed the readings
a charge controller would report from the simulated plant and a ``Forecaster`` that learns from
the simulated PV, exactly as on the board. Baselines bracket it: ``always-on`` (full work, never
sleeps), ``threshold`` (full work above the reserve plus a margin, none at the reserve, never
sleeps) and the ``oracle`` (the LP of ``oracle.py``, perfect foresight: the upper bound).

Metrics, per policy (JSON keys):

* ``work_cpu_h``: work done, in core-hours (work level x the board's cores x hours awake);
* ``work_ratio``: ``work_cpu_h`` over the oracle's;
* ``reserve_violation_min``: minutes with the battery below the reserve, except where even a
  board asleep all along could not have held it (``plant.reserve_floor_wh``): only the
  policy's own load counts;
* ``brownout_min`` / ``brownouts``: minutes the load output was cut because the battery could
  not carry the load (from the cut until it recloses), and how many times that happened;
* ``pv_utilization``: 1 - curtailed / available PV; ``curtailed_kwh``;
* ``jobs_done``, ``deadline_misses``, ``jobs_rejected``: a seeded synthetic stream of
  deferrable jobs (``--jobs-per-day``, see ``jobstream.py``) run on each step's work
  (level x cores x step seconds) in the live queue's order: done by the deadline, done after it
  or expired, refused at arrival. The governor takes jobs in as the live agent's desk does,
  before it decides (``admit`` on the capacity its plan gives the queue), and its plan serves
  the accepted work by its deadlines; the baselines and the oracle accept every job
  (the oracle's ``work_cpu_h`` stays the LP bound; its jobs run on its work schedule);
* ``switches``: changes of the work level between steps (sleep counts as level 0);
* ``asleep_h``, ``min_soc_pct``, ``load_kwh``, ``runtime_s`` (this policy's simulation time).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt

from edgeagent.boards import load_board
from edgeagent.governor.decision import Decision
from edgeagent.governor.forecast import Forecast
from edgeagent.sim.jobstream import JobRunner, job_stream
from edgeagent.sim.plant import (
    AGENT_W,
    CHEMISTRIES,
    CONTROLLER_W,
    CONVERTER_EFFICIENCY,
    Plant,
    PlantSpec,
    asleep_energy_wh,
    reserve_floor_wh,
)
from edgeagent.sim.pv import DEFAULT_TEMP_AIR_C, DERATE, pv_power_w
from edgeagent.sim.traces import Trace, TraceError, load_csv, load_site, parse_timestamp
from edgeagent.state import SiteState
from edgeagent.workloads.admission import Verdict, Work, due
from edgeagent.workloads.desk import admission

Array = npt.NDArray[np.float64]
POLICIES = ("always-on", "threshold", "governor", "oracle")
THRESHOLD_MARGIN_PCT = 10.0  # the threshold baseline resumes this far above the reserve
TMY_START = "2023-01-01"  # a typical year has no year; runs on one start here by default
MAX_DAYS = 3650
DEFAULT_SITE = "greensboro"
DEFAULT_PANEL_WP = 100.0
DEFAULT_JOBS_PER_DAY = 4.0


class SimulationError(ValueError):
    """Input the simulation cannot use; the message names the option or file."""


@dataclass(frozen=True)
class SimulateOptions:
    """The command line's options (see ``edgeagent simulate --help``)."""

    trace: Path | None = None
    site: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    start: str | None = None
    days: float | None = None
    step_min: float = 10.0
    panel_wp: float | None = None
    battery_wh: float = 240.0
    battery_chem: str = "lifepo4"
    reserve_pct: float | None = None
    initial_soc_pct: float = 100.0
    board: str = "raspberry-pi-4"
    policy: str = "all"
    json: bool = False
    plot: Path | None = None
    jobs_per_day: float = DEFAULT_JOBS_PER_DAY


@dataclass(frozen=True)
class Scenario:
    """One simulation's inputs: where, when, and the site's hardware."""

    name: str
    latitude: float | None
    longitude: float | None
    start: float  # UTC epoch seconds
    step_s: float
    pv_w: Array  # PV power available in each step (W)
    panel_wp: float | None  # None when the trace gives PV watts directly
    spec: PlantSpec
    floor_wh: Array  # the reserve floor at the end of each step
    jobs: tuple[Work, ...] = ()  # the job stream, in arrival order

    @property
    def steps(self) -> int:
        return len(self.pv_w)


@dataclass(frozen=True, eq=False)
class Run:
    """One policy's run: per-step work level and battery energy, and its metrics."""

    policy: str
    work: Array  # work level achieved in each step (0..1: share of the board's cores)
    energy_wh: Array  # battery energy at the end of each step
    metrics: dict[str, Any]


# A policy's controller: (step, time, plant) -> (awake share of the step, work level,
# sleep until this UTC epoch second or None).
Controller = Callable[[int, float, Plant], tuple[float, float, float | None]]


def build_scenario(options: SimulateOptions) -> Scenario:
    """Check the options and load the trace; ``SimulationError`` names what is wrong."""
    if options.trace is not None and options.site is not None:
        raise SimulationError("give --trace or --site, not both")
    _check_range("--step-min", options.step_min, 1.0, 60.0)
    if abs(1440 / options.step_min - round(1440 / options.step_min)) > 1e-9:
        raise SimulationError(f"--step-min: {options.step_min:g} does not divide a day")
    _check_range("--battery-wh", options.battery_wh, 1.0, 1e6)
    _check_range("--initial-soc", options.initial_soc_pct, 0.0, 100.0)
    _check_range("--jobs-per-day", options.jobs_per_day, 0.0, 1440.0)
    if options.panel_wp is not None:
        _check_range("--panel-wp", options.panel_wp, 1.0, 1e6)
    if options.days is not None:
        _check_range("--days", options.days, 1 / 1440, MAX_DAYS)
    chem = CHEMISTRIES.get(options.battery_chem)
    if chem is None:
        raise SimulationError(f"--battery-chem: unknown chemistry {options.battery_chem!r}; "
                              f"known: {', '.join(CHEMISTRIES)}")
    reserve = chem.reserve_pct if options.reserve_pct is None else options.reserve_pct
    if not chem.cutoff_pct < reserve < 100 or not 5 <= reserve <= 95:
        raise SimulationError(f"--reserve-pct: {reserve:g} is not between 5 and 95 and above "
                              f"the {chem.label} cut-off ({chem.cutoff_pct:g} %)")
    try:
        board = load_board(options.board)
    except KeyError as exc:
        raise SimulationError(f"--board: {exc.args[0]}") from None
    try:
        trace = (load_csv(options.trace) if options.trace is not None
                 else load_site(options.site or DEFAULT_SITE))
    except TraceError as exc:
        raise SimulationError(f"{'--site' if options.trace is None else '--trace'}: {exc}"
                              ) from None
    latitude, longitude = trace.latitude, trace.longitude
    if options.latitude is not None or options.longitude is not None:
        if trace.latitude is not None:
            raise SimulationError("--lat/--lon: a bundled site has its own coordinates")
        if options.latitude is None or options.longitude is None:
            raise SimulationError("--lat/--lon: give both")
        latitude, longitude = options.latitude, options.longitude
    if latitude is not None and not -90 <= latitude <= 90:
        raise SimulationError(f"--lat: {latitude:g} is not a latitude")
    if longitude is not None and not -180 <= longitude <= 180:
        raise SimulationError(f"--lon: {longitude:g} is not a longitude")
    step_s = options.step_min * 60.0
    start, steps = _span(trace, options, step_s)
    mids: Array = start + (np.arange(steps, dtype=np.float64) + 0.5) * step_s
    panel_wp = options.panel_wp
    if trace.pv_w is not None:
        if panel_wp is not None:
            raise SimulationError("--panel-wp: the trace gives PV watts (pv_w), so the panel "
                                  "is the one that made them")
        pv = trace.sample(trace.pv_w, mids)
    else:
        assert trace.ghi is not None
        panel_wp = DEFAULT_PANEL_WP if panel_wp is None else panel_wp
        temp = (trace.sample(trace.temp_air, mids) if trace.temp_air is not None
                else DEFAULT_TEMP_AIR_C)
        pv = pv_power_w(trace.sample(trace.ghi, mids), temp, panel_wp)
    spec = PlantSpec(board, options.battery_wh, chem, reserve, options.initial_soc_pct)
    asleep_wh, brownouts = asleep_energy_wh(spec, pv, step_s)
    if brownouts:
        raise SimulationError("the battery runs empty even with the board asleep all along: "
                              "no policy can keep this site up; give it more panel or battery")
    jobs = job_stream(start, start + steps * step_s, options.jobs_per_day, board.cores)
    return Scenario(trace.name, latitude, longitude, start, step_s, pv, panel_wp, spec,
                    reserve_floor_wh(spec, asleep_wh), tuple(jobs))


def _check_range(option: str, value: float, low: float, high: float) -> None:
    if not (math.isfinite(value) and low <= value <= high):
        raise SimulationError(f"{option}: {value:g} is not between {low:g} and {high:g}")


def _span(trace: Trace, options: SimulateOptions, step_s: float) -> tuple[float, int]:
    """The run's start (UTC epoch s) and number of steps."""
    try:
        start = parse_timestamp(options.start) if options.start is not None else (
            parse_timestamp(TMY_START) if trace.periodic else float(trace.times[0]))
    except ValueError:
        raise SimulationError(f"--start: {options.start!r} is not an ISO 8601 date or "
                              "time") from None
    if trace.periodic:
        days = 365.0 if options.days is None else options.days
    else:
        first, last = float(trace.times[0]), float(trace.times[-1])
        if not first <= start < last:
            raise SimulationError(f"--start: {_iso(start)} is outside the trace "
                                  f"({_iso(first)} to {_iso(last)})")
        available = (last - start) / 86400.0
        days = available if options.days is None else options.days
        if days > available + 1e-9:
            raise SimulationError(f"--days: {days:g} days from {_iso(start)} run past the "
                                  f"trace's end ({_iso(last)})")
    steps = int(days * 86400.0 / step_s + 1e-9)
    if steps < 1:
        raise SimulationError("--days: the run is shorter than one --step-min")
    return start, steps


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%MZ")


def position(scenario: Scenario) -> tuple[float, float]:
    """The site's latitude and longitude, which the governor's solar forecast needs."""
    if scenario.latitude is None or scenario.longitude is None:
        raise SimulationError("the governor's forecast needs the site's position: give "
                              "--lat and --lon with --trace")
    return scenario.latitude, scenario.longitude


def always_on(step: int, t: float, plant: Plant) -> tuple[float, float, float | None]:
    """Full work all the time: what a site without a governor does."""
    return 1.0, 1.0, None


class Threshold:
    """Full work while the battery is comfortably above the reserve, none once it reaches it,
    full again only above the reserve plus a margin (hysteresis). Stays awake."""

    def __init__(self, reserve_pct: float) -> None:
        self.off_pct, self.on_pct = reserve_pct, reserve_pct + THRESHOLD_MARGIN_PCT
        self.working = True

    def __call__(self, step: int, t: float, plant: Plant) -> tuple[float, float, float | None]:
        soc = plant.soc_pct
        self.working = soc > self.off_pct if self.working else soc >= self.on_pct
        return 1.0, 1.0 if self.working else 0.0, None


class Governor:
    """The live agent's governor on the simulated site: the same ``decide``, forecaster and job
    admission, configured as the site's operator would (its power chain as the plant has it,
    sleep allowed: the wake timer is part of the plant). Each call is one tick of the live
    agent: read the plant, teach the forecaster, take the jobs in, decide."""

    def __init__(self, scenario: Scenario) -> None:
        from edgeagent.config import BatteryConfig, GovernorConfig
        from edgeagent.governor import Forecaster, GovernorMemory

        spec = scenario.spec
        chem = spec.chemistry
        self.board = spec.board
        self.battery = BatteryConfig(capacity_wh=spec.battery_wh,
                                     reserve_soc_pct=spec.reserve_pct)
        self.config = GovernorConfig(
            max_workers=spec.board.cores, tick_s=scenario.step_s, allow_sleep=True,
            charge_efficiency=chem.charge_efficiency,
            discharge_efficiency=chem.discharge_efficiency,
            converter_efficiency=CONVERTER_EFFICIENCY, standby_w=CONTROLLER_W,
            agent_w=AGENT_W)
        capacity = None if scenario.panel_wp is None else scenario.panel_wp * DERATE
        self.forecaster = Forecaster(*position(scenario), quantile=self.config.forecast_quantile,
                                     capacity_w=capacity,
                                     admission_quantile=self.config.admission_quantile)
        self.memory = GovernorMemory()
        self.state = SiteState()
        self.decision: Decision | None = None
        self.forecast: Forecast | None = None
        self.jobs = JobRunner(())  # the run's queue (``simulate`` hands it over)

    def __call__(self, step: int, t: float, plant: Plant) -> tuple[float, float, float | None]:
        self.state = state = plant.reading()
        if state.pv_power_w is not None:
            # In float the charger holds the panel back, as the live agent knows.
            self.forecaster.observe(t, state.pv_power_w,
                                    curtailed=state.charger_state == "float")
        self.forecast = self.forecaster.forecast(t)
        self.jobs.expire(t)
        self.jobs.take_in(t, self.admission(t))
        self.decision = decision = self._governor_step(t, state)
        return 1.0, decision.level, decision.sleep_until

    def _governor_step(self, t: float, state: SiteState) -> Decision:
        """One call of the governor: the one place that knows ``decide``'s signature."""
        from edgeagent.governor import decide

        decision, self.memory = decide(state, t, self.forecast, self.board,
                                       self.battery, self.config, memory=self.memory,
                                       due=due(self.jobs.pending()))
        return decision

    def admission(self, now: float) -> Callable[[Sequence[Work], Work], Verdict]:
        """The live job desk's admission at ``now``: the forecast made this step, the decision
        in force (the one before this step's)."""
        return admission(now, self.state, self.decision, self.forecast, self.board,
                         self.battery, self.config)


@dataclass(frozen=True, eq=False)
class Trajectory:
    """What happened in one run, step by step."""

    work: Array  # work level achieved in each step (0..1: share of the board's cores)
    energy_wh: Array  # battery energy at the end of each step
    asleep_h: float
    plant: Plant
    jobs: JobRunner


def simulate(scenario: Scenario, controller: Controller) -> Trajectory:
    """Run ``controller`` over the scenario, and the job stream on its work.

    The controller is asked only while the board is up: not while it sleeps until its planned
    wake time, nor while a brownout keeps the load output open (after which it boots afresh).
    Jobs are taken in only then too (by the governor itself, through its admission, before it
    decides; all of them for the others).
    """
    plant = Plant(scenario.spec, scenario.step_s)
    n, step_s, t0 = scenario.steps, scenario.step_s, scenario.start
    jobs = JobRunner(scenario.jobs)
    governed = isinstance(controller, Governor)
    if isinstance(controller, Governor):
        controller.jobs = jobs
    cores = scenario.spec.board.cores
    work, energy = np.zeros(n), np.empty(n)
    asleep = 0.0
    wake_at = -math.inf
    for k, pv in enumerate(scenario.pv_w.tolist()):
        t = t0 + k * step_s
        awake = level = 0.0
        if plant.powered():
            if t >= wake_at:
                awake, level, sleep_until = controller(k, t, plant)
                if sleep_until is not None and sleep_until > t:
                    wake_at, awake = sleep_until, 0.0
                if not governed:
                    jobs.expire(t)
                    jobs.take_in(t, None)
            asleep += 1.0 - awake
        else:
            wake_at = -math.inf  # the board lost power: it boots when the power comes back
        ran = plant.step(pv, awake, level)
        work[k] = awake * level * ran
        energy[k] = plant.energy_wh
        jobs.run(work[k] * cores * step_s, step_s, t + step_s)
    jobs.close(t0 + n * step_s)
    return Trajectory(work, energy, asleep * step_s / 3600.0, plant, jobs)


def measure(scenario: Scenario, run: Trajectory) -> dict[str, Any]:
    """The metrics of the module docstring (``work_ratio`` is added once the oracle's known)."""
    spec, plant, step_h = scenario.spec, run.plant, scenario.step_s / 3600.0
    end = run.energy_wh
    begin = np.concatenate(([spec.energy_wh(spec.initial_soc_pct)], end[:-1]))
    floor = scenario.floor_wh
    below = end < floor - 1e-6 * spec.battery_wh
    # The share of a step spent below the floor, the charge being linear within a step.
    falling = np.where(begin > end, begin - end, 1.0)
    share = np.where(begin >= floor, (floor - end) / falling, 1.0)
    violation_min = float(np.clip(share, 0.0, 1.0)[below].sum()) * scenario.step_s / 60.0
    return {
        "work_cpu_h": float(run.work.sum()) * spec.board.cores * step_h,
        "work_ratio": None,
        "reserve_violation_min": violation_min,
        "brownout_min": plant.brownout_s / 60.0,
        "brownouts": plant.brownouts,
        "pv_utilization": (1.0 - plant.curtailed_wh / plant.pv_wh) if plant.pv_wh > 0 else None,
        "curtailed_kwh": plant.curtailed_wh / 1000.0,
        "deadline_misses": run.jobs.missed,
        "jobs_done": run.jobs.done,
        "jobs_rejected": run.jobs.rejected,
        "switches": int(np.count_nonzero(np.abs(np.diff(run.work)) > 1e-3)),
        "asleep_h": run.asleep_h,
        "min_soc_pct": 100.0 * float(end.min()) / spec.battery_wh,
        "load_kwh": plant.load_wh / 1000.0,
    }


def _controller(name: str, scenario: Scenario) -> Controller:
    if name == "always-on":
        return always_on
    if name == "threshold":
        return Threshold(scenario.spec.reserve_pct)
    if name == "governor":
        return Governor(scenario)
    from edgeagent.sim.oracle import solve

    schedule = solve(scenario.pv_w, scenario.spec, scenario.step_s, scenario.floor_wh)
    work = schedule.work.tolist()

    def oracle(step: int, t: float, plant: Plant) -> tuple[float, float, float | None]:
        return work[step], 1.0, None  # awake only for the share of the step it works

    return oracle


def run_policies(scenario: Scenario, policies: list[str]) -> list[Run]:
    """Simulate each policy (the oracle first: every ``work_ratio`` is measured against it)."""
    runs = []
    for name in sorted(set(policies) | {"oracle"}, key=lambda p: p != "oracle"):
        began = time.perf_counter()
        trajectory = simulate(scenario, _controller(name, scenario))
        metrics = measure(scenario, trajectory)
        metrics["runtime_s"] = time.perf_counter() - began
        runs.append(Run(name, trajectory.work, trajectory.energy_wh, metrics))
    best = runs[0].metrics["work_cpu_h"]
    for run in runs:
        run.metrics["work_ratio"] = run.metrics["work_cpu_h"] / best if best > 0 else None
    return sorted(runs, key=lambda r: POLICIES.index(r.policy))


def report(scenario: Scenario, runs: list[Run]) -> dict[str, Any]:
    """The ``--json`` document: the scenario, then each policy's metrics."""
    spec = scenario.spec
    return {
        "trace": {"name": scenario.name, "latitude": scenario.latitude,
                  "longitude": scenario.longitude, "start": _iso(scenario.start),
                  "days": round(scenario.steps * scenario.step_s / 86400.0, 4),
                  "step_min": scenario.step_s / 60.0,
                  "pv_kwh": _round(float(scenario.pv_w.sum()) * scenario.step_s / 3.6e6)},
        "site": {"board": spec.board.name, "panel_wp": scenario.panel_wp,
                 "battery_wh": spec.battery_wh, "battery_chem": spec.chemistry.name,
                 "reserve_pct": spec.reserve_pct, "initial_soc_pct": spec.initial_soc_pct,
                 "sleep_w": spec.sleep_w, "controller_w": CONTROLLER_W,
                 "converter_efficiency": CONVERTER_EFFICIENCY},
        "policies": {run.policy: {k: _round(v) for k, v in run.metrics.items()}
                     for run in runs},
    }


def _round(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


COLUMNS = (("policy", "", 10), ("work_cpu_h", "work cpu-h", 10), ("work_ratio", "ratio", 6),
           ("reserve_violation_min", "reserve min", 11), ("brownout_min", "brownout min", 12),
           ("pv_utilization", "PV use", 6), ("curtailed_kwh", "curtailed kWh", 13),
           ("switches", "switches", 8), ("asleep_h", "asleep h", 8), ("runtime_s", "time s", 6))


def format_table(document: dict[str, Any]) -> str:
    """The human report: the scenario in two lines, then one row per policy."""
    trace, site = document["trace"], document["site"]
    where = trace["name"] if trace["latitude"] is None else (
        f"{trace['name']} ({trace['latitude']:.2f}, {trace['longitude']:.2f})")
    panel = "PV from the trace" if site["panel_wp"] is None else f"{site['panel_wp']:g} Wp"
    chem = CHEMISTRIES[site["battery_chem"]].label
    lines = [f"{where} from {trace['start']}, {trace['days']:g} days in {trace['step_min']:g}-min "
             f"steps; PV available {trace['pv_kwh']:.1f} kWh",
             f"{site['board']}, {panel}, {site['battery_wh']:g} Wh {chem}, reserve "
             f"{site['reserve_pct']:g} %", ""]
    lines.append("  ".join(f"{title or key:<{width}}" if key == "policy" else f"{title:>{width}}"
                           for key, title, width in COLUMNS))
    for name, metrics in document["policies"].items():
        cells = []
        for key, _, width in COLUMNS:
            value = name if key == "policy" else metrics[key]
            if key == "policy":
                cells.append(f"{value:<{width}}")
            elif value is None:
                cells.append(f"{'-':>{width}}")
            elif key == "pv_utilization":
                cells.append(f"{value:>{width}.0%}")
            elif isinstance(value, int):
                cells.append(f"{value:>{width}d}")
            else:
                digits = 3 if key == "work_ratio" else 1
                cells.append(f"{value:>{width}.{digits}f}")
        lines.append("  ".join(cells))
    return "\n".join(lines)


def run_simulate(options: SimulateOptions, out: TextIO, err: TextIO) -> int:
    """The command: 0 when the simulation ran, 2 for unusable input (with the reason)."""
    if options.policy not in (*POLICIES, "all"):
        print(f"edgeagent simulate: --policy: unknown policy {options.policy!r}", file=err)
        return 2
    policies = list(POLICIES) if options.policy == "all" else [options.policy]
    try:
        if options.plot is not None and not options.plot.parent.is_dir():
            raise SimulationError(f"--plot: no directory {options.plot.parent}")
        scenario = build_scenario(options)
        if "governor" in policies:
            position(scenario)
        runs = run_policies(scenario, policies)
    except SimulationError as exc:
        print(f"edgeagent simulate: {exc}", file=err)
        return 2
    except ImportError as exc:
        print(f"edgeagent simulate: needs the [sim] extra (pip install 'edgeagent[sim]'): "
              f"{exc}", file=err)
        return 1
    document = report(scenario, runs)
    if options.plot is not None:
        from edgeagent.sim.plot import plot_runs

        try:
            plot_runs(options.plot, scenario, runs)
        except OSError as exc:
            print(f"edgeagent simulate: --plot: {exc}", file=err)
            return 2
    print(json.dumps(document, indent=2) if options.json else format_table(document), file=out)
    return 0
