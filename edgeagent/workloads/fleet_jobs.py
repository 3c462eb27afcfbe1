"""Jobs from the fleet: work moves to the sites that have sun to spare.

A node takes jobs from ``<root>/<site>/jobs`` and ``<root>/fleet/jobs`` through MQTT v5 shared
subscriptions (``$share/<group>/...``: the broker hands each job to one member of the group),
and subscribes only while the governor gives it energy to spare, so the broker cluster is the
fleet's job queue and a dark site simply stops pulling.

- **Spare** means the governor admits best-effort work (its plan has slots to spare, or the
  battery is full in daylight). The node subscribes once that has held ``subscribe_after_s``
  and unsubscribes as soon as it ends: like the actuators, raising waits and lowering does
  not, so a surplus that flickers cannot make the subscription flap.
- **Stored before acknowledged**: the link PUBACKs a message only after its handler returned,
  and the handler puts the job in the node's SQLite queue first. A job it cannot store raises
  ``Defer`` (no PUBACK). The id is the idempotency key: a redelivered job is not queued twice.
- **Handed back, never dropped**: a job that arrives when the node is no longer spare (sent
  while the UNSUBSCRIBE was on its way), asks for a model the node does not run, or that
  admission refuses here (its deadline cannot be met on this node's energy), is republished to
  the topic it came from, with its id and ``hops`` + 1, through the outbox (so durably) before
  the PUBACK. After ``max_hops`` hand-backs the node publishes it as rejected instead, so a job
  nobody can take ends with an answer rather than circling forever.
- **Results** of every fleet job (done, failed, expired, rejected, invalid) go out on the
  node's ``results`` topic with the job id, through the outbox (kind ``result``). A small
  ledger remembers which queued jobs came from the fleet and whose result is out, so a crash
  repeats a result (at-least-once: consumers de-duplicate by id) but never loses one.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import os
import sqlite3
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, ValidationError

from edgeagent.config import field_errors
from edgeagent.governor.decision import Decision
from edgeagent.governor.forecast import Forecast
from edgeagent.state import SiteState
from edgeagent.telemetry.mqtt import Defer, Inbound, MqttLink
from edgeagent.telemetry.outbox import Outbox
from edgeagent.workloads.admission import Work
from edgeagent.workloads.desk import JobDesk, admission
from edgeagent.workloads.jobs import FINISHED, ID_PATTERN, JobError, JobSpec

INLINE_PREFIX = "data:application/x-npy;base64,"
MAX_INPUT_CHARS = 1_400_000  # about 1 MiB of inline data


class FleetJob(JobSpec):
    """A job on the fleet's topics: a ``JobSpec`` whose id is required (results are matched
    and duplicates recognised by it), whose ``input`` is a reference relative to the node's
    inputs folder or the data inline (``data:application/x-npy;base64,...``: raw digit pixels,
    uint8), and which counts the times it was handed back in ``hops``."""

    id: str = Field(pattern=ID_PATTERN, description="idempotency key, required")
    input: str = Field(min_length=1, max_length=MAX_INPUT_CHARS,
                       description="a path relative to the node's inputs folder, or the .npy "
                                   "inline: data:application/x-npy;base64,...")
    hops: int = Field(default=0, ge=0, description="hand-backs so far")


SCHEMA = """
CREATE TABLE IF NOT EXISTS fleet_jobs (
    id TEXT PRIMARY KEY,
    topic TEXT NOT NULL,
    reported REAL NOT NULL DEFAULT 0  -- when its result went to the outbox; 0: not yet
);
"""


class Ledger:
    """Which queued jobs came from the fleet, the topic of each, and whose result is out
    (kept ``keep_s`` after that, so a late redelivery is still recognised)."""

    def __init__(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise JobError(f"cannot open the fleet job ledger {path}: {exc}") from exc
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            self._db.close()
            raise JobError(f"cannot open the fleet job ledger {path}: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    def take(self, job_id: str, topic: str) -> None:
        self._db.execute("INSERT OR IGNORE INTO fleet_jobs (id, topic) VALUES (?, ?)",
                         (job_id, topic))

    def reported(self, job_id: str) -> bool:
        row = self._db.execute("SELECT reported FROM fleet_jobs WHERE id = ?",
                               (job_id,)).fetchone()
        return bool(row and row[0])

    def unreported(self) -> list[tuple[str, str]]:
        return [(r[0], r[1]) for r in self._db.execute(
            "SELECT id, topic FROM fleet_jobs WHERE reported = 0 ORDER BY rowid")]

    def mark_reported(self, job_id: str, now: float) -> None:
        self._db.execute("UPDATE fleet_jobs SET reported = ? WHERE id = ?", (now, job_id))

    def prune(self, reported_before: float) -> None:
        self._db.execute("DELETE FROM fleet_jobs WHERE reported > 0 AND reported < ?",
                         (reported_before,))


def _write_file(path: Path, data: bytes) -> None:
    """The whole file or none, even across a power cut: temporary file, fsync, rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class InvalidInput(ValueError):
    """A job's input this node cannot use, whatever its energy: answered, not handed back."""


