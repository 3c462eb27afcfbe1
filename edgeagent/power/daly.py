"""Daly Smart BMS UART/RS485 protocol (research/serial-protocols.md §3.2).

Every frame is 13 bytes: ``A5 | address | data id | 08 | 8 data bytes | checksum`` where the
checksum is the low byte of the sum of the first 12. The BMS answers from address 0x01. Cell
voltages come in numbered frames of three. A sleeping BMS sends all-zero data (current would
decode as -3000 A): plausibility checks drop such frames instead of letting them into the state.
Read-only: only read requests are built here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from edgeagent.power.reading import Reading

START = 0xA5
BMS_ADDRESS = 0x01
HOST_ADDRESS = 0x40  # 0x80 on some adapters; the BMS answers either from 0x01
SOC, CELL_RANGE, TEMPERATURE_RANGE, MOSFET, STATUS, CELL_VOLTAGES = (
    0x90, 0x91, 0x92, 0x93, 0x94, 0x95)
READS = (SOC, CELL_RANGE, TEMPERATURE_RANGE, MOSFET, STATUS, CELL_VOLTAGES)
FRAME_LEN = 13


def encode(address: int, data_id: int, data: bytes = bytes(8)) -> bytes:
    if len(data) != 8:
        raise ValueError("Daly frames carry exactly 8 data bytes")
    head = bytes([START, address, data_id, 8]) + data
    return head + bytes([sum(head) & 0xFF])


def encode_request(data_id: int, address: int = HOST_ADDRESS) -> bytes:
    if data_id not in READS:
        raise ValueError(f"0x{data_id:02X} is not a read-only Daly request")
    return encode(address, data_id)


@dataclass(frozen=True)
class Frame:
    data_id: int
    data: bytes


@dataclass
class DalyStats:
    frames_ok: int = 0
    frames_bad: int = 0  # checksum errors
    implausible: int = 0  # valid checksum, impossible values (a sleeping BMS's zeros)
    bytes: int = 0

    @property
    def valid(self) -> int:
        return self.frames_ok

    @property
    def invalid(self) -> int:
        return self.frames_bad + self.implausible


class DalyDecoder:
    """Finds valid 13-byte response frames from the BMS in a byte stream."""

    def __init__(self) -> None:
        self.stats = DalyStats()
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self.stats.bytes += len(data)
        buf = self._buf
        buf += data
        frames: list[Frame] = []
        while True:
            start = buf.find(START)
            if start < 0:
                buf.clear()
                break
            del buf[:start]
            if len(buf) < FRAME_LEN:
                break
            if buf[1] != BMS_ADDRESS or buf[3] != 8:  # an echoed request, or noise
                del buf[:1]
                continue
            frame = bytes(buf[:FRAME_LEN])
            if sum(frame[:12]) & 0xFF != frame[12]:
                self.stats.frames_bad += 1
                del buf[:1]
                continue
            del buf[:FRAME_LEN]
            self.stats.frames_ok += 1
            frames.append(Frame(frame[2], frame[4:12]))
        return frames


class DalyDevice:
    """One BMS's state merged from its frames; implausible frames never reach it."""

    def __init__(self, device_id: str | None = None, stats: DalyStats | None = None) -> None:
        self.device_id = device_id
        self.stats = stats or DalyStats()
        self.voltage_v: float | None = None
        self.current_a: float | None = None
        self.soc_pct: float | None = None
        self.remaining_ah: float | None = None
        self.cycles: int | None = None
        self.cell_count: int | None = None
        self.temp_c: float | None = None
        self._cells: dict[int, float] = {}

    def update(self, frame: Frame, ts: float = 0.0) -> Reading:
        d = frame.data
        if not any(d):
            # A sleeping BMS answers every request with zeros (its checksum is valid): no frame
            # id has all-zero data in a real state (0x92 would be -40 degC from sensor 0, 0x93 an
            # empty pack, 0x94 a pack of 0 cells), so it is counted and never merged.
            self.stats.implausible += 1
            return self.reading(ts)
        if frame.data_id == SOC:
            volts, _, raw_current, soc = struct.unpack(">HHHH", d)
            # Above the 30000 offset is discharging (two readers agree); ours: + = charging.
            amps = (30000 - raw_current) / 10
            if 8.0 <= volts / 10 <= 100.0 and abs(amps) < 1000 and soc <= 1000:
                self.voltage_v, self.current_a, self.soc_pct = volts / 10, amps, soc / 10
            else:
                self.stats.implausible += 1
        elif frame.data_id == TEMPERATURE_RANGE:
            self.temp_c = float(d[0] - 40)
        elif frame.data_id == MOSFET:
            self.remaining_ah = struct.unpack_from(">I", d, 4)[0] / 1000
        elif frame.data_id == STATUS:
            self.cell_count = d[0] or None
            self.cycles = struct.unpack_from(">H", d, 5)[0]
        elif frame.data_id == CELL_VOLTAGES:
            number = d[0]
            for i, (mv,) in enumerate(struct.iter_unpack(">H", d[1:7])):
                index = (number - 1) * 3 + i
                if number >= 1 and 0 < mv < 5000:
                    self._cells[index] = mv / 1000
        return self.reading(ts)

    @property
    def cells(self) -> list[float] | None:
        """Cell voltages once every cell of the pack has been seen (needs the cell count)."""
        n = self.cell_count
        if not n or any(i not in self._cells for i in range(n)):
            return None
        return [self._cells[i] for i in range(n)]

    def reading(self, ts: float) -> Reading:
        power = (round(self.voltage_v * self.current_a, 3)
                 if self.voltage_v is not None and self.current_a is not None else None)
        return Reading(ts=ts, driver="daly", device_id=self.device_id,
                       battery_voltage_v=self.voltage_v, battery_current_a=self.current_a,
                       battery_power_w=power, battery_soc_pct=self.soc_pct,
                       battery_temp_c=self.temp_c, remaining_ah=self.remaining_ah,
                       cycles=self.cycles, cell_voltages_v=self.cells)
