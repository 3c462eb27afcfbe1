"""`edgeagent simulate`: the plant keeps its books, the oracle bounds every policy, traces
parse or fail with the line and column, and the command's JSON and plot are what it promises."""

from __future__ import annotations

import io
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import edgeagent_command
from edgeagent.boards import load_board
from edgeagent.governor.forecast import clear_sky_ghi
from edgeagent.sim.jobstream import LOAD, JobRunner, job_stream
from edgeagent.sim.plant import CHEMISTRIES, Plant, PlantSpec
from edgeagent.sim.pv import pv_power_w
from edgeagent.sim.simulate import (
    POLICIES,
    Scenario,
    SimulateOptions,
    build_scenario,
    measure,
    run_policies,
    run_simulate,
    simulate,
)
from edgeagent.sim.traces import SITES, load_site
from edgeagent.workloads.admission import Verdict, Work

LAT, LON = 36.1, -79.95
START = 1673308800.0  # 2023-01-10T00:00Z: winter, when energy is short
METRIC_KEYS = {"work_cpu_h", "work_ratio", "reserve_violation_min", "brownout_min",
               "pv_utilization", "curtailed_kwh", "deadline_misses", "jobs_done", "jobs_rejected",
               "switches"}


def write_trace(path: Path, days: int, clearness: list[float], column: str = "ghi",
                scale: float = 1.0) -> Path:
    """A synthetic trace: clear-sky sun at the test site, dimmed day by day."""
    t = START + np.arange(days * 144 + 1) * 600.0
    sun = clear_sky_ghi(t, LAT, LON) * np.array([clearness[int(d) % len(clearness)]
                                                  for d in (t - START) // 86400]) * scale
    lines = [f"timestamp,{column},temp_air"]
    for when, value in zip(t, sun, strict=True):
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
        lines.append(f"{stamp},{value:.2f},10")
    path.write_text("\n".join(lines) + "\n")
    return path


def scenario(tmp_path: Path, days: int = 4, clearness: list[float] | None = None,
             **options: Any) -> Scenario:
    trace = write_trace(tmp_path / "trace.csv", days, clearness or [0.9, 0.25, 0.15, 0.7])
    defaults: dict[str, Any] = {"trace": trace, "latitude": LAT, "longitude": LON,
                                "panel_wp": 40.0, "battery_wh": 120.0}
    return build_scenario(SimulateOptions(**(defaults | options)))


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*edgeagent_command(), "simulate", *args], capture_output=True,
                          text=True, timeout=timeout)


# --- models -------------------------------------------------------------------------------


def test_pv_is_pvwatts_with_a_hot_cell_penalty() -> None:
    # 1000 W/m² at 25 °C air: the cell runs at 25 + 1000 * 25 / 800 = 56.25 °C.
    cell = 25 + 1000 * 25 / 800
    expected = 100 * (1 - 0.004 * (cell - 25)) * 0.86
    assert pv_power_w([1000.0], [25.0], 100.0)[0] == pytest.approx(expected)
    assert pv_power_w([1000.0], [-10.0], 100.0)[0] > pv_power_w([1000.0], [35.0], 100.0)[0]
    assert pv_power_w([-3.0, 0.0], [20.0, 20.0], 100.0).tolist() == [0.0, 0.0]


@pytest.mark.parametrize("chem", list(CHEMISTRIES))
def test_the_plant_conserves_energy(chem: str) -> None:
    """PV in = load + curtailed + charge/discharge losses + change of stored energy, through
    full batteries, brownouts and reconnections."""
    rng = np.random.default_rng(7)
    spec = PlantSpec(load_board("raspberry-pi-4"), 60.0, CHEMISTRIES[chem], 50.0,
                     initial_soc_pct=70.0)
    plant = Plant(spec, 600.0)
    start_wh = plant.energy_wh
    pv = np.concatenate([rng.uniform(0, 40, 300), np.zeros(300), rng.uniform(0, 12, 300)])
    for p in pv:
        awake = float(rng.choice([0.0, 0.5, 1.0]))
        if plant.powered():
            plant.step(float(p), awake, float(rng.uniform()))
        else:
            plant.step(float(p), 0.0, 0.0)
    assert plant.brownouts > 0 and plant.curtailed_wh > 0  # both ends were exercised
    assert plant.pv_wh == pytest.approx(pv.sum() / 6)
    books = plant.load_wh + plant.curtailed_wh + plant.losses_wh + plant.energy_wh - start_wh
    assert books == pytest.approx(plant.pv_wh, abs=1e-6)


