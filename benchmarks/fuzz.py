"""Fuzzing volume for every parser: random inputs and mutated valid streams, counted.

    python benchmarks/fuzz.py [--inputs 20000] [--seed 1] [--jobs N]

For each stream parser (VE.Direct, JBD, Daly: decoder + device) it runs ``--inputs`` random byte
strings and ``--inputs`` mutations of valid streams (bit flips, inserted and deleted bytes,
truncation, spliced frames), each fed in random pieces. For the Modbus mappings
(``epever_reading``, ``renogy_reading``) it runs ``--inputs`` random register blocks (edge values
mixed in) and ``--inputs`` ``Reading`` round trips through JSON.

- *crashes*: exceptions raised by a decoder, a device or a mapping (must be 0).
- *leaks*: a decoded frame that is neither one of the valid frames the stream was built from
  nor a frame whose own checksum verifies (an independent, deliberately simple re-implementation
  of each framing decides that); for Modbus, a field that differs from an independent decoding
  of the registers. Must be 0.
- *missed*: valid frames not decoded from streams that were only split, not damaged (must be 0).
- *altered*: frames whose checksum verifies but whose content a mutation changed (JBD's
  checksum does not cover the register byte; an 8-bit sum misses some double errors) that
  reached the device state; these pass any checksum check, so they are counted, not failed.

The run is deterministic for a given ``--seed`` and ``--inputs`` whatever ``--jobs`` is.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import re
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from edgeagent.power import daly, jbd, modbus, vedirect
from edgeagent.power.reading import Reading

CHUNK = 2000  # inputs per task


@dataclass
class Tally:
    inputs: int = 0
    bytes: int = 0
    frames: int = 0
    crashes: int = 0
    leaks: int = 0
    missed: int = 0
    altered: int = 0
    seconds: float = 0.0
    examples: list[str] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        for name in ("inputs", "bytes", "frames", "crashes", "leaks", "missed", "altered",
                     "seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.examples += other.examples[: 3 - len(self.examples)]

    def note(self, what: str, data: Any) -> None:
        if len(self.examples) < 3:
            self.examples.append(f"{what}: {data!r}"[:300])


def split(rng: random.Random, data: bytes) -> Iterator[bytes]:
    """Random split points: single bytes, a GPIO UART's few bytes, USB packets, whole files."""
    i = 0
    while i < len(data):
        size = rng.choice((1, rng.randrange(1, 16), rng.randrange(16, 64), 4096))
        yield data[i:i + size]
        i += size


def mutate(rng: random.Random, data: bytes, frames: list[bytes]) -> bytes:
    """One to four damages: bit flips, inserted or deleted bytes, truncation, a spliced-in piece
    of a valid frame (the way a lost byte run or a restart glues two frames together)."""
    buf = bytearray(data)
    for _ in range(rng.randrange(1, 5)):
        op = rng.randrange(6)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4)))
        elif op == 2:
            del buf[pos:pos + rng.randrange(1, 8)]
        elif op == 3:
            del buf[pos:]
        else:
            piece = rng.choice(frames)
            a = rng.randrange(len(piece))
            buf[pos:pos] = piece[a:a + rng.randrange(1, len(piece) + 1)]
    return bytes(buf)


def random_bytes(rng: random.Random) -> bytes:
    n = rng.choice((rng.randrange(16), rng.randrange(600)))
    if rng.random() < 0.3:  # bytes the framings care about, to reach deeper states
        alphabet = b"\r\n\t:ChecksumPIDV0123456789AF\xdd\x77\xa5\x01\x08\x03\x04\x00"
        return bytes(rng.choice(alphabet) for _ in range(n))
    return rng.randbytes(n)


# ---------------------------------------------------------------- VE.Direct
LABELS = ["PID", "FW", "SER#", "V", "I", "VPV", "PPV", "CS", "MPPT", "OR", "ERR", "LOAD", "IL",
          "H19", "H20", "H21", "H22", "H23", "HSDS", "P", "CE", "SOC", "TTG", "Alarm", "Relay",
          "AR", "BMV", "MON", "H1", "H2", "H4", "H17", "H18", "T", "VS"]
VALUE_CHARS = "0123456789-xABCDEFONn /#."


def ved_hex(rng: random.Random) -> bytes:
    payload = rng.randbytes(rng.randrange(0, 12))
    command = rng.randrange(16)
    check = (0x55 - command - sum(payload)) % 256
    return f":{command:X}{payload.hex().upper()}{check:02X}\n".encode()


