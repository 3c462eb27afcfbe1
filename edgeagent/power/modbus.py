"""EPEver (Tracer) and Renogy (Rover) charge controllers over Modbus RTU, read with pymodbus.

Register maps, scaling and pitfalls: research/serial-protocols.md §2. Each driver reads a few
contiguous blocks (never scanning undefined addresses) and maps them to the normalized reading in
pure functions, so the decoding is testable without a bus. Read-only: no write function is used.
pymodbus (and the asyncio it brings, ~4 MB resident) is imported only when a Modbus charger is
opened: a site with VE.Direct or a BMS only does not pay for it.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from edgeagent.power.poller import PollError
from edgeagent.power.reading import Reading

if TYPE_CHECKING:
    from pymodbus.client import ModbusSerialClient

Registers = Sequence[int]

# pymodbus logs every unanswered request at ERROR: a sleeping controller would fill the journal
# every poll. Our own errors (ModbusReadError, the readers' counters) carry the reason instead.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


def _u32(low: int, high: int) -> int:
    return (high << 16) | low


def _s16(value: int) -> int:
    return value - 0x10000 if value & 0x8000 else value


def _percent(value: int) -> float | None:
    """A state of charge in integer %: above 100 it is not one (absent, never clamped)."""
    return float(value) if value <= 100 else None


def _s32(value: int) -> int:
    return value - 0x1_0000_0000 if value & 0x8000_0000 else value


# EPEver: input registers (function 04). 32-bit values are low word first.
EPEVER_BLOCKS = {  # start address -> register count
    0x3100: 0x12,  # PV, charger output, load, temperatures
    0x311A: 1,  # battery SOC, integer %
    0x3200: 3,  # battery / charging / discharging status
    0x330C: 8,  # generated energy today / month / year / total
    0x331A: 3,  # battery voltage, net battery current (signed 32-bit, + = charging)
}
EPEVER_CHARGING = {0: "off", 1: "float", 2: "absorption", 3: "equalize"}  # 2 = EPEver "boost"


def epever_reading(blocks: Mapping[int, Registers], ts: float,
                   device_id: str | None = None) -> Reading:
    live, soc, status, energy, battery = (blocks[a] for a in EPEVER_BLOCKS)
    charging = status[1]
    # D1 is "fault", D4 and up are specific faults; D0 running, D2-3 stage, D14-15 input state.
    faults = charging & 0x3FF2
    return Reading(
        ts=ts, driver="epever", device_id=device_id,
        pv_voltage_v=live[0] / 100, pv_current_a=live[1] / 100,
        pv_power_w=_u32(live[2], live[3]) / 100,
        load_voltage_v=live[0x0C] / 100, load_current_a=live[0x0D] / 100,
        load_power_w=_u32(live[0x0E], live[0x0F]) / 100,
        battery_temp_c=_s16(live[0x10]) / 100,
        battery_soc_pct=_percent(soc[0]),
        battery_voltage_v=battery[0] / 100,
        battery_current_a=_s32(_u32(battery[1], battery[2])) / 100,
        battery_power_w=round(battery[0] / 100 * _s32(_u32(battery[1], battery[2])) / 100, 3),
        charger_state="fault" if faults else EPEVER_CHARGING[(charging >> 2) & 0x3],
        error_code=faults,
        yield_today_kwh=_u32(energy[0], energy[1]) / 100,
        yield_total_kwh=_u32(energy[6], energy[7]) / 100,
    )


# Renogy Rover: holding registers (function 03). 32-bit values are high word first.
RENOGY_BLOCKS = {0x0100: 0x23}  # 0x0100..0x0122: live values, today's stats, state, faults
RENOGY_CHARGING = {0: "off", 1: "activated", 2: "bulk", 3: "equalize", 4: "absorption",
                   5: "float", 6: "current_limiting"}


def _sign_magnitude(byte: int) -> int:
    """Rover temperatures: bit 7 is a sign bit, not two's complement."""
    return -(byte & 0x7F) if byte & 0x80 else byte


def renogy_reading(blocks: Mapping[int, Registers], ts: float,
                   device_id: str | None = None) -> Reading:
    r = blocks[0x0100]
    battery_v = r[1] / 10
    charge_a = r[2] / 100
    load_a = r[5] / 100
    # The Rover reports charge current and load current separately; the battery sees both.
    net_a = round(charge_a - load_a, 2)
    state = r[0x20] & 0xFF
    faults = _u32(r[0x22], r[0x21])
    return Reading(
        ts=ts, driver="renogy", device_id=device_id,
        battery_soc_pct=_percent(r[0]), battery_voltage_v=battery_v, battery_current_a=net_a,
        battery_power_w=round(battery_v * net_a, 3),
        battery_temp_c=float(_sign_magnitude(r[3] & 0xFF)),
        load_voltage_v=r[4] / 10, load_current_a=load_a, load_power_w=float(r[6]),
        load_on=bool(r[0x20] & 0x8000),
        pv_voltage_v=r[7] / 10, pv_current_a=r[8] / 100, pv_power_w=float(r[9]),
        max_power_today_w=float(r[0x0F]),
        # Generation today: the manual says kWh/10000, real units report Wh (renogy-klient).
        yield_today_kwh=r[0x13] / 1000,
        cycles=r[0x17],
        charger_state="fault" if faults else RENOGY_CHARGING.get(state, f"unknown_{state}"),
        error_code=faults,
    )


