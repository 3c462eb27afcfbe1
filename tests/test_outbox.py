"""The outbox: seq never reused across restarts, rows leave only when acked, bounded in rows
and bytes (WAL included), thinning before dropping, every loss counted with its seqs, and a
corrupt file put aside. Also the telemetry clock fields and the backlog drain policy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from edgeagent.governor.decision import Decision
from edgeagent.state import SiteState
from edgeagent.telemetry.clock import Clock
from edgeagent.telemetry.drain import battery_full, drain_allowance
from edgeagent.telemetry.outbox import Outbox, seq_ranges


def bodies(box: Outbox) -> list[dict[str, Any]]:
    return [json.loads(r.payload) for r in box.pending(10**7)]


def seqs(box: Outbox) -> list[int]:
    return [b["seq"] for b in bodies(box)]


def expand(ranges: list[tuple[int, int]]) -> set[int]:
    return {s for lo, hi in ranges for s in range(lo, hi + 1)}


def test_seq_counts_up_by_one_and_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path)
    assert [box.enqueue_telemetry("t", {"x": i}) for i in range(3)] == [0, 1, 2]
    assert box.enqueue_telemetry_many("t", [{"x": i} for i in range(4)]) == [3, 4, 5, 6]
    box.ack([r.id for r in box.pending(10)])
    box.close()
    reopened = Outbox(path)
    assert reopened.enqueue_telemetry("t", {}) == 7
    assert seqs(reopened) == [7]


def test_rows_leave_only_when_acknowledged(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    for i in range(5):
        box.enqueue_telemetry("t", {"i": i})
    rows = box.pending(2)
    box.ack([rows[0].id])
    box.ack([rows[0].id])  # a duplicate ack after a resend is harmless
    assert seqs(box) == [1, 2, 3, 4]
    assert box.acked == 1
    assert [r.id for r in box.pending(10, after_id=rows[1].id)] == [r.id for r in
                                                                    box.pending(10)[1:]]


def test_a_full_outbox_thins_old_telemetry_before_it_drops_anything(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    box = Outbox(path, max_rows=20)
    for i in range(60):
        box.enqueue_telemetry("t", {"power": {"pv_power_w": float(i), "charger_state": "bulk"}})
    assert box.pending_count() <= 20
    report = box.report()
    assert report["dropped"]["telemetry"] == 0 and report["thinned"] > 0
    kept = seqs(box)
    missing = set(range(60)) - set(kept)
    assert report["thinned"] == len(missing)
    assert expand(report["lost_seq"]) == missing  # the ranges name exactly what is missing
    assert kept[-1] == 59 and kept == sorted(kept)
    summary = next(b for b in bodies(box) if "thinned" in b)
    thinned = summary["thinned"]
    first, last = thinned["from_seq"], summary["seq"]
    assert thinned["rows"] == last - first + 1
    assert thinned["power"] == {"pv_power_w": {  # the run's spread survives the thinning
        "min": float(first), "mean": (first + last) / 2, "max": float(last)}}
    box.close()
    reopened = Outbox(path, max_rows=20).report()
    assert {**reopened, "bytes": 0} == {**report, "bytes": 0}  # counters and ranges persist


def test_when_thinning_is_not_enough_telemetry_goes_before_events_before_results(
        tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_rows=20)
    for i in range(5):
        box.enqueue(f"r{i}", b"result", kind="result")
        box.enqueue(f"e{i}", b"event", kind="event")
    for i in range(4):
        box.enqueue("status", json.dumps({"n": i}).encode(), retain=True, kind="status")
    for i in range(100):
        box.enqueue_telemetry("t", {"i": i})
    dropped = box.report()["dropped"]
    assert dropped["telemetry"] > 0 and dropped["event"] == dropped["result"] == 0
    for i in range(40):
        box.enqueue(f"late{i}", b"event", kind="event")
    report = box.report()
    assert report["dropped"]["event"] > 0 and report["dropped"]["result"] == 0
    topics = [r.topic for r in box.pending(100)]
    assert topics.count("status") == 1  # never dropped; the newest replaces the older ones
    assert json.loads(next(r.payload for r in box.pending(100) if r.topic == "status")) == {
        "n": 3}
    assert all(f"r{i}" in topics for i in range(5))
    lost_telemetry = expand(report["lost_seq"])
    assert len(lost_telemetry) == report["dropped"]["telemetry"] + report["thinned"]


def test_rows_in_flight_are_never_evicted(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_rows=10)
    for i in range(5):
        box.enqueue_telemetry("t", {"i": i})
    box.in_flight.update(r.id for r in box.pending(5))  # handed to the network
    for i in range(50):
        box.enqueue_telemetry("t", {"i": i})
    assert seqs(box)[:5] == [0, 1, 2, 3, 4]


def test_the_byte_cap_holds_database_and_wal_together(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    cap = 256 << 10
    box = Outbox(path, max_rows=10**6, max_bytes=cap)
    blob = "x" * 3000
    for i in range(300):  # 900 kB of telemetry into a 256 kB outbox
        box.enqueue_telemetry_many("t", [{"blob": blob, "i": i}])
        wal = path.with_name("o.db-wal")
        assert path.stat().st_size + (wal.stat().st_size if wal.exists() else 0) <= cap
    report = box.report()
    assert report["bytes"] <= cap
    assert report["dropped"]["telemetry"] + report["thinned"] > 0
    assert expand(report["lost_seq"]) == set(range(300)) - set(seqs(box))
    box.ack([r.id for r in box.pending(10**6)])  # drained: the WAL is truncated
    assert path.with_name("o.db-wal").stat().st_size == 0


def test_lost_seq_ranges_are_compact() -> None:
    assert seq_ranges([5, 1, 2, 3, 7, 8]) == [(1, 3), (5, 5), (7, 8)]
    assert seq_ranges([]) == []


def test_committed_rows_survive_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    writer = textwrap.dedent(f"""
        from pathlib import Path
        from edgeagent.telemetry.outbox import Outbox
        box = Outbox(Path({str(path)!r}))
        for i in range(100000):
            done = box.enqueue_telemetry_many("t", [{{"i": i, "k": k}} for k in range(7)])
            print(done[-1], flush=True)  # committed: must survive
    """)
    proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True,
                            cwd=tmp_path)
    assert proc.stdout is not None
    committed = -1
    for _ in range(60):
        committed = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)  # mid-enqueue: it never waits between batches
    proc.wait()
    box = Outbox(path)
    got = seqs(box)
    assert committed in got
    assert got == list(range(len(got)))  # no gap, no torn row
    assert box.enqueue_telemetry("t", {}) == len(got)  # and the next seq follows on


def test_a_corrupt_file_is_put_aside_and_seq_never_goes_back(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    box = Outbox(path)
    for i in range(5):
        box.enqueue_telemetry("t", {"i": i})
    box.close()
    for f in tmp_path.glob("o.db-*"):
        f.unlink()
    path.write_bytes(b"this is not an SQLite database, it is garbage " * 100)
    box = Outbox(path)
    aside = list(tmp_path.glob("o.db.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not")
    assert box.report()["corrupt"] == 1 and box.pending_count() == 0
    assert box.enqueue_telemetry("t", {}) > 4  # never a seq already used
    box.close()
    assert Outbox(path).report()["corrupt"] == 1  # the count survives a restart


def test_telemetry_time_fields_on_a_board_without_rtc(tmp_path: Path) -> None:
    (tmp_path / "proc/sys/kernel/random").mkdir(parents=True)
    (tmp_path / "proc/sys/kernel/random/boot_id").write_text("1b2c\n")
    clock = Clock(tmp_path, kernel=lambda: False)
    stamp = clock.stamp()
    assert stamp["boot_id"] == "1b2c" and stamp["clock_synced"] is False
    assert stamp["mono"] > 0 and stamp["ts"] > 1.7e9
    (tmp_path / "run/systemd/timesync").mkdir(parents=True)
    (tmp_path / "run/systemd/timesync/synchronized").touch()  # systemd-timesyncd's flag
    assert clock.stamp()["clock_synced"] is True
    assert Clock(tmp_path / "nowhere", kernel=lambda: True).stamp()["clock_synced"] is True
    assert Clock(tmp_path / "nowhere", kernel=lambda: None).boot_id is None


def test_the_backlog_trickles_when_lean_on_a_battery_that_is_not_full() -> None:
    lean = Decision(workers=0, budget_w=0, reason="night", telemetry_interval_s=60.0)
    surplus = Decision(workers=2, budget_w=3, reason="sun", level=1.0)
    assert drain_allowance(5000, lean, full=False) == 10
    assert drain_allowance(5000, lean, full=True) is None
    assert drain_allowance(5000, surplus, full=False) is None
    assert drain_allowance(3, lean, full=False) is None  # nothing worth holding
    assert drain_allowance(5000, None, full=False) is None
    assert battery_full(SiteState(charger_state="float"))
    assert battery_full(SiteState(battery_soc_pct=99.0))
    assert not battery_full(SiteState(battery_soc_pct=60.0))
