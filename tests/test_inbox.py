"""Inbox intake: complete job files only, errors that name the field, archives, atomic results."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from edgeagent.workloads import inbox as inbox_module
from edgeagent.workloads.admission import Verdict, Work
from edgeagent.workloads.inbox import Intake, write_atomic
from edgeagent.workloads.jobs import JobQueue

DEADLINE = "2030-01-01T12:00:00+02:00"


def drop(inbox: Path, name: str, body: Any) -> Path:
    """Put a job file in place as writers must: a temporary name, then a rename."""
    tmp = inbox / f"{name}.tmp"
    tmp.write_text(body if isinstance(body, str) else json.dumps(body))
    path = inbox / name
    tmp.rename(path)
    return path


def job(**fields: Any) -> dict[str, Any]:
    return {"class": "deferrable", "deadline": DEADLINE, "model": "digits-int8",
            "input": "data/img.npy", **fields}


@pytest.fixture
def site(tmp_path: Path) -> tuple[Intake, JobQueue]:
    inbox = tmp_path / "inbox"
    (inbox / "data").mkdir(parents=True)
    (inbox / "data" / "img.npy").write_bytes(b"pixels")
    queue = JobQueue(tmp_path / "jobs.db")
    return Intake(inbox, queue, models={"digits-int8", "digits-large-int8"}), queue


def error_fields(path: Path) -> list[str]:
    return [e["field"] for e in json.loads(path.read_text())["errors"]]


def test_a_valid_job_is_queued_and_archived_with_its_id(site: tuple[Intake, JobQueue]) -> None:
    intake, queue = site
    drop(intake.inbox, "job1.json", job())
    report = intake.poll(now=0.0)
    assert [j.state for j in report.accepted] == ["queued"] and report.invalid == []
    stored = report.accepted[0]
    assert stored.input == str((intake.inbox / "data" / "img.npy").resolve())
    assert stored.deadline == 1893492000.0  # 10:00 UTC
    archived = json.loads((intake.accepted_dir / "job1.json").read_text())
    assert archived["id"] == stored.id  # the operator finds results/<id>.json with it
    assert not (intake.inbox / "job1.json").exists()
    assert queue.counts()["queued"] == 1


def test_files_still_being_written_are_not_read(site: tuple[Intake, JobQueue]) -> None:
    intake, queue = site
    (intake.inbox / "job1.json.tmp").write_text('{"class": "urg')
    (intake.inbox / ".job2.json").write_text('{"class": "urg')
    assert intake.poll(now=0.0).invalid == []
    assert queue.counts()["queued"] == 0


@pytest.mark.parametrize(("body", "field", "words"), [
    (job(deadline="2030-01-01T12:00:00"), "deadline", "timezone"),
    (job(deadline="next tuesday"), "deadline", "datetime"),
    (job(deadline=None), "deadline", "needs a deadline"),
    ({k: v for k, v in job().items() if k != "class"}, "class", "required"),
    (job(**{"class": "whenever"}), "class", "urgent"),
    (job(colour="red"), "colour", "allowed keys: id, class, deadline"),
    (job(model="gpt-5"), "model", "this site runs"),
    (job(input="../../etc/passwd"), "input", "inside the inbox"),
    (job(input="/etc/passwd"), "input", "relative"),
    (job(input="data/missing.npy"), "input", "no such file"),
    (job(work_cpu_s=-1), "work_cpu_s", "greater than 0"),
    (job(id="a/b"), "id", "pattern"),
    ("{not json", "(file)", "not valid JSON"),
    ("[1, 2]", "(file)", "JSON object"),
])
def test_an_invalid_job_gets_an_error_file_naming_the_field(
        site: tuple[Intake, JobQueue], body: Any, field: str, words: str) -> None:
    intake, queue = site
    path = drop(intake.inbox, "bad.json", body)
    assert intake.poll(now=0.0).invalid == ["bad.json"]
    error = json.loads((intake.inbox / "bad.error.json").read_text())
    assert error["file"] == "bad.json"
    assert [e["field"] for e in error["errors"]] == [field]
    assert words in error["errors"][0]["message"]
    assert path.exists() and queue.counts()["queued"] == 0


def test_a_bad_file_is_judged_once_and_again_when_it_is_fixed(
        site: tuple[Intake, JobQueue]) -> None:
    intake, queue = site
    drop(intake.inbox, "job.json", job(deadline="2030-01-01T12:00:00", model="nope"))
    assert intake.poll(now=0.0).invalid == ["job.json"]
    assert error_fields(intake.inbox / "job.error.json") == ["deadline", "model"]  # all at once
    assert intake.poll(now=1.0).invalid == []  # same content: not judged again
    drop(intake.inbox, "job.json", job(model="nope"))
    assert intake.poll(now=2.0).invalid == ["job.json"]
    assert error_fields(intake.inbox / "job.error.json") == ["model"]
    drop(intake.inbox, "job.json", job())
    assert len(intake.poll(now=3.0).accepted) == 1
    assert not (intake.inbox / "job.error.json").exists()
    assert queue.counts()["queued"] == 1


def test_a_rejected_job_is_archived_with_its_reason(site: tuple[Intake, JobQueue]) -> None:
    intake, _ = site

    def no_room(planned: Sequence[Work], work: Work) -> Verdict:
        return Verdict(False, "it would miss its deadline")

    drop(intake.inbox, "job.json", job(id="j1"))
    report = intake.poll(now=0.0, admit=no_room)
    assert [j.id for j in report.rejected] == ["j1"]
    assert (intake.rejected_dir / "job.json").exists()
    reason = json.loads((intake.rejected_dir / "job.reason.json").read_text())
    assert reason == {"id": "j1", "reason": "it would miss its deadline"}
    result = json.loads((intake.results_dir / "j1.json").read_text())
    assert (result["state"], result["reason"]) == ("rejected", "it would miss its deadline")
    assert report.results == 1


def test_the_same_id_dropped_twice_is_one_job_and_no_archive_is_overwritten(
        site: tuple[Intake, JobQueue]) -> None:
    intake, queue = site
    drop(intake.inbox, "job.json", job(id="same"))
    intake.poll(now=0.0)
    drop(intake.inbox, "job.json", job(id="same"))
    intake.poll(now=1.0)
    assert queue.counts()["queued"] == 1
    assert sorted(p.name for p in intake.accepted_dir.iterdir()) == ["job.1.json", "job.json"]


def test_a_crash_before_the_file_is_archived_does_not_duplicate_the_job(
        site: tuple[Intake, JobQueue], monkeypatch: pytest.MonkeyPatch) -> None:
    intake, queue = site
    drop(intake.inbox, "job.json", job())  # no id: the intake gives it one first
    real_replace = os.replace

    def crash_on_archive(src: Any, dst: Any) -> None:
        if Path(dst).parent == intake.accepted_dir:
            raise OSError("power cut")
        real_replace(src, dst)

    monkeypatch.setattr(inbox_module.os, "replace", crash_on_archive)
    intake.poll(now=0.0)
    monkeypatch.setattr(inbox_module.os, "replace", real_replace)
    assert queue.counts()["queued"] == 1 and (intake.inbox / "job.json").exists()
    intake.poll(now=1.0)
    assert queue.counts()["queued"] == 1
    assert (intake.accepted_dir / "job.json").exists()


def test_finished_jobs_get_one_result_file_without_their_input(
        site: tuple[Intake, JobQueue]) -> None:
    intake, queue = site
    drop(intake.inbox, "job.json", job(id="j1", **{"class": "urgent"}))
    intake.poll(now=0.0)
    queue.claim({"urgent"}, 1.0)
    queue.mark_done("j1", 2.0, {"label": 3, "joules": 0.4})
    assert intake.poll(now=3.0).results == 1
    result = json.loads((intake.results_dir / "j1.json").read_text())
    assert result["state"] == "done" and result["result"] == {"label": 3, "joules": 0.4}
    assert result["finished"] == "1970-01-01T00:00:02Z"
    assert "input" not in result and "img.npy" not in json.dumps(result)
    assert sorted(p.name for p in intake.results_dir.iterdir()) == ["j1.json"]  # no temp left
    assert intake.poll(now=4.0).results == 0  # written once


def test_shared_inputs_are_named_in_results(tmp_path: Path) -> None:
    (tmp_path / "in" / "data").mkdir(parents=True)
    (tmp_path / "in" / "data" / "img.npy").write_bytes(b"x")
    queue = JobQueue(tmp_path / "jobs.db")
    intake = Intake(tmp_path / "in", queue, share_inputs=True)
    drop(intake.inbox, "job.json", job(id="j1", model="anything"))
    intake.poll(now=0.0)
    queue.claim({"deferrable"}, 1.0)
    queue.mark_failed("j1", 2.0, "boom")
    queue.claim({"deferrable"}, 3.0)
    queue.mark_failed("j1", 4.0, "boom")
    queue.claim({"deferrable"}, 5.0)
    queue.mark_failed("j1", 6.0, "boom")
    intake.poll(now=7.0)
    result = json.loads((intake.results_dir / "j1.json").read_text())
    assert result["state"] == "failed" and result["input"].endswith("data/img.npy")


def test_a_result_is_replaced_whole_or_not_at_all(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "r.json"
    write_atomic(path, {"v": 1})

    def torn_dump(body: Any, f: Any, **kwargs: Any) -> None:
        f.write('{"v": 2, "resu')
        raise OSError("disk full")

    monkeypatch.setattr(inbox_module.json, "dump", torn_dump)
    with pytest.raises(OSError):
        write_atomic(path, {"v": 2})
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
