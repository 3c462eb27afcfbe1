"""``edgeagent run --config``: the service systemd starts.

Thin for now (issue 7 adds sd_notify, the watchdog and reload): it wires the configured serial
devices, the governor, the workers, the outbox and MQTT into the agent loop and runs it until
SIGTERM or SIGINT, then stops admitting work, flushes what the link allows and says offline.
"""

from __future__ import annotations

import signal
import sys
import threading
from functools import partial
from types import FrameType
from typing import TextIO

from edgeagent.actuators import build_actuators
from edgeagent.agent import Agent
from edgeagent.config import Config, PowerDevice
from edgeagent.governor import Forecaster
from edgeagent.infer import DigitsClassifier, load_bundled_samples
from edgeagent.power.poller import PolledReader
from edgeagent.power.read import open_poller
from edgeagent.power.reader import SerialReader
from edgeagent.power.source import PinnedSource, PowerSource
from edgeagent.telemetry.mqtt import MqttLink, Topics
from edgeagent.telemetry.outbox import Outbox, OutboxError
from edgeagent.workloads.desk import JobDesk
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


def run_service(config: Config, out: TextIO = sys.stderr) -> int:
    board = config.site.profile()
    workload = config.workload
    samples, labels = load_bundled_samples()
    try:  # load every model once now: a broken model file is a start-up error, not a loop
        for model in workload.models():
            DigitsClassifier.load(model)
    except (OSError, ValueError, ImportError) as exc:
        print(f"edgeagent run: workload model: {exc}", file=out)
        return 2
    readers = [device_reader(d) for d in config.power.devices]
    tel = config.telemetry
    topics = Topics(tel.topic_root, config.site.id, config.site.node)
    try:
        outbox = Outbox(tel.outbox_path, max_rows=tel.outbox_max_rows)
    except OutboxError as exc:
        print(f"edgeagent run: {exc} (check telemetry.outbox_path and the service's "
              "StateDirectory)", file=out)
        return 2
    jobs_cfg = config.jobs
    try:
        queue = JobQueue(jobs_cfg.path or config.telemetry.outbox_path.with_name("jobs.db"),
                         max_attempts=jobs_cfg.max_attempts,
                         best_effort_ttl_s=jobs_cfg.best_effort_ttl_h * 3600,
                         default_work_cpu_s=jobs_cfg.default_work_cpu_s)
    except JobError as exc:
        outbox.close()
        print(f"edgeagent run: {exc} (check jobs.path and the service's StateDirectory)",
              file=out)
        return 2
    intake = (Intake(jobs_cfg.inbox_dir, queue, models=workload.models(),
                     share_inputs=jobs_cfg.share_inputs) if jobs_cfg.inbox_dir else None)
    pool = WorkerPool(partial(DigitsClassifier.load, threads=workload.threads_per_worker),
                      samples, labels, max_workers=config.governor.max_workers,
                      batch_size=workload.batch_size, model=workload.model, jobs=queue,
                      inputs_dir=jobs_cfg.inbox_dir)
    site = config.site
    forecaster = (Forecaster(site.latitude, site.longitude,
                             quantile=config.governor.forecast_quantile)
                  if site.latitude is not None and site.longitude is not None else None)
    link = (MqttLink(tel.broker, topics, username=tel.username, password=tel.password)
            if tel.broker else None)
    agent = Agent(sources=readers, board=board, battery=config.battery, governor=config.governor,
                  stale_after_s=config.power.stale_after_s, pool=pool, outbox=outbox,
                  topics=topics, link=link, telemetry_interval_s=tel.interval_s,
                  workload=workload, forecaster=forecaster,
                  actuators=build_actuators(config.actuators, pool=pool, board=board),
                  desk=JobDesk(queue, intake, board, config.battery, config.governor))
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    for r in readers:
        r.start()
    pool.start()
    if link is not None:
        link.start()
    print(f"edgeagent running: site {config.site.id} node {config.site.node}, "
          f"{len(readers)} power device(s), board {board.name}", file=out, flush=True)
    last: tuple[int, str] | None = None
    try:
        while not stop.is_set():
            decision = agent.tick()
            if (decision.workers, decision.model) != last:  # log changes, not every tick
                last = (decision.workers, decision.model)
                print(f"workers {decision.workers} on {decision.model}: {decision.reason}",
                      file=out, flush=True)
            # Pump the link often; decide once per governor tick.
            for _ in range(max(int(config.governor.tick_s / 0.1), 1)):
                if stop.wait(0.1):
                    break
                if link is not None:
                    link.pump(outbox)
    finally:
        pool.set_workers(0)
        pool.stop()
        if link is not None:
            link.stop(outbox)
        for r in readers:
            r.stop()
        outbox.close()
        queue.close()
    return 0
