"""``edgeagent demo``: the whole agent on an embedded default, no hardware and no broker needed.

An emulated SmartSolar MPPT and SmartShunt speak VE.Direct on two pseudo-terminals, driven by
a real solar trace (TMY3, Greensboro NC, June 21) at accelerated time and by a battery model
that the agent's own inference load drains. ``--charger`` and ``--monitor`` swap in any other
emulated device on the same battery and panel (EPEver or Renogy over Modbus RTU, a JBD or
Daly BMS). The agent reads them through its real drivers,
the real governor sets the number of inference workers running the bundled int8 model, and
telemetry goes through the SQLite outbox to MQTT when a broker is given.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TextIO

from edgeagent.agent import Agent
from edgeagent.boards import load_board
from edgeagent.config import BatteryConfig, GovernorConfig, ModelFallback, WorkloadConfig
from edgeagent.governor import Forecaster
from edgeagent.infer.bundled import load_bundled_samples
from edgeagent.infer.classifier import DigitsClassifier
from edgeagent.power.poller import PolledReader
from edgeagent.power.read import open_poller
from edgeagent.power.reader import SerialReader
from edgeagent.power.source import PowerSource
from edgeagent.sim.battery import Battery
from edgeagent.sim.bms import DalyEmulator, JBDEmulator
from edgeagent.sim.device import DeviceEmulator
from edgeagent.sim.emulator import SiteEmulator
from edgeagent.sim.modbus import EPEverEmulator, RenogyEmulator
from edgeagent.sim.solar import DEFAULT_DERATE, SolarTrace, hour_of_year
from edgeagent.telemetry.mqtt import MqttLink, Topics
from edgeagent.telemetry.outbox import Outbox, OutboxError
from edgeagent.workloads.pool import WorkerPool

# The embedded default site: a Raspberry Pi 4 on a 40 Wp panel and a 100 Wh LiFePO4 battery,
# starting at midnight of the summer solstice with the battery at 50 %.
BOARD = "raspberry-pi-4"
PANEL_WP = 40.0
BATTERY_WH = 100.0
START_SOC_PCT = 50.0
START = (6, 21, 5.0)  # June 21st, 05:00 local standard time: the demo opens at dawn
TELEMETRY_EVERY_SIM_S = 600.0
TICK_WALL_S = 0.1
STATUS_EVERY_WALL_S = 2.0
POLL_WALL_S = 0.25  # polled devices are asked this often (wall time)
# Greensboro, NC (the TMY3 station): the governor's forecast needs the emulated sun's place, and
# its clock the emulated sun's time: TMY3 hours are local standard time, UTC-5.
LATITUDE, LONGITUDE = 36.1, -79.9
TMY_YEAR_START_UTC = 1609459200.0 + 5 * 3600  # 2021-01-01 00:00 EST
# The large int8 model while the budget allows it, the small one when energy is short.
WORKLOAD = WorkloadConfig(model="digits-large-int8",
                          fallbacks=[ModelFallback(model="digits-int8", below_budget_w=2.0)])
POLLED_EMULATORS: dict[str, tuple[type[DeviceEmulator], str]] = {
    "epever": (EPEverEmulator, "EPEver Tracer (Modbus RTU)"),
    "renogy": (RenogyEmulator, "Renogy Rover (Modbus RTU)"),
    "jbd": (JBDEmulator, "JBD BMS"),
    "daly": (DalyEmulator, "Daly BMS"),
}


@dataclass(frozen=True)
class DemoOptions:
    duration_s: float = 60.0
    speed: float = 1440.0
    broker: str | None = None
    site: str = "demo"
    node: str = "node1"
    state_dir: Path | None = None
    max_workers: int = 2
    charger: str = "vedirect"
    monitor: str = "vedirect"


@contextmanager
def _state_dir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    tmp = Path(tempfile.mkdtemp(prefix="edgeagent-demo-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _clock_text(sim_hour: float) -> str:
    day = int(sim_hour // 24) - int(hour_of_year(*START) // 24)
    h = sim_hour % 24
    return f"day {day + 1} {int(h):02d}:{int(h % 1 * 60):02d}"


def run_demo(options: DemoOptions, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    try:
        with _state_dir(options.state_dir) as state_dir:
            outbox = Outbox(state_dir / "outbox.db")
            try:
                return _run(options, outbox, out)
            finally:
                outbox.close()
    except (OSError, OutboxError) as exc:
        print(f"edgeagent demo: {exc}", file=err)
        return 2


def _devices(emulator: SiteEmulator, options: DemoOptions
             ) -> tuple[list[PowerSource], list[DeviceEmulator], list[str]]:
    """The battery monitor's reader first (its state of charge is what the governor trusts),
    then the charger's; the extra emulators they read; and a line describing each."""
    sources: list[PowerSource] = []
    extra: list[DeviceEmulator] = []
    described: list[str] = []
    for driver, builtin, name in ((options.monitor, emulator.shunt.port, "SmartShunt"),
                                  (options.charger, emulator.mppt.port, "SmartSolar MPPT")):
        if driver == "vedirect":
            sources.append(SerialReader(builtin))
            described.append(f"{name} (VE.Direct) on {builtin}")
            continue
        cls, label = POLLED_EMULATORS[driver]
        device = cls(emulator.device_state)
        extra.append(device)
        port = device.port
        sources.append(PolledReader(partial(open_poller, driver, port, timeout_s=0.5),
                                    name=port, interval_s=POLL_WALL_S))
        described.append(f"{label} on {port}")
    return sources, extra, described


