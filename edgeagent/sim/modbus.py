"""EPEver Tracer and Renogy Rover emulators: Modbus RTU responders on an emulated line.

The register values are the physical state encoded with the inverse of the scaling in
``edgeagent.power.modbus`` (research note §2), so our driver must read back what the state
says. The RTU framing is written here from the Modbus spec (CRC-16/Modbus, exception 01 for a
function the device does not serve, 02 for an undefined address, silence for another unit id)
and shares no code with pymodbus, which the driver uses.
"""

from __future__ import annotations

import os
import struct

from edgeagent.sim.device import DeviceState, PolledDevice, Stage, StateSource, fit
from edgeagent.sim.line import Faults

ILLEGAL_FUNCTION, ILLEGAL_ADDRESS, ILLEGAL_VALUE = 0x01, 0x02, 0x03
REQUEST_LEN = 8  # unit, function, address (2), count (2), CRC (2)
Tables = dict[int, dict[int, int]]  # function code -> address -> register value


def crc16(data: bytes) -> int:
    """CRC-16/Modbus: init 0xFFFF, reflected polynomial 0xA001; sent low byte first."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def rtu_frame(body: bytes) -> bytes:
    return body + crc16(body).to_bytes(2, "little")


class ModbusDevice(PolledDevice):
    """An RTU slave answering reads of its register ``tables`` (function 03 and/or 04).

    Requests are found by their CRC: an 8-byte read (or single write) request with a valid CRC
    is answered, anything else is skipped byte by byte, as a device resynchronises on a noisy
    bus. Every request for this unit is kept in ``requests``.
    """

    def __init__(self, state: StateSource, *, unit: int = 1,
                 port: str | os.PathLike[str] | None = None,
                 faults: Faults | None = None) -> None:
        super().__init__(state, port=port, faults=faults)
        self.unit = unit
        self.requests: list[bytes] = []
        self._buf = bytearray()

    def tables(self, s: DeviceState) -> Tables:
        raise NotImplementedError

    def handle(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        answers: list[bytes] = []
        while len(buf) >= REQUEST_LEN:
            if crc16(bytes(buf[:REQUEST_LEN])) != 0:  # a frame plus its CRC checks to 0
                del buf[:1]
                continue
            request = bytes(buf[:REQUEST_LEN])
            del buf[:REQUEST_LEN]
            answer = self._answer(request)
            if answer is not None:
                answers.append(answer)
        return answers

    def _answer(self, request: bytes) -> bytes | None:
        unit, function, address, count = struct.unpack(">BBHH", request[:6])
        if unit != self.unit:
            return None  # another device's request (or a broadcast): stay silent
        self.requests.append(request)
        table = self.tables(self.state()).get(function)
        if table is None:
            return self._exception(function, ILLEGAL_FUNCTION)
        if not 1 <= count <= 125:
            return self._exception(function, ILLEGAL_VALUE)
        addresses = range(address, address + count)
        if any(a not in table for a in addresses):
            return self._exception(function, ILLEGAL_ADDRESS)
        values = [table[a] for a in addresses]
        return rtu_frame(struct.pack(f">BBB{count}H", unit, function, 2 * count, *values))

    def _exception(self, function: int, code: int) -> bytes:
        return rtu_frame(bytes([self.unit, function | 0x80, code]))


def _s16(value: float) -> int:
    """A signed register: two's complement, saturated."""
    return fit(value, -0x8000, 0x7FFF) & 0xFFFF


def _u16(value: float) -> int:
    return fit(value, 0, 0xFFFF)


def _words(value: int, low_first: bool) -> tuple[int, int]:
    """A 32-bit value as two registers, in the device's word order."""
    low, high = value & 0xFFFF, (value >> 16) & 0xFFFF
    return (low, high) if low_first else (high, low)


# EPEver charging status D3-D2: 0 not charging, 1 float, 2 boost, 3 equalize (MPPT bulk = boost)
EPEVER_STAGES: dict[Stage, int] = {"off": 0, "bulk": 2, "absorption": 2, "float": 1}


def epever_registers(s: DeviceState) -> dict[int, int]:
    """Input registers (function 04); 32-bit values low word first, temperatures and the net
    battery current signed."""
    r: dict[int, int] = {}

    def u32(address: int, value: float) -> None:
        r[address], r[address + 1] = _words(fit(value, 0, 0xFFFF_FFFF), low_first=True)

    volts, temp = s.battery_voltage_v, s.temp_c
    charge_a, load_a = s.charge_current_a, s.load_current_a
    # Ratings of a Tracer 2210AN: 100 V PV, 20 A, 260 W on 12 V.
    r.update({0x3000: 10000, 0x3001: 2000, 0x3004: 1200, 0x3005: 2000, 0x3008: 2,
              0x300E: 2000})
    u32(0x3002, 26000)
    u32(0x3006, 26000)
    r.update({0x3100: _u16(s.pv_voltage_v * 100), 0x3101: _u16(s.pv_current_a * 100)})
    u32(0x3102, s.pv_power_w * 100)
    r.update({0x3104: _u16(volts * 100), 0x3105: _u16(charge_a * 100)})
    u32(0x3106, volts * charge_a * 100)
    r.update(dict.fromkeys(range(0x3108, 0x310C), 0))  # unused, read as zeros
    r.update({0x310C: _u16(volts * 100), 0x310D: _u16(load_a * 100)})
    u32(0x310E, volts * load_a * 100)
    r.update({0x3110: _s16(temp * 100), 0x3111: _s16(temp * 100), 0x3112: _s16(temp * 100),
              0x311A: fit(s.soc_pct, 0, 100), 0x311B: _s16(temp * 100), 0x311D: 1200})
    sun = s.pv_power_w > 0
    # 0x3201: D0 running, D3-D2 stage, D15-D14 1 = no input power; 0x3202: D0 load running.
    r.update({0x3200: 0, 0x3201: int(sun) | EPEVER_STAGES[s.stage] << 2 | (0 if sun else 1 << 14),
              0x3202: int(load_a > 0)})
    r.update({0x3300: _u16(s.pv_voltage_v * 100), 0x3301: _u16(s.pv_voltage_v * 100),
              0x3302: _u16(volts * 100), 0x3303: _u16(volts * 100)})
    for address in range(0x3304, 0x330C, 2):  # consumed energy: not measured here
        u32(address, 0)
    u32(0x330C, s.yield_today_kwh * 100)
    for address in range(0x330E, 0x3314, 2):  # this month, this year, total
        u32(address, s.yield_total_kwh * 100)
    u32(0x3314, 0)  # CO2 reduction
    r[0x331A] = _u16(volts * 100)
    r[0x331B], r[0x331C] = _words(fit(s.battery_current_a * 100, -0x8000_0000, 0x7FFF_FFFF)
                                  & 0xFFFF_FFFF, low_first=True)
    r.update({0x331D: _s16(temp * 100), 0x331E: _s16(temp * 100)})
    return r


