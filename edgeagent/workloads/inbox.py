"""Inbox intake: jobs dropped as JSON files into a directory; results out as JSON files.

Layout of the inbox directory::

    inbox/job1.json             a job (``JobSpec``: class, deadline, model, input, [id, work_cpu_s])
    inbox/job1.error.json       why job1.json is invalid (it stays until fixed or removed)
    inbox/data/...              inputs, referenced by a path relative to the inbox
    inbox/accepted/job1.json    taken into the queue
    inbox/rejected/job1.json    refused by admission, with job1.reason.json beside it
    inbox/results/<id>.json     one per finished job: metadata and result

Writers must put a file in place by renaming it (write ``job1.json.tmp`` or ``.job1.json``,
then ``mv`` it to ``job1.json``): only top-level ``*.json`` names are read, so a file still
being written is never seen. Everything this module writes follows the same rule.

Crash safety: a job without an id gets one written into its file before it is submitted, so
a crash between submitting and moving the file resubmits the same id, which the queue
recognises. An invalid file is read again only when its content changes (the error file
records a hash of what it judged).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edgeagent.config import field_errors
from edgeagent.workloads.jobs import Admit, Job, JobQueue, JobSpec

log = logging.getLogger(__name__)

MAX_JOB_FILE_BYTES = 1 << 20
ERROR_SUFFIX = ".error.json"


@dataclass(frozen=True)
class FieldError:
    field: str  # dotted path in the job file; "(file)" for the file as a whole
    message: str


class InvalidJob(Exception):
    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))


@dataclass
class IntakeReport:
    accepted: list[Job] = field(default_factory=list)
    rejected: list[Job] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)  # file names
    results: int = 0


def write_atomic(path: Path, body: dict[str, Any]) -> None:
    """Write JSON so that a reader sees the old file or the whole new one, even after a
    power cut: temporary dotfile, fsync, rename over, fsync the directory."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(body, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _spec_errors(error: ValidationError) -> list[FieldError]:
    out = []
    for path, message, e in field_errors(error):
        if e["type"] == "extra_forbidden":
            allowed = (f.alias or name for name, f in JobSpec.model_fields.items())
            message += "; allowed keys: " + ", ".join(allowed)
        out.append(FieldError(path, message))
    return out


def _free_name(folder: Path, name: str) -> Path:
    """``folder/name``, or ``stem.N.json`` when that is taken: an archive never overwrites."""
    path = folder / name
    n = 1
    while path.exists():
        path = folder / f"{Path(name).stem}.{n}.json"
        n += 1
    return path


