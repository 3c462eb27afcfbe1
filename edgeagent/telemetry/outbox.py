"""The outbox: every message is written to SQLite before it goes to the network.

A row leaves only when the broker acknowledged it (``ack``). The telemetry ``seq`` is allocated
in the same transaction that stores the row, from a counter kept in the database, so it is +1
per message, never reused and survives restarts and ``kill -9``. When the outbox is full the
oldest rows are dropped, and the drop is counted in the database, never silent.

Durability: WAL with ``synchronous=FULL`` (research/edge-agent-mqtt.md §5.2): sites brown out,
and NORMAL may roll back the latest commits on power loss. One connection, one thread: the
agent's main loop owns it; MQTT callbacks hand acknowledgements over through a queue.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Kind = Literal["telemetry", "event", "result", "status"]  # what a row is: drop order, thinning

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    created_wall REAL NOT NULL,
    kind TEXT NOT NULL DEFAULT 'telemetry'
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters VALUES ('next_seq', 0), ('dropped_capacity', 0), ('acked', 0);
"""


class OutboxError(Exception):
    """The outbox file cannot be created or opened (permissions, not a directory, ...)."""


@dataclass(frozen=True)
class OutboxRow:
    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Outbox:
    def __init__(self, path: Path, max_rows: int = 100_000) -> None:
        """Open (or create) the outbox; ``OutboxError`` says why it cannot be used."""
        self.path = path
        self.max_rows = max_rows
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(outbox)")}
            if "kind" not in columns:  # an outbox written by an older version
                self._db.execute("ALTER TABLE outbox ADD COLUMN kind TEXT NOT NULL "
                                 "DEFAULT 'telemetry'")
        except (OSError, sqlite3.Error) as exc:
            raise OutboxError(f"cannot open the outbox {path}: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0])

    def enqueue_telemetry(self, topic: str, body: dict[str, Any], qos: int = 1) -> int:
        """Store one telemetry message with the next ``seq``; return that seq."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            seq = self._counter("next_seq")
            db.execute("UPDATE counters SET value = value + 1 WHERE name = 'next_seq'")
            payload = json.dumps({"seq": seq, **body}, separators=(",", ":")).encode()
            self._insert(topic, payload, qos, False, "telemetry")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # BEGIN itself may be what failed; keep its error
                db.execute("ROLLBACK")
            raise
        return seq

    def enqueue(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, *,
                kind: Kind = "event") -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            self._insert(topic, payload, qos, retain, kind)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # BEGIN itself may be what failed; keep its error
                db.execute("ROLLBACK")
            raise

    def _insert(self, topic: str, payload: bytes, qos: int, retain: bool, kind: Kind) -> None:
        db = self._db
        excess = self.pending_count() + 1 - self.max_rows
        if excess > 0:
            db.execute("DELETE FROM outbox WHERE id IN "
                       "(SELECT id FROM outbox ORDER BY id LIMIT ?)", (excess,))
            db.execute("UPDATE counters SET value = value + ? WHERE name = 'dropped_capacity'",
                       (excess,))
        db.execute("INSERT INTO outbox (topic, payload, qos, retain, created_wall, kind) "
                   "VALUES (?, ?, ?, ?, ?, ?)",
                   (topic, payload, qos, int(retain), time.time(), kind))

    def pending(self, limit: int, after_id: int = 0) -> list[OutboxRow]:
        rows = self._db.execute(
            "SELECT id, topic, payload, qos, retain FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit)).fetchall()
        return [OutboxRow(r[0], r[1], bytes(r[2]), r[3], bool(r[4])) for r in rows]

    def ack(self, row_ids: Iterable[int]) -> None:
        """The broker has these rows: forget them, in one transaction (one fsync).

        Acking a row twice is harmless (a resend after a reconnect can be acked twice).
        """
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            removed = 0
            for row_id in row_ids:
                removed += db.execute("DELETE FROM outbox WHERE id = ?", (row_id,)).rowcount
            db.execute("UPDATE counters SET value = value + ? WHERE name = 'acked'", (removed,))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # BEGIN itself may be what failed; keep its error
                db.execute("ROLLBACK")
            raise

    def pending_count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])

    @property
    def dropped(self) -> int:
        return self._counter("dropped_capacity")

    @property
    def acked(self) -> int:
        return self._counter("acked")

    @property
    def next_seq(self) -> int:
        return self._counter("next_seq")