def ved_stream(rng: random.Random) -> tuple[bytes, list[dict[str, str]], list[bytes]]:
    """Valid blocks (any checksum byte, HEX frames between and inside them) after the end of a
    previous block, so that every block is in step."""
    out = bytearray(b"\r\nChecksum\t" + bytes([rng.randrange(256)]))
    blocks, raws = [], []
    for _ in range(rng.randrange(1, 5)):
        fields = [(rng.choice(LABELS) if rng.random() < 0.9 else f"X{rng.randrange(999)}",
                   "".join(rng.choice(VALUE_CHARS) for _ in range(rng.randrange(0, 20))))
                  for _ in range(rng.randrange(1, 20))]
        raw = vedirect.encode_block(fields)
        raws.append(raw)
        if rng.random() < 0.3:  # an async HEX frame inside the block, never before its checksum
            cut = rng.randrange(len(raw) - 1)
            raw = raw[:cut] + ved_hex(rng) + raw[cut:]
        out += raw
        if rng.random() < 0.3:
            out += ved_hex(rng)
        blocks.append(dict(fields))
    return bytes(out), blocks, raws


_HEX_FRAME = re.compile(rb":([0-9A-Fa-f]{0,200})\n")
_FIELD = re.compile(rb"\r\n([\x20-\x39\x3b-\x7e]{0,9})\t([\x20-\x39\x3b-\x7e]{0,33})")


def ved_reference(data: bytes) -> list[dict[str, str]]:
    """Every block in ``data`` whose own bytes verify: strip valid HEX frames (never the byte
    after ``Checksum\\t``), cut after every ``Checksum\\t<byte>``, keep the pieces that are
    well-formed fields summing to 0 mod 256."""
    clean, i = bytearray(), 0
    while i < len(data):
        if data[i] == 0x3A and not clean.endswith(b"Checksum\t"):
            m = _HEX_FRAME.match(data, i)
            if m and len(m.group(1)) % 2 and len(m.group(1)) >= 3:
                body = m.group(1)
                if (int(body[:1], 16) + sum(bytes.fromhex(body[1:].decode()))) % 256 == 0x55:
                    i = m.end()
                    continue
        clean.append(data[i])
        i += 1
    found, start = [], 0
    while (j := clean.find(b"Checksum\t", start)) >= 0 and j + 9 < len(clean):
        piece, start = bytes(clean[start:j + 10]), j + 10
        for first in range(len(piece)):  # any suffix that starts with CR LF may be the block
            body = piece[first:-len(b"\r\nChecksum\t") - 1]
            if not piece.startswith(b"\r\n", first) or sum(piece[first:]) % 256:
                continue
            if not piece.endswith(b"\r\nChecksum\t" + piece[-1:]):
                continue
            fields, pos = [], 0
            for m in _FIELD.finditer(body):
                if m.start() != pos or m.group(1) == b"Checksum":
                    break
                fields.append((m.group(1).decode(), m.group(2).decode()))
                pos = m.end()
            if pos == len(body) and fields:
                found.append(dict(fields))
    return found


def fuzz_vedirect(rng: random.Random, mutated: bool, t: Tally) -> None:
    if mutated:
        clean, blocks, raws = ved_stream(rng)
        data = mutate(rng, clean, raws) if rng.random() < 0.9 else clean
    else:
        data, blocks = random_bytes(rng), []
    decoder, device = vedirect.VEDirectDecoder(), vedirect.VEDirectDevice("fuzz")
    got: list[dict[str, str]] = []
    for piece in split(rng, data):
        for block in decoder.feed(piece):
            got.append(block)
            device.update(block, ts=1.0)
    t.frames += len(got)
    t.bytes += len(data)
    if mutated and data == clean and got != blocks:
        t.missed += 1
        t.note("missed", data)
    strange = [b for b in got if b not in blocks]
    if strange:
        allowed = ved_reference(data)
        leaks = [b for b in strange if b not in allowed]
        t.leaks += len(leaks)
        t.altered += len(strange) - len(leaks)
        if leaks:
            t.note("leak", (data, leaks))


