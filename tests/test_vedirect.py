"""VE.Direct TEXT: checksums, HEX interleave, corruption, field mapping, block merging."""

from __future__ import annotations

import random
import string

import pytest

from edgeagent.power.vedirect import VEDirectDecoder, VEDirectDevice, block_to_reading, encode_block

MPPT = [("PID", "0xA053"), ("FW", "159"), ("SER#", "HQ2132ABCDE"), ("V", "13250"), ("I", "1200"),
        ("VPV", "17500"), ("PPV", "16"), ("CS", "3"), ("MPPT", "2"), ("OR", "0x00000000"),
        ("ERR", "0"), ("LOAD", "ON"), ("IL", "300"), ("H19", "1234"), ("H20", "12"),
        ("H21", "35"), ("H22", "20"), ("H23", "40"), ("HSDS", "17")]
BMV_LIVE = [("PID", "0x204"), ("V", "12800"), ("I", "-3500"), ("P", "-45"), ("CE", "-12500"),
            ("SOC", "876"), ("TTG", "-1"), ("Alarm", "OFF"), ("Relay", "OFF"), ("AR", "0"),
            ("BMV", "702"), ("FW", "0308")]
BMV_HISTORY = [("H1", "-50000"), ("H2", "-20000"), ("H4", "42"), ("H17", "3456"),
               ("H18", "4012")]


def hex_frame(command: str, payload: str) -> bytes:
    """A valid async HEX frame: command nibble, payload bytes, checksum making the sum 0x55."""
    check = (0x55 - int(command, 16) - sum(bytes.fromhex(payload))) % 256
    return f":{command}{payload}{check:02X}\n".encode()


REGISTER_1050 = hex_frame("A", "501000" + "00" * 8)  # an async history record, BlueSolar style


# The end of the block before: the decoder trusts a block only once it has seen where the
# previous one ended (a real line always has one).
LEAD_IN = b"\r\nChecksum\t\x42"


def decode(data: bytes) -> tuple[VEDirectDecoder, list[dict[str, str]]]:
    decoder = VEDirectDecoder()
    return decoder, decoder.feed(LEAD_IN + data)


def test_a_valid_block_sums_to_zero_and_decodes() -> None:
    raw = encode_block(MPPT)
    assert sum(raw) % 256 == 0
    decoder, blocks = decode(raw)
    assert blocks == [dict(MPPT)]
    assert decoder.stats.blocks_ok == 1 and decoder.stats.blocks_bad_checksum == 0


def test_the_checksum_byte_is_computed_as_the_protocol_says() -> None:
    raw = b"\r\nPID\t0xA053\r\nV\t12800\r\nChecksum\t"
    assert encode_block([("PID", "0xA053"), ("V", "12800")]) == raw + bytes([(-sum(raw)) % 256])


def test_a_wrong_checksum_drops_the_whole_block() -> None:
    raw = bytearray(encode_block(MPPT))
    raw[raw.index(b"13250") + 1] = ord("4")  # one digit flipped on the line
    decoder, blocks = decode(bytes(raw) + encode_block(BMV_LIVE))
    assert blocks == [dict(BMV_LIVE)]
    assert decoder.stats.blocks_bad_checksum == 1