def _run(options: DemoOptions, outbox: Outbox, out: TextIO) -> int:
    board = load_board(BOARD)
    battery_cfg = BatteryConfig(capacity_wh=BATTERY_WH)
    governor_cfg = GovernorConfig(max_workers=options.max_workers)
    samples, labels = load_bundled_samples()
    pool = WorkerPool(DigitsClassifier.load, samples, labels, max_workers=options.max_workers,
                      model=WORKLOAD.model)
    emulator = SiteEmulator(SolarTrace.bundled(), Battery(BATTERY_WH, START_SOC_PCT),
                            start_hour=hour_of_year(*START), speed=options.speed,
                            panel_wp=PANEL_WP, load_w=lambda: board.load_w(pool.busy_cores()))
    readers, devices, described = _devices(emulator, options)
    topics = Topics("edgeagent", options.site, options.node)
    link = MqttLink(options.broker, topics) if options.broker else None
    agent = Agent(sources=readers, board=board, battery=battery_cfg, governor=governor_cfg,
                  stale_after_s=5.0, pool=pool, outbox=outbox, topics=topics, link=link,
                  telemetry_interval_s=TELEMETRY_EVERY_SIM_S, workload=WORKLOAD,
                  clock=lambda: emulator.sim_hour * 3600.0,
                  epoch=lambda: TMY_YEAR_START_UTC + emulator.sim_hour * 3600.0,
                  forecaster=Forecaster(LATITUDE, LONGITUDE,
                                        quantile=governor_cfg.forecast_quantile,
                                        admission_quantile=governor_cfg.admission_quantile,
                                        capacity_w=PANEL_WP * DEFAULT_DERATE))
    print(f"edgeagent demo: {board.description}, {PANEL_WP:.0f} Wp panel, "
          f"{BATTERY_WH:.0f} Wh battery (reserve {battery_cfg.reserve_soc_pct:.0f} %), "
          f"solar trace TMY3 Greensboro NC from June 21 05:00, {options.speed:.0f}x time", file=out)
    print("  emulated " + ", ".join(described)
          + (f", broker {options.broker}" if options.broker else ", no broker (outbox only)"),
          file=out)
    emulator.start()
    for device in devices:
        device.start()
    for r in readers:
        r.start()
    pool.start()
    if link is not None:
        link.start()
    started = time.monotonic()
    next_status = started
    last_inferences, last_status_t = 0, started
    try:
        while (now := time.monotonic()) - started < options.duration_s:
            decision = agent.tick()
            if now >= next_status:
                next_status = now + STATUS_EVERY_WALL_S
                stats = pool.stats()
                rate = (stats.inferences - last_inferences) / max(now - last_status_t, 1e-9)
                last_inferences, last_status_t = stats.inferences, now
                soc = agent.state.battery_soc_pct
                pv = agent.state.pv_power_w
                print(f"  {_clock_text(emulator.sim_hour)}  PV {pv or 0:5.1f} W  "
                      f"SoC {'  ?  ' if soc is None else f'{soc:5.1f}'} %  "
                      f"workers {decision.workers}/{options.max_workers} on {decision.model}  "
                      f"{rate:9.0f} inferences/s  ({decision.reason})", file=out, flush=True)
            time.sleep(TICK_WALL_S)
    except KeyboardInterrupt:
        print("  interrupted", file=out)
    finally:
        pool.stop()
        if link is not None:
            link.stop(outbox)
        for r in readers:
            r.stop()
        for device in devices:
            device.stop()
        emulator.stop()
    _summary(agent, emulator, link, outbox, out)
    return 0


