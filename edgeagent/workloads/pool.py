"""The worker pool: inference workers whose number the governor sets every tick.

Each worker is a thread with its own model session (onnxruntime and LiteRT release the GIL
while they compute). A worker above the allowed count parks between batches, so throttling
takes effect within one batch; a model switch (the governor picking a cheaper variant) also
takes effect at the next batch, each worker keeping the sessions it has loaded. CPU time is
measured per thread and per model, which is what the energy accounting and the emulated board
load are built on. One batch is one job of the built-in workload. With a job queue, a worker
first claims a queued job of a class the governor admits (its input: a .npy of raw digit
pixels, relative to the inputs folder) and runs the built-in batches only when none waits.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from edgeagent.governor.decision import JobClass
from edgeagent.workloads.jobs import Job, JobQueue


class Classifier(Protocol):
    def classify(self, pixels_raw: npt.NDArray[np.uint8], k: int = 1
                 ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]: ...


@dataclass(frozen=True)
class WorkStats:
    """Work done by one model, or by the pool in total; a batch is one job."""

    inferences: int = 0
    correct: int = 0
    cpu_s: float = 0.0
    batches: int = 0

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.inferences if self.inferences else None

    def joules_per(self, count: int, watts_per_core: float) -> float | None:
        """Estimated energy of this work divided by ``count`` (inferences or batches)."""
        return self.cpu_s * watts_per_core / count if count else None

    def __add__(self, other: WorkStats) -> WorkStats:
        return WorkStats(self.inferences + other.inferences, self.correct + other.correct,
                         self.cpu_s + other.cpu_s, self.batches + other.batches)


@dataclass(frozen=True)
class PoolStats(WorkStats):
    """The built-in workload's totals (and ``by_model``), and the queued jobs' in ``jobs``."""

    errors: int = 0
    by_model: dict[str, WorkStats] = field(default_factory=dict)
    jobs: WorkStats = field(default_factory=WorkStats)


class WorkerPool:
    def __init__(self, make_classifier: Callable[[str], Classifier], samples: npt.NDArray[np.uint8],
                 labels: npt.NDArray[np.int64], max_workers: int, batch_size: int = 32,
                 model: str = "digits-int8", jobs: JobQueue | None = None,
                 inputs_dir: Path | None = None) -> None:
        """``make_classifier(model)`` loads a model by the name the governor uses for it;
        ``jobs`` is the queue workers claim from, ``inputs_dir`` where job inputs live."""
        if len(samples) == 0:
            raise ValueError("the workload needs at least one sample")
        self.max_workers = max_workers
        self.batch_size = batch_size
        self._samples = samples
        self._labels = labels
        self._make = make_classifier
        self._lock = threading.Lock()
        self._allowed = 0
        self._model = model
        self._wake = threading.Condition(self._lock)
        self._stopping = False
        self._by_model: dict[str, WorkStats] = {}
        self._jobs = jobs
        self._inputs_dir = inputs_dir or Path(".")
        self._admitted: frozenset[JobClass] = frozenset()
        self._job_work = WorkStats()
        self._errors = 0
        self.last_error: str | None = None
        self._rate_mark = (time.monotonic(), 0.0)
        self._busy_cores = 0.0
        self._busy_since: list[float | None] = [None] * max_workers  # per worker: the watchdog
        self._threads = [threading.Thread(target=self._work, args=(i,), name=f"worker-{i}",
                                          daemon=True) for i in range(max_workers)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._wake.notify_all()
        for t in self._threads:
            if t.ident is not None:  # a start that failed part-way left the rest unstarted
                t.join(timeout=10)

    @property
    def workers(self) -> int:
        return self._allowed

    @property
    def model(self) -> str:
        return self._model

    def set_workers(self, n: int) -> None:
        """Allow ``n`` workers to run (clamped to the pool size); the rest park."""
        with self._lock:
            self._allowed = min(max(n, 0), self.max_workers)
            self._wake.notify_all()

    def set_model(self, model: str) -> None:
        """Run ``model`` from each worker's next batch on."""
        with self._lock:
            self._model = model

    def set_admitted(self, classes: Collection[JobClass]) -> None:
        """Claim queued jobs of these classes only (the governor's ``admit``)."""
        with self._lock:
            self._admitted = frozenset(classes)

    def stats(self) -> PoolStats:
        with self._lock:
            by_model = dict(self._by_model)
            errors = self._errors
            jobs = self._job_work
        total = sum(by_model.values(), WorkStats())
        return PoolStats(total.inferences, total.correct, total.cpu_s, total.batches,
                         errors=errors, by_model=by_model, jobs=jobs)

    def stalled(self, limit_s: float) -> str | None:
        """Why the pool makes no progress (None: it does): a worker thread died, or one has
        been on a single batch or job for more than ``limit_s``. A parked worker is idle."""
        if self._stopping:
            return None
        now = time.monotonic()
        for i, t in enumerate(self._threads):
            since = self._busy_since[i]
            if t.ident is not None and not t.is_alive():
                return f"{t.name}: thread died"
            if since is not None and now - since > limit_s:
                return f"{t.name}: one batch or job for {now - since:.0f} s"
        return None

    def _cpu_s_locked(self) -> float:
        return sum(s.cpu_s for s in self._by_model.values()) + self._job_work.cpu_s

    def busy_cores(self) -> float:
        """CPU-seconds per wall second spent on inference recently (0 .. max_workers)."""
        with self._lock:
            now = time.monotonic()
            mark_t, mark_cpu = self._rate_mark
            if now - mark_t >= 0.2:
                cpu_s = self._cpu_s_locked()
                self._busy_cores = (cpu_s - mark_cpu) / (now - mark_t)
                self._rate_mark = (now, cpu_s)
            return self._busy_cores

    def _work(self, index: int) -> None:
        """Run batches while allowed; a failure is counted and the worker starts afresh after
        a pause, so one bad batch or a model that fails to load never kills it silently."""
        while not self._stopping:
            try:
                self._run_batches(index)
                return
            except Exception as exc:
                with self._lock:
                    self._errors += 1
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    self._wake.wait(timeout=1.0)

    def _run_batches(self, index: int) -> None:
        loaded: dict[str, Classifier] = {}
        n = len(self._samples)
        offset = (index * self.batch_size) % n
        while True:
            with self._lock:
                while not self._stopping and index >= self._allowed:
                    self._wake.wait()
                if self._stopping:
                    return
                model, admitted = self._model, self._admitted
            self._busy_since[index] = time.monotonic()
            try:
                job = (self._jobs.claim(admitted, time.time())
                       if self._jobs is not None and admitted else None)
                if job is not None:
                    self._run_job(job, loaded)
                    continue
                if model not in loaded:
                    loaded[model] = self._make(model)
                idx = (np.arange(self.batch_size) + offset) % n
                offset = (offset + self.batch_size) % n
                cpu0 = time.thread_time()
                labels, _ = loaded[model].classify(self._samples[idx], k=1)
                cpu = time.thread_time() - cpu0
            finally:
                self._busy_since[index] = None
            correct = int(np.count_nonzero(labels[:, 0] == self._labels[idx]))
            with self._lock:
                self._by_model[model] = (self._by_model.get(model, WorkStats())
                                         + WorkStats(len(idx), correct, cpu, 1))

    def _run_job(self, job: Job, loaded: dict[str, Classifier]) -> None:
        """Run one queued job; its failure is the job's (retried by the queue), not the
        worker's."""
        assert self._jobs is not None
        cpu0 = time.thread_time()
        try:
            if job.model not in loaded:
                loaded[job.model] = self._make(job.model)
            pixels = np.load(self._inputs_dir / job.input, allow_pickle=False)
            labels, probs = loaded[job.model].classify(pixels, k=1)
        except Exception as exc:
            self._jobs.mark_failed(job.id, time.time(), f"{type(exc).__name__}: {exc}")
            return
        cpu = time.thread_time() - cpu0
        self._jobs.mark_done(job.id, time.time(), {
            "labels": labels[..., 0].tolist(), "probabilities": probs[..., 0].tolist(),
            "inferences": int(labels.shape[0]) if labels.ndim == 2 else 1,
            "cpu_s": round(cpu, 6)})
        with self._lock:
            self._job_work = self._job_work + WorkStats(
                int(labels.shape[0]) if labels.ndim == 2 else 1, 0, cpu, 1)
