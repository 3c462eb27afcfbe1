"""``edgeagent install-service`` into a temporary root, as a user runs it: every file in place
with its mode, the unit's ExecStart on this environment's edgeagent, idempotent, the
operator's config never overwritten."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import edgeagent_command
from edgeagent.install import CONFIG_PATH, ITEMS

MODES = {"etc/systemd/system/edgeagent.service": 0o644,
         "etc/systemd/system/edgeagent-workloads.slice": 0o644,
         "etc/sysusers.d/edgeagent.conf": 0o644,
         "etc/tmpfiles.d/edgeagent.conf": 0o644,
         "etc/udev/rules.d/70-edgeagent-serial.rules": 0o644,
         "etc/polkit-1/rules.d/50-edgeagent.rules": 0o644,
         "etc/polkit-1/localauthority/50-local.d/50-edgeagent.pkla": 0o644,
         "etc/edgeagent/edgeagent.toml": 0o640}


def install(root: Path, *args: str) -> str:
    result = subprocess.run([*edgeagent_command(), "install-service", "--root", str(root),
                             *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def files(root: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(root)): (p.stat().st_mode & 0o7777, p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_an_install_puts_every_file_in_place_and_a_second_changes_nothing(
        tmp_path: Path) -> None:
    first = install(tmp_path)
    assert {k: mode for k, (mode, _) in files(tmp_path).items()} == MODES
    assert first.count("  install  ") == len(ITEMS) and "systemctl enable --now" in first
    before = files(tmp_path)
    second = install(tmp_path)
    assert "nothing to do: everything is installed" in second and "  install" not in second
    assert files(tmp_path) == before


def test_the_unit_starts_the_installing_environments_edgeagent(tmp_path: Path) -> None:
    install(tmp_path)
    unit = (tmp_path / "etc/systemd/system/edgeagent.service").read_text()
    script = Path(sys.executable).parent / "edgeagent"
    assert f"\nExecStart={script} run --config {CONFIG_PATH}\n" in unit
    analyze = shutil.which("systemd-analyze")
    if analyze is not None:  # the path exists, so the installed unit verifies as it is
        result = subprocess.run([analyze, "verify", str(tmp_path / "etc/systemd/system/"
                                                        "edgeagent.service")],
                                capture_output=True, text=True, timeout=60)
        assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_venv_names_the_environment_the_unit_runs(tmp_path: Path) -> None:
    install(tmp_path, "--venv", "/opt/site/venv")
    unit = (tmp_path / "etc/systemd/system/edgeagent.service").read_text()
    assert f"\nExecStart=/opt/site/venv/bin/edgeagent run --config {CONFIG_PATH}\n" in unit


def test_the_operators_config_is_never_overwritten_and_a_changed_file_is_restored(
        tmp_path: Path) -> None:
    config = tmp_path / "etc/edgeagent/edgeagent.toml"
    config.parent.mkdir(parents=True)
    config.write_text("[site]\nid = 'mine'\n")
    rules = tmp_path / "etc/udev/rules.d/70-edgeagent-serial.rules"
    install(tmp_path)
    rules.write_text("# edited\n")
    out = install(tmp_path)
    assert config.read_text() == "[site]\nid = 'mine'\n" and "(yours: kept)" in out
    assert f"  update  {rules}" in out and rules.read_text() != "# edited\n"


def test_a_dry_run_writes_nothing(tmp_path: Path) -> None:
    out = install(tmp_path, "--dry-run")
    assert out.count("would install") == len(ITEMS)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's group needs root")
def test_the_config_belongs_to_the_services_group_once_it_exists(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/group").write_text("dialout:x:20:\nedgeagent:x:990:\n")
    install(tmp_path)
    assert (tmp_path / "etc/edgeagent/edgeagent.toml").stat().st_gid == 990
    assert "nothing to do" in install(tmp_path)


def test_a_venv_path_with_a_space_or_percent_is_quoted_so_the_unit_still_verifies(
        tmp_path: Path) -> None:
    venv = tmp_path / "opt" / "edge agent 100%"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "edgeagent").write_text("#!/bin/sh\n")
    (venv / "bin" / "edgeagent").chmod(0o755)
    root = tmp_path / "root"
    install(root, "--venv", str(venv))
    unit = (root / "etc/systemd/system/edgeagent.service").read_text()
    quoted = '"' + str(venv).replace("%", "%%") + '/bin/edgeagent"'
    assert f"\nExecStart={quoted} run --config {CONFIG_PATH}\n" in unit
    analyze = shutil.which("systemd-analyze")
    if analyze is not None:  # unquoted, systemd took "/…/edge" as the program: not executable
        result = subprocess.run([analyze, "verify", str(root / "etc/systemd/system/"
                                                        "edgeagent.service")],
                                capture_output=True, text=True, timeout=60)
        assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_an_agent_the_sandbox_hides_is_warned_about(tmp_path: Path) -> None:
    """ProtectHome=yes and PrivateTmp=yes hide /home, /root and /tmp from the service: a venv
    there (a Pi user's ~/venv) gives a unit that fails with 203/EXEC."""
    result = subprocess.run([*edgeagent_command(), "install-service", "--root", str(tmp_path),
                             "--venv", "/home/pi/venv"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0
    assert "warning: /home/pi/venv/bin/edgeagent is under /home" in result.stderr
    fine = subprocess.run([*edgeagent_command(), "install-service", "--root", str(tmp_path),
                           "--venv", "/opt/edgeagent"], capture_output=True, text=True,
                          timeout=60)
    assert "warning" not in fine.stderr
