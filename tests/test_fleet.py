"""`edgeagent fleet`: one row per node seen on the broker, with the seq gaps the viewer saw
and the drops the node reported."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from conftest import Broker, edgeagent_command
from edgeagent.telemetry.fleet import FleetView, SeqRanges, render

T0 = 1_790_000_000.0


def telemetry(seq: int, *, soc: float, pv: float, dropped: int = 0) -> dict[str, Any]:
    """One minute of a node's life per seq, doing ten jobs a minute."""
    return {"seq": seq, "ts": T0 + 60 * seq,
            "power": {"battery_soc_pct": soc, "pv_power_w": pv},
            "decision": {"level": 0.5, "workers": 1},
            "workload": {"jobs": 10 * seq, "j_per_inference": 2.5e-5},
            "queue": {"done": 0},
            "outbox": {"pending": 0, "dropped": {"telemetry": dropped, "event": 0},
                       "lost_seq": [[3, 2 + dropped]] if dropped else [],
                       "lost_seq_forgotten": 0}}


def test_seq_gaps_are_the_values_missing_between_the_lowest_and_highest_seen() -> None:
    seqs = SeqRanges()
    for seq in (0, 1, 2, 6, 4, 9):
        seqs.add(seq)
    assert seqs.missing == 4  # 3, 5, 7, 8
    for seq in (3, 5, 7, 8, 8):  # a late backlog fills the gaps; a duplicate is no gap
        seqs.add(seq)
    assert seqs.missing == 0 and seqs.ranges == [[0, 9]]


def test_the_table_has_a_row_per_node() -> None:
    view = FleetView()
    view.observe("edgeagent/s1/n1/status", b'{"state": "online"}', now=100.0)
    for seq in (0, 1, 3):
        view.observe("edgeagent/s1/n1/telemetry",
                     json.dumps(telemetry(seq, soc=81.0, pv=12.5, dropped=1)).encode(), 100.0)
    view.observe("edgeagent/s1/n1/cmd", b"{}", 100.0)  # not a node's state: ignored
    view.observe("edgeagent/s2/n1/status", b"not json", 100.0)
    text = render(view.snapshot(now=103.0))
    header, row = text.splitlines()
    assert header.split()[:4] == ["site", "node", "online", "SoC"]
    assert row.split() == ["s1", "n1", "yes", "81.0", "12.5", "0.50", "600", "2.50e-05",
                           "3s", "1", "1", "1"]


def test_fleet_once_json_shows_every_node_with_its_gaps_and_drops(broker: Broker) -> None:
    node = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    node.connect("127.0.0.1", broker.port)
    node.loop_start()
    try:
        for site, state in (("north", "online"), ("dark", "offline")):
            node.publish(f"edgeagent/{site}/n1/status", json.dumps({"state": state}), qos=1,
                         retain=True).wait_for_publish(5)
        viewer = subprocess.Popen([*edgeagent_command(), "fleet", "--broker", broker.url,
                                   "--once", "--json", "--window", "4"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert viewer.stderr is not None
        assert "watching edgeagent/+/+" in viewer.stderr.readline()
        for seq in (0, 1, 2, 4, 5):  # seq 3 never arrives: the node dropped it
            node.publish("edgeagent/north/n1/telemetry",
                         json.dumps(telemetry(seq, soc=95.0, pv=30.0, dropped=1)), qos=1)
        for seq in (0, 1):
            node.publish("edgeagent/dark/n1/telemetry",
                         json.dumps(telemetry(seq, soc=30.0, pv=0.0)), qos=1)
        out, err = viewer.communicate(timeout=60)
    finally:
        node.loop_stop()
        node.disconnect()
    assert viewer.returncode == 0, err
    rows = {r["site"]: r for r in json.loads(out)}
    assert set(rows) == {"north", "dark"}
    north, dark = rows["north"], rows["dark"]
    assert north["online"] is True and dark["online"] is False
    assert north["telemetry"] == 5 and north["seq_gaps"] == 1
    assert north["lost"] == 1 and north["dropped"] == 1  # the gap is the node's own drop
    assert north["soc_pct"] == 95.0 and north["pv_w"] == 30.0 and north["level"] == 0.5
    assert north["jobs_per_h"] == 600.0 and north["j_per_inference"] == 2.5e-5
    assert 0 <= north["last_seen_s"] < 30
    assert dark["seq_gaps"] == 0 and dark["dropped"] == 0 and dark["lost"] == 0
    assert dark["soc_pct"] == 30.0


def test_seq_ranges_stay_bounded_when_every_other_seq_is_missing() -> None:
    seqs = SeqRanges(max_ranges=8)
    for seq in range(0, 200, 2):  # a thinned backlog leaves a gap after every summary
        seqs.add(seq)
    assert len(seqs.ranges) == 8 and seqs.missing == 99
    seqs.add(197)  # a late one among the ranges still listed fills its gap
    assert seqs.missing == 98


def test_a_node_publishing_nonsense_is_shown_as_unknown_not_a_crash() -> None:
    view = FleetView()
    for body in ('{"seq": 1, "ts": 1, "workload": {"jobs": Infinity}}',
                 '{"seq": 2, "ts": NaN, "power": {"pv_power_w": NaN}}',
                 '{"seq": 3, "outbox": {"dropped": {"telemetry": "x"}, "lost_seq": [[1]]}}',
                 '{"seq": 4, "outbox": {"dropped": 1e999, "lost_seq": [null, "a"]}}',
                 '{"seq": 5, "workload": {"jobs": 1' + '0' * 400 + '}, "ts": 5}'):
        view.observe("edgeagent/s/n/telemetry", body.encode(), 1.0)
    (row,) = view.snapshot(2.0)
    assert row["telemetry"] == 5 and row["pv_w"] is None
    assert row["dropped"] is None and row["lost"] is None
    render(view.snapshot(2.0))
