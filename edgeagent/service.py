"""``edgeagent run --config``: the service systemd starts.

It wires the configured serial devices, the governor, the workers, the outbox and MQTT into the
agent loop and runs it until SIGTERM or SIGINT, then stops admitting work, lets running jobs
finish (one still running when the workers are given up on is requeued at the next start),
flushes what the link allows and says offline. Under systemd (``Type=notify``,
``edgeagent.notify``) it says READY once the readers, workers and outbox are up and the
governor decided once (never waiting for the broker), keeps ``STATUS`` current, pings the
watchdog only while every loop progresses, and reloads the config file on SIGHUP (the
``reload`` command's path: live keys only).
With ``governor.allow_sleep`` and ``actuators.sleep`` on, the sleep actuator arms the RTC wake
alarm and calls back here to stop the same way before it runs the halt command.

``build_site`` builds everything (a ``StartupError`` closes what it had opened), ``Site.close``
is the one close-down, and ``run_service`` only runs the loop between the two.
"""

from __future__ import annotations

import signal
import sqlite3
import sys
import threading
import time
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TextIO

from edgeagent.actuators import build_actuators
from edgeagent.actuators.sleep import utc
from edgeagent.agent import Agent
from edgeagent.boards import BoardProfile, load_board
from edgeagent.config import Config, JobsConfig, PowerDevice, TelemetryConfig, WorkloadConfig
from edgeagent.governor import Forecaster
from edgeagent.infer.bundled import load_bundled_samples
from edgeagent.infer.classifier import DigitsClassifier
from edgeagent.notify import (
    Check,
    Heartbeat,
    Notifier,
    SignalFlags,
    StatusLine,
    Watchdog,
    alive,
    stall_seam,
)
from edgeagent.power.poller import PolledReader
from edgeagent.power.read import open_poller
from edgeagent.power.reader import SerialReader
from edgeagent.power.source import PinnedSource, PowerSource
from edgeagent.power.throttle import ThrottleSensor
from edgeagent.telemetry.commands import CommandFailed, Commands
from edgeagent.telemetry.homeassistant import HomeAssistant
from edgeagent.telemetry.mqtt import MqttLink, Topics
from edgeagent.telemetry.outbox import Outbox, OutboxError
from edgeagent.telemetry.remote_config import RemoteConfig
from edgeagent.telemetry.signing import Verifier, read_key
from edgeagent.workloads.desk import JobDesk
from edgeagent.workloads.fleet_jobs import FleetJobs, Ledger
from edgeagent.workloads.inbox import Intake
from edgeagent.workloads.jobs import JobError, JobQueue
from edgeagent.workloads.pool import WorkerPool


def device_reader(device: PowerDevice) -> PowerSource:
    """Streaming devices are listened to; the others are polled at their interval. With a
    ``serial`` configured, only that device's readings are believed."""
    source: PowerSource
    if device.driver == "vedirect":
        source = SerialReader(device.port, baud=device.baud)
    else:
        source = PolledReader(
            lambda: open_poller(device.driver, device.port, device.baud, device.unit),
            name=device.port, interval_s=device.poll_interval_s)
    return source if device.serial is None else PinnedSource(source, device.serial)


def status_text(agent: Agent, outbox: Outbox) -> str:
    """What ``systemctl status`` shows: SoC, work level, backlog, link."""
    state, decision = agent.state, agent.decision
    soc = "SoC ?" if state.battery_soc_pct is None else f"SoC {state.battery_soc_pct:.0f}%"
    parts = [soc + (" (power stale)" if state.stale else "")]
    if decision is not None:
        parts.append(f"level {decision.level:.2f} ({decision.workers} workers)")
    parts.append(f"backlog {outbox.pending_count()}")
    parts.append("link off" if agent.link is None else f"link {agent.link.state}")
    return " · ".join(parts)


def reader_check(reader: PowerSource) -> Check:
    """A stale sensor is not a stuck loop (``STATUS`` says stale); a dead reader thread is."""
    return alive(f"power reader {reader.name}", lambda: reader.running)


JOB_SLACK = 3.0  # a job may take this many times its declared CPU-seconds (a lowered cpufreq)


def workers_check(pool: WorkerPool, queue: JobQueue, limit_s: float) -> Check:
    """No worker on one batch or job for longer than ``limit_s``, or, while jobs run, than
    ``limit_s`` plus ``JOB_SLACK`` times the longest running job's declared ``work_cpu_s``: a
    job that says it needs ten minutes is not a stuck worker at 30 s. The queue is asked only
    when the short limit is passed."""

    def check() -> str | None:
        if pool.stalled(limit_s) is None:
            return None
        running = [w.work_cpu_s for w in queue.planned_work() if w.running]
        return pool.stalled(limit_s + JOB_SLACK * max(running, default=0.0))

    return check