def test_sleep_draws_the_sleep_power_and_does_no_work(tmp_path: Path) -> None:
    sc = scenario(tmp_path, days=1, clearness=[0.0])
    wake = sc.start + 6 * 3600

    def sleeper(step: int, t: float, plant: Plant) -> tuple[float, float, float | None]:
        return 1.0, 1.0, wake

    run = simulate(sc, sleeper)
    asleep = int(6 * 3600 / sc.step_s)
    assert run.work[:asleep].sum() == 0 and run.work[asleep:asleep + 12].min() == 1.0
    night_wh = sc.spec.energy_wh(100) - run.energy_wh[asleep - 1]
    assert night_wh == pytest.approx(sc.spec.asleep_w * 6 / 0.96)
    assert run.asleep_h == pytest.approx(6)


# --- oracle -------------------------------------------------------------------------------


def test_the_oracle_bounds_every_policy_that_keeps_the_reserve(tmp_path: Path) -> None:
    sc = scenario(tmp_path)
    runs = {r.policy: r for r in run_policies(sc, list(POLICIES))}
    best = runs["oracle"].metrics["work_cpu_h"]
    assert 0 < best < sc.steps * 4 * sc.step_s / 3600  # scarce: the oracle cannot run flat out
    checked = 0
    for run in runs.values():
        m = run.metrics
        if m["reserve_violation_min"] == 0 and m["brownout_min"] == 0:
            assert m["work_cpu_h"] <= best * (1 + 1e-6), run.policy
            checked += 1
    # Random schedules, thinned until some keep the reserve: none beats the oracle either.
    rng = np.random.default_rng(3)
    for scale in (0.05, 0.1, 0.2, 0.3):
        levels = rng.uniform(size=sc.steps) * scale
        sleepy = rng.uniform() < 0.5

        def schedule(step: int, t: float, plant: Plant,
                     levels: np.ndarray = levels, sleepy: bool = sleepy
                     ) -> tuple[float, float, float | None]:
            return (levels[step], 1.0, None) if sleepy else (1.0, levels[step], None)

        m = measure(sc, simulate(sc, schedule))
        if m["reserve_violation_min"] == 0 and m["brownout_min"] == 0:
            assert m["work_cpu_h"] <= best * (1 + 1e-6)
            checked += 1
    assert checked >= 3


def test_the_oracle_keeps_the_reserve_and_never_browns_out(tmp_path: Path) -> None:
    sc = scenario(tmp_path, reserve_pct=30.0)
    oracle = next(r for r in run_policies(sc, ["oracle"]) if r.policy == "oracle")
    assert oracle.metrics["reserve_violation_min"] == 0
    assert oracle.metrics["brownout_min"] == 0
    assert oracle.energy_wh.min() >= sc.spec.energy_wh(30.0) * (1 - 1e-6)
    assert oracle.metrics["work_ratio"] == 1.0


def test_where_the_sun_is_ample_the_oracle_runs_flat_out_like_always_on(tmp_path: Path) -> None:
    sc = scenario(tmp_path, days=2, clearness=[1.0], panel_wp=200.0, battery_wh=480.0)
    runs = {r.policy: r.metrics for r in run_policies(sc, ["always-on"])}
    assert runs["oracle"]["work_cpu_h"] == pytest.approx(2 * 24 * 4, rel=1e-6)
    assert runs["always-on"]["work_ratio"] == pytest.approx(1.0)
    assert runs["always-on"]["brownout_min"] == 0


def test_always_on_browns_out_on_a_scarce_sizing(tmp_path: Path) -> None:
    sc = scenario(tmp_path, days=4, clearness=[0.3, 0.15, 0.2, 0.3])
    runs = {r.policy: r.metrics for r in run_policies(sc, ["always-on"])}
    assert runs["always-on"]["brownout_min"] > 60
    assert runs["always-on"]["reserve_violation_min"] > 0
    assert runs["oracle"]["brownout_min"] == 0


def test_a_year_of_the_fastest_policy_and_the_oracle_takes_under_30_s_each() -> None:
    sc = build_scenario(SimulateOptions(site="greensboro", panel_wp=40.0, battery_wh=120.0))
    assert sc.steps == 365 * 144
    runs = {r.policy: r.metrics for r in run_policies(sc, ["always-on"])}
    for metrics in runs.values():
        assert metrics["runtime_s"] < 30
    assert 0.3 < runs["oracle"]["work_cpu_h"] / (365 * 24 * 4) < 1  # it must sleep in winter
    assert runs["always-on"]["brownouts"] > 0


