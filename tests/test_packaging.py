"""Installing without a C compiler still works and falls back to the NumPy kernels."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_install_without_a_compiler_succeeds_and_uses_the_fallback(tmp_path: Path) -> None:
    # A clean copy: an in-tree build/ with an earlier .so would be reused, not rebuilt.
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", "*.so", "*.c"))
    target = tmp_path / "site"
    env = {**os.environ, "CC": "false", "CXX": "false"}
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-cache-dir", "--target", str(target), str(source)],
        env=env, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    assert not list(target.glob("edgeagent/kernels/_compiled*.so"))
    probe = subprocess.run(
        [sys.executable, "-c",
         "import edgeagent.kernels as k, edgeagent.boards as b; "
         "print(k.COMPILED, k.quantize([0.5, 1e9], 0.5, 3).tolist(), len(b.available_boards()))"],
        env={**os.environ, "PYTHONPATH": str(target), "EDGEAGENT_PURE_KERNELS": ""},
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == ["False", "[4,", "127]", "4"]