class StartupError(Exception):
    """The site cannot start as configured: one line (after ``edgeagent run: ``) and exit
    status 2, not a traceback; whatever was opened before it is closed already."""

    status = 2


@dataclass(eq=False)
class Site:
    """One run's components, built by ``build_site``. ``close`` is the only close-down: at
    the end, on a stop signal, or from the sleep actuator before its halt."""

    config: Config  # the file's config with the last good remote config over it
    path: Path | None  # the file (what SIGHUP and the ``reload`` command read again)
    out: TextIO
    remote: RemoteConfig
    board: BoardProfile
    topics: Topics
    readers: list[PowerSource]
    outbox: Outbox
    queue: JobQueue
    pool: WorkerPool
    link: MqttLink | None
    notifier: Notifier
    stores: ExitStack  # closes the stores opened (fleet ledger, queue, outbox), once
    agent: Agent = field(init=False)  # built last: its sleep actuator calls ``before_halt``
    signals: SignalFlags = field(default_factory=SignalFlags)
    stop: threading.Event = field(default_factory=threading.Event)  # set on the main thread
    started: bool = False
    closed: bool = False

    def start(self) -> None:
        """Readers, workers, then the link (in the background: never waiting for a broker)."""
        self.started = True
        for r in self.readers:
            r.start()
        self.pool.start()
        if self.link is not None:
            self.link.start()

    def close(self) -> None:
        """Stop admitting work, let the workers finish, flush what the link allows, say
        offline, then close the stores. Once: the halt hook and the loop's end both call it."""
        if self.closed:
            return
        self.closed = True
        try:
            if self.started:
                self.notifier.stopping("stopping: workers finish, the link flushes")
                self.pool.set_admitted(())
                self.pool.set_workers(0)
                self.pool.stop()
                if self.link is not None:
                    self.link.stop(self.outbox)
                for r in self.readers:
                    r.stop()
        finally:
            self.stores.close()

    def before_halt(self, wake: float) -> None:
        """The sleep actuator armed the wake alarm: stop cleanly before it halts the board."""
        print(f"sleeping until {utc(wake)}: stopping before the halt", file=self.out, flush=True)
        self.stop.set()
        with suppress(sqlite3.Error):  # the last word: the decision to sleep, and until when
            self.outbox.enqueue_telemetry(self.topics.telemetry, self.agent.telemetry())
        self.close()

    def reload(self) -> None:
        """SIGHUP: the ``reload`` command's path, bracketed by RELOADING and READY."""
        self.notifier.reloading()
        try:
            changed = self.remote.reload()["changed"]
        except CommandFailed as exc:
            print(f"edgeagent run: reload refused, the running config stays: {exc}",
                  file=self.out, flush=True)
        else:
            print(f"reloaded {self.path}: {', '.join(changed) or 'nothing'} changed",
                  file=self.out, flush=True)
        self.notifier.ready()

    def take_signals(self) -> bool:
        """Act on the signals received since the last call; True once asked to stop. A
        signal during the shutdown itself changes nothing: it is bounded (workers, flush)."""
        got = self.signals.take()
        if signal.SIGTERM in got or signal.SIGINT in got:
            self.stop.set()
        elif signal.SIGHUP in got and not self.stop.is_set():
            self.reload()
        return self.stop.is_set()


def check_models(workload: WorkloadConfig) -> None:
    """Load every model once now: a broken model file is a start-up error, not a loop."""
    try:
        for model in workload.models():
            DigitsClassifier.load(model)
    except (OSError, ValueError, ImportError) as exc:
        raise StartupError(f"workload model: {exc}") from exc


def open_outbox(tel: TelemetryConfig) -> Outbox:
    try:
        return Outbox(tel.outbox_path, max_rows=tel.outbox_max_rows,
                      max_bytes=tel.outbox_max_bytes)
    except OutboxError as exc:
        raise StartupError(f"{exc} (check telemetry.outbox_path and the service's "
                           "StateDirectory)") from exc


def open_queue(jobs: JobsConfig, tel: TelemetryConfig) -> JobQueue:
    try:
        return JobQueue(jobs.path or tel.outbox_path.with_name("jobs.db"),
                        max_attempts=jobs.max_attempts,
                        best_effort_ttl_s=jobs.best_effort_ttl_h * 3600,
                        default_work_cpu_s=jobs.default_work_cpu_s)
    except JobError as exc:
        raise StartupError(f"{exc} (check jobs.path and the service's StateDirectory)"
                           ) from exc


def open_ledger(queue: JobQueue) -> Ledger:
    try:
        return Ledger(queue.path.with_name("fleet-jobs.db"))
    except JobError as exc:
        raise StartupError(str(exc)) from exc


