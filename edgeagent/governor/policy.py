"""The governor: a pure function from the site's state, a solar forecast and the config to what
the site does until the next tick.

No I/O and no clock (``now`` is an argument): the live agent and the simulator call this same
code, and what it must remember between ticks travels in a small frozen ``GovernorMemory`` that
the caller hands back each time. Each tick:

1. Stale or missing power data: the safe decision (no work, nothing admitted, workloads frozen,
   no sleep: a blind governor cannot plan a wake-up, and it must stay up to see again).
2. BatteryLife: the reserve in force rises by a step for each day without a full charge and
   falls by a step for each day with one, within a bound.
3. At or below the reserve in force the governor holds: no work until the battery is back
   above the reserve plus the resume margin (sleeping meanwhile when it may).
4. Otherwise the planner (``planner.py``) picks the slots of the horizon that the battery and
   the forecast sun pay for, first those the accepted jobs need by their deadlines (``due``);
   the current slot runs as planned: full speed, the sun's own level, or asleep until the next
   planned slot. ``planned_capacity`` gives admission the workers of that same plan.
5. Dwell: a level holds ``min_dwell_s`` before the plan may change it, unless keeping it would
   take the battery below the floor first, or a slot the due work needs calls for more; with
   the hysteresis on the current slot's rank this bounds flapping. Under-voltage now (a
   Raspberry Pi's firmware flag) sheds one worker a tick below what runs, whatever the plan,
   and the dwell keeps the load down a while.
6. Every knob follows from the level: workers, admission, model, ``cpu.max``/freeze, cpufreq
   cap, Jetson power mode, telemetry rate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from edgeagent.boards import BoardProfile
from edgeagent.config import BatteryConfig, GovernorConfig, WorkloadConfig
from edgeagent.governor import planner
from edgeagent.governor.decision import Capacity, Decision, Due, JobClass
from edgeagent.governor.forecast import Forecast
from edgeagent.state import SiteState

#: Leaving a fallback for a costlier model needs the budget this much above the fallback's
#: threshold, so a budget hovering at a threshold does not reload models every tick.
MODEL_UP_MARGIN = 0.1
DEFAULT_WORKLOAD = WorkloadConfig()
DAY_S = 86400.0
#: The current slot's sun counts this much more while it is being worked (less while it is
#: not), so a sun hovering at the plan's threshold does not toggle the work.
HYSTERESIS = 0.1
NO_JOBS: frozenset[JobClass] = frozenset()
URGENT: frozenset[JobClass] = frozenset({"urgent"})
PLANNED: frozenset[JobClass] = frozenset({"urgent", "deferrable"})
EVERY: frozenset[JobClass] = frozenset({"urgent", "deferrable", "best-effort"})


@dataclass(frozen=True)
class GovernorMemory:
    """What the governor carries from one tick to the next (the caller keeps it)."""

    previous: Decision | None = None
    level_since: float | None = None  # when the work level last changed
    day_start: float | None = None  # start of the current day of the BatteryLife count
    full_today: bool = False  # the battery was full during that day
    days_without_full: int = 0
    raise_pct: float = 0.0  # what BatteryLife adds to the configured reserve


def choose_model(budget_w: float, workload: WorkloadConfig, previous: str | None) -> str:
    """The main model, or the fallback for the scarcest budget band ``budget_w`` is in."""
    bands = {f.model: f.below_budget_w for f in workload.fallbacks}
    chosen, threshold = workload.model, math.inf
    for fallback in workload.fallbacks:
        if budget_w < fallback.below_budget_w < threshold:
            chosen, threshold = fallback.model, fallback.below_budget_w
    if previous is not None and previous != chosen:
        held = bands.get(previous)
        if held is not None and held < threshold and budget_w < held * (1 + MODEL_UP_MARGIN):
            return previous
    return chosen


def bus_board(board: BoardProfile, governor: GovernorConfig) -> planner.Board:
    """The board's draw as the battery sees it: through the converter, plus the standby."""
    conv, standby = governor.converter_efficiency, governor.standby_w
    return planner.Board(sleep_w=standby + board.sleep_w,
                         idle_w=standby + (board.idle_w + governor.agent_w) / conv,
                         full_w=standby + (board.full_load_w + governor.agent_w) / conv)


