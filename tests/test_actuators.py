"""Actuators on temporary sysfs/cgroupfs trees: every write verified, nothing written twice,
failures reported without raising, dry runs write nothing, and flapping is bounded.

The only stand-in is nvpmodel's command runner: a real nvpmodel needs a Jetson, so
``FakeNvpmodel`` answers with texts captured from real boards (the accepted mock case). Every
other test writes real files; a small thread plays the kernel's part of a cgroup freeze.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from edgeagent.actuators import (
    ActuatorResult,
    ActuatorSet,
    CgroupActuator,
    CpufreqActuator,
    NvpmodelActuator,
    WorkerPoolActuator,
    build_actuators,
)
from edgeagent.actuators.cgroup import cpu_max_value, cpus_allowed
from edgeagent.actuators.cpufreq import cap_khz
from edgeagent.actuators.nvpmodel import choose_mode, parse_modes, parse_query
from edgeagent.boards import load_board
from edgeagent.config import ActuatorConfig, ConfigError, parse_config
from edgeagent.governor.decision import Decision
from edgeagent.infer.bundled import load_bundled_samples
from edgeagent.infer.classifier import DigitsClassifier
from edgeagent.workloads.pool import WorkerPool

SLICE = "edgeagent.slice/edgeagent-workloads.slice"
PI4_FREQS = [600_000 + 100_000 * i for i in range(10)]  # 600 MHz .. 1.5 GHz
ORIN_FREQS = [115_200, 192_000, 268_800, 345_600, 422_400, 499_200, 576_000, 652_800, 729_600,
              806_400, 883_200, 960_000, 1_036_800, 1_113_600, 1_190_400, 1_267_200, 1_344_000,
              1_420_800, 1_497_600, 1_510_400]

# /etc/nvpmodel.conf of an Orin Nano 8 GB on JetPack 6.2 ("Super"), abridged: the PARAM blocks
# and a few lines per mode, as the file lays them out. Ids are not in watt order.
ORIN_NANO_CONF = """\
#
# Copyright (c) 2024, NVIDIA CORPORATION.  All rights reserved.
#
# < POWER_MODEL ID=id_num NAME=mode_name >

< PARAM TYPE=FILE NAME=CPU_ONLINE >
CORE_0 /sys/devices/system/cpu/cpu0/online
CORE_4 /sys/devices/system/cpu/cpu4/online

< PARAM TYPE=CLOCK NAME=CPU_A78_0 >
MIN_FREQ /sys/devices/system/cpu/cpu0/cpufreq/scaling_min_freq
MAX_FREQ /sys/devices/system/cpu/cpu0/cpufreq/scaling_max_freq

< PARAM TYPE=FILE NAME=EMC >
MAX_FREQ /sys/kernel/nvpmodel_emc_cap/emc_iso_cap

###########################
# POWER_MODEL DEFINITIONS #
###########################

< POWER_MODEL ID=0 NAME=15W >
CPU_ONLINE CORE_0 1
CPU_ONLINE CORE_4 1
CPU_A78_0 MIN_FREQ 729600
CPU_A78_0 MAX_FREQ 1497600
CPU_A78_1 MIN_FREQ 729600
CPU_A78_1 MAX_FREQ 1497600
GPU MAX_FREQ 612000000
EMC MAX_FREQ 2133000000

< POWER_MODEL ID=1 NAME=25W >
CPU_ONLINE CORE_0 1
CPU_A78_0 MIN_FREQ 729600
CPU_A78_0 MAX_FREQ 1344000
GPU MAX_FREQ 918000000
EMC MAX_FREQ 3199000000

< POWER_MODEL ID=2 NAME=MAXN_SUPER >
CPU_ONLINE CORE_0 1
CPU_A78_0 MAX_FREQ -1
GPU MAX_FREQ -1
EMC MAX_FREQ -1