def mqtt_link(tel: TelemetryConfig, topics: Topics) -> MqttLink | None:
    """None without a broker: the outbox keeps the telemetry."""
    if not tel.broker:
        return None
    return MqttLink(tel.broker, topics, username=tel.username, password=tel.broker_password(),
                    tls=tel.tls, protocol=tel.protocol, keepalive_s=tel.keepalive_s,
                    reconnect_min_s=tel.reconnect_min_s, reconnect_max_s=tel.reconnect_max_s,
                    will_delay_s=tel.will_delay_s,
                    session_file=tel.outbox_path.with_name("mqtt-session"))


def warn_about(config: Config, out: TextIO) -> None:
    """Settings that are valid alone but do nothing together: said, not refused."""
    if config.actuators.sleep and not config.governor.allow_sleep:
        print("edgeagent run: actuators.sleep is on but governor.allow_sleep is off: the board "
              "never sleeps", file=out)
    if config.governor.allow_sleep and not config.actuators.sleep:
        print("edgeagent run: governor.allow_sleep is on but actuators.sleep is off: the "
              "governor plans sleep that does not happen (the board idles instead)", file=out)


def build_site(config: Config, out: TextIO, path: Path | None) -> Site:
    """Everything ``run_service`` runs, built but not started. A ``StartupError`` (or any
    other exception) leaves nothing open: the stores are closed as the exception leaves."""
    remote = RemoteConfig(config, path=path,
                          state_path=config.telemetry.outbox_path.with_name("remote-config.json"),
                          probation_ticks=config.telemetry.config_probation_ticks,
                          max_bytes=config.telemetry.command_max_bytes)
    config = remote.config  # the file with the last good remote config over it
    detection = config.site.detection()
    board = load_board(detection.board)
    print(detection.describe(), file=out, flush=True)
    throttle = ThrottleSensor.find()
    workload, tel, jobs_cfg = config.workload, config.telemetry, config.jobs
    samples, labels = load_bundled_samples()
    check_models(workload)
    readers = [device_reader(d) for d in config.power.devices]
    topics = Topics(tel.topic_root, config.site.id, config.site.node)
    stores = ExitStack()  # from here on, a failure closes what was opened
    try:
        outbox = open_outbox(tel)
        stores.callback(outbox.close)
        queue = open_queue(jobs_cfg, tel)
        stores.callback(queue.close)
        intake = (Intake(jobs_cfg.inbox_dir, queue, models=workload.models(),
                         share_inputs=jobs_cfg.share_inputs) if jobs_cfg.inbox_dir else None)
        pool = WorkerPool(stall_seam(partial(DigitsClassifier.load,
                                             threads=workload.threads_per_worker)),
                          samples, labels, max_workers=config.governor.max_workers,
                          batch_size=workload.batch_size, model=workload.model, jobs=queue,
                          inputs_dir=jobs_cfg.inbox_dir)
        site_cfg = config.site
        forecaster = (Forecaster(site_cfg.latitude, site_cfg.longitude,
                                 quantile=config.governor.forecast_quantile,
                                 admission_quantile=config.governor.admission_quantile)
                      if site_cfg.latitude is not None and site_cfg.longitude is not None
                      else None)
        link = mqtt_link(tel, topics)
        desk = JobDesk(queue, intake, board, config.battery, config.governor)
        fleet_cfg, ha_cfg = jobs_cfg.fleet, tel.homeassistant
        if link is None and (fleet_cfg.enabled or ha_cfg.enabled):
            print("edgeagent run: jobs.fleet and telemetry.homeassistant need telemetry.broker",
                  file=out)
        fleet_jobs = None
        if link is not None and fleet_cfg.enabled:
            ledger = open_ledger(queue)
            stores.callback(ledger.close)
            fleet_jobs = FleetJobs(link, outbox, desk, ledger,
                                   inputs_dir=queue.path.with_name("fleet-inputs"),
                                   models=workload.models(), share_group=fleet_cfg.share_group,
                                   subscribe_after_s=fleet_cfg.subscribe_after_s,
                                   max_hops=fleet_cfg.max_hops,
                                   keep_s=jobs_cfg.keep_finished_days * 86400, epoch=time.time)
        homeassistant = (HomeAssistant(link, ha_cfg.prefix, board=board.name, sources=readers,
                                       support_url=ha_cfg.support_url)
                         if link is not None and ha_cfg.enabled else None)
        site = Site(config=config, path=path, out=out, remote=remote, board=board,
                    topics=topics, readers=readers, outbox=outbox, queue=queue, pool=pool,
                    link=link, notifier=Notifier.from_environment(), stores=stores)
        warn_about(config, out)
        agent = site.agent = Agent(
            sources=readers, board=board, battery=config.battery, governor=config.governor,
            stale_after_s=config.power.stale_after_s, pool=pool, outbox=outbox, topics=topics,
            link=link, telemetry_interval_s=tel.interval_s, workload=workload,
            forecaster=forecaster,
            actuators=build_actuators(config.actuators, pool=pool, board=board,
                                      on_before_halt=site.before_halt),
            desk=desk, fleet_jobs=fleet_jobs, homeassistant=homeassistant, throttle=throttle)
        remote.attach(agent, outbox, topics.config_reported)
        agent.reporters["remote_config"] = remote.telemetry
        if throttle is not None:
            agent.reporters["throttle"] = throttle.telemetry
        if link is not None:
            key = tel.command_hmac_key_file
            commands = Commands(agent, link, topics.cmd, reload=remote.reload,
                                max_bytes=tel.command_max_bytes,
                                verifier=None if key is None else Verifier(
                                    read_key(key), seen_path=tel.outbox_path.with_name(
                                        "command-signatures.json")))
            agent.reporters["commands"] = commands.telemetry
            link.subscribe(topics.cmd, commands.handle)
            link.subscribe(topics.config_desired, remote.on_desired)
    except BaseException:
        stores.close()
        raise
    return site


