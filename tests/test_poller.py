"""The polled reader: missed answers are counted, a vanished port is reopened, nothing raises."""

from __future__ import annotations

import time

from edgeagent.power.poller import PolledReader, Poller, PollError
from edgeagent.power.reading import Reading
from test_reader import wait_until


class FlakyDevice:
    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.calls = 0

    def poll(self) -> Reading:
        self.calls += 1
        if self.calls % 2 == 0:
            raise PollError("no answer")
        if self.calls >= 5:
            raise OSError("device reports readiness to read but returned no data")
        return Reading(ts=time.time(), driver="jbd", battery_soc_pct=50.0)

    def close(self) -> None:
        self.log.append("closed")


def test_missed_answers_count_and_a_vanished_port_is_reopened() -> None:
    log: list[str] = []
    opened = 0

    def open_device() -> Poller:
        nonlocal opened
        opened += 1
        if opened == 2:
            raise OSError("No such file or directory: '/dev/ttyUSB0'")  # unplugged for a while
        return FlakyDevice(log)

    reader = PolledReader(open_device, name="bms", interval_s=0.01, max_backoff_s=0.05)
    reader.start()
    try:
        wait_until(lambda: reader.reopens >= 2 and reader.polls_ok >= 4, timeout=10)
    finally:
        reader.stop()
    assert reader.polls_failed >= 2
    assert reader.latest is not None and reader.latest.battery_soc_pct == 50.0
    assert "closed" in log  # the old port is closed before reopening
    assert reader.counters()["reopens"] == reader.reopens
