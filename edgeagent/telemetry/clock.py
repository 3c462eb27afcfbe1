"""Timestamps that stay honest on boards without a real-time clock.

A Raspberry Pi boots with the wall clock wherever fake-hwclock left it, and NTP may jump it
hours later. So every telemetry message carries, beside the wall ``ts``, the monotonic
``mono`` (CLOCK_BOOTTIME: it counts suspend too and never jumps), the kernel's ``boot_id``
(mono is comparable within one boot) and ``clock_synced``, false until the clock is synced: a
receiver re-bases unsynced ``ts`` from ``mono`` and a later synced message of the same boot.

Synced means what ``timedatectl`` shows: the kernel's NTP state from ``adjtimex`` (any NTP
daemon that disciplines the kernel clears STA_UNSYNC: chrony, ntpd, systemd-timesyncd), or
systemd-timesyncd's flag file ``/run/systemd/timesync/synchronized``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TIME_ERROR = 5  # adjtimex(2): the clock is not synchronized (STA_UNSYNC or a clock error)
SYNC_FLAG = "run/systemd/timesync/synchronized"
BOOT_ID = "proc/sys/kernel/random/boot_id"


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def kernel_synced() -> bool | None:
    """The kernel's view through ``adjtimex`` (read only: modes 0); None if unavailable."""
    try:
        libc = _libc()
        timex = ctypes.create_string_buffer(512)  # larger than struct timex; modes = 0
        state = int(libc.adjtimex(timex))
    except (OSError, AttributeError):
        return None
    return None if state < 0 else state != TIME_ERROR


class Clock:
    def __init__(self, root: Path = Path("/"),
                 kernel: Callable[[], bool | None] = kernel_synced) -> None:
        """``root`` holds ``proc/`` and ``run/`` (a temporary tree in tests); ``kernel`` asks
        the kernel (tests pass their own answer)."""
        self.root = root
        self.kernel = kernel
        try:
            self.boot_id: str | None = (root / BOOT_ID).read_text().strip()
        except OSError:
            self.boot_id = None

    def synced(self) -> bool:
        return (self.root / SYNC_FLAG).exists() or self.kernel() is True

    def stamp(self) -> dict[str, Any]:
        """The time fields of a telemetry message."""
        return {"ts": time.time(), "mono": round(time.clock_gettime(time.CLOCK_BOOTTIME), 6),
                "boot_id": self.boot_id, "clock_synced": self.synced()}
