"""Which board profile fits this machine, for ``site.board = "auto"`` (the default).

The device tree's ``compatible`` (NUL-separated, most specific first) is the firmware's own word
for the board, so it decides: its first entry that a profile lists (``[detect]`` in
``boards/*.toml``) picks that profile. ``model`` is the board's human name, only reported.
A Jetson whose device tree is hidden (a container) still has ``/etc/nv_tegra_release``, whose
L4T major release tells a Nano (R32) from an Orin (R35, R36). Anything else (a laptop, CI, an
unknown board) gets ``FALLBACK_BOARD`` and says so: the agent runs, with a board's power figures
that may be wrong, rather than refusing to start.
"""

from __future__ import annotations

import platform
import re
from dataclasses import dataclass
from pathlib import Path

from edgeagent.boards import available_boards, load_board

AUTO = "auto"
FALLBACK_BOARD = "raspberry-pi-4"
DEVICE_TREES = ("proc/device-tree", "sys/firmware/devicetree/base")
L4T_RELEASE = "etc/nv_tegra_release"
_L4T_MAJOR = re.compile(rb"#\s*R(\d+)\s*\(release\)")


@dataclass(frozen=True)
class Detection:
    """The profile to use and what chose it."""

    board: str
    detected: bool  # False: nothing known was found, ``board`` is the fallback
    evidence: str

    def describe(self) -> str:
        """One log line."""
        if self.detected:
            return f"board {self.board}: from {self.evidence}"
        return (f"board {self.board}: no known board detected ({self.evidence}); using the "
                f"{self.board} profile, set site.board to choose another")


def detect_board(root: Path = Path("/")) -> Detection:
    """The profile for the machine whose file system is at ``root``."""
    model, compatible = _device_tree(root)
    profiles = [load_board(name) for name in available_boards()]
    for entry in compatible:
        for profile in profiles:
            if entry in profile.detect.compatible:
                named = f" ({model})" if model else ""
                return Detection(profile.name, True, f"device tree {entry!r}{named}")
    release = _l4t_major(root)
    if release is not None:
        for profile in profiles:
            if release in profile.detect.l4t_releases:
                return Detection(profile.name, True, f"/{L4T_RELEASE}: L4T R{release}")
    seen = model or (compatible[0] if compatible else
                     f"{platform.machine()}, no device tree"
                     + ("" if release is None else f", L4T R{release}"))
    return Detection(FALLBACK_BOARD, False, seen)


def _device_tree(root: Path) -> tuple[str | None, list[str]]:
    """The device tree's ``model`` and ``compatible`` entries, from the first place it is."""
    for where in DEVICE_TREES:
        base = root / where
        compatible = _strings(base / "compatible")
        model = _strings(base / "model")
        if compatible or model:
            return (model[0] if model else None), compatible
    return None, []


def _strings(path: Path) -> list[str]:
    """A device-tree property: NUL-terminated strings (none when the file is unreadable)."""
    try:
        data = path.read_bytes()
    except OSError:
        return []
    return [s.decode("ascii", "replace").strip() for s in data.split(b"\0") if s.strip()]


def _l4t_major(root: Path) -> int | None:
    """The L4T major release, from a first line like ``# R32 (release), REVISION: 7.1, ...``."""
    try:
        found = _L4T_MAJOR.search((root / L4T_RELEASE).read_bytes())
    except OSError:
        return None
    return int(found.group(1)) if found else None