< POWER_MODEL ID=3 NAME=7W >
CPU_ONLINE CORE_0 1
CPU_ONLINE CORE_4 0
CPU_A78_0 MIN_FREQ 729600
CPU_A78_0 MAX_FREQ 960000
GPU MAX_FREQ 408000000
EMC MAX_FREQ 2133000000

# mandatory section to configure the default power mode
< PM_CONFIG DEFAULT=1 >
"""

# /etc/nvpmodel/nvpmodel_t210_jetson-nano.conf (Jetson Nano 4 GB), abridged.
NANO_CONF = """\
###########################
#                         #
# POWER_MODEL DEFINITIONS #
#                         #
###########################

# MAXN is the NONE power model to release all constraints
< POWER_MODEL ID=0 NAME=MAXN >
CPU_ONLINE CORE_0 1
CPU_ONLINE CORE_3 1
CPU_A57 MIN_FREQ  0
CPU_A57 MAX_FREQ -1
GPU MAX_FREQ -1
EMC MAX_FREQ 0

< POWER_MODEL ID=1 NAME=5W >
CPU_ONLINE CORE_0 1
CPU_ONLINE CORE_2 0
CPU_ONLINE CORE_3 0
CPU_A57 MIN_FREQ  0
CPU_A57 MAX_FREQ 918000
GPU MAX_FREQ 640000000
EMC MAX_FREQ 1600000000

# mandatory section to configure the default mode
< PM_CONFIG DEFAULT=0 >
"""


class Clock:
    """The time the rate limit sees, stepped by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def decision(**knobs: Any) -> Decision:
    return replace(Decision(workers=1, budget_w=5.0, reason="test"), **knobs)


def make_slice(root: Path, frozen: str = "0") -> Path:
    """A cgroup v2 directory as the kernel shows it (cpu controller enabled by the parent)."""
    path = root / "fs" / "cgroup" / SLICE
    path.mkdir(parents=True)
    (path / "cpu.max").write_text("max 100000\n")
    (path / "cgroup.freeze").write_text(f"{frozen}\n")
    (path / "cgroup.events").write_text(f"populated 1\nfrozen {frozen}\n")
    return path


def make_policy(root: Path, index: int, hw_min: int, hw_max: int,
                available: Sequence[int] | None = None) -> Path:
    policy = root / "devices" / "system" / "cpu" / "cpufreq" / f"policy{index}"
    policy.mkdir(parents=True)
    (policy / "cpuinfo_min_freq").write_text(f"{hw_min}\n")
    (policy / "cpuinfo_max_freq").write_text(f"{hw_max}\n")
    (policy / "scaling_max_freq").write_text(f"{hw_max}\n")
    if available is not None:
        (policy / "scaling_available_frequencies").write_text(
            " ".join(str(f) for f in available) + " \n")
    return policy


