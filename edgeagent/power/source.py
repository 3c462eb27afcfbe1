"""What the agent needs from a power device, and the identity check that can sit in front of it.

``PowerSource`` is the one small interface every device input has (like a Telegraf input
plugin): the streaming ``SerialReader`` and the ``PolledReader`` both fit it. ``PinnedSource``
wraps one so that only the device the operator named is believed: serial ports get swapped,
and a reading from the wrong battery is worse than none.
"""

from __future__ import annotations

from typing import Protocol

from edgeagent.power.reading import Reading


class PowerSource(Protocol):
    """Started and stopped with the agent; offers its latest reading, when that was valid, and
    its health counters."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    @property
    def latest(self) -> Reading | None: ...

    @property
    def last_valid_monotonic(self) -> float | None: ...

    @property
    def name(self) -> str: ...

    @property
    def running(self) -> bool: ...

    def counters(self) -> dict[str, int]: ...


class PinnedSource:
    """A source that is trusted only while the device on its port is the expected one.

    ``device_id`` is the device's own serial number as its reading reports it (VE.Direct
    ``SER#``, a Renogy's serial register). A reading from any other device is withheld: the
    agent sees no reading, so the data turns stale and the governor takes its safe decision,
    and ``counters()["wrong_device"]`` is 1 while that lasts.
    """

    def __init__(self, source: PowerSource, device_id: str) -> None:
        self.source = source
        self.device_id = device_id

    @property
    def name(self) -> str:
        return self.source.name

    def start(self) -> None:
        self.source.start()

    def stop(self) -> None:
        self.source.stop()

    @property
    def running(self) -> bool:
        return self.source.running

    def _wrong_device(self) -> bool:
        latest = self.source.latest
        return latest is not None and latest.device_id != self.device_id

    @property
    def latest(self) -> Reading | None:
        return None if self._wrong_device() else self.source.latest

    @property
    def last_valid_monotonic(self) -> float | None:
        return None if self._wrong_device() else self.source.last_valid_monotonic

    def counters(self) -> dict[str, int]:
        return {**self.source.counters(), "wrong_device": int(self._wrong_device())}
