"""The link's session counter: +1 per connection attempt, kept on disk across restarts.

It goes into both the Last Will and the ``online`` status (Sparkplug's ``bdSeq`` idea), so a
Will that arrives late, from an older connection, can be told from a newer ``online``: by the
link, which then says ``online`` again, and by anyone reading the status. A timestamp cannot do
this on boards without a real-time clock.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger("edgeagent.telemetry")


class SessionCounter:
    def __init__(self, path: Path | None) -> None:
        """``path``: where the counter lives (next to the outbox); None keeps it in memory only
        (tests, a demo without a state directory)."""
        self.path = path
        self.value = 0
        self.store_error: str | None = None  # why the last number was not stored, if not
        if path is not None:
            try:  # written whole by rename: never torn, but a card can still lose it
                self.value = int(path.read_text())
            except FileNotFoundError:
                pass
            except (OSError, ValueError) as exc:
                # Never start below a number already used: the wall clock's seconds are above
                # any count of attempts (a clock that is far behind is the rare case left).
                self.value = int(time.time())
                log.warning("mqtt: session counter %s unreadable (%s): going on from %d",
                            path, exc, self.value)

    def next(self) -> int:
        """Allocate the next session number, durably (write, fsync, rename) when on disk.

        Called on paho's network thread before each attempt: a file that cannot be written
        (a full or read-only card) must not stop the connection, so the number is then kept
        in memory only, and the failure logged."""
        self.value += 1
        if self.path is not None:
            try:
                self._store(self.path)
                self.store_error = None
            except OSError as exc:
                if str(exc) != self.store_error:  # once per change, not once per attempt
                    log.warning("mqtt: cannot store the session counter %s: %s", self.path, exc)
                self.store_error = str(exc)
        return self.value

    def _store(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as f:
            f.write(f"{self.value}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
