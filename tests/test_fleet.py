"""`edgeagent fleet`: one row per node seen on the broker, with the seq gaps the viewer saw
and the drops the node reported; over mutual TLS or with a password, and a refusal said in one
line."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from broker_auth import Pki, TlsBroker, add_tls_listener, issue, make_pki, password_file
from conftest import Broker, edgeagent_command
from edgeagent.cli import EXIT_INVALID, PASSWORD_ENV, main
from edgeagent.config import TlsConfig
from edgeagent.telemetry.fleet import FleetView, SeqRanges, render
from edgeagent.telemetry.tls import client_context

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


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_broker(broker: Broker, pki: Pki, tmp_path: Path) -> TlsBroker:
    """Mutual TLS only for the nodes and the operator: a node writes its own topics, the
    operator (CN of its certificate) reads everything."""
    acl = tmp_path / "acl"
    acl.write_text("user s1-n1\ntopic readwrite edgeagent/s1/n1/#\n"
                   "user operator\ntopic read edgeagent/#\n")
    return add_tls_listener(broker, pki, acl)


def _node(port: int, *, tls: TlsConfig | None = None, username: str | None = None,
          password: str | None = None) -> mqtt.Client:
    """A node's client, publishing as s1/n1 once the broker accepts it."""
    node = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if tls is not None:
        node.tls_set_context(client_context(tls))
    if username is not None:
        node.username_pw_set(username, password)
    node.connect("localhost" if tls is not None else "127.0.0.1", port)
    node.loop_start()
    return node


