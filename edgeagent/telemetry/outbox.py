"""The outbox: every message is written to SQLite before it goes to the network.

A row leaves only when the broker acknowledged it (``ack``). The telemetry ``seq`` is allocated
in the same transaction that stores the row, from a counter kept in the database, so it is +1
per message, never reused and survives restarts and ``kill -9``.

Bounded in rows and bytes, the WAL included: ``max_page_count`` is the hard cap of the database
(SQLite rolls the whole transaction back on "database or disk is full": we evict and retry),
``journal_size_limit``, the autocheckpoint and a ``wal_checkpoint(TRUNCATE)`` when the backlog
empties bound the WAL. A soft limit evicts down to a low-water mark long before the hard cap.
Eviction degrades before it drops: it first thins old telemetry (a run of consecutive rows
becomes its last row carrying the run's min/mean/max power), then drops telemetry, then
events, then job results, oldest first. Status rows are never dropped: a new one replaces the
older pending one on its topic. Every thinned and dropped row is counted in the database with
the lost ``seq`` ranges, so the fleet knows exactly what it will never see.

Durability: WAL with ``synchronous=FULL`` (research/edge-agent-mqtt.md §5.2): sites brown out,
and NORMAL may roll back the latest commits on power loss. FULL costs one fsync per commit, so
writers batch: ``enqueue_telemetry_many`` stores many rows in one transaction, and ``ack``
forgets a whole window of PUBACKs in one, committed without an fsync of its own (a delete
undone by a power cut only sends its rows again). A database SQLite finds corrupt is renamed
aside for inspection and a new one started; a sidecar file (``<name>.seq``, rewritten once per
``SEQ_BLOCK`` seqs) keeps ``seq`` from going back even then. One connection, one thread: the
agent's main loop owns it; MQTT callbacks hand acknowledgements over through a queue.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

Kind = Literal["telemetry", "event", "result", "status"]  # what a row is: drop order, thinning
KINDS: tuple[Kind, ...] = ("telemetry", "event", "result", "status")
DROP_ORDER: tuple[Kind, ...] = ("telemetry", "event", "result")  # status is replaced, not dropped
THIN_RUN = 10  # consecutive telemetry rows that become one summary row
LOW_WATER = 0.8  # eviction goes down to this share of a bound, so that it runs rarely
SOFT_LIMIT = 0.9  # share of the database cap where eviction starts (the hard cap stays rare)
WAL_SHARE = 0.25  # share of max_bytes kept for the WAL (at most WAL_MAX)
WAL_MAX = 4 << 20
MAX_LOST_RANGES = 64  # the oldest lost ranges beyond this are forgotten (and counted)
SEQ_BLOCK = 10_000
DEFAULT_MAX_BYTES = 64 << 20  # an SD card's fair share

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
INSERT OR IGNORE INTO counters VALUES ('next_seq', 0), ('acked', 0), ('thinned', 0),
    ('dropped_telemetry', 0), ('dropped_event', 0), ('dropped_result', 0),
    ('dropped_status', 0), ('lost_seq_forgotten', 0);
CREATE TABLE IF NOT EXISTS lost_seq (lo INTEGER PRIMARY KEY, hi INTEGER NOT NULL);
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


class OutboxReport(BaseModel):
    """What the outbox tells the fleet, in telemetry and in the retained status."""

    pending: int
    bytes: int  # on disk: database and WAL
    dropped: dict[str, int]  # rows dropped when full, by kind
    thinned: int  # telemetry rows merged into a summary row (the summary names their seqs)
    lost_seq: list[tuple[int, int]]  # inclusive ranges of seqs never sent: thinned or dropped
    lost_seq_forgotten: int  # seqs in older ranges no longer listed
    corrupt: int  # corrupt database files put aside


@dataclass(frozen=True)
class _Item:
    topic: str
    payload: bytes  # telemetry: the body's JSON, its seq spliced in when stored
    qos: int
    retain: bool
    kind: Kind


def seq_ranges(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted seqs as compact inclusive ranges."""
    ranges: list[tuple[int, int]] = []
    for s in sorted(seqs):
        if ranges and s <= ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], max(s, ranges[-1][1]))
        else:
            ranges.append((s, s))
    return ranges


