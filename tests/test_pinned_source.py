"""A device pinned by its serial number: another device on the same port is not believed."""

from __future__ import annotations

import os

import pytest

from edgeagent.config import ConfigError, parse_config
from edgeagent.power.reader import SerialReader
from edgeagent.power.source import PinnedSource
from edgeagent.power.vedirect import encode_block
from edgeagent.service import device_reader
from edgeagent.state import SiteState
from test_reader import feed_until, pty_pair, running

OURS = encode_block([("PID", "0xA053"), ("SER#", "HQ2132ABCDE"), ("V", "13100"), ("I", "500"),
                     ("CS", "3")])
OTHER = encode_block([("PID", "0xA053"), ("SER#", "HQ9999ZZZZZ"), ("V", "25900"), ("I", "900"),
                      ("CS", "5")])


def test_only_the_expected_device_is_believed_on_a_pinned_port() -> None:
    master, slave, port = pty_pair()
    reader = SerialReader(port)
    pinned = PinnedSource(reader, "HQ2132ABCDE")
    try:
        with running(reader):
            feed_until(master, lambda: pinned.latest is not None, OURS)
            latest = pinned.latest
            assert latest is not None and latest.battery_voltage_v == 13.1
            assert pinned.counters()["wrong_device"] == 0
            # The cable now goes to another charger (a 24 V one): its data must not be used.
            feed_until(master, lambda: reader.latest is not None
                       and reader.latest.device_id == "HQ9999ZZZZZ", OTHER)
            assert pinned.latest is None and pinned.last_valid_monotonic is None
            assert pinned.counters()["wrong_device"] == 1
            state = SiteState.from_readings([(pinned.latest, None)], stale_after_s=5.0)
            assert state.stale and state.battery_voltage_v is None  # so the governor goes safe
            feed_until(master, lambda: pinned.latest is not None, OURS)  # ours is back
            assert pinned.counters()["wrong_device"] == 0
    finally:
        os.close(master)
        os.close(slave)


def test_a_configured_serial_pins_the_device_and_an_empty_one_is_refused() -> None:
    config = parse_config("""
[[power.devices]]
driver = "vedirect"
port = "/dev/serial/by-id/usb-VictronEnergy_BV_VE_Direct_cable_X-if00-port0"
serial = "HQ2132ABCDE"
[[power.devices]]
driver = "renogy"
port = "/dev/ttyUSB1"
""")
    pinned, plain = (device_reader(d) for d in config.power.devices)
    assert isinstance(pinned, PinnedSource) and pinned.device_id == "HQ2132ABCDE"
    assert not isinstance(plain, PinnedSource)
    with pytest.raises(ConfigError, match=r"power\.devices\.0\.serial"):
        parse_config('[[power.devices]]\nport = "/dev/ttyUSB0"\nserial = ""\n')