def _summary(agent: Agent, emulator: SiteEmulator, link: MqttLink | None, outbox: Outbox,
             out: TextIO) -> None:
    stats = agent.pool.stats()
    totals = emulator.totals
    jpi = agent.joules_per_inference()
    total_level_s = sum(agent.time_at_level.values()) or 1.0
    print("summary", file=out)
    print(f"  simulated time      {_clock_text(emulator.sim_hour)}", file=out)
    print(f"  PV energy           {totals.pv_wh:.1f} Wh   load energy {totals.load_wh:.1f} Wh",
          file=out)
    print(f"  state of charge     min {totals.min_soc_pct:.1f} %   max {totals.max_soc_pct:.1f} %"
          f"   end {emulator.battery.soc_pct:.1f} %", file=out)
    accuracy = "" if stats.accuracy is None else f"   accuracy {stats.accuracy:.2%}"
    print(f"  inferences          {stats.inferences}{accuracy}", file=out)
    jpj, share = agent.joules_per_job(), agent.energy.solar_share
    print("  energy/inference    " + ("n/a" if jpi is None else
          f"{jpi * 1e6:.1f} uJ   per job {(jpj or 0) * 1e3:.2f} mJ   "
          f"total {agent.energy.energy_j:.1f} J   solar share "
          + ("n/a" if share is None else f"{share:.0%}")
          + f" ({agent.energy_basis})"), file=out)
    for name, done in sorted(stats.by_model.items()):
        model_accuracy = "" if done.accuracy is None else f"   accuracy {done.accuracy:.2%}"
        print(f"  model {name}: {done.inferences} inferences in {done.batches} jobs   "
              f"{(done.joules_per(done.inferences, agent.board.watts_per_core) or 0) * 1e6:.1f}"
              f" uJ/inference{model_accuracy}", file=out)
    levels = "   ".join(f"{w} workers {s / total_level_s:.0%}"
                        for w, s in sorted(agent.time_at_level.items()))
    print(f"  time at work level  {levels}", file=out)
    published = link.published if link is not None else 0
    refused = "" if link is None or not link.rejected else f"   refused {len(link.rejected)}"
    errors = f"   outbox errors {agent.outbox_errors}" if agent.outbox_errors else ""
    print(f"  telemetry           queued {agent.telemetry_queued}   published {published}   "
          f"pending {outbox.pending_count()}   dropped {outbox.dropped}{refused}{errors}",
          file=out)
    for source in agent.sources:
        c = source.counters()
        print(f"  device {source.name}: valid {c['valid']}   invalid {c['invalid']}   "
              f"reopens {c['reopens']}", file=out)
    pool_errors = stats.errors
    if pool_errors:
        print(f"  worker errors       {pool_errors} (last: {agent.pool.last_error})", file=out)
