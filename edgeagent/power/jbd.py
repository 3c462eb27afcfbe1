"""JBD / Xiaoxiang / Overkill "Smart BMS" UART protocol (research/serial-protocols.md §3.1).

Response frame: ``DD | register | status | length | data | checksum (u16 BE) | 77``; the
checksum is ``0x10000 - sum(status, length, data)``. The parse follows the length byte (some
firmware appends bytes after the temperatures) and drops a frame whole unless its start byte,
length, checksum and end byte all agree. Read-only: only the read requests for registers 0x03
(basic info), 0x04 (cell voltages) and 0x05 (model) are ever built here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from edgeagent.power.reading import Reading

START, END = 0xDD, 0x77
READ = 0xA5
BASIC_INFO, CELL_VOLTAGES, MODEL = 0x03, 0x04, 0x05
REGISTERS = (BASIC_INFO, CELL_VOLTAGES, MODEL)
# Plausible data lengths: a stray 0xDD must not make the decoder wait for 255 bytes.
LENGTHS = {BASIC_INFO: (23, 96), CELL_VOLTAGES: (2, 64), MODEL: (1, 64)}


def _checksum(payload: bytes) -> int:
    return (0x10000 - sum(payload)) & 0xFFFF


def encode_request(register: int) -> bytes:
    """A read request; the only kind of frame this module builds for a real BMS."""
    if register not in REGISTERS:
        raise ValueError(f"register 0x{register:02X} is not a read-only JBD register")
    body = bytes([register, 0])
    return bytes([START, READ]) + body + _checksum(body).to_bytes(2, "big") + bytes([END])


def encode_response(register: int, data: bytes, status: int = 0) -> bytes:
    """A response as a BMS sends it: for emulators and tests."""
    body = bytes([status, len(data)]) + data
    return bytes([START, register]) + body + _checksum(body).to_bytes(2, "big") + bytes([END])


@dataclass(frozen=True)
class Frame:
    register: int
    status: int
    data: bytes


@dataclass
class JBDStats:
    frames_ok: int = 0
    frames_bad: int = 0  # checksum, end byte or status errors
    implausible: int = 0  # valid frame, impossible content (the register byte has no checksum)
    bytes: int = 0

    @property
    def valid(self) -> int:
        return self.frames_ok

    @property
    def invalid(self) -> int:
        return self.frames_bad + self.implausible


class JBDDecoder:
    """Finds valid response frames in a byte stream (garbage, echoes and partial frames are
    skipped; a request echoed by a half-duplex RS485 adapter is not a response)."""

    def __init__(self) -> None:
        self.stats = JBDStats()
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self.stats.bytes += len(data)
        self._buf += data
        frames: list[Frame] = []
        buf = self._buf
        while True:
            start = buf.find(START)
            if start < 0:
                buf.clear()
                break
            del buf[:start]
            check = _check_frame(buf)
            if check == _INCOMPLETE:
                # A damaged length byte must not stall the line: if a complete, valid frame
                # starts further on, what comes before it was not a frame.
                later = next((i for i in range(1, len(buf)) if buf[i] == START
                              and _check_frame(buf[i:]) > 0), None)
                if later is None:
                    break
                self.stats.frames_bad += 1
                del buf[:later]
                continue
            if check == _NOT_A_FRAME:
                del buf[:1]
                continue
            if check == _BAD:
                self.stats.frames_bad += 1
                del buf[:1]
                continue
            frame = bytes(buf[:check])
            del buf[:check]
            if frame[2] != 0:  # the BMS says it could not answer
                self.stats.frames_bad += 1
                continue
            self.stats.frames_ok += 1
            frames.append(Frame(frame[1], frame[2], frame[4:-3]))
        return frames


_INCOMPLETE, _NOT_A_FRAME, _BAD = 0, -1, -2


def _check_frame(buf: bytes | bytearray) -> int:
    """The length of the valid frame at the start of ``buf``, or why there is none."""
    if len(buf) < 4:
        return _INCOMPLETE
    register, status, length = buf[1], buf[2], buf[3]
    low, high = LENGTHS.get(register, (1, 0))
    if status not in (0x00, 0x80) or not low <= length <= high:
        return _NOT_A_FRAME  # not a response header (an echoed request, noise)
    total = length + 7
    if len(buf) < total:
        return _INCOMPLETE
    checksum = _checksum(bytes(buf[2 : 4 + length]))
    if buf[total - 1] != END or int.from_bytes(buf[total - 3 : total - 1], "big") != checksum:
        return _BAD
    return total


@dataclass(frozen=True)
class BasicInfo:
    voltage_v: float
    current_a: float  # negative = discharging
    remaining_ah: float
    capacity_ah: float
    cycles: int
    protection: int  # bit field: cell/pack over/under-voltage, temperatures, currents, ...
    firmware: str
    soc_pct: float
    fets: int  # bit 0 charge MOS on, bit 1 discharge MOS on
    cells: int
    temperatures_c: list[float]


def parse_basic_info(data: bytes) -> BasicInfo:
    """Register 0x03 in SI units; raises ValueError when the data is too short."""
    if len(data) < 23:
        raise ValueError(f"basic info needs >= 23 bytes, got {len(data)}")
    volts, amps, remaining, full, cycles = struct.unpack_from(">HhHHH", data, 0)
    protection = struct.unpack_from(">H", data, 16)[0]
    software, rsoc, fets, cells, ntcs = data[18], data[19], data[20], data[21], data[22]
    if len(data) < 23 + 2 * ntcs:
        raise ValueError(f"basic info announces {ntcs} temperatures but is {len(data)} bytes")
    if rsoc > 100 or not 0 < cells <= 32:
        raise ValueError(f"implausible basic info: SOC {rsoc} %, {cells} cells")
    temps = [(struct.unpack_from(">H", data, 23 + 2 * i)[0] - 2731) / 10 for i in range(ntcs)]
    return BasicInfo(volts / 100, amps / 100, remaining / 100, full / 100, cycles, protection,
                     f"{software >> 4}.{software & 0x0F}", float(rsoc), fets, cells, temps)


def parse_cells(data: bytes) -> list[float]:
    """Register 0x04: one u16 per cell, mV; a cell outside 0-5 V is not a LiFePO4/Li-ion cell."""
    if len(data) % 2:
        raise ValueError("cell voltage data has an odd length")
    cells = [v / 1000 for v in struct.unpack(f">{len(data) // 2}H", data)]
    if not all(0.0 < v < 5.0 for v in cells):
        raise ValueError(f"implausible cell voltages {cells}")
    return cells


def parse_model(data: bytes) -> str:
    """Register 0x05: the hardware/model string, printable ASCII."""
    text = data.decode("ascii", "replace").strip("\x00 ")
    if not text or not text.isprintable() or "\ufffd" in text:
        raise ValueError(f"implausible model string {data!r}")
    return text


class JBDDevice:
    """One BMS's state merged from its basic-info, cell and model frames."""

    def __init__(self, device_id: str | None = None, stats: JBDStats | None = None) -> None:
        self.device_id = device_id
        self.stats = stats or JBDStats()
        self.info: BasicInfo | None = None
        self.cells: list[float] | None = None
        self.model: str | None = None

    def update(self, frame: Frame, ts: float = 0.0) -> Reading:
        """Merge a frame; content that fails to parse is counted and leaves the state as it was
        (the checksum does not cover the register byte, so content must be checked too)."""
        try:
            if frame.register == BASIC_INFO:
                self.info = parse_basic_info(frame.data)
            elif frame.register == CELL_VOLTAGES:
                self.cells = parse_cells(frame.data)
            else:
                self.model = parse_model(frame.data)
        except ValueError:
            self.stats.implausible += 1
        return self.reading(ts)

    def reading(self, ts: float) -> Reading:
        info = self.info
        if info is None:
            return Reading(ts=ts, driver="jbd", device_id=self.device_id, product=self.model,
                           cell_voltages_v=self.cells)
        return Reading(
            ts=ts, driver="jbd", device_id=self.device_id, product=self.model,
            firmware=info.firmware, battery_voltage_v=info.voltage_v,
            battery_current_a=info.current_a,
            battery_power_w=round(info.voltage_v * info.current_a, 3),
            battery_soc_pct=info.soc_pct,
            battery_temp_c=info.temperatures_c[0] if info.temperatures_c else None,
            remaining_ah=info.remaining_ah, capacity_ah=info.capacity_ah, cycles=info.cycles,
            cell_voltages_v=self.cells,
        )
