"""The serial reader on real pseudo-terminals: readings arrive, garbage and unplugging don't
stop it, and stale data is reported as stale."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import tty
from collections.abc import Callable, Iterator
from pathlib import Path

from edgeagent.power.reader import SerialReader
from edgeagent.power.reading import Reading
from edgeagent.power.vedirect import encode_block

BLOCK = encode_block([("PID", "0xA389"), ("V", "13100"), ("I", "-500"), ("SOC", "650")])


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


def pty_pair() -> tuple[int, int, str]:
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)  # a reader that is not reading must not hang the test
    return master, slave, os.ttyname(slave)


def write(master: int, data: bytes) -> None:
    with contextlib.suppress(BlockingIOError):  # pty buffer full: like a UART, bytes are lost
        os.write(master, data)


@contextlib.contextmanager
def running(reader: SerialReader) -> Iterator[SerialReader]:
    reader.start()
    try:
        yield reader
    finally:
        reader.stop()
        assert not reader.running


def feed_until(master: int, condition: Callable[[], bool], data: bytes = BLOCK) -> None:
    """Write blocks like a device does (one every 20 ms here) until ``condition`` holds."""
    def wrote_and_holds() -> bool:
        write(master, data)
        return condition()

    wait_until(wrote_and_holds)


def test_readings_arrive_over_a_pty_despite_garbage() -> None:
    master, slave, name = pty_pair()
    got: list[Reading] = []
    try:
        with running(SerialReader(name, on_reading=got.append)) as reader:
            for i in range(8):
                write(master, (b"\x00\xff garbage \x80" if i % 4 == 0 else b"") + BLOCK)
                time.sleep(0.05)
            wait_until(lambda: reader.stats.blocks_ok >= 3)
            assert reader.latest is not None
            assert reader.latest.battery_soc_pct == 65.0
            assert reader.latest.device_id == name  # a SmartShunt has no SER#: the port names it
            assert not reader.stale(time.monotonic(), 5.0)
            assert reader.stats.corrupt >= 1 and reader.connected and reader.opens == 1
            assert got and got[-1] == reader.latest
    finally:
        os.close(master)
        os.close(slave)


def test_staleness_and_timestamps_follow_the_injected_clocks() -> None:
    master, slave, name = pty_pair()
    try:
        reader = SerialReader(name, clock=lambda: 100.0, wall_clock=lambda: 1.7e9)
        assert reader.stale(0.0, 5.0)  # nothing valid yet: stale, whatever the time
        with running(reader):
            feed_until(master, lambda: reader.latest is not None)
            assert reader.last_valid_monotonic == 100.0
            assert reader.latest is not None and reader.latest.ts == 1.7e9
            assert not reader.stale(104.9, 5.0)
            assert reader.stale(105.1, 5.0)
    finally:
        os.close(master)
        os.close(slave)


def test_a_failing_callback_does_not_stop_the_reader() -> None:
    master, slave, name = pty_pair()

    def broken(reading: Reading) -> None:
        raise RuntimeError("bug in the caller")

    try:
        with running(SerialReader(name, on_reading=broken)) as reader:
            feed_until(master, lambda: reader.callback_errors >= 3)
            assert reader.stats.blocks_ok >= 3 and reader.reopens == 0
    finally:
        os.close(master)
        os.close(slave)


def test_an_exclusive_port_is_not_shared_with_a_second_reader() -> None:
    master, slave, name = pty_pair()
    try:
        with running(SerialReader(name)) as first:
            wait_until(lambda: first.connected)
            second = SerialReader(name, min_backoff_s=0.01, max_backoff_s=0.05)
            with running(second):
                wait_until(lambda: second.reopens >= 2)
                assert second.opens == 0 and "lock" in (second.last_error or "")
                feed_until(master, lambda: first.latest is not None)
            assert second.latest is None
    finally:
        os.close(master)
        os.close(slave)


def test_a_missing_port_is_retried_not_raised() -> None:
    with running(SerialReader("/dev/does-not-exist", min_backoff_s=0.01,
                              max_backoff_s=0.05)) as reader:
        wait_until(lambda: reader.reopens >= 3)
        assert reader.latest is None and reader.stale(time.monotonic(), 5.0)
        assert reader.last_error and not reader.connected


def test_closing_the_master_is_an_unplug_and_a_new_pty_behind_the_name_is_a_replug(
        tmp_path: Path) -> None:
    """Like /dev/serial/by-id/...: a stable symlink that udev points at the new device."""
    link = tmp_path / "ttyVE"
    master, slave, name = pty_pair()
    link.symlink_to(name)
    reader = SerialReader(str(link), min_backoff_s=0.02, max_backoff_s=0.1)
    with running(reader):
        feed_until(master, lambda: reader.stats.blocks_ok > 0)
        os.close(master)  # unplugged: the kernel removes the slave's device node
        os.close(slave)
        wait_until(lambda: reader.reopens >= 2 and not reader.connected)
        seen = reader.stats.blocks_ok
        assert reader.running
        master, slave, name = pty_pair()
        try:
            tmp_link = tmp_path / "ttyVE.new"
            tmp_link.symlink_to(name)
            os.replace(tmp_link, link)  # replugged
            feed_until(master, lambda: reader.stats.blocks_ok > seen)
            assert reader.opens >= 2 and reader.connected
            assert not reader.stale(time.monotonic(), 5.0)
        finally:
            os.close(master)
            os.close(slave)


def socat_pty_pair(directory: Path) -> subprocess.Popen[bytes]:
    socat = shutil.which("socat")
    assert socat, "socat is needed for the unplug test (Debian package socat)"
    for name in ("dev", "host"):  # a killed socat leaves its links behind
        (directory / name).unlink(missing_ok=True)
    proc = subprocess.Popen([socat, f"pty,raw,echo=0,link={directory}/dev",
                             f"pty,raw,echo=0,link={directory}/host"])
    wait_until(lambda: (directory / "dev").exists() and (directory / "host").exists())
    return proc


@contextlib.contextmanager
def device_end(path: Path) -> Iterator[int]:
    """The device's side of the line. O_NOCTTY: never become the test's controlling terminal
    (killing socat would hang it up); O_NONBLOCK: a stuck line must not hang the test."""
    fd = os.open(path, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        yield fd
    finally:
        os.close(fd)


def unplug(proc: subprocess.Popen[bytes]) -> None:
    """Both ends vanish at once. SIGKILL, not SIGTERM: a terminating socat may take seconds to
    drain and restore its ptys, and a real unplug gives no notice either."""
    proc.kill()
    proc.wait(timeout=10)


def test_an_unplugged_device_is_reopened_when_it_comes_back(tmp_path: Path) -> None:
    proc = socat_pty_pair(tmp_path)
    reader = SerialReader(str(tmp_path / "host"), min_backoff_s=0.05, max_backoff_s=0.2)
    try:
        with running(reader):
            with device_end(tmp_path / "dev") as dev:
                feed_until(dev, lambda: reader.stats.blocks_ok > 0)
            unplug(proc)
            wait_until(lambda: reader.reopens >= 1 and not reader.connected)
            seen = reader.stats.blocks_ok
            time.sleep(0.3)
            assert reader.stale(time.monotonic(), 0.2)  # no fresh data: stale, not "last value"
            assert reader.running
            proc = socat_pty_pair(tmp_path)  # plugged in again, same stable name
            with device_end(tmp_path / "dev") as dev:
                feed_until(dev, lambda: reader.stats.blocks_ok > seen)
            assert not reader.stale(time.monotonic(), 5.0) and reader.opens >= 2
    finally:
        unplug(proc)