def _watch_once(node: mqtt.Client, url: str, options: list[str],
                env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """``edgeagent fleet --once --json`` while ``node`` says it is online and sends two
    telemetry messages: the rows it prints."""
    node.publish("edgeagent/s1/n1/status", json.dumps({"state": "online"}), qos=1,
                 retain=True).wait_for_publish(10)
    viewer = subprocess.Popen([*edgeagent_command(), "fleet", "--broker", url, "--once",
                               "--json", "--window", "4", *options],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env)
    try:
        assert viewer.stderr is not None
        watching = viewer.stderr.readline()
        assert "watching edgeagent/+/+" in watching, watching + viewer.stderr.read()
        for seq in (0, 1):
            node.publish("edgeagent/s1/n1/telemetry",
                         json.dumps(telemetry(seq, soc=70.0, pv=5.0)), qos=1)
        out, err = viewer.communicate(timeout=60)
    finally:
        viewer.kill()
        viewer.wait()
    assert viewer.returncode == 0, err
    rows: list[dict[str, Any]] = json.loads(out)
    return rows


def _refused(url: str, options: list[str], env: dict[str, str] | None = None) -> str:
    """What ``edgeagent fleet --once`` says when the broker will not have it: exit 1 and one
    line, long before its window ends (no hang, no retries)."""
    viewer = subprocess.run([*edgeagent_command(), "fleet", "--broker", url, "--once",
                             "--window", "600", *options],
                            capture_output=True, text=True, timeout=60, env=env)
    assert viewer.returncode == 1, viewer.stderr
    assert viewer.stdout == "" and len(viewer.stderr.splitlines()) == 1, viewer.stderr
    return viewer.stderr.strip()


def test_fleet_over_mutual_tls_shows_a_node_publishing_there(tls_broker: TlsBroker,
                                                             pki: Pki) -> None:
    operator = issue(pki.directory, (pki.ca, pki.ca_key), "operator", "operator")
    node = _node(tls_broker.port, tls=TlsConfig(ca_file=pki.ca, cert_file=pki.client_cert,
                                                key_file=pki.client_key))
    try:
        rows = _watch_once(node, tls_broker.url, ["--ca-file", str(pki.ca), "--cert-file",
                                                  str(operator[0]), "--key-file",
                                                  str(operator[1])])
    finally:
        node.loop_stop()
        node.disconnect()
    (row,) = rows
    assert (row["site"], row["node"], row["online"]) == ("s1", "n1", True)
    assert row["telemetry"] == 2 and row["soc_pct"] == 70.0 and row["seq_gaps"] == 0


def test_fleet_without_a_client_certificate_is_refused_in_one_line(tls_broker: TlsBroker,
                                                                   pki: Pki) -> None:
    said = _refused(tls_broker.url, ["--ca-file", str(pki.ca)])
    assert said == (f"edgeagent fleet: {tls_broker.url} refused the connection: "
                    "tls: certificate required")


def test_fleet_with_a_password_file_or_a_wrong_password(broker: Broker, tmp_path: Path) -> None:
    passwords = password_file(tmp_path / "passwd", {"n1": "node-pw", "operator": "right"})
    broker.stop()
    broker.extra_config = [f"password_file {passwords}", "allow_anonymous false"]
    broker.start()
    secret = tmp_path / "secret"
    secret.write_text("right\n")
    node = _node(broker.port, username="n1", password="node-pw")
    try:
        rows = _watch_once(node, broker.url, ["--username", "operator", "--password-file",
                                              str(secret)])
    finally:
        node.loop_stop()
        node.disconnect()
    assert [(r["site"], r["node"], r["telemetry"]) for r in rows] == [("s1", "n1", 2)]
    said = _refused(broker.url, ["--username", "operator"],
                    env={**os.environ, PASSWORD_ENV: "wrong"})
    assert said == (f"edgeagent fleet: {broker.url} refused the connection: "
                    "not authorized (0x87)")
    # Without credentials at all: anonymous is not allowed either.
    assert "not authorized" in _refused(broker.url, [])


def test_fleet_names_the_option_field_that_is_wrong(tmp_path: Path, pki: Pki,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.pem"
    cases = [
        (["--key-file", str(pki.client_key)], "telemetry.tls.key_file: a key_file needs its "
                                              "cert_file"),
        (["--ca-file", str(missing)], f"telemetry.tls.ca_file: no file at {missing}"),
    ]
    for options, message in cases:
        assert main(["fleet", "--broker", "mqtts://localhost:1", *options]) == EXIT_INVALID
        assert capsys.readouterr().err == f"edgeagent fleet: {message}\n"
    assert main(["fleet", "--broker", "mqtt://localhost:1", "--ca-file", str(pki.ca)]) \
        == EXIT_INVALID
    assert capsys.readouterr().err == ("edgeagent fleet: telemetry.tls: TLS settings need an "
                                       "mqtts:// broker, not 'mqtt://localhost:1'\n")


def test_fleet_says_which_file_it_cannot_use(tmp_path: Path, pki: Pki,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Files that exist but cannot be used: exit 2, one line naming what, no traceback."""
    garbage, latin1 = tmp_path / "garbage.pem", tmp_path / "password"
    garbage.write_text("not a certificate\n")
    latin1.write_bytes("mot-de-passe-\xe9t\xe9\n".encode("latin-1"))
    assert main(["fleet", "--broker", "mqtts://localhost:1", "--cert-file", str(garbage)]) \
        == EXIT_INVALID
    assert capsys.readouterr().err.startswith("edgeagent fleet: cannot load the TLS files")
    assert main(["fleet", "--broker", "mqtt://localhost:1", "--username", "u",
                 "--password-file", str(latin1)]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert err.startswith(f"edgeagent fleet: cannot load the password_file ({latin1})")
    assert len(err.splitlines()) == 1


def test_a_live_viewer_rides_out_a_broker_restart_and_a_reconnect_closed_before_connack(
        broker: Broker) -> None:
    """Once it has watched, the live table outlasts the broker: a restart, even one behind a
    proxy that closes connections before the broker answers, is retried by paho, not taken for
    a refusal; the table then fills again. Ctrl-C ends it with status 0."""
    viewer = subprocess.Popen([*edgeagent_command(), "fleet", "--broker", broker.url, "--json",
                               "--window", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert viewer.stdout is not None and viewer.stderr is not None
    try:
        assert "watching edgeagent/+/+" in viewer.stderr.readline()
        broker.stop()
        with socket.socket() as proxy:  # accepts and closes, as a restarting proxy does
            proxy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            proxy.bind(("127.0.0.1", broker.port))
            proxy.listen()
            proxy.settimeout(0.2)
            deadline, closed = time.monotonic() + 4, 0
            while time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    proxy.accept()[0].close()
                    closed += 1
        assert closed >= 1 and viewer.poll() is None, viewer.stderr.read()
        broker.start()
        node = _node(broker.port)
        try:  # the viewer resubscribes when paho's next attempt comes: publish until seen
            seen: list[dict[str, Any]] = []
            deadline, seq = time.monotonic() + 60, 0
            while not seen and time.monotonic() < deadline:
                node.publish("edgeagent/s1/n1/telemetry",
                             json.dumps(telemetry(seq, soc=55.0, pv=3.0)), qos=1)
                seq += 1
                seen = [r for r in json.loads(viewer.stdout.readline()) if r["site"] == "s1"]
        finally:
            node.loop_stop()
            node.disconnect()
        assert seen and seen[0]["soc_pct"] == 55.0
        viewer.send_signal(signal.SIGINT)
        assert viewer.wait(timeout=30) == 0
    finally:
        viewer.kill()
        viewer.wait()