class Intake:
    def __init__(self, inbox: Path, queue: JobQueue, *, models: Collection[str] | None = None,
                 share_inputs: bool = False) -> None:
        """``models``: the names jobs may ask for (None: any); ``share_inputs``: results carry
        the input reference (by default only metadata and the result)."""
        self.inbox = inbox
        self.queue = queue
        self.models = models
        self.share_inputs = share_inputs
        self.accepted_dir = inbox / "accepted"
        self.rejected_dir = inbox / "rejected"
        self.results_dir = inbox / "results"
        for d in (inbox, self.accepted_dir, self.rejected_dir, self.results_dir):
            d.mkdir(parents=True, exist_ok=True)

    def poll(self, now: float, admit: Admit | None = None) -> IntakeReport:
        """Take every complete job file in, then write the results of finished jobs."""
        report = IntakeReport()
        for path in self._job_files():
            try:
                self._take(path, now, admit, report)
            except FileNotFoundError:  # withdrawn between listing and reading
                continue
            except OSError as exc:
                log.warning("inbox: cannot take %s: %s", path.name, exc)
        report.results = self.write_results()
        return report

    def _job_files(self) -> list[Path]:
        return sorted(p for p in self.inbox.glob("*.json")
                      if not p.name.startswith(".") and not p.name.endswith(ERROR_SUFFIX)
                      and p.is_file())

    def _take(self, path: Path, now: float, admit: Admit | None, report: IntakeReport) -> None:
        raw = path.read_bytes()
        digest = hashlib.sha256(raw).hexdigest()
        error_path = path.with_name(path.stem + ERROR_SUFFIX)
        if self._judged(error_path, digest):
            return
        try:
            data, spec = self._validate(raw)
        except InvalidJob as exc:
            write_atomic(error_path, {
                "file": path.name, "sha256": digest,
                "errors": [{"field": e.field, "message": e.message} for e in exc.errors]})
            log.warning("inbox: %s is invalid: %s", path.name, exc)
            report.invalid.append(path.name)
            return
        if spec.id is None:  # give it its id in the file first: a crash cannot duplicate it
            spec = spec.model_copy(update={"id": uuid.uuid4().hex})
            write_atomic(path, {"id": spec.id, **{k: v for k, v in data.items() if k != "id"}})
        local = spec.model_copy(update={"input": str((self.inbox / spec.input).resolve())})
        job = self.queue.submit(local, now, admit).job
        if job.state == "rejected":
            dest = _free_name(self.rejected_dir, path.name)
            write_atomic(dest.with_name(dest.stem + ".reason.json"),
                         {"id": job.id, "reason": job.reason})
            report.rejected.append(job)
        else:
            dest = _free_name(self.accepted_dir, path.name)
            report.accepted.append(job)
        os.replace(path, dest)
        error_path.unlink(missing_ok=True)

    @staticmethod
    def _judged(error_path: Path, digest: str) -> bool:
        """True if this exact content was already found invalid."""
        try:
            return bool(json.loads(error_path.read_text()).get("sha256") == digest)
        except (OSError, ValueError, AttributeError):
            return False

    def _validate(self, raw: bytes) -> tuple[dict[str, Any], JobSpec]:
        if len(raw) > MAX_JOB_FILE_BYTES:
            raise InvalidJob([FieldError("(file)", f"larger than {MAX_JOB_FILE_BYTES} bytes")])
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidJob([FieldError("(file)", f"not valid JSON: {exc}")]) from exc
        if not isinstance(data, dict):
            raise InvalidJob([FieldError("(file)", "must be a JSON object")])
        errors = []
        spec = None
        try:
            spec = JobSpec.model_validate(data)
        except ValidationError as exc:
            errors = _spec_errors(exc)
        model, ref = data.get("model"), data.get("input")  # checked here too: all errors at once
        if isinstance(model, str) and self.models is not None and model not in self.models:
            errors.append(FieldError("model", f"unknown model {model!r}; this site runs: "
                                              + ", ".join(sorted(self.models))))
        problem = self.input_problem(ref) if isinstance(ref, str) and ref else None
        if problem:
            errors.append(FieldError("input", problem))
        if errors or spec is None:
            raise InvalidJob(errors)
        return data, spec

    def input_problem(self, ref: str) -> str | None:
        """Why ``ref`` cannot be a job's input (None: it can): the inbox and remote commands
        take inputs under the same rule."""
        rel = Path(ref)
        if rel.is_absolute():
            return "must be a path relative to the inbox"
        root = self.inbox.resolve()
        target = (root / rel).resolve()
        if not target.is_relative_to(root):
            return "must stay inside the inbox"
        if target.parent == root and target.suffix == ".json":
            return "a top-level .json file is read as a job: put inputs in a subfolder"
        if not target.is_file():
            return f"no such file in the inbox: {ref}"
        return None

    def write_results(self) -> int:
        """``results/<id>.json`` for each finished job not written yet; returns how many."""
        written = 0
        while batch := self.queue.unreported():
            for job in batch:
                write_atomic(self.results_dir / f"{job.id}.json", job.record(self.share_inputs))
            self.queue.mark_reported([j.id for j in batch])
            written += len(batch)
        return written
