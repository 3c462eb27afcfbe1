"""The job queue: every job is in SQLite before it is acknowledged to whoever submitted it.

States: queued -> running -> done | failed, queued -> expired (its deadline or TTL passed
before it ran), and rejected at submission (admission said no; kept so a resubmission of the
same id gets the same answer). A job that fails goes back to queued until it has used
``max_attempts``. A job found running when the queue opens was cut short by a crash, a
``kill -9`` or a brown-out: it is queued again, or failed if that was its last attempt (a job
that kills the agent must not do so forever).

Ordering: urgent, then deferrable, then best-effort; within a class, earliest deadline first
(jobs without a deadline last), then submission order.

Durability as in the outbox: WAL with ``synchronous=FULL``, one transaction per operation.
Submission runs admission inside its write transaction, so two submitters cannot both be
accepted against the same spare energy. The queue is shared by the main loop and the worker
threads, so one connection is guarded by a lock.

Input data stays on the site: a job holds a reference to its input, and the record that
leaves the site (``Job.record``) carries only metadata and the result unless the operator
shares inputs.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, cast

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from edgeagent.governor.decision import JOB_CLASSES, JobClass
from edgeagent.workloads.admission import Verdict, Work

JobState = Literal["queued", "running", "done", "failed", "expired", "rejected"]
JOB_STATES: tuple[JobState, ...] = ("queued", "running", "done", "failed", "expired",
                                    "rejected")
FINISHED: tuple[JobState, ...] = ("done", "failed", "expired", "rejected")
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"  # safe as a file name and an MQTT level

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    class TEXT NOT NULL,
    rank INTEGER NOT NULL,
    deadline REAL,
    expires REAL,
    work_cpu_s REAL NOT NULL,
    model TEXT NOT NULL,
    input TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    submitted REAL NOT NULL,
    started REAL,
    finished REAL,
    result TEXT,
    error TEXT,
    reason TEXT NOT NULL DEFAULT '',
    reported INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, rank, deadline, submitted);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters VALUES ('deadline_misses', 0);
"""
COLUMNS = ("id, class, deadline, work_cpu_s, model, input, state, attempts, submitted, started, "
           "finished, result, error, reason")


class JobError(Exception):
    """The queue cannot be opened, or a job is not in the state an operation needs."""