# Renogy identity (function 03): product model, 16 ASCII bytes; serial number, u32 high word first.
RENOGY_IDENTITY_BLOCKS = {0x000C: 8, 0x0018: 2}


def renogy_identity(blocks: Mapping[int, Registers]) -> tuple[str | None, str | None]:
    """(serial number, product model) from the identity registers; None where implausible."""
    model_bytes = b"".join(r.to_bytes(2, "big") for r in blocks[0x000C])
    model = model_bytes.decode("ascii", "replace").strip("\x00 ")
    serial_regs = blocks[0x0018]
    serial = _u32(serial_regs[1], serial_regs[0])
    return (str(serial) if serial else None,
            model if model and model.isprintable() and "\ufffd" not in model else None)


RegisterMapping = Callable[[Mapping[int, Registers], float, str | None], Reading]
Identity = Callable[[Mapping[int, Registers]], tuple[str | None, str | None]]

MODBUS_DRIVERS: dict[str, tuple[int, dict[int, int], RegisterMapping, int,
                                tuple[dict[int, int], Identity] | None]] = {
    # name: (function code, blocks, mapping, default baud, identity blocks and their mapping)
    # EPEver's Modbus map has no serial number: the port's stable name identifies it.
    "epever": (4, EPEVER_BLOCKS, epever_reading, 115200, None),
    "renogy": (3, RENOGY_BLOCKS, renogy_reading, 9600, (RENOGY_IDENTITY_BLOCKS, renogy_identity)),
}


class ModbusReadError(PollError):
    """No valid answer (timeout, CRC, exception response): the caller marks data stale."""


class ModbusRefused(ModbusReadError):
    """The device answered with a Modbus exception: it does not have these registers."""


class ModbusCharger:
    """One controller on a serial port; ``poll()`` reads it once and returns a reading.

    The device's identity (serial number and model, where its register map has them) is read
    once per connection, so the reading's ``device_id`` names the device, not the port: a
    controller moved to another port keeps its id, and another one plugged into this port gets
    its own. Without an identity the id is ``<driver>@<port>#<unit>``.
    """

    def __init__(self, driver: str, port: str, *, unit: int = 1, baud: int | None = None,
                 timeout_s: float = 1.0, retries: int = 2) -> None:
        if driver not in MODBUS_DRIVERS:
            known = ", ".join(MODBUS_DRIVERS)
            raise ValueError(f"unknown Modbus driver {driver!r}; known: {known}")
        self.function, self.blocks, self.mapping, default_baud, self.identity_map = (
            MODBUS_DRIVERS[driver])
        self.driver = driver
        self.port = port
        self.unit = unit
        self.device_id: str | None = None
        self.product: str | None = None
        self._identified = False
        from pymodbus.client import ModbusSerialClient

        self.client: ModbusSerialClient = ModbusSerialClient(
            port, baudrate=baud or default_baud, timeout=timeout_s, retries=retries,
            reconnect_delay=0)

    def close(self) -> None:
        self.client.close()  # type: ignore[no-untyped-call]  # pymodbus leaves it untyped

    def _read_block(self, address: int, count: int) -> list[int]:
        from pymodbus.exceptions import ModbusException

        read = (self.client.read_input_registers if self.function == 4
                else self.client.read_holding_registers)
        try:
            response = read(address, count=count, device_id=self.unit)
        except ModbusException as exc:
            raise ModbusReadError(f"{self.port}: 0x{address:04X}: {exc}") from exc
        if response.isError():
            raise ModbusRefused(f"{self.port}: 0x{address:04X}: {response}")
        registers = list(response.registers)
        if len(registers) < count:
            raise ModbusReadError(f"{self.port}: 0x{address:04X}: short answer {registers}")
        return registers[:count]

    def _identify(self) -> None:
        """Read the identity registers: a device that refuses them keeps the port's name; a lost
        answer is asked again at the next poll (a pinned port stays stale until then)."""
        if self.identity_map is None:
            self._identified = True
            return
        blocks, mapping = self.identity_map
        try:
            self.device_id, self.product = mapping(
                {a: self._read_block(a, n) for a, n in blocks.items()})
        except ModbusRefused:
            self.device_id = self.product = None
        except ModbusReadError:
            return
        self._identified = True

    def poll(self) -> Reading:
        """One reading. ModbusReadError when the device did not answer (a missed poll);
        OSError when the port itself is gone or cannot be opened, so the caller closes it and
        reopens with backoff instead of hammering a vanished adapter."""
        if not self.client.connected:
            self._identified = False  # (re)connected: it may be another device now
            if not self.client.connect():
                raise OSError(errno.ENODEV, f"{self.port}: cannot open the port "
                              "(missing, busy or no permission)")
        try:
            blocks = {a: self._read_block(a, n) for a, n in self.blocks.items()}
        except ModbusReadError:
            if not os.path.exists(self.port):  # unplugged: pymodbus would quietly reconnect
                raise OSError(errno.ENODEV, f"{self.port}: the port vanished") from None
            raise
        if not self._identified:
            self._identify()
        reading = self.mapping(blocks, time.time(),
                               self.device_id or f"{self.driver}@{self.port}#{self.unit}")
        return reading.model_copy(update={"product": self.product}) if self.product else reading