def decode_inline(ref: str) -> bytes:
    """The .npy bytes of an inline input, checked to load as uint8 pixels without pickle."""
    try:
        raw = base64.b64decode(ref.removeprefix(INLINE_PREFIX), validate=True)
        buf = io.BytesIO(raw)
        # The header first: np.load allocates the shape it claims before reading the data,
        # so a few bytes could ask for gigabytes.
        version = np.lib.format.read_magic(buf)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(buf)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(buf)
        else:
            raise ValueError(f"unsupported .npy version {version}")
        if dtype == np.uint8 and math.prod(shape) != len(raw) - buf.tell():
            raise ValueError(f"the header's shape {shape} does not match the data")
    except (binascii.Error, ValueError, OSError, EOFError) as exc:
        raise InvalidInput(f"not a base64 .npy: {exc}") from exc
    if dtype != np.uint8:
        raise InvalidInput(f"pixels must be uint8, not {dtype}")
    return raw


def inline_input(array: np.ndarray[Any, Any]) -> str:
    """An array as a job's inline ``input`` (for publishers)."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return INLINE_PREFIX + base64.b64encode(buf.getvalue()).decode()


class FleetJobs:
    def __init__(self, link: MqttLink, outbox: Outbox, desk: JobDesk, ledger: Ledger, *,
                 inputs_dir: Path, models: Collection[str], share_group: str = "edgeagent",
                 subscribe_after_s: float = 300.0, max_hops: int = 10,
                 keep_s: float = 30 * 86400.0, epoch: Callable[[], float]) -> None:
        """``inputs_dir``: where inline inputs are written; ``keep_s``: how long a reported
        job's id is remembered; ``epoch``: the agent's UTC clock."""
        self.link = link
        self.outbox = outbox
        self.desk = desk
        self.queue = desk.queue
        self.ledger = ledger
        self.inputs_dir = inputs_dir
        self.models = models
        self.share_group = share_group
        self.subscribe_after_s = subscribe_after_s
        self.max_hops = max_hops
        self.keep_s = keep_s
        self.epoch = epoch
        self.topics = (link.topics.site_jobs, link.topics.fleet_jobs)
        self.spare = False
        self._spare_since: float | None = None
        self._seen: tuple[SiteState, Decision | None, Forecast | None] = (SiteState(), None,
                                                                          None)
        self.counts = dict.fromkeys(("taken", "duplicates", "handed_back", "rejected",
                                     "invalid", "results"), 0)
        inputs_dir.mkdir(parents=True, exist_ok=True)

    @property
    def subscribed(self) -> bool:
        return self.link.subscribed(self.topics[0])

    def tick(self, now: float, state: SiteState, decision: Decision | None,
             forecast: Forecast | None) -> None:
        """Follow the governor's spare energy with the subscription; publish new results."""
        self._seen = (state, decision, forecast)
        self.spare = decision is not None and "best-effort" in decision.admit
        if not self.spare:
            self._spare_since = None
            if self.subscribed:
                for topic in self.topics:
                    self.link.unsubscribe(topic)
        elif self._spare_since is None:
            self._spare_since = now
        if (self.spare and not self.subscribed and self._spare_since is not None
                and now - self._spare_since >= self.subscribe_after_s):
            for topic in self.topics:
                self.link.subscribe(topic, self._on_job, share_group=self.share_group)
        self.report(now)

    def report(self, now: float) -> None:
        """Publish the result of every finished fleet job not published yet."""
        reported = False
        for job_id, topic in self.ledger.unreported():
            job = self.queue.get(job_id)
            if job is None or job.state not in FINISHED:
                continue
            self._result({**job.record(), "topic": topic})
            self.ledger.mark_reported(job_id, now)
            (self.inputs_dir / f"{job_id}.npy").unlink(missing_ok=True)
            reported = True
        if reported:  # not every tick: a write is an fsync
            self.ledger.prune(now - self.keep_s)

    def _result(self, body: dict[str, Any]) -> None:
        self.outbox.enqueue(self.link.topics.results,
                            json.dumps(body, separators=(",", ":")).encode(), kind="result")
        self.counts["results"] += 1

    def _on_job(self, message: Inbound) -> None:
        try:
            try:
                job = FleetJob.model_validate_json(message.payload)
                local, data = self._local(job)
            except ValidationError as exc:
                self._invalid(message, [{"field": path, "message": text}
                                        for path, text, _ in field_errors(exc)])
            except InvalidInput as exc:
                self._invalid(message, [{"field": "input", "message": str(exc)}])
            else:
                self._take(job, local, data, message.topic)
        except (sqlite3.Error, JobError, OSError) as exc:
            raise Defer(str(exc)) from exc  # not stored: the broker keeps it

    def _take(self, job: FleetJob, local: JobSpec, data: bytes | None, topic: str) -> None:
        if self.queue.get(job.id) is not None or self.ledger.reported(job.id):
            self.ledger.take(job.id, topic)  # a crash may have come between the two stores
            self.counts["duplicates"] += 1
            return
        now = self.epoch()
        refusal = self._refusal(job, now)
        if refusal is None:
            if data is not None:
                _write_file(Path(local.input), data)
            self.ledger.take(job.id, topic)
            self.queue.submit(local, now)
            self.counts["taken"] += 1
        elif job.hops < self.max_hops:
            handed = job.model_copy(update={"hops": job.hops + 1})
            self.outbox.enqueue(topic, handed.model_dump_json(by_alias=True, exclude_none=True)
                                .encode(), kind="result")
            self.counts["handed_back"] += 1
        else:
            self._result({"id": job.id, "class": job.job_class, "state": "rejected",
                          "model": job.model, "hops": job.hops, "topic": topic,
                          "reason": f"{refusal}; handed back {job.hops} times"})
            self.counts["rejected"] += 1

    def _refusal(self, job: FleetJob, now: float) -> str | None:
        """Why this node does not take the job now, or None."""
        if not self.spare:
            return "no energy to spare on this node now"
        if job.model not in self.models:
            return f"this node does not run the model {job.model!r}"
        state, decision, forecast = self._seen
        desk = self.desk
        judge = admission(now, state, decision, forecast, desk.board, desk.battery,
                          desk.governor)
        work_cpu_s = job.work_cpu_s or self.queue.default_work_cpu_s
        deadline = None if job.deadline is None else job.deadline.timestamp()
        verdict = judge(self.queue.planned_work(),
                        Work(job.id, job.job_class, work_cpu_s, deadline, False, now))
        return None if verdict.accepted else verdict.reason

    def _local(self, job: FleetJob) -> tuple[JobSpec, bytes | None]:
        """The job as this node's queue stores it (the input as a local path), and the
        inline input's bytes to write there."""
        ref, data = job.input, None
        if ref.startswith(INLINE_PREFIX):
            data = decode_inline(ref)
            ref = str(self.inputs_dir.resolve() / f"{job.id}.npy")
        elif Path(ref).is_absolute() or ".." in Path(ref).parts:
            raise InvalidInput("a reference must stay inside the node's inputs folder")
        spec = JobSpec.model_validate({**job.model_dump(exclude={"hops", "input"}),
                                       "input": ref})
        return spec, data

    def _invalid(self, message: Inbound, errors: list[dict[str, str]]) -> None:
        """A job no node can take: answer with the errors (acknowledged, not handed back)."""
        try:
            job_id = json.loads(message.payload).get("id")
        except (ValueError, AttributeError):
            job_id = None
        self._result({"id": job_id if isinstance(job_id, str) else None, "state": "invalid",
                      "topic": message.topic, "errors": errors})
        self.counts["invalid"] += 1

    def telemetry(self) -> dict[str, Any]:
        return {"subscribed": self.subscribed, "spare": self.spare, **self.counts}