def thin(bodies: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One summary for a run of telemetry bodies: the last body (its own seq), naming the first
    seq it stands for, with min/mean/max of every numeric power field over the run."""
    values: dict[str, list[float]] = {}
    for body in bodies:
        for key, v in (body.get("power") or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                values.setdefault(key, []).append(float(v))
    last = bodies[-1]
    first = bodies[0]["seq"]
    return {**last, "thinned": {
        "from_seq": first, "rows": last["seq"] - first + 1,
        "power": {k: {"min": min(v), "mean": round(sum(v) / len(v), 6), "max": max(v)}
                  for k, v in values.items()}}}


class Outbox:
    def __init__(self, path: Path, max_rows: int = 100_000,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        """Open (or create) the outbox; ``OutboxError`` says why it cannot be used."""
        self.path = path
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.wal_bytes = min(int(max_bytes * WAL_SHARE), WAL_MAX)
        self.in_flight: set[int] = set()  # rows handed to the network: never evicted
        self._sidecar = path.with_name(path.name + ".seq")
        self._seq_reserved, self.corrupt = self._read_sidecar()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._db, fresh = self._connect()
            except sqlite3.OperationalError:  # cannot open or write: not the file's fault
                raise
            except sqlite3.DatabaseError:  # not a database, or malformed: keep it, start anew
                self._put_aside()
                self._db, fresh = self._connect()
            self._page_size = int(self._db.execute("PRAGMA page_size").fetchone()[0])
            self.max_pages = max((max_bytes - self.wal_bytes) // self._page_size, 8)
            self._db.execute(f"PRAGMA max_page_count = {self.max_pages}")
            self._db.execute(f"PRAGMA journal_size_limit = {self.wal_bytes}")
            self._db.execute("PRAGMA wal_autocheckpoint = "
                             f"{max(self.wal_bytes // self._page_size // 2, 8)}")
            if fresh and self._seq_reserved:  # a new file must not reuse seqs of the old one
                self._db.execute("UPDATE counters SET value = ? WHERE name = 'next_seq'",
                                 (self._seq_reserved,))
            self._reserve_seq(self.next_seq)
            self._rows = self._count()
        except (OSError, sqlite3.Error) as exc:
            if hasattr(self, "_db"):  # opened, then failed: do not leak the connection
                self._db.close()
            raise OutboxError(f"cannot open the outbox {path}: {exc}") from exc

    def _connect(self) -> tuple[sqlite3.Connection, bool]:
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {check}")
            fresh = db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'outbox'"
                               ).fetchone()[0] == 0
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(SCHEMA)
            columns = {r[1] for r in db.execute("PRAGMA table_info(outbox)")}
            if "kind" not in columns:  # an outbox written by an older version
                db.execute("ALTER TABLE outbox ADD COLUMN kind TEXT NOT NULL "
                           "DEFAULT 'telemetry'")
            if "seq" not in columns:
                db.execute("ALTER TABLE outbox ADD COLUMN seq INTEGER")
                db.execute("ALTER TABLE outbox ADD COLUMN summary INTEGER NOT NULL DEFAULT 0")
                db.execute("UPDATE outbox SET seq = json_extract(CAST(payload AS TEXT), '$.seq')"
                           " WHERE kind = 'telemetry'")
        except BaseException:
            db.close()
            raise
        return db, fresh

    def _put_aside(self) -> None:
        """Rename the corrupt file (and its WAL) for inspection, and count it."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for suffix in ("", "-wal"):
            f = self.path.with_name(self.path.name + suffix)
            if f.exists():
                f.rename(f.with_name(f"{self.path.name}.corrupt-{stamp}{suffix}"))
        self.path.with_name(self.path.name + "-shm").unlink(missing_ok=True)
        self.corrupt += 1
        self._write_sidecar(self._seq_reserved)

    def _read_sidecar(self) -> tuple[int, int]:
        try:
            data = json.loads(self._sidecar.read_text())
            return int(data["seq_reserved"]), int(data["corrupt"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0, 0

    def _write_sidecar(self, reserved: int) -> None:
        tmp = self._sidecar.with_name(self._sidecar.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump({"seq_reserved": reserved, "corrupt": self.corrupt}, f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self._sidecar)
        fd = os.open(self._sidecar.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self._seq_reserved = reserved

    def _reserve_seq(self, upto: int) -> None:
        """Before a seq is committed, the sidecar promises a higher one (a block at a time)."""
        if upto >= self._seq_reserved:
            self._write_sidecar(upto + SEQ_BLOCK)

    def close(self) -> None:
        self._db.close()

    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0])

    def _add(self, name: str, n: int) -> None:
        if n:
            self._db.execute("UPDATE counters SET value = value + ? WHERE name = ?", (n, name))

    @contextmanager
    def _transaction(self, *, durable: bool = True) -> Iterator[None]:
        """One transaction; ``durable=False`` commits without an fsync (WAL, NORMAL): the next
        durable commit's fsync carries it, and a power cut before that only undoes it."""
        db = self._db
        if not durable:
            db.execute("PRAGMA synchronous=NORMAL")
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # BEGIN itself (or SQLite) may have ended it; keep the error
                db.execute("ROLLBACK")
            self._rows = self._count()
            raise
        finally:
            if not durable:
                db.execute("PRAGMA synchronous=FULL")

    # writing
    def enqueue_telemetry(self, topic: str, body: dict[str, Any], qos: int = 1) -> int:
        """Store one telemetry message with the next ``seq``; return that seq."""
        return self.enqueue_telemetry_many(topic, [body], qos)[0]

    def enqueue_telemetry_many(self, topic: str, bodies: Sequence[dict[str, Any]],
                               qos: int = 1) -> list[int]:
        """Store many telemetry messages in one transaction (one fsync); return their seqs."""
        seqs = self._store([_Item(topic, json.dumps(b, separators=(",", ":")).encode(), qos,
                                  False, "telemetry") for b in bodies])
        return [s for s in seqs if s is not None]

    def enqueue(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, *,
                kind: Kind = "event") -> None:
        """Store one message that carries no seq (events, results, status)."""
        self._store([_Item(topic, payload, qos, retain, kind)])

    def _store(self, items: list[_Item]) -> list[int | None]:
        need = sum(len(i.topic) + len(i.payload) + 64 for i in items)
        if (self._rows + len(items) > self.max_rows
                or self._used_bytes() + need > SOFT_LIMIT * self.max_pages * self._page_size):
            self._evict(len(items), need)
        for attempt in range(2):
            if attempt:
                self._evict(len(items), need * 2)  # the hard cap: make more room, retry once
            try:
                with self._transaction():
                    return self._insert(items)
            except sqlite3.OperationalError as exc:
                if not self._cap_is_ours(exc):
                    raise
        with self._transaction():  # nothing left to evict: the new rows are the drop
            return self._drop_incoming(items)

    def _cap_is_ours(self, exc: sqlite3.OperationalError) -> bool:
        """Full because of our ``max_page_count``, not because the disk itself is full (that
        is an error for the agent to count: evicting cannot write to a full disk)."""
        if "full" not in str(exc):
            return False
        ours = int(self._db.execute("PRAGMA max_page_count").fetchone()[0]) == self.max_pages
        disk = os.statvfs(self.path.parent)
        return ours and disk.f_bavail * disk.f_frsize > self.wal_bytes + (1 << 20)

    def _allocate(self, items: list[_Item]) -> list[int | None]:
        first = self._counter("next_seq")
        n = sum(1 for i in items if i.kind == "telemetry")
        self._add("next_seq", n)
        self._reserve_seq(first + n)
        seqs: list[int | None] = []
        for i in items:
            seqs.append(first if i.kind == "telemetry" else None)
            first += i.kind == "telemetry"
        return seqs

    def _insert(self, items: list[_Item]) -> list[int | None]:
        seqs = self._allocate(items)
        now = time.time()
        rows = []
        for item, seq in zip(items, seqs, strict=True):
            payload = item.payload
            if seq is not None:  # {"seq":N, ...the body}
                rest = payload[1:] if payload == b"{}" else b"," + payload[1:]
                payload = b'{"seq":%d' % seq + rest
            if item.kind == "status":  # retained: only the newest counts
                self._delete_where("kind = 'status' AND topic = ?", (item.topic,))
            rows.append((item.topic, payload, item.qos, int(item.retain), now, item.kind, seq))
        self._db.executemany(
            "INSERT INTO outbox (topic, payload, qos, retain, created_wall, kind, seq) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        self._rows += len(rows)
        return seqs

    def _drop_incoming(self, items: list[_Item]) -> list[int | None]:
        seqs = self._allocate(items)
        for kind, n in Counter(i.kind for i in items).items():
            self._add(f"dropped_{kind}", n)
        self._add_lost(seq_ranges(s for s in seqs if s is not None))
        return seqs

    # eviction
    def _used_bytes(self) -> int:
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        return int(pages - free) * self._page_size

    def _evict(self, rows_coming: int, bytes_coming: int) -> None:
        """Thin, then drop by priority, down to the low-water marks (room for what comes), in
        small transactions: each one's WAL is checkpointed before the next grows it again."""
        max_rows = int(self.max_rows * LOW_WATER) - rows_coming
        max_bytes = int(self.max_pages * self._page_size * LOW_WATER) - bytes_coming
        row_bytes = max(self._used_bytes() // max(self._rows, 1), 1)
        step_rows = max(THIN_RUN * 2, self.wal_bytes // 8 // row_bytes)

        def excess() -> int:
            if self._rows > max_rows:
                return min(self._rows - max_rows, step_rows)
            over = self._used_bytes() - max_bytes
            return min(over // row_bytes + 1, step_rows) if over > 0 else 0

        def step(evict: Callable[[int], bool]) -> bool:
            with self._transaction():
                n = excess()
                return n > 0 and evict(n)

        while step(self._thin_oldest):
            pass
        for kind in DROP_ORDER:
            while step(functools.partial(self._drop_oldest, kind)):
                pass

    def _oldest(self, where: str, limit: int) -> list[tuple[int, int | None, bytes]]:
        """The oldest rows matching ``where`` that are not in flight."""
        rows = self._db.execute(
            f"SELECT id, seq, payload FROM outbox WHERE {where} ORDER BY id LIMIT ?",
            (limit + len(self.in_flight),)).fetchall()
        return [r for r in rows if r[0] not in self.in_flight][:limit]

    def _thin_oldest(self, excess: int) -> bool:
        """Merge runs of consecutive old telemetry rows into summary rows; False if none."""
        want = excess * THIN_RUN // (THIN_RUN - 1) + THIN_RUN
        rows = self._oldest("kind = 'telemetry' AND summary = 0", want)
        runs: list[list[tuple[int, int | None, bytes]]] = []
        for row in rows:
            last = runs[-1][-1] if runs else None
            if (last is not None and len(runs[-1]) < THIN_RUN and row[1] is not None
                    and last[1] is not None and row[1] == last[1] + 1):
                runs[-1].append(row)
            else:
                runs.append([row])
        thinned = 0
        for run in runs:
            if len(run) < 2:
                continue
            summary = thin([json.loads(payload) for _, _, payload in run])
            keep_id = run[-1][0]
            self._db.execute("UPDATE outbox SET payload = ?, summary = 1 WHERE id = ?",
                             (json.dumps(summary, separators=(",", ":")).encode(), keep_id))
            gone = [r[0] for r in run[:-1]]
            self._delete_ids(gone)
            self._add_lost([(summary["thinned"]["from_seq"], summary["seq"] - 1)])
            thinned += len(gone)
        self._add("thinned", thinned)
        return thinned > 0

    def _drop_oldest(self, kind: Kind, excess: int) -> bool:
        rows = self._oldest(f"kind = '{kind}'", excess)
        self._delete_ids([r[0] for r in rows])
        self._add(f"dropped_{kind}", len(rows))
        self._add_lost(seq_ranges(r[1] for r in rows if r[1] is not None))
        return bool(rows)

    def _delete_ids(self, ids: list[int]) -> int:
        removed = 0
        for at in range(0, len(ids), 500):  # under SQLite's limit of bound parameters
            chunk = ids[at:at + 500]
            removed += self._db.execute(
                f"DELETE FROM outbox WHERE id IN ({','.join('?' * len(chunk))})", chunk).rowcount
        self._rows -= removed
        return removed

    def _delete_where(self, where: str, args: tuple[Any, ...]) -> None:
        ids = [r[0] for r in self._db.execute(f"SELECT id FROM outbox WHERE {where}", args)]
        self._delete_ids([i for i in ids if i not in self.in_flight])

    def _add_lost(self, ranges: Iterable[tuple[int, int]]) -> None:
        db = self._db
        for lo, hi in ranges:
            near = db.execute("SELECT lo, hi FROM lost_seq WHERE hi >= ? AND lo <= ?",
                              (lo - 1, hi + 1)).fetchall()
            for a, b in near:
                lo, hi = min(lo, a), max(hi, b)
            db.execute("DELETE FROM lost_seq WHERE hi >= ? AND lo <= ?", (lo - 1, hi + 1))
            db.execute("INSERT INTO lost_seq VALUES (?, ?)", (lo, hi))
        extra = db.execute("SELECT lo, hi FROM lost_seq ORDER BY lo DESC LIMIT -1 OFFSET ?",
                           (MAX_LOST_RANGES,)).fetchall()
        if extra:
            db.execute("DELETE FROM lost_seq WHERE lo <= ?", (max(a for a, _ in extra),))
            self._add("lost_seq_forgotten", sum(b - a + 1 for a, b in extra))

    # sending
    def pending(self, limit: int, after_id: int = 0) -> list[OutboxRow]:
        rows = self._db.execute(
            "SELECT id, topic, payload, qos, retain FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit)).fetchall()
        return [OutboxRow(r[0], r[1], bytes(r[2]), r[3], bool(r[4])) for r in rows]

    def existing(self, row_ids: Iterable[int]) -> set[int]:
        """Those of ``row_ids`` still in the outbox."""
        ids, found = list(row_ids), set[int]()
        for at in range(0, len(ids), 500):  # under SQLite's limit of bound parameters
            chunk = ids[at:at + 500]
            found.update(r[0] for r in self._db.execute(
                f"SELECT id FROM outbox WHERE id IN ({','.join('?' * len(chunk))})", chunk))
        return found

    def last_id(self) -> int:
        """The newest row's id (0 when empty): rows after it are newer than anything now."""
        return int(self._db.execute("SELECT coalesce(max(id), 0) FROM outbox").fetchone()[0])

    def ack(self, row_ids: Iterable[int]) -> None:
        """The broker has these rows: forget them, in one transaction without an fsync of its
        own: a power cut that undoes it only makes the rows go again (at least once, ``seq``
        tells the copies apart), so only enqueueing pays for durability.

        Acking a row twice is harmless (a resend after a reconnect can be acked twice). When
        the backlog is empty the WAL is checkpointed and truncated, so it stays small.
        """
        ids = list(row_ids)
        self.in_flight.difference_update(ids)
        with self._transaction(durable=False):
            self._add("acked", self._delete_ids(ids))
        if self._rows == 0 and self._wal_size() > self.wal_bytes // 4:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _wal_size(self) -> int:
        try:
            return self.path.with_name(self.path.name + "-wal").stat().st_size
        except OSError:
            return 0

    # reporting
    def _count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])

    def pending_count(self) -> int:
        return self._rows

    @property
    def dropped(self) -> int:
        """Rows dropped when full, all kinds."""
        return sum(self._counter(f"dropped_{k}") for k in KINDS)

    @property
    def thinned(self) -> int:
        return self._counter("thinned")

    @property
    def acked(self) -> int:
        return self._counter("acked")

    @property
    def next_seq(self) -> int:
        return self._counter("next_seq")

    def lost_seq(self) -> list[tuple[int, int]]:
        return [(int(a), int(b)) for a, b in
                self._db.execute("SELECT lo, hi FROM lost_seq ORDER BY lo")]

    def report(self) -> dict[str, Any]:
        """Small and JSON-able: for telemetry and the retained status."""
        pages = int(self._db.execute("PRAGMA page_count").fetchone()[0])
        return OutboxReport(
            pending=self._rows, bytes=pages * self._page_size + self._wal_size(),
            dropped={k: self._counter(f"dropped_{k}") for k in KINDS},
            thinned=self.thinned, lost_seq=self.lost_seq(),
            lost_seq_forgotten=self._counter("lost_seq_forgotten"), corrupt=self.corrupt,
        ).model_dump()
