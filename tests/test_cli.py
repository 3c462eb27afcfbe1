"""The command line answers like a tool: version, help, and clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import edgeagent_command
from edgeagent import __version__


def test_version_from_the_module_and_the_console_script() -> None:
    out = subprocess.run([sys.executable, "-m", "edgeagent", "--version"], cwd="/",
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"edgeagent {__version__}"
    exe = Path(sys.executable).parent / "edgeagent"
    assert exe.exists(), "the console script is installed with the package"
    assert subprocess.run([str(exe), "--version"], capture_output=True, text=True,
                          check=True).stdout.strip() == f"edgeagent {__version__}"


def test_help_lists_the_commands() -> None:
    out = subprocess.run([*edgeagent_command(), "--help"], capture_output=True,
                         text=True, check=True).stdout
    for command in ("demo", "run", "config", "read", "decode", "probe"):
        assert command in out


def test_config_check_and_the_fleet_viewer_do_not_load_the_inference_runtime() -> None:
    """An operator's laptop or a board's shell: checking a config or watching the fleet needs
    neither onnxruntime nor NumPy (20 + 15 MB and seconds of start-up on a Pi)."""
    probe = ("import sys, edgeagent.cli, edgeagent.config, edgeagent.telemetry.fleet; "
             "print(sorted(m for m in ('onnxruntime', 'numpy', 'ai_edge_litert') "
             "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], cwd="/", capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[]"