class EPEverEmulator(ModbusDevice):
    """An EPEver Tracer: input registers over function 04 (115200 8N1 on a real one)."""

    def tables(self, s: DeviceState) -> Tables:
        return {4: epever_registers(s)}


# Rover charging state (low byte of 0x0120): 2 MPPT (bulk), 4 boost, 5 float.
RENOGY_STAGES: dict[Stage, int] = {"off": 0, "bulk": 2, "absorption": 4, "float": 5}


def _sign_magnitude(celsius: float) -> int:
    """Rover temperatures: bit 7 is the sign, the rest the magnitude (not two's complement)."""
    degrees = round(celsius)
    return 0x80 | min(-degrees, 0x7F) if degrees < 0 else min(degrees, 0x7F)


def renogy_registers(s: DeviceState, model: str, serial: int, unit: int) -> dict[int, int]:
    """Holding registers (function 03); 32-bit values high word first.

    The Rover reports charge and load current separately and the driver takes their difference,
    so they are set to give back the battery's net current exactly (a load the state leaves
    short is raised to match the discharge).
    """
    r: dict[int, int] = {0x000A: (12 << 8) | 40, 0x000B: (40 << 8) | 0}  # 12 V, 40 A controller
    text = model.encode("ascii")[:16].ljust(16)
    r.update({0x000C + i: int.from_bytes(text[2 * i : 2 * i + 2], "big") for i in range(8)})
    r.update({0x0014: 0x0001, 0x0015: 0x0402, 0x0016: 0x0001, 0x0017: 0x0100})  # v1.4.2, v1.1.0
    r[0x0018], r[0x0019] = _words(serial & 0xFFFF_FFFF, low_first=False)
    r[0x001A] = unit

    def u32(address: int, value: float) -> None:
        r[address], r[address + 1] = _words(fit(value, 0, 0xFFFF_FFFF), low_first=False)

    volts = s.battery_voltage_v
    battery_ca = fit(s.battery_current_a * 100, -0xFFFF, 0xFFFF)
    charge_ca = fit(max(battery_ca + s.load_current_a * 100, 0), 0, 0xFFFF)
    load_ca = fit(charge_ca - battery_ca, 0, 0xFFFF)
    temp = _sign_magnitude(s.temp_c)
    r.update({
        0x0100: fit(s.soc_pct, 0, 100), 0x0101: _u16(volts * 10), 0x0102: charge_ca,
        0x0103: temp << 8 | temp,  # controller (high byte) and battery (low byte)
        0x0104: _u16(volts * 10), 0x0105: load_ca, 0x0106: _u16(volts * load_ca / 100),
        0x0107: _u16(s.pv_voltage_v * 10), 0x0108: _u16(s.pv_current_a * 100),
        0x0109: _u16(s.pv_power_w), 0x010A: 0,
        0x010B: _u16(volts * 10), 0x010C: _u16(volts * 10),  # today's min / max voltage
        0x010D: charge_ca, 0x010E: load_ca,  # today's max charge / discharge current
        0x010F: _u16(s.max_power_today_w), 0x0110: _u16(volts * load_ca / 100),
        0x0111: 0, 0x0112: 0,  # Ah today: not measured here
        0x0113: _u16(s.yield_today_kwh * 1000),  # Wh, as real units report (renogy-klient)
        0x0114: 0, 0x0115: _u16(s.day), 0x0116: 0, 0x0117: _u16(s.cycles),
        0x0120: (0x8000 if s.load_current_a > 0 else 0) | RENOGY_STAGES[s.stage],
    })
    for address in (0x0118, 0x011A, 0x011E):  # total charge / discharge Ah, consumption
        u32(address, 0)
    u32(0x011C, s.yield_total_kwh * 1000)
    u32(0x0121, 0)  # no fault
    return r


class RenogyEmulator(ModbusDevice):
    """A Renogy Rover: holding registers over function 03 (9600 8N1 on a real one), with the
    product model (0x000C-0x0013) and serial number (0x0018-0x0019) of a real unit."""

    def __init__(self, state: StateSource, *, unit: int = 1,
                 port: str | os.PathLike[str] | None = None, faults: Faults | None = None,
                 model: str = "RNG-CTRL-RVR40", serial: int = 0x0134_5678) -> None:
        super().__init__(state, unit=unit, port=port, faults=faults)
        self.model = model
        self.serial = serial

    def tables(self, s: DeviceState) -> Tables:
        return {3: renogy_registers(s, self.model, self.serial, self.unit)}
