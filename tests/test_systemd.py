"""The files in systemd/: the unit verifies without a word and scores "OK" (<= 3.0) on
systemd-analyze's exposure scale; sysusers, tmpfiles and udev files do what they claim, run
by the real systemd tools into temporary roots (research/edge-agent-mqtt.md §6.3)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgeagent.config import ActuatorConfig
from edgeagent.install import CONFIG_PATH, UNIT_EXEC

SYSTEMD = Path(__file__).resolve().parent.parent / "systemd"
UNIT = SYSTEMD / "edgeagent.service"
KNOBS = ("sys/devices/system/cpu/cpufreq/policy0/scaling_max_freq",
         "sys/devices/system/cpu/cpufreq/policy4/scaling_max_freq",
         "sys/class/rtc/rtc0/wakealarm",
         f"sys/fs/cgroup/{ActuatorConfig().cgroup_slice}/cpu.max",
         f"sys/fs/cgroup/{ActuatorConfig().cgroup_slice}/cgroup.freeze")


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


def unit_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart on a program that exists here (verify insists), slice beside."""
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace(UNIT_EXEC, f"{sys.executable} -m edgeagent"))
    shutil.copy(SYSTEMD / "edgeagent-workloads.slice", tmp_path)
    return copy


def directives(unit: str) -> list[tuple[str, str]]:
    return [(k, v) for k, _, v in (line.partition("=") for line in unit.splitlines()
                                   if line and line[0].isalpha())]


def test_the_unit_verifies_without_a_word(tmp_path: Path) -> None:
    result = subprocess.run([tool("systemd-analyze"), "verify", str(unit_copy(tmp_path))],
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_the_unit_scores_ok_on_exposure(tmp_path: Path) -> None:
    result = subprocess.run([tool("systemd-analyze"), "security", "--offline=true",
                             "--threshold=30", str(unit_copy(tmp_path))],
                            capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for edgeagent.service: ([0-9.]+) (\w+)",
                      result.stdout)
    assert found is not None, result.stdout + result.stderr
    assert float(found[1]) <= 3.0 and found[2] == "OK"
    assert result.returncode == 0


def test_the_unit_runs_the_agent_unprivileged_as_a_notify_service_with_a_watchdog() -> None:
    unit = dict(directives(UNIT.read_text()))
    assert unit["Type"] == "notify" and unit["User"] == "edgeagent"
    assert unit["ExecStart"] == f"{UNIT_EXEC} run --config {CONFIG_PATH}"
    assert unit["ConfigurationDirectory"] == CONFIG_PATH.parent.name == "edgeagent"
    assert unit["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert "dialout" in unit["SupplementaryGroups"].split()
    assert unit["WatchdogSec"] == "30s" and unit["Restart"] == "on-failure"
    assert "PrivateDevices" not in unit  # it would hide the serial ports
    # Root only for the one privileged step, marked with "+": granting the knobs.
    assert [v for k, v in directives(UNIT.read_text()) if k.startswith("Exec")
            and v.startswith("+")] == ["+/usr/bin/systemd-tmpfiles --create edgeagent.conf"]


def test_the_unit_lets_the_agent_write_exactly_the_knobs_tmpfiles_grants() -> None:
    writable = [v.lstrip("-") for k, v in directives(UNIT.read_text()) if k == "ReadWritePaths"]
    granted = [line.split()[1] for line in (SYSTEMD / "edgeagent.tmpfiles").read_text()
               .splitlines() if line.startswith("z ")]
    assert {str(Path(g).parent).replace("/policy*", "") for g in granted} == set(writable)


def test_sysusers_makes_a_system_user_without_a_login(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    subprocess.run([tool("systemd-sysusers"), f"--root={tmp_path}",
                    str(SYSTEMD / "edgeagent.sysusers")], check=True, capture_output=True)
    user = next(line.split(":") for line in (tmp_path / "etc/passwd").read_text().splitlines()
                if line.startswith("edgeagent:"))
    assert int(user[2]) < 1000 and user[5:] == ["/var/lib/edgeagent", "/usr/sbin/nologin"]


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's group needs root")
def test_tmpfiles_gives_group_edgeagent_write_access_to_the_knobs(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/group").write_text("edgeagent:x:990:\n")
    for knob in KNOBS:
        (tmp_path / knob).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / knob).write_text("0\n")
        (tmp_path / knob).chmod(0o644)
    subprocess.run([tool("systemd-tmpfiles"), f"--root={tmp_path}", "--create",
                    str(SYSTEMD / "edgeagent.tmpfiles")], check=True, capture_output=True)
    for knob in KNOBS:
        st = (tmp_path / knob).stat()
        assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o664, 0, 990), knob


def test_udev_rules_name_the_adapters_under_dev_edgeagent_for_group_dialout() -> None:
    pair = r'[A-Z_]+(\{[a-zA-Z_]+\})?\s*(==|!=|\+=|=)\s*"[^"]*"'
    rules = [line for line in (SYSTEMD / "70-edgeagent-serial.rules").read_text().splitlines()
             if line and not line.startswith("#")]
    for line in rules:
        assert re.fullmatch(rf"{pair}(\s*,\s*{pair})*", line), line
    named = [line for line in rules if "SYMLINK+=" in line]
    assert len(named) == 4
    assert all('SYMLINK+="edgeagent/' in line and 'GROUP="dialout"' in line for line in named)


def test_every_sysfs_exception_may_be_missing_on_a_board() -> None:
    """A ReadWritePaths= path that does not exist fails the unit's start (226/NAMESPACE)
    unless prefixed with "-": no RTC, no cpufreq driver, the slice not realized yet."""
    writable = [v for k, v in directives(UNIT.read_text()) if k == "ReadWritePaths"]
    assert writable and all(v.startswith("-/sys/") for v in writable)


def test_the_workloads_slice_has_the_cpu_controller_so_it_has_a_cpu_max() -> None:
    """CPUAccounting=yes alone no longer enables the cpu controller (kernel >= 4.15): without
    an explicit CPU setting the slice has no cpu.max for the cgroup actuator to write."""
    slice_ = dict(directives((SYSTEMD / "edgeagent-workloads.slice").read_text()))
    assert {"CPUWeight", "StartupCPUWeight", "CPUQuota"} & slice_.keys()


def test_the_device_list_covers_the_boards_serial_ports() -> None:
    allowed = {v.split()[0] for k, v in directives(UNIT.read_text()) if k == "DeviceAllow"}
    # USB adapters (FTDI, CP210x, CH340; CDC-ACM), Pi UARTs (PL011, mini UART), Jetson UARTs.
    assert {"char-ttyUSB", "char-ttyACM", "char-ttyAMA", "char-ttyS", "char-ttyTHS"} <= allowed
    assert dict(directives(UNIT.read_text()))["DevicePolicy"] == "closed"
