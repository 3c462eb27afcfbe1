"""``simulate --plot``: what an operator looks at — the sun, the battery, the work done.

Three panels over time, one line per policy. Up to two weeks they show every step (PV watts,
charge %, work level); longer runs would be a smear of day/night cycles, so they show days
instead: PV energy per day, each day's lowest charge (the reserve is about the low point) and
the core-hours of work per day.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from edgeagent.sim.simulate import Run, Scenario

DAILY_AFTER_DAYS = 14
STYLE = {"always-on": ("tab:gray", "-"), "threshold": ("tab:orange", "-"),
         "governor": ("tab:blue", "-"), "oracle": ("black", "--")}


def plot_runs(path: Path, scenario: Scenario, runs: list[Run]) -> None:
    """Write the PNG; ``OSError`` if it cannot be written."""
    from matplotlib.figure import Figure

    spec = scenario.spec
    n, step_s = scenario.steps, scenario.step_s
    times = (scenario.start + np.arange(n) * step_s).astype("datetime64[s]")
    daily = n * step_s > DAILY_AFTER_DAYS * 86400
    fig = Figure(figsize=(12, 8), layout="constrained")
    pv_ax, soc_ax, work_ax = fig.subplots(3, 1, sharex=True)
    if daily:
        per_day = round(86400 / step_s)
        days = n // per_day
        t = times[: days * per_day: per_day]

        def by_day(values: np.ndarray) -> np.ndarray:
            return values[: days * per_day].reshape(days, per_day)

        pv_ax.bar(t, by_day(scenario.pv_w).sum(axis=1) * step_s / 3600, width=1.0,
                  color="gold", label="available")
        pv_ax.set_ylabel("PV (Wh/day)")
        soc_title, work_title = "lowest charge of the day (%)", "work (core-h/day)"
    else:
        t = times
        pv_ax.fill_between(times, scenario.pv_w, step="post", color="gold", label="available")
        pv_ax.set_ylabel("PV (W)")
        soc_title, work_title = "battery charge (%)", "work level"
    for run in runs:
        color, line = STYLE.get(run.policy, (None, "-"))
        soc = 100 * run.energy_wh / spec.battery_wh
        if daily:
            soc_ax.plot(t, by_day(soc).min(axis=1), color=color, linestyle=line,
                        label=run.policy)
            work_ax.plot(t, by_day(run.work).sum(axis=1) * spec.board.cores * step_s / 3600,
                         color=color, linestyle=line, label=run.policy)
        else:
            soc_ax.plot(t, soc, color=color, linestyle=line, label=run.policy)
            work_ax.step(t, run.work, where="post", color=color, linestyle=line,
                         label=run.policy)
    soc_ax.axhline(spec.reserve_pct, color="tab:red", linewidth=0.8, linestyle=":",
                   label="reserve")
    soc_ax.set_ylim(0, 101)
    soc_ax.set_ylabel(soc_title)
    work_ax.set_ylabel(work_title)
    handles, labels = soc_ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels))
    panel = "PV trace" if scenario.panel_wp is None else f"{scenario.panel_wp:g} Wp"
    fig.suptitle(f"{scenario.name}: {spec.board.name}, {panel}, {spec.battery_wh:g} Wh "
                 f"{spec.chemistry.label}, reserve {spec.reserve_pct:g} %")
    for ax in (pv_ax, soc_ax, work_ax):
        ax.grid(alpha=0.3)
    fig.savefig(path, format="png", dpi=100)