def battery_life(memory: GovernorMemory, soc_pct: float, now: float,
                 governor: GovernorConfig) -> GovernorMemory:
    """Advance the BatteryLife count: one step up per day without a full charge, one down per
    day with one. A day the governor did not see (asleep, blind) counts as one without."""
    start = memory.day_start if memory.day_start is not None else now
    full = soc_pct >= governor.full_soc_pct
    days = int((now - start) // DAY_S)
    if days < 1:
        return replace(memory, day_start=start, full_today=memory.full_today or full)
    raise_pct, without = memory.raise_pct, memory.days_without_full
    for day in range(min(days, 366)):  # this reading opens the new day, it closes none
        if day == 0 and memory.full_today:
            raise_pct, without = raise_pct - governor.reserve_step_pct, 0
        else:
            raise_pct, without = raise_pct + governor.reserve_step_pct, without + 1
    raise_pct = min(max(raise_pct, 0.0), governor.reserve_max_raise_pct)
    return replace(memory, day_start=start + days * DAY_S, full_today=full,
                   days_without_full=without, raise_pct=raise_pct)


def decide(state: SiteState, now: float, forecast: Forecast | None, board: BoardProfile,
           battery: BatteryConfig, governor: GovernorConfig,
           workload: WorkloadConfig = DEFAULT_WORKLOAD, memory: GovernorMemory | None = None,
           *, urgent_waiting: bool = False, due: Sequence[Due] = ()
           ) -> tuple[Decision, GovernorMemory]:
    """What the site does from ``now`` (UTC epoch seconds) until the next tick, and the memory
    to pass to the next call. ``forecast`` is None when the site has no coordinates: the plan
    then expects no more sun than it sees now and never sleeps (it could not plan a wake-up).
    ``urgent_waiting``: urgent jobs are queued, so the board stays up for them. ``due``: the
    accepted deferrable work left and its deadlines, which the plan serves first."""
    memory = memory if memory is not None else GovernorMemory()
    previous = memory.previous
    if state.stale or state.battery_soc_pct is None:
        reserve = min(battery.reserve_soc_pct + memory.raise_pct, 100.0)
        holding = previous is not None and previous.holding_reserve
        decision = _knobs(0.0, board, governor, "power data stale or missing",
                          model=_idle_model(previous, workload), admit=NO_JOBS,
                          holding=holding, reserve_pct=reserve, lean=False)
        # A level forced by blindness starts no dwell: the first real reading decides afresh.
        return decision, replace(memory, previous=decision, level_since=None)
    soc = state.battery_soc_pct
    memory = battery_life(memory, soc, now, governor)
    reserve = min(battery.reserve_soc_pct + memory.raise_pct, 100.0)
    was_holding = previous is not None and previous.holding_reserve
    resume = reserve + battery.resume_margin_pct
    holding = soc <= reserve or (was_holding and soc < resume)
    decision = _planned(state, soc, now, forecast, board, battery, governor, workload, memory,
                        reserve=reserve, holding=holding, urgent_waiting=urgent_waiting,
                        due=due)
    if state.under_voltage:
        decision = _shed(decision, previous, board, governor)
    return decision, _remember(memory, decision, now)


def _shed(decision: Decision, previous: Decision | None, board: BoardProfile,
          governor: GovernorConfig) -> Decision:
    """The board's supply sags under its load now: one worker less than runs now, whatever
    the plan (the dwell then keeps the lower level a while, so the load does not come back at
    once and sag the supply again)."""
    running = _on_worker_grid(decision.level if previous is None else previous.level,
                              governor.max_workers)
    level = max(running - 1.0 / max(governor.max_workers, 1), 0.0)
    if decision.level <= level:
        return decision
    admit = decision.admit if level > 0 else decision.admit & URGENT
    return _knobs(level, board, governor,
                  f"under-voltage: shedding to level {level:.2f} ({decision.reason})",
                  model=decision.model, admit=admit, holding=decision.holding_reserve,
                  reserve_pct=decision.reserve_pct if decision.reserve_pct is not None else 0.0,
                  lean=decision.telemetry_interval_s is not None,
                  sleep_until=decision.sleep_until)


@dataclass(frozen=True, eq=False)
class _Outlook:
    """The plan over the coming slots and what it was made from."""

    plan: planner.Plan
    pv: planner.Array  # forecast PV per slot (the current one as seen now)
    hours: planner.Array
    step_s: float
    floors: planner.Array  # the least energy at the end of each slot
    power: planner.Board
    energy_wh: float
    pv_now: float
    full: bool
    daylight: bool
    can_sleep: bool


def _outlook(state: SiteState, soc: float, now: float, forecast: Forecast | None,
            battery: BatteryConfig, governor: GovernorConfig, power: planner.Board, *,
            reserve: float, previous: Decision | None, can_sleep: bool,
            due: Sequence[Due]) -> _Outlook:
    """The plan from ``now``: the most slots the battery and the forecast sun pay for, the
    slots the ``due`` work needs by its deadlines first."""
    pv_now = max(state.pv_power_w or 0.0, 0.0)
    full = soc >= governor.full_soc_pct
    pv, clear, hours, step_s = _slots(forecast, now, governor.horizon_h)
    # A full battery makes the charger curtail: what it reports is a floor, not the sun.
    pv[0] = max(pv_now, pv[0]) if full else pv_now
    daylight = bool(clear[0] > 0 or pv_now > 0)
    capacity = battery.capacity_wh
    floor_wh = capacity * min(reserve + governor.margin_pct, 100.0) / 100.0
    energy = capacity * soc / 100.0
    bank = planner.Battery(energy, capacity, governor.charge_efficiency,
                           governor.discharge_efficiency)
    floors = _storm_floor(floor_wh, clear, hours, step_s, governor, power, bank)
    working = previous is not None and previous.level > 0 and previous.sleep_until is None
    rank_pv = pv.copy()
    rank_pv[0] *= 1 + HYSTERESIS if working else 1 - HYSTERESIS
    jobs = [((d.deadline - now) / 3600.0, d.work_cpu_s / 3600.0) for d in due]
    must = planner.must_work(rank_pv, hours, jobs, governor.max_workers)
    plan = planner.plan(pv, hours, floors, power, bank, can_sleep=can_sleep, rank_pv_w=rank_pv,
                        must=must)
    return _Outlook(plan, pv, hours, step_s, floors, power, energy, pv_now, full, daylight,
                   can_sleep)


def planned_capacity(state: SiteState, now: float, forecast: Forecast | None,
                     board: BoardProfile, battery: BatteryConfig, governor: GovernorConfig, *,
                     previous: Decision | None, due: Sequence[Due]) -> Capacity:
    """The workers the governor plans for each coming slot if ``due`` is the accepted work:
    what admission counts on (Cucumber's usable capacity), from the same plan ``decide``
    makes. ``previous``: the decision in force (its reserve, whether it holds the reserve).
    Nothing while the power data are stale or missing, or while the reserve is held."""
    reserve = (previous.reserve_pct if previous is not None and previous.reserve_pct
               is not None else battery.reserve_soc_pct)
    soc = state.battery_soc_pct
    if state.stale or soc is None or governor.max_workers <= 0:
        return Capacity(now, now + 3600.0, 3600.0, (0,))
    can_sleep = governor.allow_sleep and forecast is not None
    seen = _outlook(state, soc, now, forecast, battery, governor, bus_board(board, governor),
                   reserve=reserve, previous=previous, can_sleep=can_sleep, due=due)
    plan = seen.plan
    levels = np.where(plan.awake, plan.level, 0.0)
    workers = np.floor(levels * governor.max_workers + 1e-9).astype(np.int64)
    was_holding = previous is not None and previous.holding_reserve
    if soc <= reserve or (was_holding and soc < reserve + battery.resume_margin_pct):
        workers[0] = 0
    first_end = now + float(seen.hours[0]) * 3600.0
    return Capacity(now, first_end, seen.step_s, tuple(int(w) for w in workers))


def _planned(state: SiteState, soc: float, now: float, forecast: Forecast | None,
             board: BoardProfile, battery: BatteryConfig, governor: GovernorConfig,
             workload: WorkloadConfig, memory: GovernorMemory, *, reserve: float,
             holding: bool, urgent_waiting: bool, due: Sequence[Due]) -> Decision:
    previous = memory.previous
    can_sleep = governor.allow_sleep and forecast is not None and not urgent_waiting
    seen = _outlook(state, soc, now, forecast, battery, governor, bus_board(board, governor),
                   reserve=reserve, previous=previous, can_sleep=can_sleep, due=due)
    plan, pv, hours, step_s = seen.plan, seen.pv, seen.hours, seen.step_s
    power, pv_now, energy, full, daylight = (seen.power, seen.pv_now, seen.energy_wh,
                                             seen.full, seen.daylight)
    floors, capacity = seen.floors, battery.capacity_wh
    idle_model = _idle_model(previous, workload)
    if holding:
        why = (f"holding the reserve: battery {soc:.0f}%, reserve {reserve:.0f}%, resuming at "
               f"{reserve + battery.resume_margin_pct:.0f}%")
        if not can_sleep:
            return _knobs(0.0, board, governor, why, model=idle_model, admit=NO_JOBS,
                          holding=True, reserve_pct=reserve, lean=True)
        resume_wh = capacity * (reserve + battery.resume_margin_pct) / 100.0
        recovered = np.flatnonzero(plan.resting_energy_wh >= resume_wh)
        wake = _wake(now, hours, step_s, forecast, governor,
                     int(recovered[0]) + 1 if len(recovered) else None)
        return _knobs(0.0, board, governor, why + ", asleep", model=idle_model,
                      admit=NO_JOBS, holding=True, reserve_pct=reserve, lean=True,
                      sleep_until=wake)
    if full and daylight and plan.safe:
        level, why = 1.0, f"battery full ({soc:.0f}%) in daylight: flat out"
    elif plan.work[0]:
        needed, met = int(plan.must.sum()), int((plan.must & plan.work).sum())
        for_jobs = (f" ({needed} needed by job deadlines)" if met == needed else
                    f" ({met} of the {needed} needed by job deadlines)")
        level, why = 1.0, (f"planned: {plan.slots} of {len(pv)} slots affordable"
                           + (for_jobs if needed else "")
                           + f", battery {soc:.0f}%, PV {pv_now:.1f} W")
    else:
        level = float(plan.level[0]) if plan.awake[0] else 0.0
        why = (f"running on the sun alone: PV {pv_now:.1f} W" if level > 0 else
               f"no work planned now: {plan.slots} of {len(pv)} slots affordable, "
               f"battery {soc:.0f}%")
    level = _on_worker_grid(level, governor.max_workers)
    if urgent_waiting and level == 0 and governor.max_workers > 0:
        level, why = 1.0 / governor.max_workers, why + "; one worker for urgent jobs"
    if plan.work[0] and plan.must[0] and (previous is None or level > previous.level):
        held = False  # accepted work needs this slot (admission counted on it): no waiting
    else:
        level, held = _dwell(level, previous, memory, now, governor, power, pv_now, energy,
                             float(floors[0]))
    if held:
        why = f"dwell: keeping level {level:.2f} ({why})"
    sleep_until = None
    if level == 0 and can_sleep and not plan.awake[0]:
        awake_slots = np.flatnonzero(plan.awake[1:])
        sleep_until = _wake(now, hours, step_s, forecast, governor,
                            int(awake_slots[0]) + 1 if len(awake_slots) else None)
        why += ", asleep"
    spare = plan.spare or (full and daylight)
    if sleep_until is not None:
        admit = NO_JOBS
    elif level > 0:
        admit = EVERY if spare else PLANNED
    else:
        admit = URGENT
    budget_w = level * (board.full_load_w - board.idle_w)
    model = (choose_model(budget_w, workload, None if previous is None else previous.model)
             if level > 0 else idle_model)
    return _knobs(level, board, governor, why, model=model, admit=admit, holding=False,
                  reserve_pct=reserve, lean=level == 0 and not spare, sleep_until=sleep_until)


def _slots(forecast: Forecast | None, now: float, horizon_h: float
           ) -> tuple[planner.Array, planner.Array, planner.Array, float]:
    """Forecast PV and clear-sky PV per slot from ``now`` on, and each slot's hours; slot 0 is
    what remains of the current one. Without a usable forecast: one slot and no sun after it."""
    if forecast is not None:
        step_s = forecast.step_s
        first = max(int((now - forecast.start) // step_s), 0)
        n = min(len(forecast.pv_w) - first, math.ceil(horizon_h * 3600.0 / step_s))
        if n > 0:
            pv = np.asarray(forecast.pv_w[first:first + n], dtype=np.float64)
            clear = np.asarray(forecast.clear_w[first:first + n], dtype=np.float64)
            hours = np.full(n, step_s / 3600.0)
            hours[0] = max(forecast.start + (first + 1) * step_s - now, 1.0) / 3600.0
            return pv, clear, hours, step_s
    n = math.ceil(horizon_h)
    return np.zeros(n), np.zeros(n), np.ones(n), 3600.0


def _storm_floor(floor_wh: float, clear: planner.Array, hours: planner.Array, step_s: float,
                 governor: GovernorConfig, power: planner.Board, bank: planner.Battery
                 ) -> planner.Array:
    """The floor of each slot: enough to sleep through ``storm_h`` of storm from now. A storm
    longer than the horizon repeats the horizon's last day."""
    storm = clear * governor.storm_clearness
    extra = max(math.ceil(governor.storm_h * 3600.0 / step_s) - len(storm), 0)
    if extra:
        day = min(len(storm), round(DAY_S / step_s))
        storm = np.concatenate([storm, np.resize(storm[-day:], extra)])
        hours = np.concatenate([hours, np.full(extra, step_s / 3600.0)])
    return planner.storm_floor(floor_wh, storm, hours, power, bank)[:len(clear)]


def _wake(now: float, hours: planner.Array, step_s: float, forecast: Forecast | None,
          governor: GovernorConfig, slot: int | None) -> float:
    """When to wake from a sleep that starts now: at the start of ``slot``, or with no such
    slot in the horizon at the next sunrise (the end of the horizon if it holds none); never
    sooner than the shortest sleep."""
    if slot is not None:
        at = now + float(hours[0]) * 3600.0 + (slot - 1) * step_s
    else:
        sunrise = None if forecast is None else forecast.next_sunrise()
        at = sunrise if sunrise is not None and sunrise > now else now + float(hours.sum()) * 3600
    return max(at, now + governor.min_sleep_s)


def _on_worker_grid(level: float, max_workers: int) -> float:
    """The level rounded down to whole workers, so the level is what the workers really do."""
    if max_workers <= 0 or level >= 1.0:
        return min(level, 1.0)
    return math.floor(level * max_workers + 1e-9) / max_workers


def _dwell(level: float, previous: Decision | None, memory: GovernorMemory, now: float,
           governor: GovernorConfig, power: planner.Board, pv_w: float, energy_wh: float,
           floor_wh: float) -> tuple[float, bool]:
    """The previous level while it has not held for ``min_dwell_s`` yet, unless keeping it
    that long could take the battery below the floor (a waking board starts afresh)."""
    if (previous is None or previous.sleep_until is not None or level == previous.level
            or memory.level_since is None):
        return level, False
    left_h = (memory.level_since + governor.min_dwell_s - now) / 3600.0
    if left_h <= 0:
        return level, False
    keep_w = power.idle_w + previous.level * (power.full_w - power.idle_w)
    drain_wh = max(keep_w - pv_w, 0.0) / governor.discharge_efficiency * left_h
    if energy_wh - drain_wh < floor_wh:
        return level, False
    return previous.level, True


def _idle_model(previous: Decision | None, workload: WorkloadConfig) -> str:
    """With no work to do there is nothing to gain from swapping models: keep the last one."""
    return previous.model if previous is not None else workload.model


def _knobs(level: float, board: BoardProfile, governor: GovernorConfig, reason: str, *,
           model: str, admit: frozenset[JobClass], holding: bool, reserve_pct: float,
           lean: bool, sleep_until: float | None = None) -> Decision:
    """The decision for work ``level``: every knob follows from it."""
    workers = math.floor(level * governor.max_workers + 1e-9)
    cpufreq = 100.0 if level >= 1 else (
        governor.cpufreq_min_pct + (100.0 - governor.cpufreq_min_pct) * level)
    mode = None
    if board.knobs.nvpmodel and board.knobs.power_modes_w:
        need_w = board.idle_w + level * (board.full_load_w - board.idle_w)
        modes = sorted(board.knobs.power_modes_w)
        mode = next((m for m in modes if m >= need_w), modes[-1])
    return Decision(
        workers=workers, budget_w=level * (board.full_load_w - board.idle_w), reason=reason,
        holding_reserve=holding, model=model, level=level, admit=admit,
        cpu_max=level * board.cores if level > 0 else None, freeze=level == 0,
        cpufreq_max_pct=cpufreq, power_mode_w=mode,
        telemetry_interval_s=governor.lean_telemetry_interval_s if lean else None,
        sleep_until=sleep_until, reserve_pct=reserve_pct)


def _remember(memory: GovernorMemory, decision: Decision, now: float) -> GovernorMemory:
    previous = memory.previous
    changed = previous is None or previous.level != decision.level
    return replace(memory, previous=decision,
                   level_since=now if changed or memory.level_since is None
                   else memory.level_since)
