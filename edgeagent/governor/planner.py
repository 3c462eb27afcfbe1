"""The planner: which of the coming slots the battery and the forecast sun can pay for.

Why a plan of slots and not a power level: a Raspberry Pi 4 idles at 2.7 W of its 6.4 W, so
work is cheapest at full speed and sleep is the cheapest way not to work; the real question
each tick is *when* to work. The plan ranks the forecast slots by their sun, brightest first
(work there runs on the panel, not through the battery's losses; among equally dark slots the
earliest first, so the battery makes room for the sun to come), then finds the most slots it
can work without the battery going below the floor, by bisection over a forward simulation of
the battery that is vectorized over candidate plans. Only the stretch until the battery is next
full counts: past that point nothing done before matters, which is what lets the plan spend
tonight what tomorrow's sun would otherwise curtail.

Accepted work with deadlines comes first: ``must_work`` marks the slots the queue needs before
its deadlines (the brightest of the slots before each deadline, the earliest among equally dark
ones), and the plan ranks those slots ahead of all others, so it works them whenever the floor
allows, even on the battery tonight rather than on tomorrow's sun.

Slots that are not worked are slept through (power ``sleep_w``), or, when the sun gives nearly
a full load's power, run at the level the sun alone pays for: there, direct use beats storing
the energy for later (the battery's round trip costs more than the board's idle overhead).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]
COARSE = 17  # candidate plans per bisection stage: two stages cover 17 * 17 = 289 slots


@dataclass(frozen=True)
class Board:
    """What the board draws asleep, awake and idle, and at full load (W)."""

    sleep_w: float
    idle_w: float
    full_w: float

    def level_for(self, power_w: Array) -> Array:
        """The work level that ``power_w`` pays for when awake (0..1)."""
        return np.clip((power_w - self.idle_w) / (self.full_w - self.idle_w), 0.0, 1.0)


@dataclass(frozen=True)
class Battery:
    """The battery as the plan sees it: energy now and capacity (Wh), efficiencies."""

    energy_wh: float
    capacity_wh: float
    charge_eff: float
    discharge_eff: float

    def flow_wh(self, net_w: Array, hours: Array) -> Array:
        """What the battery gains (loses, when negative) from ``net_w`` over ``hours``."""
        gain: Array = np.where(net_w > 0, net_w * self.charge_eff,
                               net_w / self.discharge_eff) * hours
        return gain


def storm_floor(reserve_wh: float, storm_pv_w: Array, hours: Array, board: Board,
                battery: Battery) -> Array:
    """The least energy at the end of each slot from which the board, asleep from then on
    under a storm's sun, keeps the reserve until the end of the horizon.

    The plan must never leave the battery where a storm arriving next would take it below the
    reserve even with the board halted: at high latitudes in winter the standby draw over a
    dark spell of days is a real share of a small battery.
    """
    gain = np.cumsum(battery.flow_wh(storm_pv_w - board.sleep_w, hours))
    after = np.minimum.accumulate(gain[::-1])[::-1]  # the lowest point from each slot on
    deepest = np.maximum(gain - np.append(after[1:], gain[-1]), 0.0)
    floor: Array = reserve_wh + deepest
    return floor


@dataclass(frozen=True, eq=False)
class Plan:
    """The chosen plan, slot by slot; slot 0 is what remains of the current one.

    ``work``: at full load; ``must``: the slots accepted work needs by its deadlines (worked
    first, the brightest of them first, as far as the floor allows; those it refuses come
    after every other slot); ``level``: the work level of every slot (1 where worked, the
    sun's level where tracked, 0 asleep or idle); ``awake``: not asleep. ``slots``: how many
    slots are worked; ``safe``: whether even working none keeps the floor;
    ``resting_energy_wh``: the battery's energy at the end of each slot if the board does no
    work at all (asleep when it may sleep, idle otherwise).
    """

    work: npt.NDArray[np.bool_]
    must: npt.NDArray[np.bool_]
    level: Array
    awake: npt.NDArray[np.bool_]
    slots: int
    safe: bool
    resting_energy_wh: Array

    @property
    def spare(self) -> bool:
        """Every slot of the horizon is affordable: energy to spare."""
        return self.slots == len(self.work)

    @property
    def meets_deadlines(self) -> bool:
        """Every slot the accepted work needs is worked."""
        return bool(np.all(self.work[self.must]))


def rank_slots(rank_pv_w: Array, must: npt.NDArray[np.bool_] | None = None
               ) -> npt.NDArray[np.int64]:
    """Each slot's place in the plan's order: ``must`` slots first, then the brightest, the
    earliest among equals."""
    n = len(rank_pv_w)
    first = np.zeros(n, dtype=np.bool_) if must is None else must
    return _ranks(np.lexsort((np.arange(n), -rank_pv_w, ~first)))


def _ranks(order: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Each slot's place in ``order``."""
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank


def must_work(rank_pv_w: Array, hours: Array, due: list[tuple[float, float]], workers: int
              ) -> npt.NDArray[np.bool_]:
    """The slots the plan must work so that queued jobs meet their deadlines.

    ``due``: (hours from now to the deadline, hours of work left) per job; a job runs on one
    worker, ``workers`` at once. By each deadline the worked hours must cover the longest job
    due by then and the work of all of them spread over the workers. For each deadline in turn
    the best-ranked slots before it (``rank_slots``; a slot the deadline cuts counts for its
    part) are added until they do; a job that cannot make it gets every slot before its
    deadline (finishing as early as it can).
    """
    n = len(hours)
    must = np.zeros(n, dtype=np.bool_)
    if not due or workers <= 0:
        return must
    # In the plan's order (``rank_slots`` without ``must``): the slots taken are a prefix of
    # the free ones there, so each deadline needs one cumulative sum and no sort.
    order = np.lexsort((np.arange(n), -rank_pv_w))
    ends = np.cumsum(hours)[order]
    starts = ends - hours[order]
    taken = np.zeros(n, dtype=np.bool_)
    longest = total = 0.0
    for deadline_h, work_h in sorted(due):
        longest, total = max(longest, work_h), total + work_h
        if deadline_h <= 0:
            continue
        need = max(longest, total / workers)
        usable = np.maximum(np.minimum(ends, deadline_h) - starts, 0.0)
        free = np.where(taken, 0.0, usable)
        short = need - (float(usable.sum()) - float(free.sum()))
        if short <= 1e-9:
            continue
        last = int(np.searchsorted(np.cumsum(free), short - 1e-9)) + 1  # n + 1: all of them
        taken[:last] |= free[:last] > 0
    must[order] = taken
    return must


def tracking_threshold(board: Board, round_trip: float) -> float:
    """PV power above which running on the sun alone beats storing it for full-speed work.

    Tracking gives (p - idle) / (full - idle) work per hour; storing gives
    (p - sleep) * round_trip / (full - sleep). They are equal at the returned p.
    """
    a = 1.0 / (board.full_w - board.idle_w)
    b = round_trip / (board.full_w - board.sleep_w)
    if a <= b:
        return board.idle_w
    return max((board.idle_w * a - board.sleep_w * b) / (a - b), board.idle_w)


def _headroom(candidates: npt.NDArray[np.int64], rank: npt.NDArray[np.int64], pv: Array,
              hours: Array, rest_w: Array, floor_wh: Array, board: Board, battery: Battery
              ) -> Array:
    """The battery's least energy above the floor, until it is next full, for each candidate
    slot count: the candidate is affordable when it is not negative."""
    work = rank[None, :] < candidates[:, None]
    flow = battery.flow_wh(pv[None, :] - np.where(work, board.full_w, rest_w[None, :]), hours)
    level = battery.energy_wh + np.cumsum(flow, axis=1)
    spilled = np.maximum.accumulate(np.maximum(level - battery.capacity_wh, 0.0), axis=1)
    above = level - spilled - floor_wh[None, :]
    counted = np.ones_like(work)
    counted[:, 1:] = spilled[:, :-1] <= 0.0  # the slot that fills the battery still counts
    lowest: Array = np.where(counted, above, np.inf).min(axis=1)
    return lowest


def plan(pv_w: Array, hours: Array, floor_wh: Array, board: Board, battery: Battery, *,
         can_sleep: bool, rank_pv_w: Array | None = None,
         must: npt.NDArray[np.bool_] | None = None) -> Plan:
    """The plan that works the most slots while the battery keeps its floor.

    ``pv_w``: expected PV power per slot, ``hours``: each slot's length, ``floor_wh``: the
    least energy at the end of each. ``rank_pv_w`` orders the slots when it should differ
    from ``pv_w`` (hysteresis on the current slot); ``must`` (``must_work``) go first, and
    those of them the floor refuses last.
    """
    n = len(pv_w)
    must = np.zeros(n, dtype=np.bool_) if must is None else must
    rank_pv = pv_w if rank_pv_w is None else rank_pv_w
    rank = rank_slots(rank_pv, must)
    round_trip = battery.charge_eff * battery.discharge_eff
    if can_sleep:
        track = pv_w >= tracking_threshold(board, round_trip)
        rest_w = np.where(track, np.minimum(pv_w, board.full_w), board.sleep_w)
    else:  # awake anyway: the sun's surplus over idle is work for free
        track = np.ones(n, dtype=np.bool_)
        rest_w = np.clip(pv_w, board.idle_w, board.full_w)
    slots, safe = _most_slots(rank, pv_w, hours, rest_w, floor_wh, board, battery)
    if slots < int(must.sum()):
        # Not every slot the due work needs is affordable: keep those that are, and let the
        # rest go last, so that the slots after them in the order (tomorrow's sun, which the
        # floor may well allow) are still planned.
        group = np.where(must, np.where(rank < slots, 0, 2), 1)
        rank = _ranks(np.lexsort((np.arange(n), -rank_pv, group)))
        slots = _most_slots(rank, pv_w, hours, rest_w, floor_wh, board, battery)[0]
    work = rank < slots
    level = np.where(work, 1.0, np.where(track, board.level_for(rest_w), 0.0))
    awake = work | track
    resting_w = board.sleep_w if can_sleep else board.idle_w
    resting = _clamped(battery.energy_wh, battery.flow_wh(pv_w - resting_w, hours),
                       battery.capacity_wh)
    return Plan(work, must, level, awake, slots, safe, resting)


def _most_slots(rank: npt.NDArray[np.int64], pv_w: Array, hours: Array, rest_w: Array,
                floor_wh: Array, board: Board, battery: Battery) -> tuple[int, bool]:
    """How many slots, first in ``rank``'s order, the floor allows (bisection), and whether
    it allows none worked at all."""
    args = (rank, pv_w, hours, rest_w, floor_wh, board, battery)
    n = len(pv_w)
    stage = np.unique(np.linspace(0, n, COARSE).round().astype(np.int64))
    ok = _headroom(stage, *args) >= 0
    if ok[-1]:
        return n, bool(ok[0])
    if not ok[0]:
        return 0, False
    j = int(np.flatnonzero(ok)[-1])
    fine = np.arange(stage[j], stage[j + 1], dtype=np.int64)
    fine_ok = _headroom(fine, *args) >= 0
    return int(fine[np.flatnonzero(fine_ok)[-1]]), True


def _clamped(start_wh: float, flow_wh: Array, capacity_wh: float) -> Array:
    """Energy after each slot of ``flow_wh``, spilling what a full battery cannot take."""
    level = start_wh + np.cumsum(flow_wh)
    energy: Array = level - np.maximum.accumulate(np.maximum(level - capacity_wh, 0.0))
    return energy