@contextmanager
def kernel_freezer(path: Path, delay_s: float = 0.05) -> Iterator[None]:
    """Play the kernel: ``delay_s`` after cgroup.freeze changes, cgroup.events follows."""
    stop = threading.Event()

    def follow() -> None:
        while not stop.is_set():
            want = (path / "cgroup.freeze").read_text().strip()
            if f"frozen {want}" not in (path / "cgroup.events").read_text():
                time.sleep(delay_s)
                (path / "cgroup.events").write_text(f"populated 1\nfrozen {want}\n")
            time.sleep(0.005)

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextmanager
def unprivileged() -> Iterator[None]:
    """Run as nobody: root writes through file modes, the agent's own user does not."""
    if os.geteuid() != 0:
        yield
        return
    try:
        os.setegid(65534)
        os.seteuid(65534)
    except PermissionError:
        pytest.skip("cannot drop privileges here")
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.fixture
def open_root() -> Iterator[Path]:
    """A tree the unprivileged user may read (tmp_path's parents are private to root)."""
    root = Path(tempfile.mkdtemp(prefix="edgeagent-sysfs-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root)


class FakeNvpmodel:
    """Answers as nvpmodel does (formats captured from Orin Nano and Nano boards)."""

    def __init__(self, conf: str, mode: int, reboot_for: Sequence[int] = (),
                 unprivileged: bool = False) -> None:
        self.names = {m.id: m.name for m in parse_modes(conf)}
        self.mode = mode
        self.reboot_for = set(reboot_for)
        self.unprivileged = unprivileged
        self.calls: list[list[str]] = []

    def __call__(self, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        args = list(args)
        self.calls.append(args)
        denied = "NVPM ERROR: Error opening /sys/kernel/nvpmodel_emc_cap/emc_iso_cap: 13\n"
        if args[1:] == ["-q"]:
            out = f"NV Power Mode: {self.names[self.mode]}\n{self.mode}\n"
            return subprocess.CompletedProcess(args, 0, out + (denied if self.unprivileged
                                                               else ""), "")
        if args[1:] == ["-p", "--verbose"]:
            out = "NVPM VERB: Config file: /etc/nvpmodel.conf\n" + "".join(
                f"NVPM VERB: POWER_MODEL: ID={i} NAME={n}\n" for i, n in self.names.items())
            return subprocess.CompletedProcess(args, 0, out, "")
        assert args[1] == "-m", args
        wanted = int(args[2])
        if self.unprivileged:
            return subprocess.CompletedProcess(args, 255, "", denied)
        if wanted not in self.names:
            return subprocess.CompletedProcess(
                args, 255, "", f"NVPM ERROR: request for bad power mode {wanted}\n")
        if wanted in self.reboot_for:
            out = ("NVPM WARN: Golden image context is already created\n"
                   f"NVPM WARN: Reboot required for changing to this power mode: {wanted}\n"
                   "NVPM WARN: DO YOU WANT TO REBOOT NOW? enter YES/yes to confirm:\n"
                   "NVPM ERROR: optMask is 1, no request for power mode\n")
            return subprocess.CompletedProcess(args, 255, out, "")
        self.mode = wanted
        return subprocess.CompletedProcess(args, 0, "", "")

    @property
    def switches(self) -> list[int]:
        return [int(c[2]) for c in self.calls if c[1] == "-m"]


# --- cgroup v2 -------------------------------------------------------------------------------

def test_cpu_max_values_follow_the_kernel_format() -> None:
    assert cpu_max_value(None) == "max 100000"
    assert cpu_max_value(0.5) == "50000 100000"
    assert cpu_max_value(2.0) == "200000 100000"
    assert cpu_max_value(0.0) == "1000 100000"  # the kernel's smallest quota
    assert cpus_allowed("150000 100000") == 1.5
    assert cpus_allowed("max 100000") == float("inf")


def test_cgroup_writes_verifies_and_then_leaves_an_unchanged_value_alone(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = make_slice(tmp_path)
    actuator = CgroupActuator(tmp_path / "fs" / "cgroup", SLICE)
    with caplog.at_level(logging.INFO, logger="edgeagent.actuators"):
        result = actuator.apply(decision(cpu_max=1.5))
    assert (path / "cpu.max").read_text() == "150000 100000"
    assert result.ok and result.verified
    assert [(w.knob, w.old, w.new) for w in result.writes] == [
        ("cpu.max", "max 100000", "150000 100000")]
    assert [r.message for r in caplog.records] == [
        f"cgroup: {path / 'cpu.max'}: 'max 100000' -> '150000 100000' (verified)"]

    mtime = (path / "cpu.max").stat().st_mtime_ns
    again = actuator.apply(decision(cpu_max=1.5))
    assert again.writes == () and again.ok
    assert (path / "cpu.max").stat().st_mtime_ns == mtime  # not rewritten


def test_freeze_and_thaw_are_confirmed_by_cgroup_events(tmp_path: Path) -> None:
    path = make_slice(tmp_path)
    clock = Clock()
    actuator = CgroupActuator(tmp_path / "fs" / "cgroup", SLICE, clock=clock, freeze_wait_s=2)
    with kernel_freezer(path):
        frozen = actuator.apply(decision(freeze=True, cpu_max=0.5))
        assert frozen.verified
        assert [w.knob for w in frozen.writes] == ["cgroup.freeze", "cpu.max"]  # freeze first
        assert "frozen 1" in (path / "cgroup.events").read_text()
        clock.now += 60
        thawed = actuator.apply(decision(freeze=False, cpu_max=0.5))
        assert thawed.verified and [w.knob for w in thawed.writes] == ["cgroup.freeze"]
        assert "frozen 0" in (path / "cgroup.events").read_text()


def test_a_freeze_the_kernel_never_completes_is_reported(tmp_path: Path) -> None:
    path = make_slice(tmp_path)  # nothing plays the kernel: cgroup.events stays "frozen 0"
    result = CgroupActuator(tmp_path / "fs" / "cgroup", SLICE, freeze_wait_s=0.05).apply(
        decision(freeze=True))
    assert (path / "cgroup.freeze").read_text() == "1"
    assert not result.verified and not result.writes[0].verified
    assert "frozen 0" in result.errors[0]


def test_missing_slice_and_missing_controller_files_are_reported(tmp_path: Path) -> None:
    cgroup = tmp_path / "fs" / "cgroup"
    result = CgroupActuator(cgroup, SLICE).apply(decision(cpu_max=1.0))
    assert not result.ok and "missing cgroup" in result.errors[0]

    path = make_slice(tmp_path)
    (path / "cpu.max").unlink()  # the cpu controller is not enabled for the slice
    with kernel_freezer(path):
        result = CgroupActuator(cgroup, SLICE).apply(decision(cpu_max=1.0, freeze=True))
    assert len(result.errors) == 1 and "missing" in result.errors[0]
    assert "cpu.max" in result.errors[0] and "+cpu" in result.errors[0]
    assert (path / "cgroup.freeze").read_text() == "1"  # the other knob still went through


def test_a_root_only_knob_reports_permission_denied_and_the_rest_goes_on(
        open_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = make_slice(open_root)
    (path / "cgroup.events").write_text("populated 0\nfrozen 1\n")  # empty: freezes at once
    (path / "cpu.max").chmod(0o444)
    (path / "cgroup.freeze").chmod(0o666)  # the udev/tmpfiles rules granted this one
    actuator = CgroupActuator(open_root / "fs" / "cgroup", SLICE, freeze_wait_s=0)
    with caplog.at_level(logging.WARNING, logger="edgeagent.actuators"), unprivileged():
        first = actuator.apply(decision(cpu_max=0.5, freeze=True))
        second = actuator.apply(decision(cpu_max=0.5, freeze=True))
    assert len(first.errors) == 1
    assert "permission denied writing" in first.errors[0] and "udev" in first.errors[0]
    assert second.errors == first.errors  # counted every tick ...
    assert len(caplog.records) == 1  # ... logged once
    assert (path / "cpu.max").read_text().strip() == "max 100000"
    assert (path / "cgroup.freeze").read_text() == "1"


def test_dry_run_writes_nothing_and_logs_each_change_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = make_slice(tmp_path)
    make_policy(tmp_path, 0, 600_000, 1_500_000, PI4_FREQS)
    before = {p: p.read_text() for p in tmp_path.rglob("*") if p.is_file()}
    actuators = [CgroupActuator(tmp_path / "fs" / "cgroup", SLICE, dry_run=True),
                 CpufreqActuator(tmp_path, dry_run=True)]
    with caplog.at_level(logging.INFO, logger="edgeagent.actuators"):
        for tick in range(3):
            results = [a.apply(decision(cpu_max=1.0, freeze=True, cpufreq_max_pct=50))
                       for a in actuators]
            if tick == 0:
                assert all(w.dry_run and not w.verified for r in results for w in r.writes)
                assert sum(len(r.writes) for r in results) == 3
            else:
                assert all(r.writes == () for r in results)
    assert {p: p.read_text() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert len(caplog.records) == 3 and all("dry run" in r.message for r in caplog.records)
    assert (path / "cpu.max").read_text() == "max 100000\n"


# --- rate limit ------------------------------------------------------------------------------

def writes_per_minute(min_interval_s: float, tmp_path: Path) -> tuple[int, str]:
    """Ten minutes of 5-second ticks whose decision flips every tick: the most writes of one
    knob in any minute, and the value the knob ends with."""
    path = make_slice(tmp_path)
    clock = Clock()
    actuator = CgroupActuator(tmp_path / "fs" / "cgroup", SLICE, clock=clock,
                              min_interval_s=min_interval_s)
    times = []
    for tick in range(120):
        result = actuator.apply(decision(cpu_max=2.0 if tick % 2 else 0.5))
        times += [clock.now for w in result.writes if w.knob == "cpu.max"]
        clock.now += 5
    most = max(sum(1 for t in times if start <= t < start + 60) for start in times)
    return most, (path / "cpu.max").read_text()


def test_rate_limit_bounds_a_flapping_decision_stream(tmp_path: Path) -> None:
    unlimited, _ = writes_per_minute(0, tmp_path / "a")
    assert unlimited == 12  # every tick writes
    limited, last = writes_per_minute(30, tmp_path / "b")
    # one raise per 30 s, each cut follows a raise: at most 2 x 2 + 1 writes in any minute
    assert 2 <= limited <= 5
    assert last in ("50000 100000", "200000 100000")


def test_a_cut_is_immediate_and_a_held_raise_lands_when_the_interval_ends(
        tmp_path: Path) -> None:
    path = make_slice(tmp_path)
    clock = Clock()
    actuator = CgroupActuator(tmp_path / "fs" / "cgroup", SLICE, clock=clock, min_interval_s=30)
    assert actuator.apply(decision(cpu_max=2.0)).writes  # first write: nothing to wait for
    clock.now += 1
    assert actuator.apply(decision(cpu_max=0.5)).writes  # a cut: never delayed
    clock.now += 1
    held = actuator.apply(decision(cpu_max=2.0))
    assert held.writes == () and held.deferred == ("cpu.max",) and held.ok
    assert (path / "cpu.max").read_text() == "50000 100000"
    clock.now += 29
    assert actuator.apply(decision(cpu_max=2.0)).writes
    assert (path / "cpu.max").read_text() == "200000 100000"


# --- cpufreq ---------------------------------------------------------------------------------

def test_cap_rounds_down_to_an_available_frequency_and_never_below_the_minimum() -> None:
    assert cap_khz(50, 600_000, 1_500_000, PI4_FREQS) == 700_000  # 750 MHz -> 700 MHz
    assert cap_khz(100, 600_000, 1_500_000, PI4_FREQS) == 1_500_000
    assert cap_khz(10, 600_000, 1_500_000, PI4_FREQS) == 600_000
    assert cap_khz(50, 600_000, 1_500_000) == 750_000  # no list: the exact share
    assert cap_khz(0, 600_000, 1_500_000) == 600_000
    assert cap_khz(100, 115_200, 1_510_400, ORIN_FREQS, ceiling=960_000) == 960_000
    assert cap_khz(70, 115_200, 1_510_400, ORIN_FREQS) == 1_036_800  # 1057280 rounded down


def test_cpufreq_caps_every_policy_and_verifies(tmp_path: Path) -> None:
    little = make_policy(tmp_path, 0, 115_200, 1_510_400, ORIN_FREQS)
    big = make_policy(tmp_path, 4, 115_200, 1_510_400, ORIN_FREQS)
    clock = Clock()
    actuator = CpufreqActuator(tmp_path, clock=clock)
    result = actuator.apply(decision(cpufreq_max_pct=50))
    assert result.verified and len(result.writes) == 2
    assert (little / "scaling_max_freq").read_text() == "729600"
    assert (big / "scaling_max_freq").read_text() == "729600"
    assert actuator.apply(decision(cpufreq_max_pct=50)).writes == ()
    clock.now += 60
    assert actuator.apply(decision(cpufreq_max_pct=100)).verified
    assert (big / "scaling_max_freq").read_text() == "1510400"


def test_cpufreq_reports_a_machine_without_it(tmp_path: Path) -> None:
    result = CpufreqActuator(tmp_path).apply(decision(cpufreq_max_pct=50))
    assert not result.ok and "no cpufreq" in result.errors[0]


def test_cpufreq_reports_a_value_the_driver_does_not_keep(tmp_path: Path) -> None:
    policy = make_policy(tmp_path, 0, 600_000, 1_500_000, PI4_FREQS)
    (policy / "scaling_max_freq").unlink()
    (policy / "scaling_max_freq").mkdir()  # something the write cannot go to
    result = CpufreqActuator(tmp_path).apply(decision(cpufreq_max_pct=50))
    assert not result.ok and "scaling_max_freq" in result.errors[0]


# --- nvpmodel --------------------------------------------------------------------------------

def test_modes_are_read_from_the_conf_not_hard_coded() -> None:
    orin = parse_modes(ORIN_NANO_CONF)
    assert [(m.id, m.name, m.watts, m.cpu_max_khz) for m in orin] == [
        (0, "15W", 15.0, 1_497_600), (1, "25W", 25.0, 1_344_000),
        (2, "MAXN_SUPER", None, None), (3, "7W", 7.0, 960_000)]
    nano = parse_modes(NANO_CONF)
    assert [(m.id, m.name, m.watts, m.cpu_max_khz) for m in nano] == [
        (0, "MAXN", None, None), (1, "5W", 5.0, 918_000)]
    assert parse_query("NVPM VERB: Config file: /etc/nvpmodel.conf\n"
                       "NVPM VERB: Current mode: NV Power Mode: 7W\n3\n"
                       "NVPM VERB: PARAM CPU_ONLINE: ARG CORE_0: PATH /sys/...", orin) == 3
    assert parse_query("NV Power Mode: MAXN\n", nano) == 0  # no id line: found by name


@pytest.mark.parametrize(("watts", "orin", "nano"), [
    (3.0, "7W", "5W"),  # below every mode: the smallest
    (7.0, "7W", "5W"),
    (10.0, "7W", "MAXN"),  # the Nano's MAXN is its 10 W mode (board profile)
    (15.0, "15W", "MAXN"),
    (24.0, "15W", "MAXN"),
    (25.0, "25W", "MAXN"),
    (100.0, "25W", "MAXN"),  # MAXN_SUPER is unconstrained: never picked by watts
])
def test_the_mode_is_the_largest_budget_that_fits(watts: float, orin: str, nano: str) -> None:
    orin_w = load_board("jetson-orin-nano").knobs.power_modes_w
    nano_w = load_board("jetson-nano").knobs.power_modes_w
    assert choose_mode(parse_modes(ORIN_NANO_CONF), watts, orin_w).name == orin
    assert choose_mode(parse_modes(NANO_CONF), watts, nano_w).name == nano


def test_nvpmodel_switches_by_id_and_verifies_with_a_query(tmp_path: Path) -> None:
    conf = tmp_path / "nvpmodel.conf"
    conf.write_text(ORIN_NANO_CONF)
    board = FakeNvpmodel(ORIN_NANO_CONF, mode=1)
    clock = Clock()
    actuator = NvpmodelActuator(conf, runner=board, clock=clock, board_modes_w=[7, 15, 25])
    assert actuator.apply(decision()).writes == ()  # power_mode_w None: leave the mode alone
    assert board.calls == []

    result = actuator.apply(decision(power_mode_w=7.0))
    assert result.verified and board.mode == 3 and board.switches == [3]
    assert (result.writes[0].old, result.writes[0].new) == ("1", "3")
    assert actuator.cpu_max_khz() == 960_000  # what the cpufreq cap must stay under
    assert board.calls[-1] == ["nvpmodel", "-q"]  # verified by asking

    assert actuator.apply(decision(power_mode_w=7.0)).writes == ()
    clock.now += 60
    actuator.apply(decision(power_mode_w=15.0))
    assert board.switches == [3, 0]


def test_nvpmodel_dry_run_switches_nothing(tmp_path: Path) -> None:
    conf = tmp_path / "nvpmodel.conf"
    conf.write_text(NANO_CONF)
    board = FakeNvpmodel(NANO_CONF, mode=0)
    actuator = NvpmodelActuator(conf, runner=board, dry_run=True, board_modes_w=[10, 5])
    result = actuator.apply(decision(power_mode_w=5.0))
    assert result.writes[0].dry_run and result.writes[0].new == "1"
    assert board.switches == [] and board.mode == 0


def test_nvpmodel_without_root_says_how_to_grant_it(tmp_path: Path) -> None:
    conf = tmp_path / "nvpmodel.conf"
    conf.write_text(NANO_CONF)
    board = FakeNvpmodel(NANO_CONF, mode=0, unprivileged=True)
    result = NvpmodelActuator(conf, runner=board, board_modes_w=[10, 5]).apply(
        decision(power_mode_w=5.0))
    assert not result.ok and "needs root" in result.errors[0]
    assert "nvpmodel_command" in result.errors[0]


def test_a_mode_that_needs_a_reboot_is_not_tried_again(tmp_path: Path) -> None:
    conf = tmp_path / "nvpmodel.conf"
    conf.write_text(ORIN_NANO_CONF)
    board = FakeNvpmodel(ORIN_NANO_CONF, mode=0, reboot_for=[3])
    clock = Clock()
    actuator = NvpmodelActuator(conf, runner=board, clock=clock, board_modes_w=[7, 15, 25])
    first = actuator.apply(decision(power_mode_w=7.0))
    assert "reboot" in first.errors[0] and board.mode == 0
    clock.now += 60
    second = actuator.apply(decision(power_mode_w=7.0))  # the next best: 15 W, already on
    assert second.ok and board.switches == [3]


def test_nvpmodel_lists_its_modes_when_the_conf_is_unreadable(tmp_path: Path) -> None:
    board = FakeNvpmodel(ORIN_NANO_CONF, mode=0)
    actuator = NvpmodelActuator(tmp_path / "missing.conf", runner=board)
    assert actuator.apply(decision(power_mode_w=25.0)).verified
    assert board.mode == 1 and ["nvpmodel", "-p", "--verbose"] in board.calls

    def no_nvpmodel(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        raise FileNotFoundError(2, "No such file or directory", args[0])

    result = NvpmodelActuator(tmp_path / "missing.conf", runner=no_nvpmodel).apply(
        decision(power_mode_w=25.0))
    assert not result.ok and "missing" in result.errors[0]


# --- worker pool and the set -----------------------------------------------------------------

def make_pool(max_workers: int = 3) -> WorkerPool:
    """A real pool, never started: the actuator only sets what its workers would run."""
    samples, labels = load_bundled_samples()
    return WorkerPool(DigitsClassifier.load, samples, labels, max_workers=max_workers)


def test_worker_pool_follows_the_decision_within_its_size() -> None:
    pool = make_pool()
    clock = Clock()
    actuator = WorkerPoolActuator(pool, clock=clock)
    result = actuator.apply(decision(workers=5, model="digits-fp32"))
    assert result.verified and pool.workers == 3 and pool.model == "digits-fp32"
    clock.now += 1
    assert actuator.apply(decision(workers=1, model="digits-fp32")).writes  # cut: at once
    assert pool.workers == 1
    held = actuator.apply(decision(workers=2, model="digits-fp32"))
    assert held.deferred == ("workers",) and pool.workers == 1


def test_the_set_never_raises_and_counts_what_happened(tmp_path: Path) -> None:
    class Broken:
        name = "broken"

        def apply(self, decision: Decision) -> ActuatorResult:
            raise RuntimeError("a bug")

    make_slice(tmp_path)
    actuators = ActuatorSet([Broken(), CgroupActuator(tmp_path / "fs" / "cgroup", SLICE),
                             CpufreqActuator(tmp_path)])
    results = actuators.apply(decision(cpu_max=1.0))
    assert [r.name for r in results] == ["broken", "cgroup", "cpufreq"]
    assert results[0].errors == ("RuntimeError: a bug",)
    assert results[1].verified  # the others still applied
    report = actuators.telemetry()
    assert report["broken"]["errors"] == 1 and report["cgroup"]["writes"] == 1
    assert report["cpufreq"]["last_error"] is not None and report["in_force"] is False


def test_build_actuators_from_the_config(tmp_path: Path) -> None:
    path = make_slice(tmp_path)
    policy = make_policy(tmp_path, 0, 115_200, 1_510_400, ORIN_FREQS)
    conf = tmp_path / "nvpmodel.conf"
    conf.write_text(ORIN_NANO_CONF)
    board = FakeNvpmodel(ORIN_NANO_CONF, mode=2)
    config = ActuatorConfig(cgroup=True, cpufreq=True, nvpmodel=True, sysfs_root=tmp_path,
                            nvpmodel_conf=conf)
    pool = make_pool()
    actuators = build_actuators(config, pool=pool, board=load_board("jetson-orin-nano"),
                                runner=board)
    assert [a.name for a in actuators.actuators] == ["workers", "nvpmodel", "cpufreq", "cgroup"]
    results = actuators.apply(decision(workers=2, power_mode_w=7.0, cpufreq_max_pct=100,
                                       cpu_max=1.0))
    assert all(r.verified for r in results), results
    assert pool.workers == 2 and board.mode == 3
    # 100 % of the hardware, but not above the 7 W mode's own CPU cap
    assert (policy / "scaling_max_freq").read_text() == "960000"
    assert (path / "cpu.max").read_text() == "100000 100000"
    assert actuators.telemetry()["in_force"] is True

    # the governor leaves the mode alone: a cpufreq cap still stays under the mode's own
    board.mode = 3
    (policy / "scaling_max_freq").write_text("960000")  # as nvpmodel set it
    config = ActuatorConfig(cpufreq=True, nvpmodel=True, sysfs_root=tmp_path, nvpmodel_conf=conf)
    results = build_actuators(config, runner=board).apply(decision(cpufreq_max_pct=100))
    assert all(r.ok and r.writes == () for r in results)

    nothing = build_actuators(ActuatorConfig())
    assert nothing.actuators == [] and nothing.apply(decision()) == []


def test_config_keys_for_the_actuators() -> None:
    config = parse_config('[actuators]\ncgroup = true\ndry_run = true\nmin_interval_s = 10\n'
                          'cgroup_slice = "workloads.slice"\n'
                          'nvpmodel_command = ["sudo", "-n", "nvpmodel"]\n')
    assert config.actuators.dry_run and config.actuators.min_interval_s == 10
    assert config.actuators.nvpmodel_command == ["sudo", "-n", "nvpmodel"]
    assert not parse_config("").actuators.nvpmodel
    for bad in ('cgroup_slice = "/sys/fs/cgroup/x"', 'cgroup_slice = "../x"',
                "min_interval_s = -1", "nvpmodel_command = []"):
        with pytest.raises(ConfigError) as caught:
            parse_config(f"[actuators]\n{bad}\n")
        assert caught.value.issues[0].path.startswith("actuators.")