def block_with_checksum(target: int) -> bytes:
    """A real-looking block whose checksum byte is ``target``, by tuning a free-text value."""
    letters = string.ascii_letters
    for n in range(len(letters) ** 2):
        serial = "HQ" + letters[n % 52] * 3 + letters[n // 52] * 2
        raw = encode_block([("PID", "0xA053"), ("SER#", serial), ("V", "12800")])
        if raw[-1] == target:
            return raw
    raise AssertionError(target)


@pytest.mark.parametrize("special", [b":", b"\r", b"\n", b"\t", b"\x00", b"\xff"])
def test_the_checksum_byte_is_data_even_when_it_looks_like_a_delimiter(special: bytes) -> None:
    raw = block_with_checksum(special[0])
    decoder, blocks = decode(raw + encode_block(MPPT))
    assert len(blocks) == 2 and decoder.stats.blocks_bad_checksum == 0
    assert decoder.stats.hex_frames == 0


def test_hex_frames_after_the_checksum_and_inside_a_block_are_skipped() -> None:
    block = encode_block(MPPT)
    cut = block.index(b"\r\nERR")
    interrupted = block[:cut] + b":ADBED001A0D5C\n:A0202000200000045\n" + block[cut:]
    stream = encode_block(BMV_LIVE) + REGISTER_1050 + interrupted
    decoder, blocks = decode(stream)
    assert blocks == [dict(BMV_LIVE), dict(MPPT)]
    assert decoder.stats.hex_frames == 3 and decoder.stats.blocks_bad_checksum == 0


def test_hex_frames_follow_the_0x55_rule() -> None:
    assert hex_frame("1", "") == b":154\n"  # ping, from the VE.Direct FAQ
    assert hex_frame("7", "001000") == b":70010003E\n"  # get 0x0100, from the FAQ


def test_an_invalid_hex_frame_inside_a_block_drops_the_block() -> None:
    block = encode_block(MPPT)
    cut = block.index(b"\r\nERR")
    for bogus in (b":A0102000544\n", b":XYZ\n", b":\n"):  # bad checksum, not hex, empty
        decoder, blocks = decode(block[:cut] + bogus + block[cut:] + encode_block(BMV_LIVE))
        assert blocks == [dict(BMV_LIVE)], bogus
        assert decoder.stats.hex_bad == 1


def test_a_runaway_hex_frame_is_bounded() -> None:
    decoder, blocks = decode(b":" + b"A" * 500 + encode_block(MPPT) + encode_block(MPPT))
    assert blocks  # the decoder came back to TEXT instead of swallowing it for ever
    assert decoder.stats.corrupt >= 1


def test_a_corrupt_byte_drops_the_block_and_the_next_one_decodes() -> None:
    raw = bytearray(encode_block(MPPT))
    raw[raw.index(b"VPV")] = 0x80
    decoder, blocks = decode(bytes(raw) + encode_block(BMV_LIVE))
    assert blocks == [dict(BMV_LIVE)]
    assert decoder.stats.corrupt == 1


def test_a_truncated_first_block_is_ignored_wherever_it_was_cut() -> None:
    raw = encode_block(MPPT)
    trailer = len(b"Checksum\t") + 1
    for cut in range(1, len(raw)):
        # A cut inside "Checksum\t<byte>" leaves no block end to get in step with: the whole
        # block after it is then what puts the decoder in step.
        expected = [dict(MPPT)] if cut <= len(raw) - trailer else []
        assert VEDirectDecoder().feed(raw[cut:] + raw) == expected, cut


def test_the_first_block_after_a_loss_of_sync_only_serves_to_get_in_step() -> None:
    decoder = VEDirectDecoder()
    assert decoder.feed(encode_block(MPPT)) == []  # where did it start? we cannot know
    assert decoder.feed(encode_block(MPPT)) == [dict(MPPT)]
    assert decoder.feed(b"noise" + encode_block(MPPT) + encode_block(BMV_LIVE)) == [
        dict(BMV_LIVE)]


def test_splitting_the_stream_anywhere_gives_the_same_blocks() -> None:
    stream = encode_block(BMV_LIVE) + REGISTER_1050 + encode_block(BMV_HISTORY)
    stream = LEAD_IN + stream
    expected = VEDirectDecoder().feed(stream)
    assert len(expected) == 2
    for cut in range(1, len(stream)):
        decoder = VEDirectDecoder()
        assert decoder.feed(stream[:cut]) + decoder.feed(stream[cut:]) == expected


def test_random_garbage_never_raises_and_valid_blocks_survive_it() -> None:
    rng = random.Random(7)
    decoder = VEDirectDecoder()
    found = 0
    for _ in range(300):
        garbage = bytes(rng.randrange(256) for _ in range(rng.randrange(200)))
        found += len(decoder.feed(garbage + encode_block(MPPT) * 3))
    # A burst of noise costs the block after it (needed to get back in step), not more.
    assert found >= 2 * 300 * 0.95
    assert decoder.stats.corrupt > 0


def test_mppt_fields_map_to_the_normalized_reading() -> None:
    r = block_to_reading(dict(MPPT), ts=1.0)
    assert r.driver == "vedirect" and r.product == "SmartSolar MPPT 75/15"
    assert r.device_id == "HQ2132ABCDE" and r.firmware == "159"
    assert r.battery_voltage_v == pytest.approx(13.25)
    assert r.battery_current_a == pytest.approx(1.2)
    assert r.battery_power_w == pytest.approx(15.9)  # V x I: an MPPT sends no P
    assert r.pv_voltage_v == pytest.approx(17.5) and r.pv_power_w == 16
    assert r.pv_current_a == pytest.approx(16 / 17.5, abs=1e-3)
    assert r.charger_state == "bulk" and r.error_code == 0
    assert r.load_on is True and r.load_current_a == pytest.approx(0.3)
    assert r.yield_total_kwh == pytest.approx(12.34)
    assert r.yield_today_kwh == pytest.approx(0.12)
    assert r.yield_yesterday_kwh == pytest.approx(0.2)
    assert r.max_power_today_w == 35
    assert r.battery_soc_pct is None  # absent means unknown, never 0
    assert "battery_soc_pct" not in r.to_dict()


def test_bmv_blocks_merge_into_one_state() -> None:
    device = VEDirectDevice()
    decoder = VEDirectDecoder()
    readings = [device.update(b) for b in decoder.feed(LEAD_IN + encode_block(BMV_LIVE)
                                                        + encode_block(BMV_HISTORY))]
    first, merged = readings
    assert first.cycles is None and merged.cycles == 42
    assert merged.battery_soc_pct == pytest.approx(87.6)
    assert merged.battery_power_w == -45
    assert merged.consumed_ah == pytest.approx(12.5)
    assert merged.time_to_go_min is None  # -1: infinite
    assert merged.firmware == "0308"  # kept as a string: v3.08
    assert merged.product == "BMV-702"
    assert merged.charged_kwh == pytest.approx(40.12)
    assert merged.discharged_kwh == pytest.approx(34.56)


def test_unknown_labels_and_unparsable_values_are_ignored() -> None:
    r = block_to_reading({"V": "abc", "NEWFIELD": "1", "CS": "99", "PID": "0xBEEF"}, ts=0)
    assert r.battery_voltage_v is None
    assert r.charger_state == "unknown_99" and r.product == "0xBEEF"
