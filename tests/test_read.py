"""`edgeagent read` against devices on pseudo-terminals: a streaming charger and polled BMSes."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import tty
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from conftest import edgeagent_command
from edgeagent.power import daly, jbd
from edgeagent.power.vedirect import encode_block
from test_bms import DALY, JBD_BASIC


@contextmanager
def pty_device(behaviour: Callable[[int, threading.Event], None]) -> Iterator[str]:
    master, slave = os.openpty()
    tty.setraw(slave)
    tty.setraw(master)
    stop = threading.Event()
    thread = threading.Thread(target=behaviour, args=(master, stop), daemon=True)
    thread.start()
    try:
        yield os.ttyname(slave)
    finally:
        stop.set()
        thread.join(timeout=5)
        os.close(master)
        os.close(slave)


def read(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*edgeagent_command(), "read", *args], capture_output=True, text=True,
                          timeout=60)


def test_read_vedirect_streams_count_readings() -> None:
    block = encode_block([("PID", "0xA053"), ("V", "12950"), ("I", "850"), ("PPV", "14"),
                          ("VPV", "17900"), ("CS", "3"), ("SER#", "HQ1234")])

    def charger(fd: int, stop: threading.Event) -> None:
        while not stop.wait(0.05):
            os.write(fd, block)

    with pty_device(charger) as port:
        result = read("--driver", "vedirect", "--port", port, "--count", "2", "--json")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 2
    assert lines[0]["device_id"] == "HQ1234" and lines[0]["charger_state"] == "bulk"
    assert lines[0]["battery_voltage_v"] == 12.95 and lines[0]["pv_power_w"] == 14


def responder(answers: dict[bytes, bytes]) -> Callable[[int, threading.Event], None]:
    """A polled device: answers each known request, ignores anything else."""

    def serve(fd: int, stop: threading.Event) -> None:
        os.set_blocking(fd, False)
        buf = b""
        while not stop.wait(0.005):
            try:
                buf += os.read(fd, 256)
            except BlockingIOError:
                continue
            for request, answer in answers.items():
                if request in buf:
                    buf = buf.replace(request, b"", 1)
                    os.write(fd, answer)
    return serve


def test_read_jbd_asks_for_info_and_cells() -> None:
    cells = jbd.encode_response(jbd.CELL_VOLTAGES, bytes.fromhex("0CE4 0CE5 0CE6 0CE3"))
    answers = {jbd.encode_request(jbd.BASIC_INFO): JBD_BASIC,
               jbd.encode_request(jbd.CELL_VOLTAGES): cells,
               jbd.encode_request(jbd.MODEL): jbd.encode_response(jbd.MODEL, b"SP04S020-L4S-100A")}
    with pty_device(responder(answers)) as port:
        result = read("--driver", "jbd", "--port", port, "--json")
    assert result.returncode == 0, result.stderr
    r = json.loads(result.stdout)
    assert r["battery_soc_pct"] == 72.0 and r["cell_voltages_v"] == [3.3, 3.301, 3.302, 3.299]
    assert r["product"] == "SP04S020-L4S-100A"  # the model string, asked once


def test_read_daly_asks_for_each_frame() -> None:
    cells = daly.encode(1, daly.CELL_VOLTAGES, bytes.fromhex("01 0F01 0EE1 0EF0 00"))
    by_id = {frame[2]: frame for frame in DALY}
    answers = {daly.encode_request(i): by_id[i] for i in (0x90, 0x92, 0x93, 0x94)}
    answers[daly.encode_request(daly.CELL_VOLTAGES)] = cells
    with pty_device(responder(answers)) as port:
        result = read("--driver", "daly", "--port", port, "--json")
    assert result.returncode == 0, result.stderr
    r = json.loads(result.stdout)
    assert r["battery_voltage_v"] == 11.4 and r["battery_soc_pct"] == 49.5
    assert r["cell_voltages_v"] == [3.841, 3.809, 3.824]


def test_read_unknown_driver_and_missing_port() -> None:
    assert read("--driver", "nope", "--port", "/dev/null").returncode == 2
    result = read("--driver", "vedirect", "--port", "/dev/does-not-exist", "--timeout", "1")
    assert result.returncode == 1 and "Traceback" not in result.stderr
