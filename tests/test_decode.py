"""`edgeagent decode`: a capture in, one JSON reading per valid block out, a summary on stderr."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from conftest import edgeagent_command
from edgeagent.power.vedirect import encode_block

LIVE = [("PID", "0xA389"), ("V", "13120"), ("I", "-2500"), ("P", "-33"), ("SOC", "815"),
        ("TTG", "1234"), ("FW", "0405")]
HISTORY = [("H4", "17"), ("H17", "1200"), ("H18", "1350")]


def run_decode(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*edgeagent_command(), "decode", *args], input=stdin,
                          capture_output=True, timeout=60)


def capture() -> bytes:
    bad = bytearray(encode_block(LIVE))
    bad[bad.index(b"13120") + 2] ^= 0x01  # a bit error: this block must not come out
    return (encode_block(HISTORY)[9:]  # the capture started in the middle of a block
            + encode_block(LIVE) + b":A0102000543\n" + encode_block(HISTORY) + bytes(bad)
            + encode_block(LIVE))


def test_decode_a_capture_file(tmp_path: Path) -> None:
    path = tmp_path / "capture.bin"
    path.write_bytes(capture())
    result = run_decode("--driver", "vedirect", str(path))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert len(lines) == 3
    assert lines[0]["battery_soc_pct"] == 81.5 and "cycles" not in lines[0]
    assert lines[1]["cycles"] == 17 and lines[1]["battery_soc_pct"] == 81.5  # merged state
    assert all(line["driver"] == "vedirect" for line in lines)
    summary = result.stderr.decode()
    assert summary.startswith("3 valid, 1 invalid")
    assert "blocks bad checksum 1" in summary and "hex frames 1" in summary


def test_decode_reads_standard_input() -> None:
    result = run_decode("--driver", "vedirect", stdin=encode_block(LIVE) * 2)
    assert result.returncode == 0
    # the capture starts exactly at a block (CR LF PID): both blocks count
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["battery_voltage_v"] for line in lines] == [13.12, 13.12]


def test_unknown_driver_and_missing_file_are_clear_errors(tmp_path: Path) -> None:
    result = run_decode("--driver", "nope", stdin=b"")
    assert result.returncode == 2 and b"vedirect" in result.stderr
    result = run_decode("--driver", "vedirect", str(tmp_path / "missing.bin"))
    assert result.returncode == 2 and b"Traceback" not in result.stderr


def test_decode_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    path = tmp_path / "capture.bin"
    path.write_bytes(encode_block(LIVE) * 20000)
    result = subprocess.run(f"{' '.join(edgeagent_command())} decode --driver vedirect "
                            f"< {path} | head -1", shell=True, capture_output=True, timeout=120)
    assert result.returncode == 0
    assert result.stdout.count(b"\n") == 1
    assert b"Traceback" not in result.stderr