# ---------------------------------------------------------------- JBD
def jbd_frames(rng: random.Random) -> list[tuple[bytes, jbd.Frame | None]]:
    out: list[tuple[bytes, jbd.Frame | None]] = []
    for _ in range(rng.randrange(1, 5)):
        kind = rng.randrange(4)
        if kind == 0:
            ntc = rng.randrange(0, 5)
            data = struct.pack(">HhHHHHHHH", rng.randrange(1000, 6000), rng.randrange(-9999, 9999),
                               rng.randrange(0, 20000), 20000, rng.randrange(500), 0x2078, 0, 0,
                               rng.choice((0, 0, 1 << rng.randrange(13))))
            data += bytes([0x10, rng.randrange(101), 3, rng.randrange(1, 33), ntc])
            data += b"".join(struct.pack(">H", rng.randrange(2500, 3200)) for _ in range(ntc))
            data += rng.randbytes(rng.choice((0, 0, 3)))  # newer firmware appends bytes
            register = jbd.BASIC_INFO
        elif kind == 1:
            data = b"".join(struct.pack(">H", rng.randrange(2500, 4300))
                            for _ in range(rng.randrange(1, 33)))
            register = jbd.CELL_VOLTAGES
        elif kind == 2:
            data = "".join(rng.choice("ABCDEFGHJKLMNPRSTUVWXYZ0123456789-") for _ in
                           range(rng.randrange(1, 30))).encode()
            register = jbd.MODEL
        else:  # a request echoed by a half-duplex adapter: not a response
            out.append((jbd.encode_request(rng.choice(jbd.REGISTERS)), None))
            continue
        out.append((jbd.encode_response(register, data), jbd.Frame(register, 0, data)))
    return out


def jbd_reference(data: bytes) -> list[jbd.Frame]:
    """Every ``DD reg 00 len data ck_hi ck_lo 77`` in ``data`` whose checksum verifies."""
    found = []
    for i in range(len(data) - 6):
        if data[i] != 0xDD or data[i + 2] != 0:
            continue
        n = data[i + 3]
        end = i + 7 + n
        if end <= len(data) and data[end - 1] == 0x77:
            check = int.from_bytes(data[end - 3:end - 1], "big")
            if (sum(data[i + 2:i + 4 + n]) + check) & 0xFFFF == 0:
                found.append(jbd.Frame(data[i + 1], 0, data[i + 4:i + 4 + n]))
    return found


F = TypeVar("F")  # a protocol's decoded frame


def fuzz_frames(rng: random.Random, mutated: bool, t: Tally,
                frames: list[tuple[bytes, F | None]], feed: Callable[[bytes], list[F]],
                reference: Callable[[bytes], list[F]]) -> tuple[list[F], list[F]]:
    """One input through a polled protocol's parser: a mutation of ``frames`` (or random bytes)
    fed in random pieces. Counts frames, bytes, missed and leaked frames into ``t``; returns
    the original frames and the *altered* ones (not original, but their checksum verifies)."""
    originals = [f for _, f in frames if f is not None]
    clean = b"".join(raw for raw, _ in frames)
    if mutated:
        data = mutate(rng, clean, [raw for raw, _ in frames]) if rng.random() < 0.9 else clean
    else:
        data = random_bytes(rng)
    got = [frame for piece in split(rng, data) for frame in feed(piece)]
    t.frames += len(got)
    t.bytes += len(data)
    if mutated and data == clean and got != originals:
        t.missed += 1
        t.note("missed", data)
    strange = [f for f in got if f not in originals]
    if not strange:
        return originals, []
    allowed = reference(data)
    leaks = [f for f in strange if f not in allowed]
    t.leaks += len(leaks)
    if leaks:
        t.note("leak", (data, leaks))
    return originals, [f for f in strange if f in allowed]


def fuzz_jbd(rng: random.Random, mutated: bool, t: Tally) -> None:
    decoder = jbd.JBDDecoder()
    device = jbd.JBDDevice(stats=decoder.stats)

    def feed(piece: bytes) -> list[jbd.Frame]:
        frames = decoder.feed(piece)
        for frame in frames:
            device.update(frame, ts=1.0)
        return frames

    originals, _ = fuzz_frames(rng, mutated, t, jbd_frames(rng) if mutated else [], feed,
                               jbd_reference)
    # State level: what reached the device must be an original frame's content.
    infos = [jbd.parse_basic_info(f.data) for f in originals if f.register == jbd.BASIC_INFO]
    cells = [jbd.parse_cells(f.data) for f in originals if f.register == jbd.CELL_VOLTAGES]
    models = [jbd.parse_model(f.data) for f in originals if f.register == jbd.MODEL]
    t.altered += ((device.info is not None and device.info not in infos)
                  + (device.cells is not None and device.cells not in cells)
                  + (device.model is not None and device.model not in models))