# --- traces -------------------------------------------------------------------------------


@pytest.mark.parametrize("site", list(SITES))
def test_named_sites_are_full_years_in_utc(site: str) -> None:
    trace = load_site(site)
    assert trace.periodic and len(trace.times) == 8760
    assert trace.ghi is not None and trace.temp_air is not None
    assert trace.latitude is not None and trace.longitude is not None
    # Local solar noon, the centre of the day's irradiance, falls at 12 h - longitude / 15 UTC.
    hour = (trace.times % 86400) / 3600
    angle = hour / 24 * 2 * np.pi
    centre = np.arctan2((trace.ghi * np.sin(angle)).sum(), (trace.ghi * np.cos(angle)).sum())
    noon_utc = (centre / (2 * np.pi) * 24) % 24
    assert noon_utc == pytest.approx(12 - trace.longitude / 15, abs=0.5)
    assert trace.temp_air.min() > -30 and trace.temp_air.max() < 45


def test_sites_rank_by_their_sun() -> None:
    kwh = {s: float(load_site(s).ghi.sum()) / 1000 for s in SITES}  # type: ignore[union-attr]
    assert kwh["sand-point"] < kwh["greensboro"] < kwh["miami"]
    assert 1500 < kwh["greensboro"] < 1700  # kWh/m²/yr, horizontal


def test_csv_traces_take_ghi_or_pv_w_and_any_utc_spelling(tmp_path: Path) -> None:
    ghi = tmp_path / "ghi.csv"
    ghi.write_text("timestamp,ghi,temp_air\n2024-06-01T00:00:00Z,0,20\n"
                   "2024-06-01T01:00:00+00:00,500,20\n2024-06-01T02:00,1000,20\n")
    sc = build_scenario(SimulateOptions(trace=ghi, latitude=LAT, longitude=LON,
                                        step_min=30, panel_wp=100.0))
    assert sc.steps == 4 and sc.start == 1717200000.0
    assert np.diff(sc.pv_w).min() > 0  # sampled at each step's middle on the rising sun
    pv = tmp_path / "pv.csv"
    pv.write_text("pv_w,timestamp\n0,2024-06-01T00:00:00Z\n30,2024-06-01T01:00:00Z\n")
    sc = build_scenario(SimulateOptions(trace=pv, step_min=15))
    assert sc.pv_w.tolist() == pytest.approx([3.75, 11.25, 18.75, 26.25])
    assert sc.panel_wp is None


