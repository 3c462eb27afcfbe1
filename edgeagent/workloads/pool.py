"""The worker pool: inference workers whose number the governor sets every tick.

Each worker is a thread with its own model session (onnxruntime releases the GIL while it
computes). A worker above the allowed count parks between batches, so throttling takes effect
within one batch. CPU time is measured per thread, which is what the energy estimate and the
emulated board load are built on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt


class Classifier(Protocol):
    def classify(self, pixels_raw: npt.NDArray[np.uint8], k: int = 1
                 ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]: ...


@dataclass(frozen=True)
class PoolStats:
    inferences: int
    correct: int
    cpu_s: float
    batches: int
    errors: int = 0

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.inferences if self.inferences else None


class WorkerPool:
    def __init__(self, make_classifier: Callable[[], Classifier], samples: npt.NDArray[np.uint8],
                 labels: npt.NDArray[np.int64], max_workers: int, batch_size: int = 32) -> None:
        if len(samples) == 0:
            raise ValueError("the workload needs at least one sample")
        self.max_workers = max_workers
        self.batch_size = batch_size
        self._samples = samples
        self._labels = labels
        self._make = make_classifier
        self._lock = threading.Lock()
        self._allowed = 0
        self._wake = threading.Condition(self._lock)
        self._stopping = False
        self._inferences = 0
        self._correct = 0
        self._cpu_s = 0.0
        self._batches = 0
        self._errors = 0
        self.last_error: str | None = None
        self._rate_mark = (time.monotonic(), 0.0)
        self._busy_cores = 0.0
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
            t.join(timeout=10)

    @property
    def workers(self) -> int:
        return self._allowed

    def set_workers(self, n: int) -> None:
        """Allow ``n`` workers to run (clamped to the pool size); the rest park."""
        with self._lock:
            self._allowed = min(max(n, 0), self.max_workers)
            self._wake.notify_all()

    def stats(self) -> PoolStats:
        with self._lock:
            return PoolStats(self._inferences, self._correct, self._cpu_s, self._batches,
                             self._errors)

    def busy_cores(self) -> float:
        """CPU-seconds per wall second spent on inference recently (0 .. max_workers)."""
        with self._lock:
            now = time.monotonic()
            mark_t, mark_cpu = self._rate_mark
            if now - mark_t >= 0.2:
                self._busy_cores = (self._cpu_s - mark_cpu) / (now - mark_t)
                self._rate_mark = (now, self._cpu_s)
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
        classifier = self._make()
        n = len(self._samples)
        offset = (index * self.batch_size) % n
        while True:
            with self._lock:
                while not self._stopping and index >= self._allowed:
                    self._wake.wait()
                if self._stopping:
                    return
            idx = (np.arange(self.batch_size) + offset) % n
            offset = (offset + self.batch_size) % n
            cpu0 = time.thread_time()
            labels, _ = classifier.classify(self._samples[idx], k=1)
            cpu = time.thread_time() - cpu0
            correct = int(np.count_nonzero(labels[:, 0] == self._labels[idx]))
            with self._lock:
                self._inferences += len(idx)
                self._correct += correct
                self._cpu_s += cpu
                self._batches += 1
