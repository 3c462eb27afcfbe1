"""The outbox: seq never reused across restarts, rows leave only when acked, drops counted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from edgeagent.telemetry.outbox import Outbox


def seqs(box: Outbox) -> list[int]:
    return [json.loads(r.payload)["seq"] for r in box.pending(10**7)]


def test_seq_counts_up_by_one_and_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path)
    assert [box.enqueue_telemetry("t", {"x": i}) for i in range(3)] == [0, 1, 2]
    box.ack([r.id for r in box.pending(10)])
    box.close()
    reopened = Outbox(path)
    assert reopened.enqueue_telemetry("t", {}) == 3
    assert seqs(reopened) == [3]


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


def test_a_full_outbox_drops_the_oldest_and_counts_it(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    box = Outbox(path, max_rows=10)
    for i in range(15):
        box.enqueue_telemetry("t", {"i": i})
    assert box.pending_count() == 10
    assert seqs(box) == list(range(5, 15))
    assert box.dropped == 5
    box.close()
    assert Outbox(path, max_rows=10).dropped == 5  # the count is persisted too


def test_committed_rows_survive_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    writer = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from edgeagent.telemetry.outbox import Outbox
        box = Outbox(Path({str(path)!r}))
        for i in range(100000):
            box.enqueue_telemetry("t", {{"i": i}})
            if i == 50:
                print("ready", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True,
                            cwd=tmp_path)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    box = Outbox(path)
    got = seqs(box)
    assert len(got) > 50
    assert got == list(range(len(got)))  # no gap, no torn row
    assert box.enqueue_telemetry("t", {}) == len(got)  # and the next seq follows on
