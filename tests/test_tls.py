"""TLS and mutual TLS against a real Mosquitto, with a throw-away CA made by the openssl CLI:
certificates work end to end; no certificate, an unknown CA and an ACL-denied topic are refused,
reported and not retried in a hot loop; the config names what is wrong."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from broker_auth import Pki, TlsBroker, add_tls_listener, make_pki
from conftest import Broker, edgeagent_command, retained
from edgeagent.config import ConfigError, TlsConfig, parse_config
from edgeagent.telemetry.mqtt import MqttLink, Topics
from edgeagent.telemetry.outbox import Outbox
from test_mqtt import pump_until

TOPICS = Topics("edgeagent", "s1", "n1")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_broker(broker: Broker, pki: Pki, tmp_path: Path) -> TlsBroker:
    """The fixture's broker plus a TLS listener that wants a client certificate, whose CN is
    the user name the ACL knows: the node may write its own topics, but not its events."""
    acl = tmp_path / "acl"
    acl.write_text("topic read edgeagent/#\n"  # anonymous: the tests' subscribers
                   "user s1-n1\n"
                   "topic deny edgeagent/s1/n1/events\n"
                   "topic readwrite edgeagent/s1/n1/#\n")
    return add_tls_listener(broker, pki, acl)


def _link(broker: TlsBroker, tls: TlsConfig) -> MqttLink:
    return MqttLink(broker.url, TOPICS, tls=tls, reconnect_min_s=0.5, reconnect_max_s=2.0)


def _attempts_while_watching(link: MqttLink, box: Outbox, seconds: float) -> int:
    first = link.attempts
    watched = time.monotonic()
    while time.monotonic() - watched < seconds:
        link.pump(box)
        time.sleep(0.05)
    return link.attempts - first


def test_telemetry_goes_over_mutual_tls(tls_broker: TlsBroker, pki: Pki, tmp_path: Path,
                                        subscriber_factory: Any) -> None:
    sub = subscriber_factory(TOPICS.telemetry)
    box = Outbox(tmp_path / "o.db")
    for i in range(3):
        box.enqueue_telemetry(TOPICS.telemetry, {"i": i})
    link = _link(tls_broker, TlsConfig(ca_file=pki.ca, cert_file=pki.client_cert,
                                       key_file=pki.client_key))
    link.start()
    pump_until(link, box, lambda: box.pending_count() == 0)
    status = retained(tls_broker.broker, TOPICS.status)
    link.stop(box)
    assert status is not None and status["state"] == "online"
    assert link.report()["state"] == "stopped" and link.last_error is None
    sub.wait_for(TOPICS.telemetry, lambda m: m["seq"] == 2)


def test_a_client_without_a_certificate_is_refused_reported_and_not_hammered(
        tls_broker: TlsBroker, pki: Pki, tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    link = _link(tls_broker, TlsConfig(ca_file=pki.ca))
    link.start()
    pump_until(link, box, lambda: link.state == "refused")
    assert link.last_error == "tls: certificate required"
    assert _attempts_while_watching(link, box, 3.0) <= 5  # waits of 0.5-2 s, growing
    link.stop(box)
    assert link.connects == 0 and link.report()["last_error"] == "tls: certificate required"


def test_a_certificate_from_a_ca_the_broker_does_not_trust_is_refused(
        tls_broker: TlsBroker, pki: Pki, tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    link = _link(tls_broker, TlsConfig(ca_file=pki.ca, cert_file=pki.stranger_cert,
                                       key_file=pki.stranger_key))
    link.start()
    pump_until(link, box, lambda: link.state == "refused")
    link.stop(box)
    assert link.last_error == "tls: unknown ca"


def test_a_broker_the_ca_file_does_not_vouch_for_is_refused(
        tls_broker: TlsBroker, pki: Pki, tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    link = _link(tls_broker, TlsConfig(ca_file=pki.other_ca, cert_file=pki.client_cert,
                                       key_file=pki.client_key))
    link.start()
    pump_until(link, box, lambda: link.state == "refused")
    link.stop(box)
    assert (link.last_error or "").startswith("tls: certificate verify failed")


def test_a_topic_the_acl_denies_is_parked_and_reported_while_the_rest_flows(
        tls_broker: TlsBroker, pki: Pki, tmp_path: Path, subscriber_factory: Any) -> None:
    sub = subscriber_factory(TOPICS.telemetry)
    box = Outbox(tmp_path / "o.db")
    box.enqueue(TOPICS.events, b'{"alarm":"low battery"}')
    box.enqueue_telemetry(TOPICS.telemetry, {"i": 0})
    link = _link(tls_broker, TlsConfig(ca_file=pki.ca, cert_file=pki.client_cert,
                                       key_file=pki.client_key))
    link.start()
    pump_until(link, box, lambda: len(link.rejected) == 1 and link.published == 1)
    assert _attempts_while_watching(link, box, 0.5) == 0  # a refused publish is no reconnect
    link.stop(box)
    report = link.report()
    assert report["refused_topics"] == {TOPICS.events: 1} and box.pending_count() == 1
    assert report["last_error"] == f"publish refused: not authorized (0x87) on {TOPICS.events}"
    sub.wait_for(TOPICS.telemetry, lambda m: m["seq"] == 0)


def test_the_config_names_each_connection_field_that_is_wrong(tmp_path: Path,
                                                              pki: Pki) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config('[telemetry]\nbroker = "mqtt://h"\npassword = "x"\n'
                     'password_file = "missing"\nreconnect_min_s = 5\nreconnect_max_s = 2\n'
                     'protocol = "4"\n[telemetry.tls]\nca_file = "nope.pem"\n'
                     f'key_file = "{pki.client_key}"\n', config_dir=tmp_path)
    paths = {issue.path: issue.message for issue in err.value.issues}
    assert paths == {
        "telemetry.protocol": "Input should be '5' or '3.1.1'",
        "telemetry.password_file": "give password or password_file, not both",
        "telemetry.reconnect_max_s": "must be at least reconnect_min_s",
        "telemetry.tls.ca_file": f"no file at {tmp_path / 'nope.pem'}",
        "telemetry.tls.key_file": "a key_file needs its cert_file",
    }
    config = tmp_path / "edgeagent.toml"
    config.write_text('[telemetry]\nbroker = "mqtt://h"\n[telemetry.tls]\n'
                      f'ca_file = "{pki.ca}"\n')
    checked = subprocess.run([*edgeagent_command(), "config", "check", str(config)],
                             capture_output=True, text=True)
    assert checked.returncode == 2
    assert "telemetry.tls: TLS settings need an mqtts:// broker" in checked.stdout + checked.stderr


def test_a_valid_tls_config_resolves_its_files_next_to_the_config(tmp_path: Path,
                                                                  pki: Pki) -> None:
    (tmp_path / "ca.pem").write_bytes(pki.ca.read_bytes())
    config = parse_config('[telemetry]\nbroker = "mqtts://broker.example"\n'
                          '[telemetry.tls]\nca_file = "ca.pem"\n', config_dir=tmp_path)
    assert config.telemetry.tls == TlsConfig(ca_file=tmp_path / "ca.pem")
    assert config.telemetry.protocol == "5" and config.telemetry.will_delay_s > 0
