"""HMAC-signed commands, for brokers that cannot keep other clients off a node's ``cmd`` topic.

A signed request carries two MQTT v5 user properties: ``ts``, the sender's UTC epoch seconds,
and ``hmac``, the hex HMAC-SHA256 under the shared key of ``<topic>\\n<ts>\\n`` followed by the
payload. The topic is signed so a command for one node cannot be replayed to another; ``ts``
bounds how long a captured command stays usable, and the signatures seen within that window
are remembered so none is accepted twice: in ``seen_path`` too, so that a restart (a crash, a
watchdog kill, a brown-out) does not reopen the window.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("edgeagent.telemetry")

MAX_SKEW_S = 300.0
MIN_KEY_BYTES = 16


def read_key(path: Path) -> bytes:
    """The key file's bytes without surrounding whitespace (``ValueError`` if too short)."""
    key = path.read_bytes().strip()
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"{path}: a command key needs at least {MIN_KEY_BYTES} bytes")
    return key


def sign(key: bytes, topic: str, ts: str, payload: bytes) -> str:
    return hmac.new(key, f"{topic}\n{ts}\n".encode() + payload, hashlib.sha256).hexdigest()


class Verifier:
    def __init__(self, key: bytes, *, max_skew_s: float = MAX_SKEW_S,
                 clock: Callable[[], float] = time.time, seen_path: Path | None = None) -> None:
        self._key = key
        self.max_skew_s = max_skew_s
        self._clock = clock
        self.seen_path = seen_path
        self._seen: dict[str, float] = self._load()  # signature -> when it may be forgotten

    def _load(self) -> dict[str, float]:
        if self.seen_path is None or not self.seen_path.exists():
            return {}
        try:
            seen = json.loads(self.seen_path.read_text())
            return {str(s): float(t) for s, t in seen.items()}
        except (OSError, ValueError, TypeError, AttributeError, RecursionError) as exc:
            # Forgetting them reopens the replay window for at most 2 * max_skew_s: said.
            log.warning("signed commands: cannot read %s (%s); the signatures taken before "
                        "this start are forgotten", self.seen_path, exc)
            return {}

    def _save(self) -> None:
        """Written whole and renamed into place, so a power cut leaves the old or the new."""
        if self.seen_path is None:
            return
        tmp = self.seen_path.with_name(self.seen_path.name + ".tmp")
        try:
            with tmp.open("w") as f:
                json.dump(self._seen, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.seen_path)
            directory = os.open(self.seen_path.parent, os.O_RDONLY)
            try:  # the rename itself must survive a power cut too
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError as exc:
            log.warning("signed commands: cannot write %s (%s); a restart would forget the "
                        "signatures taken", self.seen_path, exc)

    def check(self, topic: str, payload: bytes,
              properties: tuple[tuple[str, str], ...]) -> str | None:
        """None if the request is signed, fresh and new; otherwise why it is refused."""
        props = dict(properties)
        ts, signature = props.get("ts"), props.get("hmac")
        if ts is None or signature is None:
            return "unsigned: this node takes only commands with `ts` and `hmac` user properties"
        signature = signature.lower()
        # Bytes, not str: compare_digest raises on a str that is not ASCII (any sender's choice).
        if not hmac.compare_digest(sign(self._key, topic, ts, payload).encode(),
                                   signature.encode()):
            return "bad signature"
        try:
            sent = float(ts)
        except ValueError:
            return "`ts` is not a number of seconds"
        now = self._clock()
        if not math.isfinite(sent) or abs(now - sent) > self.max_skew_s:
            return f"stale: `ts` is more than {self.max_skew_s:.0f} s from this node's clock"
        self._seen = {s: t for s, t in self._seen.items() if t > now}
        if signature in self._seen:
            return "replayed: this signed command was already taken"
        self._seen[signature] = sent + 2 * self.max_skew_s
        self._save()
        return None