@pytest.mark.parametrize(("text", "problem"), [
    ("time,ghi\n2024-06-01T00:00Z,1\n", "no 'timestamp' column"),
    ("timestamp,temp_air\n2024-06-01T00:00Z,1\n", "'ghi' or a 'pv_w'"),
    ("timestamp,ghi\n2024-06-01T00:00Z,1\n2024-06-01T01:00Z,lots\n", "line 3: column 'ghi'"),
    ("timestamp,pv_w\n2024-06-01T00:00Z,1\nyesterday,2\n", "line 3: column 'timestamp'"),
    ("timestamp,ghi\n2024-06-01T01:00Z,1\n2024-06-01T00:00Z,2\n", "line 3: column 'timestamp'"),
    ("timestamp,ghi\n2024-06-01T00:00Z,1\n2024-06-01T01:00Z,nan\n", "finite"),
    ("timestamp,ghi\n2024-06-01T00:00Z,1\n", "at least two rows"),
])
def test_bad_csv_exits_2_naming_the_line_and_column(tmp_path: Path, text: str,
                                                    problem: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    out, err = io.StringIO(), io.StringIO()
    code = run_simulate(SimulateOptions(trace=path, policy="always-on"), out, err)
    assert code == 2 and problem in err.getvalue() and "bad.csv" in err.getvalue()


def test_bad_csv_exits_2_from_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("timestamp,ghi\n2024-06-01T00:00Z,1\n2024-06-01T01:00Z,x\n")
    result = run_cli("--trace", str(path), "--lat", "36", "--lon", "-80")
    assert result.returncode == 2
    assert "line 3: column 'ghi'" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(("options", "problem"), [
    ({"site": "atlantis"}, "unknown site"),
    ({"board": "abacus"}, "--board"),
    ({"battery_chem": "leadacid", "reserve_pct": 10.0}, "cut-off"),
    ({"days": 0.0}, "--days"),
    ({"step_min": 0.0}, "--step-min"),
    ({"step_min": 7.0}, "does not divide a day"),
    ({"start": "soon"}, "--start"),
    ({"latitude": 10.0, "longitude": 10.0}, "own coordinates"),
])
def test_bad_options_exit_2_naming_the_option(options: dict[str, Any], problem: str) -> None:
    err = io.StringIO()
    assert run_simulate(SimulateOptions(**options), io.StringIO(), err) == 2
    assert problem in err.getvalue()


def test_a_trace_needs_coordinates_for_the_governor_and_pv_w_has_no_panel(
        tmp_path: Path) -> None:
    trace = write_trace(tmp_path / "pv.csv", 1, [1.0], column="pv_w", scale=0.05)
    err = io.StringIO()
    assert run_simulate(SimulateOptions(trace=trace, policy="governor"), io.StringIO(), err) == 2
    assert "--lat and --lon" in err.getvalue()
    err = io.StringIO()
    assert run_simulate(SimulateOptions(trace=trace, panel_wp=50.0), io.StringIO(), err) == 2
    assert "--panel-wp" in err.getvalue()
    out = io.StringIO()
    assert run_simulate(SimulateOptions(trace=trace, policy="threshold"), out, io.StringIO()) == 0
    assert "threshold" in out.getvalue() and "oracle" in out.getvalue()


# --- the command --------------------------------------------------------------------------


def test_json_reports_every_metric_per_policy_and_the_plot_is_a_png(tmp_path: Path) -> None:
    trace = write_trace(tmp_path / "trace.csv", 3, [0.8, 0.2, 0.5])
    png = tmp_path / "site.png"
    result = run_cli("--trace", str(trace), "--lat", str(LAT), "--lon", str(LON),
                     "--panel-wp", "40", "--battery-wh", "120", "--json", "--plot", str(png))
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["trace"]["days"] == pytest.approx(3)
    assert document["site"]["board"] == "raspberry-pi-4"
    assert set(document["policies"]) == set(POLICIES)
    for name, metrics in document["policies"].items():
        assert set(metrics) >= METRIC_KEYS, name
        jobs = metrics["jobs_done"] + metrics["deadline_misses"] + metrics["jobs_rejected"]
        assert jobs == len(build_scenario(SimulateOptions(trace=trace)).jobs) > 0, name
        if name != "governor":
            assert metrics["jobs_rejected"] == 0, name
        assert 0 <= metrics["pv_utilization"] <= 1
    assert document["policies"]["oracle"]["work_ratio"] == 1.0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_table_shows_the_site_and_a_row_per_policy() -> None:
    out = io.StringIO()
    code = run_simulate(SimulateOptions(site="miami", days=2, policy="threshold",
                                        battery_chem="leadacid", battery_wh=720.0), out,
                        io.StringIO())
    text = out.getvalue()
    assert code == 0
    assert "miami" in text and "lead-acid, reserve 50 %" in text
    rows = [line.split()[0] for line in text.splitlines()[4:]]
    assert rows == ["threshold", "oracle"]


def test_a_long_run_plots_days(tmp_path: Path) -> None:
    sc = build_scenario(SimulateOptions(site="sand-point", days=30, start="2023-06-01"))
    runs = run_policies(sc, ["always-on"])
    from edgeagent.sim.plot import plot_runs

    png = tmp_path / "month.png"
    plot_runs(png, sc, runs)
    assert png.stat().st_size > 10_000



# --- jobs ---------------------------------------------------------------------------------


def test_the_job_stream_is_seeded_and_every_deadline_falls_inside_the_run() -> None:
    jobs = job_stream(START, START + 30 * 86400, 4, 4)
    assert jobs == job_stream(START, START + 30 * 86400, 4, 4)
    assert job_stream(START, START + 30 * 86400, 0, 4) == []
    assert 110 <= len(jobs) <= 120
    for job in jobs:
        assert job.job_class == "deferrable" and job.deadline is not None
        assert 12 * 3600 <= job.deadline - job.submitted <= 24 * 3600
        assert job.deadline <= START + 30 * 86400
    assert [j.submitted for j in jobs] == sorted(j.submitted for j in jobs)
    mean = sum(j.work_cpu_s for j in jobs) / len(jobs)
    assert mean == pytest.approx(LOAD * 4 * 86400 / 4, rel=0.15)


def test_jobs_run_earliest_deadline_first_one_core_each_and_late_ones_miss() -> None:
    hour = 3600.0
    late = Work("late", "deferrable", 2 * hour, 10 * hour, submitted=0.0)
    soon = Work("soon", "deferrable", 1 * hour, 2 * hour, submitted=1.0)
    never = Work("never", "deferrable", 1 * hour, 0.5 * hour, submitted=2.0)
    runner = JobRunner([late, soon])
    runner.take_in(0.0, None)
    assert [w.id for w in runner.queue] == ["late"]
    runner.take_in(10.0, None)
    runner.run(hour, hour, hour)  # one core for an hour: the earliest deadline takes it all
    assert runner.done == 1 and "soon" not in runner.left and runner.left["late"] == 2 * hour
    assert runner.queue[0].id == "late" and runner.missed == 0
    runner.run(4 * hour, hour, 2 * hour)  # four cores: one job still uses one
    assert runner.left["late"] == pytest.approx(hour) and runner.queue[0].running
    runner.expire(20 * hour)  # a running job is not expired: it finishes late
    runner.run(hour, hour, 21 * hour)
    assert (runner.done, runner.missed) == (1, 1)
    refused = JobRunner([never])
    refused.take_in(hour, None)  # arrived while the board was down until its deadline
    assert (refused.missed, refused.rejected, refused.queue) == (1, 0, [])
    expired = JobRunner([late])
    expired.take_in(0.0, lambda queue, job: Verdict(True, "ok"))
    expired.expire(10 * hour)
    assert (expired.missed, expired.queue) == (1, [])


def test_the_governor_admits_each_job_once_and_accounts_for_all(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import edgeagent.sim.simulate as sim
    import edgeagent.workloads.desk as desk  # the admission the live desk and the sim share

    calls: list[str] = []
    real = desk.admit

    def counting(queue: Any, job: Work, *args: Any) -> Verdict:
        calls.append(job.id)
        return real(queue, job, *args)

    monkeypatch.setattr(desk, "admit", counting)
    sc = scenario(tmp_path, days=6, jobs_per_day=6)
    runs = {r.policy: r.metrics for r in run_policies(sc, ["always-on", "governor"])}
    assert len(calls) == len(set(calls)) and set(calls) <= {j.id for j in sc.jobs}
    for metrics in runs.values():
        assert (metrics["jobs_done"] + metrics["deadline_misses"] + metrics["jobs_rejected"]
                == len(sc.jobs))
    assert runs["always-on"]["jobs_rejected"] == 0
    assert runs["governor"]["jobs_done"] > 0
    none = scenario(tmp_path, days=2, jobs_per_day=0)
    assert none.jobs == ()
    assert measure(none, simulate(none, sim.always_on))["jobs_done"] == 0


def test_jobs_the_governor_accepts_are_done_by_their_deadlines(tmp_path: Path) -> None:
    # Twelve days of mixed weather in January, six jobs a day: admission takes what the plan
    # can finish, the plan serves it first, so nearly every accepted job is done in time,
    # where the oracle (all jobs taken, deadlines ignored) misses about one in five.
    sc = scenario(tmp_path, days=12, clearness=[0.9, 0.6, 0.8, 0.3, 1.0], jobs_per_day=6)
    runs = {r.policy: r.metrics for r in run_policies(sc, ["governor"])}
    governor, oracle = runs["governor"], runs["oracle"]
    accepted = governor["jobs_done"] + governor["deadline_misses"]
    assert governor["deadline_misses"] <= 0.1 * accepted
    assert governor["deadline_misses"] < oracle["deadline_misses"] / 2
    assert governor["jobs_done"] >= oracle["jobs_done"]
    assert governor["reserve_violation_min"] == 0 and governor["brownout_min"] == 0


def test_the_governor_teaches_the_forecast_nothing_while_the_charger_floats(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeagent.governor.forecast import Forecaster
    from edgeagent.sim.simulate import Governor

    seen: list[tuple[float, bool]] = []
    real = Forecaster.observe

    def observe(self: Forecaster, t: float, pv_w: float, *, curtailed: bool = False) -> None:
        seen.append((t, curtailed))
        real(self, t, pv_w, curtailed=curtailed)

    monkeypatch.setattr(Forecaster, "observe", observe)
    sc = scenario(tmp_path, days=2, clearness=[1.0], initial_soc_pct=100.0, battery_wh=60.0)
    governor = Governor(sc)
    plant = Plant(sc.spec, sc.step_s)
    governor(0, sc.start, plant)  # a full battery: the charger floats, as the live agent sees
    assert plant.reading().charger_state == "float" and seen == [(sc.start, True)]
    simulate(sc, Governor(sc))
    assert any(not curtailed for _, curtailed in seen)  # once it charges, the sun teaches