def site_watchdog(site: Site, main_loop: Heartbeat) -> Watchdog:
    """Pings only while the main loop beats, no worker is stuck, every reader thread and
    the MQTT network thread live."""
    watchdog_s = site.notifier.watchdog_s or 0.0
    checks: list[Check] = [main_loop, workers_check(site.pool, site.queue, watchdog_s),
                           *(reader_check(r) for r in site.readers)]
    if site.link is not None:
        checks.append(alive("mqtt network", site.link.network_alive))
    return Watchdog(site.notifier, checks, say=lambda msg: print(msg, file=site.out, flush=True))


def run_loop(site: Site) -> None:
    """Start the site and tick the agent until a stop signal or the sleep actuator's halt:
    READY after the first tick, then ``STATUS`` and the watchdog kept current."""
    agent, link, outbox, out, config = site.agent, site.link, site.outbox, site.out, site.config
    watchdog_s = site.notifier.watchdog_s or 0.0
    main_loop = Heartbeat("main loop", lambda: agent.governor.tick_s + watchdog_s / 2)
    watchdog = site_watchdog(site, main_loop)
    status = StatusLine(site.notifier)
    site.start()
    print(f"edgeagent running: site {config.site.id} node {config.site.node}, "
          f"{len(site.readers)} power device(s), board {site.board.name}", file=out, flush=True)
    last: tuple[int, str] | None = None
    while not site.take_signals():
        decision = agent.tick()
        if site.stop.is_set():  # the sleep actuator stopped us before its halt
            break
        site.remote.watch()
        main_loop.beat()
        if last is None:  # readers, workers, outbox and governor are up
            site.notifier.ready()
        status.update(status_text(agent, outbox) if watchdog.stuck is None
                      else f"stuck: {watchdog.stuck} (watchdog not pinged)")
        watchdog.poll()
        if (decision.workers, decision.model) != last:  # log changes, not every tick
            last = (decision.workers, decision.model)
            print(f"workers {decision.workers} on {decision.model}: {decision.reason}",
                  file=out, flush=True)
        # Pump the link often; decide once per governor tick, by the clock: slow pumps (a
        # long backlog on an SD card) must not stretch the tick past the main loop's check.
        next_tick = time.monotonic() + agent.governor.tick_s
        while not site.take_signals() and (left := next_tick - time.monotonic()) > 0:
            time.sleep(min(0.1, left))  # a signal cuts it short (PEP 475 resumes the rest)
            if link is not None:
                link.pump(outbox)
            watchdog.poll()


def exit_status(site: Site) -> int:
    """1 when the loop stopped for a halt that did not happen: systemd restarts the agent."""
    actuators, out = site.agent.actuators, site.out
    if actuators.halted:
        print("halting: the RTC wakes the board", file=out, flush=True)
    elif actuators.halting:
        sleep = actuators.counts.get("sleep")
        print(f"edgeagent run: the board did not halt ({sleep.last_error if sleep else '?'}); "
              "exiting with status 1 so that systemd restarts the agent", file=out, flush=True)
        return 1
    return 0


def run_service(config: Config, out: TextIO = sys.stderr, path: Path | None = None) -> int:
    """``config`` as read from ``path`` (what the ``reload`` command reads again)."""
    try:
        site = build_site(config, out, path)
    except StartupError as exc:
        print(f"edgeagent run: {exc}", file=out)
        return exc.status
    site.signals.install((signal.SIGTERM, signal.SIGINT, signal.SIGHUP))
    try:
        run_loop(site)
    finally:
        site.close()
        site.notifier.close()
    return exit_status(site)
