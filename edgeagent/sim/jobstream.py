"""A synthetic job stream for ``edgeagent simulate``, and the queue that runs it.

The stream is deterministic (seeded): ``jobs_per_day`` deferrable jobs a day, one in each equal
share of the day at a random point of it, each with a deadline 12 to 24 hours after it arrives
and work such that a day's jobs need ``LOAD`` of the board's core-seconds on average (between
half and one and a half times the mean each). Only jobs whose deadline falls inside the run are
made, so every job ends up done, missed or rejected.

``JobRunner`` is the live queue's arithmetic without its disk: jobs arrive (through admission
when the policy has one: the governor's is the live agent's ``admit``, which sees each queued
job's work left, as does the governor's plan through ``pending``), queued jobs whose
deadline has passed expire, and each step's CPU-seconds (work level x cores x step seconds)
run the queue in the live queue's order (``admission.plan_order``: running jobs first, then
by class, then earliest deadline), one core at most per job. A job that finishes by its
deadline counts in ``done``; after it, or expired before it ran (or before the board was up
to take it in), in ``missed``; refused by admission, in ``rejected``. A job finishing
within a step is taken to finish at the step's end.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from edgeagent.workloads.admission import Verdict, Work, plan_order

LOAD = 0.25  # share of the board's core-seconds a day's jobs need, on average
DEADLINE_H = (12.0, 24.0)  # a deadline this many hours after arrival
SEED = 5
EPS = 1e-9

Admit = Callable[[Sequence[Work], Work], Verdict]


def job_stream(start: float, end: float, jobs_per_day: float, cores: int,
               seed: int = SEED) -> list[Work]:
    """The deferrable jobs arriving from ``start`` whose deadline is at most ``end`` (UTC epoch
    seconds), in arrival order."""
    if jobs_per_day <= 0:
        return []
    rng = np.random.default_rng(seed)
    gap = 86400.0 / jobs_per_day
    mean_cpu_s = LOAD * cores * gap
    jobs = []
    n = 0
    while start + n * gap < end:
        arrival = start + (n + float(rng.random())) * gap
        deadline = arrival + float(rng.uniform(*DEADLINE_H)) * 3600.0
        work = mean_cpu_s * float(rng.uniform(0.5, 1.5))
        if deadline <= end:
            jobs.append(Work(f"sim-{n:06d}", "deferrable", work, deadline, submitted=arrival))
        n += 1
    return jobs


class JobRunner:
    """The queue of one simulated run, and its counts."""

    def __init__(self, arrivals: Sequence[Work]) -> None:
        self.arrivals = list(arrivals)
        self.next = 0  # the first arrival not taken in yet
        self.queue: list[Work] = []  # queued or running, as admission sees them
        self.left: dict[str, float] = {}
        self.done = self.missed = self.rejected = 0

    def expire(self, now: float) -> None:
        """Queued (not running) jobs whose deadline has passed are missed, as ``expire``."""
        keep = []
        for w in self.queue:
            if not w.running and w.deadline is not None and w.deadline <= now:
                self.missed += 1
                del self.left[w.id]
            else:
                keep.append(w)
        self.queue = keep

    def pending(self) -> list[Work]:
        """The queued and running jobs with the work each has left."""
        return [dataclasses.replace(w, work_cpu_s=self.left[w.id]) for w in self.queue]

    def take_in(self, now: float, admit: Admit | None) -> None:
        """The jobs that arrived by ``now``, through ``admit`` when there is one (once each),
        else all accepted."""
        while self.next < len(self.arrivals) and self.arrivals[self.next].submitted <= now:
            job = self.arrivals[self.next]
            self.next += 1
            if job.deadline is not None and job.deadline <= now:
                self.missed += 1  # the board was down until its deadline: not admission's no
                continue
            if admit is not None and not admit(self.pending(), job).accepted:
                self.rejected += 1
                continue
            self.queue.append(job)
            self.left[job.id] = job.work_cpu_s

    def run(self, cpu_s: float, step_s: float, end: float) -> None:
        """Spend ``cpu_s`` CPU-seconds of a step of ``step_s`` ending at ``end`` on the queue."""
        if cpu_s <= EPS or not self.queue:
            return
        finished: set[str] = set()
        for w in plan_order(self.queue):
            if cpu_s <= EPS:
                break
            given = min(self.left[w.id], step_s, cpu_s)  # one core at most per job
            cpu_s -= given
            self.left[w.id] -= given
            if self.left[w.id] <= EPS * max(1.0, w.work_cpu_s):
                finished.add(w.id)
                del self.left[w.id]
                if w.deadline is None or end <= w.deadline + EPS:
                    self.done += 1
                else:
                    self.missed += 1
        # A job that has had CPU is running: it keeps its worker, as in the live queue.
        self.queue = [w if w.running or self.left[w.id] >= w.work_cpu_s
                      else dataclasses.replace(w, running=True)
                      for w in self.queue if w.id not in finished]

    def close(self, end: float) -> None:
        """At the run's end: unfinished jobs whose deadline has passed are missed."""
        for w in self.queue:
            if w.deadline is not None and w.deadline <= end + EPS:
                self.missed += 1
        self.queue = [w for w in self.queue if w.deadline is None or w.deadline > end + EPS]
