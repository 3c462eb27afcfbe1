"""An independent Modbus RTU responder on a pseudo-terminal, for the driver tests.

Written from the Modbus spec (CRC-16/Modbus, functions 03/04, exception 02), sharing no code
with pymodbus, which our drivers use: a framing bug on either side shows up as a failed read.
"""

from __future__ import annotations

import os
import struct
import threading
import tty


def crc16(data: bytes) -> int:
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def frame(body: bytes) -> bytes:
    return body + struct.pack("<H", crc16(body))


class RtuResponder:
    """Answers read requests for ``unit`` from ``tables[function][address]``."""

    def __init__(self, tables: dict[int, dict[int, int]], unit: int = 1) -> None:
        self.tables = tables
        self.unit = unit
        self.requests: list[bytes] = []
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)
        tty.setraw(self.master)
        self.port = os.ttyname(self._slave)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> RtuResponder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        os.close(self.master)
        os.close(self._slave)

    def _serve(self) -> None:
        buf = b""
        os.set_blocking(self.master, False)
        while not self._stop.wait(0.005):
            try:
                buf += os.read(self.master, 256)
            except BlockingIOError:
                continue
            while len(buf) >= 8:
                request, buf = buf[:8], buf[8:]
                if struct.unpack("<H", request[6:])[0] != crc16(request[:6]):
                    buf = b""  # lost sync: drop what we have, as a real device would
                    break
                self.requests.append(request)
                self._answer(request)

    def _answer(self, request: bytes) -> None:
        unit, function, address, count = struct.unpack(">BBHH", request[:6])
        if unit != self.unit:
            return  # not ours: stay silent
        table = self.tables.get(function)
        if table is None or any(a not in table for a in range(address, address + count)):
            os.write(self.master, frame(bytes([unit, function | 0x80, 0x02])))
            return
        values = [table[a] for a in range(address, address + count)]
        os.write(self.master, frame(struct.pack(f">BBB{count}H", unit, function, 2 * count,
                                                *values)))