# ---------------------------------------------------------------- Daly
def daly_frames(rng: random.Random) -> list[tuple[bytes, daly.Frame | None]]:
    out: list[tuple[bytes, daly.Frame | None]] = []
    for _ in range(rng.randrange(1, 7)):
        data_id = rng.choice(daly.READS)
        if rng.random() < 0.2:  # an echoed request
            out.append((daly.encode_request(data_id), None))
            continue
        if data_id == daly.SOC:
            data = struct.pack(">HHHH", rng.randrange(80, 1000), 0,
                               30000 + rng.randrange(-5000, 5000), rng.randrange(1001))
        elif data_id == daly.CELL_VOLTAGES:
            data = bytes([rng.randrange(1, 7)]) + struct.pack(
                ">3H", *(rng.randrange(2500, 4300) for _ in range(3))) + b"\x00"
        else:
            data = rng.randbytes(8)
        out.append((daly.encode(daly.BMS_ADDRESS, data_id, data), daly.Frame(data_id, data)))
    return out


def daly_reference(data: bytes) -> list[daly.Frame]:
    """Every ``A5 01 id 08 d0..d7 ck`` in ``data`` whose 8-bit sum verifies."""
    return [daly.Frame(data[i + 2], data[i + 4:i + 12]) for i in range(len(data) - 12)
            if data[i] == 0xA5 and data[i + 1] == 1 and data[i + 3] == 8
            and sum(data[i:i + 12]) & 0xFF == data[i + 12]]


def fuzz_daly(rng: random.Random, mutated: bool, t: Tally) -> None:
    decoder = daly.DalyDecoder()
    device = daly.DalyDevice(stats=decoder.stats)

    def feed(piece: bytes) -> list[daly.Frame]:
        frames = decoder.feed(piece)
        for frame in frames:
            device.update(frame, ts=1.0)
        return frames

    _, altered = fuzz_frames(rng, mutated, t, daly_frames(rng) if mutated else [], feed,
                             daly_reference)
    t.altered += len(altered)


# ---------------------------------------------------------------- Modbus mappings
def registers(rng: random.Random, count: int) -> list[int]:
    edges = (0, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF)
    return [rng.choice(edges) if rng.random() < 0.3 else rng.randrange(0x10000)
            for _ in range(count)]


def _s(value: int, bits: int) -> int:
    return value - (1 << bits) if value >> (bits - 1) else value


def epever_expected(b: dict[int, list[int]]) -> dict[str, Any]:
    """An independent decoding of the EPEver blocks (research note §2.2)."""
    live, soc, status, energy, bat = (b[0x3100], b[0x311A], b[0x3200], b[0x330C], b[0x331A])
    amps = _s(bat[2] << 16 | bat[1], 32) / 100
    faults = status[1] & 0b0011_1111_1111_0010
    stage = ("off", "float", "absorption", "equalize")[(status[1] >> 2) & 3]
    return {"pv_voltage_v": live[0] / 100, "pv_current_a": live[1] / 100,
            "pv_power_w": (live[3] << 16 | live[2]) / 100, "load_voltage_v": live[12] / 100,
            "load_current_a": live[13] / 100, "load_power_w": (live[15] << 16 | live[14]) / 100,
            "battery_temp_c": _s(live[16], 16) / 100,
            "battery_soc_pct": float(soc[0]) if soc[0] <= 100 else None,
            "battery_voltage_v": bat[0] / 100, "battery_current_a": amps,
            "battery_power_w": round(bat[0] / 100 * amps, 3),
            "charger_state": "fault" if faults else stage, "error_code": faults,
            "yield_today_kwh": (energy[1] << 16 | energy[0]) / 100,
            "yield_total_kwh": (energy[7] << 16 | energy[6]) / 100}


def renogy_expected(b: dict[int, list[int]]) -> dict[str, Any]:
    """An independent decoding of the Renogy block 0x0100-0x0122 (research note §2.3)."""
    r = b[0x0100]
    temp = r[3] & 0xFF
    net = round(r[2] / 100 - r[5] / 100, 2)
    faults = r[0x21] << 16 | r[0x22]
    names = {0: "off", 1: "activated", 2: "bulk", 3: "equalize", 4: "absorption", 5: "float",
             6: "current_limiting"}
    state = r[0x20] & 0xFF
    return {"battery_soc_pct": float(r[0]) if r[0] <= 100 else None, "battery_voltage_v": r[1] / 10,
            "battery_current_a": net, "battery_power_w": round(r[1] / 10 * net, 3),
            "battery_temp_c": float(-(temp & 0x7F) if temp & 0x80 else temp),
            "load_voltage_v": r[4] / 10, "load_current_a": r[5] / 100,
            "load_power_w": float(r[6]), "load_on": bool(r[0x20] >> 15),
            "pv_voltage_v": r[7] / 10, "pv_current_a": r[8] / 100, "pv_power_w": float(r[9]),
            "max_power_today_w": float(r[0x0F]), "yield_today_kwh": r[0x13] / 1000,
            "cycles": r[0x17], "error_code": faults,
            "charger_state": "fault" if faults else names.get(state, f"unknown_{state}")}