class JobSpec(BaseModel):
    """A job as submitted: the inbox's file format and the single source of its validation."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    id: str | None = Field(default=None, pattern=ID_PATTERN,
                           description="idempotency key; a uuid is given when absent")
    job_class: JobClass = Field(alias="class")
    deadline: AwareDatetime | None = Field(default=None, description="ISO 8601 with its offset")
    model: str = Field(min_length=1, max_length=4096)
    input: str = Field(min_length=1, max_length=4096, description="reference to the input data")
    work_cpu_s: float | None = Field(default=None, gt=0, le=7 * 86400,
                                     description="estimated CPU-seconds; default from config")

    @model_validator(mode="after")
    def _deferrable_has_deadline(self) -> JobSpec:
        if self.job_class == "deferrable" and self.deadline is None:
            raise ValueError("deadline: a deferrable job needs a deadline")
        return self


@dataclass(frozen=True)
class Job:
    """One stored job; times are UTC epoch seconds."""

    id: str
    job_class: JobClass
    deadline: float | None
    work_cpu_s: float
    model: str
    input: str
    state: JobState
    attempts: int
    submitted: float
    started: float | None
    finished: float | None
    result: dict[str, Any] | None
    error: str | None
    reason: str

    def work(self) -> Work:
        """As admission plans it; a running job counts whole (its progress is not tracked)."""
        return Work(self.id, self.job_class, self.work_cpu_s, self.deadline,
                    self.state == "running", self.submitted)

    def record(self, share_input: bool = False) -> dict[str, Any]:
        """What may leave the site: metadata and the result; the input reference only when
        the operator shares inputs (a file name can already say too much)."""
        out: dict[str, Any] = {
            "id": self.id, "class": self.job_class, "state": self.state, "model": self.model,
            "deadline": _iso(self.deadline), "work_cpu_s": self.work_cpu_s,
            "attempts": self.attempts, "submitted": _iso(self.submitted),
            "started": _iso(self.started), "finished": _iso(self.finished),
            "result": self.result, "error": self.error, "reason": self.reason,
        }
        if share_input:
            out["input"] = self.input
        return out


@dataclass(frozen=True)
class Submission:
    job: Job
    created: bool  # False: the id was known, ``job`` is the existing one


Admit = Callable[[Sequence[Work], Work], Verdict]


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")


def _job(row: tuple[Any, ...]) -> Job:
    (job_id, job_class, deadline, work_cpu_s, model, input_ref, state, attempts, submitted,
     started, finished, result, error, reason) = row
    return Job(job_id, cast(JobClass, job_class), deadline, work_cpu_s, model, input_ref,
               cast(JobState, state), attempts, submitted, started, finished,
               None if result is None else json.loads(result), error, reason)


class JobQueue:
    def __init__(self, path: Path, *, max_attempts: int = 3, best_effort_ttl_s: float = 86400.0,
                 default_work_cpu_s: float = 10.0) -> None:
        """Open (or create) the queue and requeue the jobs a crash left running."""
        self.path = path
        self.max_attempts = max_attempts
        self.best_effort_ttl_s = best_effort_ttl_s
        self.default_work_cpu_s = default_work_cpu_s
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise JobError(f"cannot open the job queue {path}: {exc}") from exc
        self.recovered = self._recover()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction under the lock; rolled back on any error."""
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:  # BEGIN itself may be what failed; keep its error
                    db.execute("ROLLBACK")
                raise

    def _recover(self) -> int:
        """Requeue jobs left running; fail those that had used their last attempt."""
        with self._write() as db:
            db.execute("UPDATE jobs SET state = 'failed', finished = started, reported = 0, "
                       "error = 'the agent stopped while it ran, on its last attempt' "
                       "WHERE state = 'running' AND attempts >= ?", (self.max_attempts,))
            return db.execute("UPDATE jobs SET state = 'queued' WHERE state = 'running'").rowcount

    def _get(self, db: sqlite3.Connection, job_id: str) -> Job | None:
        row = db.execute(f"SELECT {COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._get(self._db, job_id)

    def submit(self, spec: JobSpec, now: float, admit: Admit | None = None) -> Submission:
        """Store a job, queued if ``admit`` (given the planned work and the job) accepts it,
        rejected with its reason otherwise. A known id returns the stored job unchanged."""
        job_id = spec.id or uuid.uuid4().hex
        deadline = None if spec.deadline is None else spec.deadline.timestamp()
        work_cpu_s = spec.work_cpu_s or self.default_work_cpu_s
        expires = deadline
        if spec.job_class == "best-effort":
            expires = min(now + self.best_effort_ttl_s, deadline or float("inf"))
        with self._write() as db:
            known = self._get(db, job_id)
            if known is not None:
                return Submission(known, created=False)
            verdict = Verdict(True, "accepted")
            if admit is not None:
                planned = [j.work() for j in self._unfinished(db)]
                verdict = admit(planned, Work(job_id, spec.job_class, work_cpu_s, deadline,
                                              False, now))
            db.execute(
                "INSERT INTO jobs (id, class, rank, deadline, expires, work_cpu_s, model, input, "
                "state, submitted, finished, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, spec.job_class, JOB_CLASSES.index(spec.job_class), deadline, expires,
                 work_cpu_s, spec.model, spec.input,
                 "queued" if verdict.accepted else "rejected",
                 now, None if verdict.accepted else now, verdict.reason))
            job = self._get(db, job_id)
        assert job is not None
        return Submission(job, created=True)

    def _unfinished(self, db: sqlite3.Connection) -> list[Job]:
        rows = db.execute(f"SELECT {COLUMNS} FROM jobs WHERE state IN ('queued', 'running') "
                          "ORDER BY state = 'queued', rank, deadline IS NULL, deadline, "
                          "submitted, id")
        return [_job(r) for r in rows]

    def planned_work(self) -> list[Work]:
        """Every queued or running job, as admission sees it."""
        with self._lock:
            return [j.work() for j in self._unfinished(self._db)]

    def _next(self, db: sqlite3.Connection, admitted: Collection[JobClass],
              now: float) -> Job | None:
        classes = [c for c in JOB_CLASSES if c in admitted]
        if not classes:
            return None
        marks = ", ".join("?" * len(classes))
        row = db.execute(
            f"SELECT {COLUMNS} FROM jobs WHERE state = 'queued' AND class IN ({marks}) "
            "AND (expires IS NULL OR expires > ?) "
            "ORDER BY rank, deadline IS NULL, deadline, submitted, id LIMIT 1",
            (*classes, now)).fetchone()
        return None if row is None else _job(row)

    def next_runnable(self, admitted: Collection[JobClass], now: float) -> Job | None:
        """The job to run next among the classes the governor admits now (not claimed)."""
        with self._lock:
            return self._next(self._db, admitted, now)

    def claim(self, admitted: Collection[JobClass], now: float) -> Job | None:
        """Take the next runnable job and mark it running, atomically: for worker threads."""
        with self._write() as db:
            job = self._next(db, admitted, now)
            if job is None:
                return None
            self._start(db, job.id, now)
            return self._get(db, job.id)

    def _start(self, db: sqlite3.Connection, job_id: str, now: float) -> None:
        if db.execute("UPDATE jobs SET state = 'running', attempts = attempts + 1, started = ? "
                      "WHERE id = ? AND state = 'queued'", (now, job_id)).rowcount != 1:
            raise JobError(f"job {job_id} is not queued")

    def start(self, job_id: str, now: float) -> Job:
        """Mark a queued job running (one more attempt)."""
        with self._write() as db:
            self._start(db, job_id, now)
            job = self._get(db, job_id)
        assert job is not None
        return job

    def _finish(self, db: sqlite3.Connection, job_id: str, now: float, state: JobState,
                result: dict[str, Any] | None, error: str | None) -> Job:
        job = self._get(db, job_id)
        if job is None or job.state != "running":
            raise JobError(f"job {job_id} is not running")
        db.execute("UPDATE jobs SET state = ?, finished = ?, result = ?, error = ?, reported = 0 "
                   "WHERE id = ?", (state, now if state in FINISHED else None,
                                    None if result is None else json.dumps(result), error,
                                    job_id))
        if state == "done" and job.job_class != "best-effort" and job.deadline is not None \
                and now > job.deadline:
            self._count_misses(db, 1)
        finished = self._get(db, job_id)
        assert finished is not None
        return finished

    def mark_done(self, job_id: str, now: float, result: dict[str, Any]) -> Job:
        """A finished job; done after its deadline counts as a deadline miss."""
        with self._write() as db:
            return self._finish(db, job_id, now, "done", result, None)

    def mark_failed(self, job_id: str, now: float, error: str) -> Job:
        """A failed attempt: queued again while attempts remain, failed after the last."""
        with self._write() as db:
            job = self._get(db, job_id)
            retry = job is not None and job.attempts < self.max_attempts
            return self._finish(db, job_id, now, "queued" if retry else "failed", None, error)

    def _count_misses(self, db: sqlite3.Connection, n: int) -> None:
        db.execute("UPDATE counters SET value = value + ? WHERE name = 'deadline_misses'", (n,))

    def expire(self, now: float) -> list[Job]:
        """Give up queued jobs whose deadline (or best-effort TTL) has passed. Urgent and
        deferrable ones count as deadline misses; best-effort ones were promised nothing."""
        with self._write() as db:
            rows = db.execute(f"SELECT {COLUMNS} FROM jobs WHERE state = 'queued' "
                              "AND expires <= ?", (now,)).fetchall()
            due = [_job(r) for r in rows]
            for job in due:
                db.execute("UPDATE jobs SET state = 'expired', finished = ?, reported = 0, "
                           "reason = ? WHERE id = ?",
                           (now, "its deadline passed before it could run"
                            if job.job_class != "best-effort" else
                            "its time to live passed without spare energy", job.id))
            self._count_misses(db, sum(j.job_class != "best-effort" for j in due))
            expired = [self._get(db, j.id) for j in due]
        return [j for j in expired if j is not None]

    def unreported(self, limit: int = 100) -> list[Job]:
        """Finished jobs whose result has not been handed on yet (oldest first)."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {COLUMNS} FROM jobs WHERE reported = 0 AND state IN "
                "('done', 'failed', 'expired', 'rejected') ORDER BY finished, id LIMIT ?",
                (limit,)).fetchall()
        return [_job(r) for r in rows]

    def mark_reported(self, job_ids: Collection[str]) -> None:
        with self._write() as db:
            db.executemany("UPDATE jobs SET reported = 1 WHERE id = ?",
                           [(i,) for i in job_ids])

    def prune(self, finished_before: float) -> int:
        """Forget reported jobs that finished before this time; the counters stay."""
        with self._write() as db:
            return db.execute("DELETE FROM jobs WHERE reported = 1 AND finished < ?",
                              (finished_before,)).rowcount

    def counts(self) -> dict[str, int]:
        """Jobs per state, and ``deadline_misses`` since the queue was created: telemetry."""
        with self._lock:
            out: dict[str, int] = dict.fromkeys(JOB_STATES, 0)
            for state, n in self._db.execute("SELECT state, count(*) FROM jobs GROUP BY state"):
                out[state] = n
            row = self._db.execute(
                "SELECT value FROM counters WHERE name = 'deadline_misses'").fetchone()
            out["deadline_misses"] = int(row[0])
            return out
