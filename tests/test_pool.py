"""The worker pool: the governor's number of workers is what runs, and failures are counted."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from edgeagent.infer.bundled import load_bundled_samples
from edgeagent.infer.classifier import DigitsClassifier
from edgeagent.workloads.pool import WorkerPool


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError("condition not reached in time")


def test_parked_workers_do_no_work_and_allowed_ones_classify_correctly() -> None:
    x, y = load_bundled_samples()
    pool = WorkerPool(DigitsClassifier.load, x, y, max_workers=2)
    pool.start()
    try:
        time.sleep(0.3)
        assert pool.stats().inferences == 0  # zero workers allowed: nothing runs
        pool.set_workers(2)
        wait_until(lambda: pool.stats().inferences > 5000)
        stats = pool.stats()
        assert stats.accuracy is not None and stats.accuracy > 0.95
        assert stats.cpu_s > 0 and stats.errors == 0
        pool.set_workers(0)
        time.sleep(0.2)
        before = pool.stats().inferences
        time.sleep(0.3)
        assert pool.stats().inferences == before  # throttled within a batch
    finally:
        pool.stop()


class Flaky:
    """Fails every third batch, like a model hitting a bad input now and then."""

    def __init__(self) -> None:
        self.calls = 0

    def classify(self, pixels_raw: npt.NDArray[np.uint8], k: int = 1
                 ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        self.calls += 1
        if self.calls % 3 == 0:
            raise RuntimeError("bad batch")
        n = len(pixels_raw)
        return np.zeros((n, k), np.int64), np.ones((n, k), np.float32)


def test_a_failing_batch_is_counted_and_the_worker_keeps_going() -> None:
    x, y = load_bundled_samples()
    pool = WorkerPool(lambda model: Flaky(), x, y, max_workers=1)
    pool.start()
    pool.set_workers(1)
    try:
        wait_until(lambda: pool.stats().errors >= 2, timeout=15)
        assert pool.last_error == "RuntimeError: bad batch"
        assert pool.stats().inferences > 0
    finally:
        pool.stop()


def test_a_pool_whose_start_failed_part_way_still_stops() -> None:
    """Starting threads can fail (a board out of memory: "can't start new thread"); the
    close-down that follows stops what did start instead of raising on what did not."""
    x, y = load_bundled_samples()
    pool = WorkerPool(DigitsClassifier.load, x, y, max_workers=2)
    pool._threads[0].start()  # the second thread never started
    pool.stop()
    assert not pool._threads[0].is_alive()