def fuzz_modbus(blocks: dict[int, int], mapping: Callable[..., Reading],
                expected: Callable[[dict[int, list[int]]], dict[str, Any]],
                rng: random.Random, mutated: bool, t: Tally) -> None:
    regs = {a: registers(rng, n) for a, n in blocks.items()}
    t.bytes += 2 * sum(blocks.values())
    reading = mapping(regs, 1.0, "fuzz")
    if mutated:  # the reading survives the JSON contract round trip unchanged
        again = Reading(**json.loads(reading.to_json()))
        if again != reading:
            t.leaks += 1
            t.note("json round trip", (regs, reading))
    t.frames += 1
    got = reading.to_dict()
    bad = {k: (got.get(k), v) for k, v in expected(regs).items() if not same(k, got.get(k), v)}
    if bad:
        t.leaks += 1
        t.note("differs", bad)


def same(key: str, got: Any, want: Any) -> bool:
    """Exact, except a product of two scaled values rounded to mW (the last float bit may
    round the other way)."""
    if key == "battery_power_w" and isinstance(got, float) and isinstance(want, float):
        return abs(got - want) <= 0.0011 + 1e-12 * abs(want)
    return bool(got == want and type(got) is type(want))


# ---------------------------------------------------------------- driver
PARSERS: dict[str, Callable[[random.Random, bool, Tally], None]] = {
    "vedirect": fuzz_vedirect,
    "jbd": fuzz_jbd,
    "daly": fuzz_daly,
    "epever": lambda rng, m, t: fuzz_modbus(modbus.EPEVER_BLOCKS, modbus.epever_reading,
                                            epever_expected, rng, m, t),
    "renogy": lambda rng, m, t: fuzz_modbus(modbus.RENOGY_BLOCKS, modbus.renogy_reading,
                                            renogy_expected, rng, m, t),
}


def run_task(task: tuple[str, bool, int, int, int]) -> tuple[str, Tally]:
    name, mutated, seed, index, count = task
    rng = random.Random(f"{seed}/{name}/{mutated}/{index}")
    tally = Tally()
    start = time.process_time()
    for _ in range(count):
        tally.inputs += 1
        try:
            PARSERS[name](rng, mutated, tally)
        except Exception as exc:  # the point of fuzzing: count and show, never stop
            tally.crashes += 1
            tally.note("crash", f"{type(exc).__name__}: {exc}")
    tally.seconds = time.process_time() - start
    return name, tally


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--inputs", type=int, default=20000,
                        help="random inputs, and as many mutations, per parser")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--parsers", default=",".join(PARSERS))
    args = parser.parse_args()
    names = args.parsers.split(",")
    tasks = [(name, mutated, args.seed, i, min(CHUNK, args.inputs - i * CHUNK))
             for name in names for mutated in (False, True)
             for i in range((args.inputs + CHUNK - 1) // CHUNK)]
    totals = {name: Tally() for name in names}
    wall = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
        for name, tally in pool.imap_unordered(run_task, tasks):
            totals[name].add(tally)
    wall = time.perf_counter() - wall
    print(f"seed {args.seed}, {args.inputs} random + {args.inputs} mutated inputs per parser, "
          f"{args.jobs} jobs, {wall:.0f} s wall")
    header = ("parser", "inputs", "bytes", "valid frames found", "crashes", "leaks", "missed",
              "altered", "CPU seconds")
    rows = [(n, t.inputs, t.bytes, t.frames, t.crashes, t.leaks, t.missed, t.altered,
             f"{t.seconds:.1f}") for n, t in totals.items()]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    for row in (header, *rows):
        print("| " + " | ".join(str(x).rjust(w) for x, w in zip(row, widths, strict=True)) + " |")
        if row is header:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for name, t in totals.items():
        for example in t.examples:
            print(f"{name}: {example}")
    failed = any(t.crashes or t.leaks or t.missed for t in totals.values())
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
