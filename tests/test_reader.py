"""The serial reader on real pseudo-terminals: readings arrive, garbage and unplugging don't
stop it, and stale data is reported as stale."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import tty
from collections.abc import Callable
from pathlib import Path

from edgeagent.power.reader import SerialReader
from edgeagent.power.vedirect import encode_block

BLOCK = encode_block([("PID", "0xA389"), ("V", "13100"), ("I", "-500"), ("SOC", "650")])


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


def test_readings_arrive_over_a_pty_despite_garbage() -> None:
    master, slave = os.openpty()
    tty.setraw(slave)
    reader = SerialReader(os.ttyname(slave))
    reader.start()
    try:
        for i in range(8):
            os.write(master, (b"\x00\xff garbage \x80" if i % 4 == 0 else b"") + BLOCK)
            time.sleep(0.05)
        wait_until(lambda: reader.stats.blocks_ok >= 3)
        assert reader.latest is not None
        assert reader.latest.battery_soc_pct == 65.0
        assert not reader.stale(time.monotonic(), 5.0)
    finally:
        reader.stop()
        os.close(master)
        os.close(slave)


def test_a_missing_port_is_retried_not_raised() -> None:
    reader = SerialReader("/dev/does-not-exist", min_backoff_s=0.01, max_backoff_s=0.05)
    reader.start()
    try:
        wait_until(lambda: reader.reopens >= 3)
        assert reader.latest is None and reader.stale(time.monotonic(), 5.0)
        assert reader.last_error
    finally:
        reader.stop()


def socat_pty_pair(directory: Path) -> subprocess.Popen[bytes]:
    socat = shutil.which("socat")
    assert socat, "socat is needed for the unplug test (Debian package socat)"
    proc = subprocess.Popen([socat, f"pty,raw,echo=0,link={directory}/dev",
                             f"pty,raw,echo=0,link={directory}/host"])
    wait_until(lambda: (directory / "dev").exists() and (directory / "host").exists())
    return proc


def test_an_unplugged_device_is_reopened_when_it_comes_back(tmp_path: Path) -> None:
    proc = socat_pty_pair(tmp_path)
    reader = SerialReader(str(tmp_path / "host"), min_backoff_s=0.05, max_backoff_s=0.2)
    reader.start()
    try:
        with open(tmp_path / "dev", "wb", buffering=0) as dev:
            wait_until(lambda: (dev.write(BLOCK), reader.stats.blocks_ok > 0)[1])
        proc.terminate()  # unplug: both ends vanish
        proc.wait()
        wait_until(lambda: reader.reopens >= 1)
        seen = reader.stats.blocks_ok
        time.sleep(0.3)
        assert reader.stale(time.monotonic(), 0.2)  # no fresh data: stale, not "last value"
        proc = socat_pty_pair(tmp_path)  # plugged in again, same stable name
        with open(tmp_path / "dev", "wb", buffering=0) as dev:
            wait_until(lambda: (dev.write(BLOCK), reader.stats.blocks_ok > seen)[1])
        assert not reader.stale(time.monotonic(), 5.0)
    finally:
        reader.stop()
        proc.terminate()
        proc.wait()
