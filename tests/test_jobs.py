"""The job queue: durable, idempotent, ordered by class then deadline, and honest about misses."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

from edgeagent.governor.decision import JOB_CLASSES
from edgeagent.workloads.admission import Verdict, Work
from edgeagent.workloads.jobs import JobError, JobQueue, JobSpec

ALL = frozenset(JOB_CLASSES)


def at(t: float) -> datetime:
    return datetime.fromtimestamp(t, timezone.utc)


def spec(job_id: str | None, job_class: str = "deferrable", deadline: float | None = 1000.0,
         work_cpu_s: float | None = None) -> JobSpec:
    return JobSpec.model_validate({
        "id": job_id, "class": job_class, "deadline": None if deadline is None else at(deadline),
        "model": "digits-int8", "input": "/site/data/x.npy", "work_cpu_s": work_cpu_s})


def test_submitting_the_same_id_twice_makes_one_job(tmp_path: Path) -> None:
    q = JobQueue(tmp_path / "jobs.db")
    first = q.submit(spec("a"), now=0.0)
    again = q.submit(spec("a", deadline=5000.0), now=10.0)
    assert first.created and not again.created
    assert again.job == first.job
    assert q.counts()["queued"] == 1


def test_a_job_without_an_id_gets_one(tmp_path: Path) -> None:
    q = JobQueue(tmp_path / "jobs.db", default_work_cpu_s=42.0)
    job = q.submit(spec(None), now=0.0).job
    assert len(job.id) == 32 and job.work_cpu_s == 42.0
    assert q.get(job.id) == job


def test_jobs_run_by_class_then_earliest_deadline(tmp_path: Path) -> None:
    q = JobQueue(tmp_path / "jobs.db")
    q.submit(spec("best", "best-effort", None), 0.0)
    q.submit(spec("def-late", "deferrable", 300.0), 1.0)
    q.submit(spec("def-early", "deferrable", 100.0), 2.0)
    q.submit(spec("urgent-any", "urgent", None), 3.0)
    q.submit(spec("urgent-soon", "urgent", 50.0), 4.0)
    q.submit(spec("def-late-2", "deferrable", 300.0), 5.0)
    assert q.next_runnable({"deferrable", "best-effort"}, 10.0).id == "def-early"  # type: ignore[union-attr]
    order = []
    while (job := q.claim(ALL, 10.0)) is not None:
        order.append(job.id)
    assert order == ["urgent-soon", "urgent-any", "def-early", "def-late", "def-late-2", "best"]
    assert q.next_runnable(ALL, 10.0) is None
    assert q.claim(frozenset(), 10.0) is None


def test_only_admitted_classes_are_handed_out(tmp_path: Path) -> None:
    q = JobQueue(tmp_path / "jobs.db")
    q.submit(spec("u", "urgent", None), 0.0)
    assert q.claim({"best-effort"}, 1.0) is None
    running = q.claim({"urgent"}, 1.0)
    assert running is not None and running.state == "running" and running.attempts == 1


def test_deferrable_jobs_past_their_deadline_expire_as_misses(tmp_path: Path) -> None:
    q = JobQueue(tmp_path / "jobs.db", best_effort_ttl_s=50.0)
    q.submit(spec("d", "deferrable", 100.0), 0.0)
    q.submit(spec("b", "best-effort", None), 0.0)
    q.submit(spec("later", "deferrable", 500.0), 0.0)
    assert q.next_runnable({"best-effort"}, 60.0) is None  # past its TTL: never handed out
    assert q.expire(60.0)[0].id == "b"
    assert q.counts()["deadline_misses"] == 0  # best-effort was promised nothing
    expired = q.expire(100.0)
    assert [j.id for j in expired] == ["d"]
    assert expired[0].state == "expired" and "deadline passed" in expired[0].reason
    counts = q.counts()
    assert (counts["expired"], counts["queued"], counts["deadline_misses"]) == (2, 1, 1)


def test_done_after_the_deadline_is_a_miss_too(tmp_path: Path) -> None:
    q = JobQueue(tmp_path / "jobs.db")
    q.submit(spec("d", "deferrable", 100.0), 0.0)
    q.claim(ALL, 90.0)
    done = q.mark_done("d", 120.0, {"label": 7})
    assert done.state == "done" and done.result == {"label": 7} and done.finished == 120.0
    assert q.counts()["deadline_misses"] == 1


def test_a_failed_job_is_retried_up_to_its_limit(tmp_path: Path) -> None:
    q = JobQueue(tmp_path / "jobs.db", max_attempts=2)
    q.submit(spec("a"), 0.0)
    q.claim(ALL, 1.0)
    retry = q.mark_failed("a", 2.0, "model failed to load")
    assert (retry.state, retry.attempts, retry.error) == ("queued", 1, "model failed to load")
    q.claim(ALL, 3.0)
    failed = q.mark_failed("a", 4.0, "again")
    assert (failed.state, failed.attempts, failed.finished) == ("failed", 2, 4.0)
    assert q.claim(ALL, 5.0) is None


def test_only_a_running_job_can_finish(tmp_path: Path) -> None:
    q = JobQueue(tmp_path / "jobs.db")
    q.submit(spec("a"), 0.0)
    with pytest.raises(JobError, match="not running"):
        q.mark_done("a", 1.0, {})
    with pytest.raises(JobError, match="not running"):
        q.mark_failed("nope", 1.0, "x")
    q.start("a", 1.0)
    with pytest.raises(JobError, match="not queued"):
        q.start("a", 1.0)


def test_running_jobs_are_requeued_when_the_queue_reopens(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    q = JobQueue(path, max_attempts=2)
    q.submit(spec("a"), 0.0)
    q.submit(spec("b", deadline=2000.0), 0.0)
    q.claim(ALL, 1.0)
    q.close()
    q = JobQueue(path, max_attempts=2)
    assert q.recovered == 1
    again = q.get("a")
    assert again is not None and (again.state, again.attempts) == ("queued", 1)
    q.claim(ALL, 2.0)  # its second and last attempt is cut short too
    q.close()
    q = JobQueue(path, max_attempts=2)
    poison = q.get("a")
    assert poison is not None and poison.state == "failed"
    assert "stopped while it ran" in (poison.error or "")
    assert q.claim(ALL, 3.0).id == "b"  # type: ignore[union-attr]


def test_admission_sees_the_planned_work_and_a_rejection_is_kept(tmp_path: Path) -> None:
    q = JobQueue(tmp_path / "jobs.db")
    seen: list[list[str]] = []

    def admit(queue: Sequence[Work], job: Work) -> Verdict:
        seen.append([w.id for w in queue])
        return Verdict(job.id != "no", "no room" if job.id == "no" else "fits")

    q.submit(spec("a"), 0.0, admit)
    q.claim(ALL, 1.0)
    q.submit(spec("b"), 1.0, admit)
    q.submit(spec("gone", deadline=3.0), 1.0, admit)
    q.expire(5.0)
    rejected = q.submit(spec("no"), 5.0, admit).job
    assert seen == [[], ["a"], ["a", "b"], ["a", "b"]]  # running and queued, not expired
    assert (rejected.state, rejected.reason, rejected.finished) == ("rejected", "no room", 5.0)
    assert q.submit(spec("no"), 6.0, admit).job == rejected  # the same answer, no re-check
    assert len(seen) == 4
    assert [w.running for w in q.planned_work()] == [True, False]


def test_finished_jobs_are_reported_once_then_pruned(tmp_path: Path) -> None:
    q = JobQueue(tmp_path / "jobs.db")
    q.submit(spec("a"), 0.0)
    q.submit(spec("b"), 0.0)
    q.claim(ALL, 1.0)
    q.mark_done("a", 2.0, {"ok": True})
    assert [j.id for j in q.unreported()] == ["a"]
    q.mark_reported(["a"])
    assert q.unreported() == []
    assert q.prune(finished_before=2.0) == 0
    assert q.prune(finished_before=3.0) == 1
    assert q.get("a") is None and q.get("b") is not None


def test_the_record_that_leaves_the_site_holds_no_input_unless_shared(tmp_path: Path) -> None:
    q = JobQueue(tmp_path / "jobs.db")
    job = q.submit(spec("a", deadline=86400.0), 0.0).job
    record = job.record()
    assert "input" not in record and "/site/data" not in str(record)
    assert record["deadline"] == "1970-01-02T00:00:00Z" and record["class"] == "deferrable"
    assert job.record(share_input=True)["input"] == "/site/data/x.npy"


def test_the_spec_names_what_is_wrong() -> None:
    with pytest.raises(ValidationError, match="deadline: a deferrable job needs a deadline"):
        spec("a", deadline=None)
    with pytest.raises(ValidationError, match="timezone"):
        JobSpec.model_validate({"class": "urgent", "deadline": "2030-01-01T00:00:00",
                                "model": "m", "input": "x"})
    with pytest.raises(ValidationError, match="id"):
        spec("../../etc/passwd")


def test_counts_cover_every_state(tmp_path: Path) -> None:
    q = JobQueue(tmp_path / "jobs.db")
    assert q.counts() == {"queued": 0, "running": 0, "done": 0, "failed": 0, "expired": 0,
                          "rejected": 0, "deadline_misses": 0}


def test_committed_jobs_survive_kill_9_and_the_running_one_is_requeued(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    writer = textwrap.dedent(f"""
        from datetime import datetime, timezone
        from pathlib import Path
        from edgeagent.workloads.jobs import JobQueue, JobSpec
        q = JobQueue(Path({str(path)!r}))
        deadline = datetime(2100, 1, 1, tzinfo=timezone.utc)
        for i in range(100000):
            q.submit(JobSpec.model_validate({{"id": f"j{{i}}", "class": "deferrable",
                     "deadline": deadline, "model": "m", "input": "x"}}), float(i))
            if i == 0:
                q.claim({{"deferrable"}}, 0.5)
            print(f"j{{i}}", flush=True)  # committed before it is acknowledged
    """)
    proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True,
                            cwd=tmp_path)
    assert proc.stdout is not None
    acknowledged = []
    for line in proc.stdout:
        acknowledged.append(line.strip())
        if len(acknowledged) == 60:
            break
    os.kill(proc.pid, signal.SIGKILL)  # mid-write: it keeps submitting until it dies
    proc.wait()
    acknowledged += [line.strip() for line in proc.stdout]
    q = JobQueue(path)
    assert q.recovered == 1
    first = q.get("j0")
    assert first is not None and (first.state, first.attempts) == ("queued", 1)
    assert all(q.get(i) is not None for i in acknowledged)
    assert q.counts()["queued"] >= len(acknowledged)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
