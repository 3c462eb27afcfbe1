"""Raspberry Pi under-voltage and throttling flags: the firmware's ``get_throttled`` bit field.

Bits 0-3 say what is true now (under-voltage, ARM frequency capped, throttled, soft temperature
limit), bits 16-19 that the same has occurred since boot. Under-voltage now means the supply
sags under the board's load (a long or thin cable, a converter at its limit, a battery at its
knee): the governor sheds work while it lasts (``SiteState.under_voltage``). The kernel exposes
the field in sysfs on current Raspberry Pi OS kernels (no process to start, no ``/dev/vcio``);
elsewhere ``vcgencmd get_throttled`` prints it (``throttled=0x50005``).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SYSFS = "sys/devices/platform/soc/soc:firmware/get_throttled"
VCGENCMD = ("vcgencmd", "get_throttled")
FLAGS = ("under_voltage", "arm_freq_capped", "throttled", "soft_temp_limit")  # bits 0-3
OCCURRED_SHIFT = 16

Runner = Callable[[Sequence[str]], str]


@dataclass(frozen=True)
class Throttled:
    """One reading of the bit field."""

    bits: int

    def now(self, flag: str) -> bool:
        return bool(self.bits >> FLAGS.index(flag) & 1)

    def occurred(self, flag: str) -> bool:
        return bool(self.bits >> (OCCURRED_SHIFT + FLAGS.index(flag)) & 1)

    @property
    def under_voltage(self) -> bool:
        return self.now("under_voltage")

    def telemetry(self) -> dict[str, Any]:
        return {"bits": hex(self.bits), "now": [f for f in FLAGS if self.now(f)],
                "occurred": [f for f in FLAGS if self.occurred(f)]}


def parse_throttled(text: str) -> Throttled:
    """``throttled=0x50005`` (vcgencmd) or ``50005`` (sysfs, hex without a prefix)."""
    value = text.strip().rpartition("=")[2]
    return Throttled(int(value, 16))


def run_command(args: Sequence[str]) -> str:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=5,
                          check=True).stdout


class ThrottleSensor:
    """Reads the flags when asked; a failure is counted and makes them unknown, never raises."""

    def __init__(self, read: Callable[[], str], source: str) -> None:
        self._read = read
        self.source = source
        self.latest: Throttled | None = None
        self.errors = 0
        self.last_error: str | None = None

    @classmethod
    def find(cls, root: Path = Path("/"), runner: Runner = run_command
             ) -> ThrottleSensor | None:
        """The sysfs file under ``root`` if the kernel has it, else ``vcgencmd`` if it is on
        the PATH; None on a board that has neither (not a Raspberry Pi)."""
        path = root / SYSFS
        if path.is_file():
            return cls(path.read_text, f"/{SYSFS}")
        if shutil.which(VCGENCMD[0]) is not None:
            return cls(lambda: runner(VCGENCMD), " ".join(VCGENCMD))
        return None

    def read(self) -> Throttled | None:
        try:
            self.latest = parse_throttled(self._read())
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            self.latest = None
        return self.latest

    def telemetry(self) -> dict[str, Any]:
        """The ``throttle`` section of the agent's telemetry."""
        latest = None if self.latest is None else self.latest.telemetry()
        return {"source": self.source, **(latest or {"bits": None}), "errors": self.errors,
                "last_error": self.last_error}
