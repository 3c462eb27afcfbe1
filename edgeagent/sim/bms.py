"""JBD and Daly BMS emulators: they answer the read requests our driver sends, on an emulated
line, with frames built by the drivers' own encoders from the physical state.

Only reads are answered (JBD 0x03/0x04/0x05, Daly 0x90-0x95); anything else is ignored, as a
BMS ignores what it does not understand. A sleeping Daly (``asleep``) answers every request with
the all-zero frame real ones send (python-daly-bms #48, research note §3.2).
"""

from __future__ import annotations

import math
import os
import struct

from edgeagent.power import daly, jbd
from edgeagent.sim.device import DeviceState, PolledDevice, StateSource, fit
from edgeagent.sim.line import Faults

JBD_READ_LEN = 7  # DD A5 register 00 checksum(2) 77
PRODUCTION_DATE = (24 << 9) | (3 << 5) | 15  # 2024-03-15, JBD's packed date


def _skip_to(buf: bytearray, start: int) -> bool:
    """Drop what comes before the next ``start`` byte (all of it if there is none)."""
    at = buf.find(start)
    del buf[: len(buf) if at < 0 else at]
    return at >= 0


def jbd_basic_info(s: DeviceState) -> bytes:
    """Register 0x03 (research note §3.1): two NTCs, both at the battery's temperature."""
    temps = [fit(s.temp_c * 10 + 2731, 0, 0xFFFF)] * 2
    return struct.pack(
        ">HhHHHHHHHBBBBB", fit(s.battery_voltage_v * 100, 0, 0xFFFF),
        fit(s.battery_current_a * 100, -0x8000, 0x7FFF), fit(s.remaining_ah * 100, 0, 0xFFFF),
        fit(s.capacity_ah * 100, 0, 0xFFFF), fit(s.cycles, 0, 0xFFFF), PRODUCTION_DATE,
        0, 0, 0,  # no cell balancing, no protection active
        0x21, fit(s.soc_pct, 0, 100), 0b11, fit(s.cells, 1, 32), len(temps),
    ) + struct.pack(f">{len(temps)}H", *temps)


def jbd_cells(s: DeviceState) -> bytes:
    cells = fit(s.cells, 1, 32)
    return struct.pack(f">{cells}H", *[fit(s.cell_voltage_v * 1000, 0, 0xFFFF)] * cells)


class JBDEmulator(PolledDevice):
    """A JBD / Xiaoxiang BMS: answers basic info, cell voltages and the model string."""

    def __init__(self, state: StateSource, *, port: str | os.PathLike[str] | None = None,
                 faults: Faults | None = None, model: str = "JBD-SP04S020A-L4S") -> None:
        super().__init__(state, port=port, faults=faults)
        self.model = model
        self.requests: list[int] = []  # registers asked for, in order
        self._buf = bytearray()

    def handle(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        answers: list[bytes] = []
        while _skip_to(buf, jbd.START) and len(buf) >= JBD_READ_LEN:
            request = bytes(buf[:JBD_READ_LEN])
            register = request[2]
            if register in jbd.REGISTERS and request == jbd.encode_request(register):
                del buf[:JBD_READ_LEN]
                self.requests.append(register)
                answers.append(jbd.encode_response(register, self._data(register)))
            else:  # a write, or noise: not a read request
                del buf[:1]
        return answers

    def _data(self, register: int) -> bytes:
        if register == jbd.MODEL:
            return self.model.encode("ascii")
        s = self.state()
        return jbd_basic_info(s) if register == jbd.BASIC_INFO else jbd_cells(s)


def daly_frames(data_id: int, s: DeviceState) -> list[bytes]:
    """The 8-byte data of the answer(s) to one Daly read; cells come three to a frame."""
    cells = fit(s.cells, 1, 48)
    cell_mv = fit(s.cell_voltage_v * 1000, 0, 0xFFFF)
    amps = s.battery_current_a
    if data_id == daly.SOC:  # current: 30000 offset, above it is discharging
        return [struct.pack(">HHHH", fit(s.battery_voltage_v * 10, 0, 0xFFFF), 0,
                            fit(30000 - amps * 10, 0, 0xFFFF), fit(s.soc_pct * 10, 0, 1000))]
    if data_id == daly.CELL_RANGE:
        return [struct.pack(">HBHBxx", cell_mv, 1, cell_mv, cells)]
    if data_id == daly.TEMPERATURE_RANGE:
        t = fit(s.temp_c + 40, 0, 255)
        return [bytes([t, 1, t, 1, 0, 0, 0, 0])]
    if data_id == daly.MOSFET:
        mode = 1 if amps > 0.05 else 2 if amps < -0.05 else 0  # charging, discharging, idle
        return [struct.pack(">BBBBI", mode, 1, 1, fit(s.cycles, 0, 0xFF),
                            fit(s.remaining_ah * 1000, 0, 0xFFFF_FFFF))]
    if data_id == daly.STATUS:
        return [struct.pack(">BBBBBHB", cells, 1, int(s.pv_power_w > 0),
                            int(s.load_current_a > 0), 0, fit(s.cycles, 0, 0xFFFF), 0)]
    frames = []
    for number in range(1, math.ceil(cells / 3) + 1):
        volts = [cell_mv if (number - 1) * 3 + i < cells else 0 for i in range(3)]
        frames.append(bytes([number]) + struct.pack(">3H", *volts) + b"\x00")
    return frames


class DalyEmulator(PolledDevice):
    """A Daly Smart BMS at address 0x01: answers 0x90-0x95 from host address 0x40 or 0x80.

    ``asleep`` (settable while running) makes it answer every request with all-zero data and a
    correct checksum, as a sleeping BMS does.
    """

    def __init__(self, state: StateSource, *, port: str | os.PathLike[str] | None = None,
                 faults: Faults | None = None, asleep: bool = False) -> None:
        super().__init__(state, port=port, faults=faults)
        self.asleep = asleep
        self.requests: list[int] = []  # data ids asked for, in order
        self._buf = bytearray()

    def handle(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        answers: list[bytes] = []
        while _skip_to(buf, daly.START) and len(buf) >= daly.FRAME_LEN:
            frame = bytes(buf[:daly.FRAME_LEN])
            data_id = frame[2]
            if (frame[1] != daly.BMS_ADDRESS and frame[3] == 8 and data_id in daly.READS
                    and sum(frame[:12]) & 0xFF == frame[12]):
                del buf[:daly.FRAME_LEN]
                self.requests.append(data_id)
                answers += self._answer(data_id)
            else:  # our own address (an echo), a write, or noise
                del buf[:1]
        return answers

    def _answer(self, data_id: int) -> list[bytes]:
        if self.asleep:
            return [daly.encode(daly.BMS_ADDRESS, data_id, bytes(8))]
        return [daly.encode(daly.BMS_ADDRESS, data_id, d)
                for d in daly_frames(data_id, self.state())]
