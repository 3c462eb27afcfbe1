"""Victron VE.Direct TEXT protocol: a streaming decoder, the field mapping, and an encoder.

Framing (research/serial-protocols.md §1.2, §1.5): each field is ``\\r\\n<label>\\t<value>``; a
block ends with ``Checksum\\t<byte>`` and the bytes of the whole block sum to 0 mod 256. The
checksum byte is data even when it is ``:``, ``\\r``, ``\\n``, ``\\t`` or 0x00. Asynchronous HEX
frames (``:`` ... ``\\n``) can appear anywhere else, even inside a block: they are skipped,
bounded (100 bytes, or the first byte that is not a hex digit), checked with the 0x55 rule, and
kept out of the TEXT checksum. A non-printable byte outside the checksum byte, a CR that is not
part of CR LF, a second TAB in a field, or an invalid HEX frame, is corruption: the block is
dropped whole and the decoder hunts for the next block end (``Checksum\\t<byte>``), so the first
block it accepts afterwards is a whole one. (The additive checksum misses 1 in 256 multi-byte
errors; strict framing is what keeps most of those out.)
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from edgeagent.power.reading import Reading

MAX_LABEL = 9
MAX_VALUE = 33
MAX_FIELDS = 32
MAX_HEX = 100

CHARGER_STATES = {
    0: "off", 1: "low_power", 2: "fault", 3: "bulk", 4: "absorption", 5: "float", 6: "storage",
    7: "equalize", 9: "inverting", 11: "power_supply", 245: "starting_up",
    246: "repeated_absorption", 247: "auto_equalize", 248: "battery_safe",
    252: "external_control",
}

PRODUCTS = {
    0x203: "BMV-700", 0x204: "BMV-702", 0x205: "BMV-700H", 0xA381: "BMV-712 Smart",
    0xA382: "BMV-710H Smart", 0xA383: "BMV-712 Smart Rev2", 0xA389: "SmartShunt 500A/50mV",
    0xA38A: "SmartShunt 1000A/50mV", 0xA38B: "SmartShunt 2000A/50mV",
    0xA042: "BlueSolar MPPT 75/15", 0xA043: "BlueSolar MPPT 100/15",
    0xA053: "SmartSolar MPPT 75/15", 0xA054: "SmartSolar MPPT 75/10",
    0xA055: "SmartSolar MPPT 100/15", 0xA056: "SmartSolar MPPT 100/30",
    0xA057: "SmartSolar MPPT 100/50", 0xA05F: "SmartSolar MPPT 100/20",
    0xA060: "SmartSolar MPPT 100/20 48V",
}


@dataclass
class DecoderStats:
    """Counters that say how healthy the line is; they never reset while the decoder lives."""

    blocks_ok: int = 0
    blocks_bad_checksum: int = 0
    hex_frames: int = 0
    hex_bad: int = 0
    corrupt: int = 0
    bytes: int = 0

    @property
    def valid(self) -> int:
        return self.blocks_ok

    @property
    def invalid(self) -> int:
        return self.blocks_bad_checksum + self.corrupt + self.hex_bad


# Decoder states. A block is only trusted when it starts right where the previous block (good or
# bad) ended: starting at any CR LF after a loss of sync could take the tail of a damaged block
# for a whole one, and a tail passes the additive checksum one time in 256.
_HUNT, _TRAILER, _BOUNDARY, _LABEL, _VALUE, _CHECKSUM = range(6)
_CHECKSUM_LABEL = b"Checksum\t"
# Labels that only ever open a block (an MPPT's or BMV's live block, a BMV's history block): a
# stream that starts with CR LF and one of these starts with a whole block.
_BLOCK_STARTS = frozenset({"PID", "H1"})
_HEX_DIGITS = frozenset(b"0123456789ABCDEFabcdef")
# The fast path's patterns. An ordinary field is a label (at most MAX_LABEL, not "Checksum"),
# TAB, a value (at most MAX_VALUE), CR LF, both printable ASCII without the ':' that would open a
# HEX frame. Everything else goes through the per-byte state machine.
_TEXT_CHARS = rb"[\x20-\x39\x3b-\x7e]"
_FIELDS = re.compile(rb"(?:(?!Checksum\t)%s{0,%d}\t%s{0,%d}\r\n)+"
                     % (_TEXT_CHARS, MAX_LABEL, _TEXT_CHARS, MAX_VALUE))
_FIELD_TEXT = re.compile(r"([^\t]*)\t([^\r]*)\r\n")
_TEXT_RUN = re.compile(_TEXT_CHARS + b"+")
_HEX_RUN = re.compile(rb"[0-9A-Fa-f]+")
_CHECKSUM_SUM = sum(_CHECKSUM_LABEL)
# Below this many bytes per feed() (a USB packet or a UART FIFO's worth, right after a wake-up
# with cold caches) the fast path measured no faster than byte by byte; it pays off on bigger
# reads and on captures (``edgeagent decode``).
_FAST_MIN = 64


class VEDirectDecoder:
    """Feed it bytes as they arrive; it returns each block that passed its checksum.

    After corruption or ``resync()`` (a reopened port) it hunts for the end of a block, so the
    first complete block after a loss of sync is skipped: no field is used before the line is
    known to be in step. A fresh decoder also keeps a first block that the stream opens with
    exactly (CR LF, then ``PID`` or ``H1``, the labels that only start blocks; one leading byte,
    the previous block's checksum, is allowed), so a capture cut at a block boundary loses
    nothing; any other start is hunted through.
    """

    def __init__(self) -> None:
        self.stats = DecoderStats()
        # A capture that begins exactly at a block (CR LF, then PID or H1) keeps its first
        # block; anything else at the start is hunted through, as after a loss of sync.
        self._state = _BOUNDARY
        self._fresh = True
        self._match = 0  # how much of "Checksum\t" the hunt has seen
        self._in_hex = False
        self._hex = bytearray()
        self._sum = 0
        self._label = bytearray()
        self._value = bytearray()
        self._fields: list[tuple[str, str]] = []
        self._prev = 0  # previous byte in a block or between blocks, to recognise CR LF

    def _clear_block(self) -> None:
        self._sum = 0
        self._label.clear()
        self._value.clear()
        self._fields = []

    def resync(self) -> None:
        """Forget any partial block and hunt for the next one (after a reopen); keep stats."""
        self._clear_block()
        self._state = _HUNT
        self._fresh = False
        self._match = 0
        self._in_hex = False

    def _corrupt(self) -> None:
        self.stats.corrupt += 1
        self.resync()

    def feed(self, data: bytes) -> list[dict[str, str]]:
        """Consume ``data`` (any split of the stream); return the blocks completed in it that
        passed their checksum, each as ``{label: value}`` in the order sent.

        From ``_FAST_MIN`` bytes on, runs of whole fields, label and value characters, HEX
        digits, block starts and ends and hunted stretches are taken in one step each (about 5x
        less CPU on whole blocks); every other byte goes through ``_byte``. Blocks, counters and
        state after each call are the same as feeding the bytes one at a time."""
        blocks: list[dict[str, str]] = []
        self.stats.bytes += len(data)
        i, n = 0, len(data)
        if n < _FAST_MIN:
            for byte in data:
                block = self._byte(byte)
                if block is not None:
                    blocks.append(block)
            return blocks
        while i < n:
            state = self._state
            if self._in_hex:
                run = _HEX_RUN.match(data, i)
                room = MAX_HEX - len(self._hex)
                if run is not None and room > 0:
                    end = min(run.end(), i + room)
                    self._hex += data[i:end]
                    i = end
                    continue
            elif state == _LABEL and self._prev != 0x0D:  # after a CR only LF may come
                label = self._label
                if not label:
                    m = _FIELDS.match(data, i)
                    if m is not None:
                        i = self._take_fields(data, i, m.end())
                        continue
                    if data.startswith(_CHECKSUM_LABEL, i) and i + len(_CHECKSUM_LABEL) < n:
                        self._sum += _CHECKSUM_SUM
                        i += len(_CHECKSUM_LABEL) + 1
                        block = self._end_block(data[i - 1])
                        if block is not None:
                            blocks.append(block)
                        continue
                i = self._take_run(data, i, label, MAX_LABEL)
                if i < n and data[i] == 0x09:  # the label is complete
                    self._sum += 0x09
                    self._prev = 0x09
                    self._state = _CHECKSUM if label == b"Checksum" else _VALUE
                    i += 1
                    continue
            elif state == _VALUE and self._prev != 0x0D:
                i = self._take_run(data, i, self._value, MAX_VALUE)
                if data.startswith(b"\r\n", i):
                    self._sum += 0x0D + 0x0A
                    self._finish_field()
                    self._prev = 0x0A
                    i += 2
                    continue
            elif state == _BOUNDARY:
                if data.startswith(b"\r\n", i):
                    self._clear_block()
                    self._sum = 0x0D + 0x0A
                    self._state = _LABEL
                    self._prev = 0x0A
                    i += 2
                    continue
            elif state == _HUNT and self._match == 0:
                i = self._skip_hunt(data, i)
            if i >= n:
                break
            block = self._byte(data[i])
            i += 1
            if block is not None:
                blocks.append(block)
        return blocks

    def _take_fields(self, data: bytes, i: int, end: int) -> int:
        """Append the whole ordinary fields in ``data[i:end]`` as ``_byte`` would (the field
        after the last allowed one is corruption); return where processing goes on."""
        fields = _FIELD_TEXT.findall(data[i:end].decode("ascii"))
        room = MAX_FIELDS - len(self._fields)
        if len(fields) > room:  # _byte stops at the end of the first field too many
            end = i
            for _ in range(room + 1):
                end = data.index(b"\r\n", end) + 2
            self._prev = 0x0A
            self._corrupt()
            return end
        self._sum += sum(data[i:end])
        self._prev = 0x0A
        self._fields += fields
        return end

    def _take_run(self, data: bytes, i: int, buf: bytearray, limit: int) -> int:
        """Append the run of ordinary label or value characters at ``i`` (no more than fits in
        ``limit``) as ``_byte`` would; return where the run ended."""
        run = _TEXT_RUN.match(data, i)
        if run is None:
            return i
        end = min(run.end(), i + limit - len(buf))
        if end <= i:
            return i
        chunk = data[i:end]
        buf += chunk
        self._sum += sum(chunk)
        self._prev = chunk[-1]
        return end

    def _skip_hunt(self, data: bytes, i: int) -> int:
        """Where byte-by-byte hunting must resume: right after the next ``Checksum\\t`` (then in
        the trailer state), or a few bytes before the next ':' or the end of ``data``.

        The hunt's matcher is exact substring search (``C`` occurs once in the label), so its
        state at any point only depends on the last 8 bytes, and a ':' (which opens a HEX frame)
        can never be inside a match."""
        colon = data.find(b":", i)
        limit = colon if colon >= 0 else len(data)
        label = data.find(_CHECKSUM_LABEL, i, limit)
        if label >= 0:
            self._state = _TRAILER
            return label + len(_CHECKSUM_LABEL)
        return max(i, limit - (len(_CHECKSUM_LABEL) - 1))

    def _byte(self, b: int) -> dict[str, str] | None:
        state = self._state
        if self._in_hex:
            return self._hex_byte(b)
        if state == _CHECKSUM:
            return self._end_block(b)
        if state == _TRAILER:  # the checksum byte of a block we only hunted through
            self._enter_boundary()
            return None
        if b == 0x3A:  # ':' starts a HEX frame anywhere but in a checksum byte
            self._in_hex = True
            self._hex.clear()
            return None
        if state == _HUNT:
            if b == _CHECKSUM_LABEL[self._match]:
                self._match += 1
                if self._match == len(_CHECKSUM_LABEL):
                    self._match = 0
                    self._state = _TRAILER
            else:
                self._match = 1 if b == _CHECKSUM_LABEL[0] else 0
            return None
        if state == _BOUNDARY:
            if b == 0x0D:
                self._prev = b
            elif b == 0x0A and self._prev == 0x0D:
                self._clear_block()
                self._sum = 0x0D + 0x0A
                self._state = _LABEL
                self._prev = b
            elif self._fresh and self._prev == 0:
                # The very first byte may be the checksum byte of the block before (a capture
                # started right after "Checksum\t"): look for CR LF behind it.
                self._prev = 0x100 + b
            elif self._fresh:  # the stream starts mid-block: hunt, nothing is damaged
                lead = self._prev - 0x100 if self._prev >= 0x100 else None
                self.resync()
                if lead is not None:  # it was not a checksum byte: the hunt sees it too
                    self._byte(lead)
                return self._byte(b)
            else:  # noise between blocks: we no longer know where the next one starts
                self._corrupt()
            return None
        if not (0x20 <= b < 0x7F or b in (0x09, 0x0A, 0x0D)):
            self._corrupt()
            return None
        if self._prev == 0x0D and b != 0x0A:
            # A device only sends CR as the first half of CR LF. Ignoring a lone one would let
            # a damaged line whose sum still works out (two errors) pass as a changed value.
            self._corrupt()
            return None
        self._sum += b
        if b == 0x0D:
            self._prev = b
            return None
        if b == 0x0A:
            if self._prev != 0x0D or state != _VALUE:  # a lone LF, or a field with no TAB
                self._corrupt()
                return None
            self._finish_field()
            self._prev = b
            return None
        self._prev = b
        if state == _LABEL:
            if b == 0x09:
                self._state = _CHECKSUM if self._label == b"Checksum" else _VALUE
            elif len(self._label) >= MAX_LABEL:
                self._corrupt()
            else:
                self._label.append(b)
        elif b == 0x09 or len(self._value) >= MAX_VALUE:
            # A second TAB in a field is never sent: accepting it would let a "Checksum\t"
            # whose CR LF was lost become part of a value and glue two blocks together.
            self._corrupt()
        else:
            self._value.append(b)
        return None

    def _hex_byte(self, b: int) -> dict[str, str] | None:
        if b == 0x0A:
            self._in_hex = False
            if _valid_hex_frame(self._hex):
                self.stats.hex_frames += 1
            else:  # most likely a bit error turned a byte into ':'; never trust the block
                self._bad_hex()
            return None
        if b not in _HEX_DIGITS:
            # A HEX frame holds only hex digits: a lost or damaged terminator (OpenDTU-OnBattery
            # #1585 saw 0xFE) ends it here instead of swallowing the TEXT behind it. The byte is
            # then looked at again as TEXT, in the hunt state.
            self._in_hex = False
            self._bad_hex()
            return self._byte(b)
        if len(self._hex) >= MAX_HEX:  # an unterminated frame must not swallow the line
            self._in_hex = False
            self._bad_hex()
            return None
        self._hex.append(b)
        return None

    def _bad_hex(self) -> None:
        self.stats.hex_bad += 1
        if self._state != _HUNT:
            self._corrupt()

    def _enter_boundary(self) -> None:
        self._clear_block()
        self._state = _BOUNDARY
        self._prev = 0

    def _finish_field(self) -> None:
        if len(self._fields) >= MAX_FIELDS:
            self._corrupt()
            return
        self._fields.append((self._label.decode("ascii"), self._value.decode("ascii")))
        self._label.clear()
        self._value.clear()
        self._state = _LABEL

    def _end_block(self, checksum_byte: int) -> dict[str, str] | None:
        total = (self._sum + checksum_byte) & 0xFF
        fields = self._fields
        self._enter_boundary()
        if self._fresh:
            self._fresh = False
            if not fields or fields[0][0] not in _BLOCK_STARTS:  # maybe the tail of a block
                return None
        if total != 0 or not fields:  # a block without fields is never sent: a fragment
            self.stats.blocks_bad_checksum += 1
            return None
        self.stats.blocks_ok += 1
        return dict(fields)


def _valid_hex_frame(body: bytes | bytearray) -> bool:
    """``:`` + command nibble + hex byte pairs, the last one a checksum: the command plus all
    bytes is 0x55 mod 256 (research/serial-protocols.md §1.5)."""
    if len(body) < 3 or len(body) % 2 == 0:
        return False
    try:
        command = int(body[:1], 16)
        payload = bytes.fromhex(body[1:].decode("ascii"))
    except ValueError:
        return False
    return (command + sum(payload)) & 0xFF == 0x55


def encode_block(fields: Sequence[tuple[str, str]]) -> bytes:
    """One TEXT block with a valid checksum: what a Victron device sends (and our emulator)."""
    body = b"".join(b"\r\n" + label.encode("ascii") + b"\t" + value.encode("ascii")
                    for label, value in fields) + b"\r\nChecksum\t"
    return body + bytes([(256 - sum(body)) % 256])


def _int(fields: Mapping[str, str], label: str) -> int | None:
    raw = fields.get(label)
    if raw is None:
        return None
    try:
        return int(raw, 0) if raw.lower().startswith("0x") else int(raw)
    except ValueError:
        return None


def _scaled(fields: Mapping[str, str], label: str, divisor: int = 1) -> float | None:
    """The value in SI units; dividing (not multiplying by 0.001) keeps 13120 mV at 13.12 V."""
    value = _int(fields, label)
    return None if value is None else value / divisor


def _on_off(fields: Mapping[str, str], label: str) -> bool | None:
    raw = fields.get(label)
    return {"ON": True, "OFF": False}.get(raw.upper()) if raw is not None else None


def block_to_reading(fields: Mapping[str, str], ts: float,
                     device_id: str | None = None) -> Reading:
    """Map VE.Direct labels to the normalized reading; values that do not parse are absent.

    Only what the device reports, in SI units, with these documented exceptions:

    - ``battery_power_w`` is the device's ``P``; an MPPT sends no ``P``, so it is V x I when
      both are known (the governor needs battery power from either kind of device);
    - ``pv_current_a`` is PPV / VPV when VPV > 0 (VE.Direct TEXT has no panel current);
    - the load output of a Victron MPPT is the battery switched through, so with ``IL``
      ``load_voltage_v`` is V (unless ``LOAD`` is OFF) and ``load_power_w`` is V x IL;
    - ``consumed_ah`` is positive Ah taken out of the battery (Victron sends ``CE`` <= 0);
    - ``TTG`` -1 means infinite (not discharging): absent, never a number;
    - ``FW`` stays a string ("0308" is v3.08 on a BMV, "159" v1.59 on an MPPT);
    - ``device_id`` is ``SER#``, else the given one (a SmartShunt has no ``SER#``: the caller
      passes the port's stable name).
    """
    volts = _scaled(fields, "V", 1000)
    amps = _scaled(fields, "I", 1000)
    power = _scaled(fields, "P")
    if power is None and volts is not None and amps is not None:
        power = round(volts * amps, 3)
    pv_v = _scaled(fields, "VPV", 1000)
    pv_w = _scaled(fields, "PPV")
    pv_a = round(pv_w / pv_v, 3) if pv_w is not None and pv_v is not None and pv_v > 0 else None
    soc = _scaled(fields, "SOC", 10)
    ttg = _int(fields, "TTG")
    ce = _scaled(fields, "CE", 1000)
    load_a = _scaled(fields, "IL", 1000)
    load_on = _on_off(fields, "LOAD")
    cs = _int(fields, "CS")
    pid = _int(fields, "PID")
    return Reading(
        ts=ts, driver="vedirect",
        device_id=fields.get("SER#") or device_id,
        product=None if pid is None else PRODUCTS.get(pid, f"0x{pid:04X}"),
        firmware=fields.get("FW") or fields.get("FWE"),
        battery_voltage_v=volts, battery_current_a=amps, battery_power_w=power,
        battery_soc_pct=None if soc is None else round(soc, 1),
        battery_temp_c=_scaled(fields, "T"),
        time_to_go_min=None if ttg is None or ttg < 0 else float(ttg),
        consumed_ah=None if ce is None else abs(ce),
        pv_voltage_v=pv_v, pv_current_a=pv_a, pv_power_w=pv_w,
        load_current_a=load_a,
        load_voltage_v=volts if load_a is not None and load_on is not False else None,
        load_power_w=round(volts * load_a, 3) if load_a is not None and volts is not None
        else None,
        load_on=load_on,
        charger_state=None if cs is None else CHARGER_STATES.get(cs, f"unknown_{cs}"),
        error_code=_int(fields, "ERR"),
        yield_total_kwh=_scaled(fields, "H19", 100),
        yield_today_kwh=_scaled(fields, "H20", 100),
        max_power_today_w=_scaled(fields, "H21"),
        yield_yesterday_kwh=_scaled(fields, "H22", 100),
        discharged_kwh=_scaled(fields, "H17", 100),
        charged_kwh=_scaled(fields, "H18", 100),
        cycles=_int(fields, "H4"),
    )


_IDENTITY = ("PID", "SER#")


class VEDirectDevice:
    """One device's state, merged across blocks: a BMV or SmartShunt sends a live block and a
    history block every second, and both together make its state.

    A block that names another device (a different ``PID`` or ``SER#``: the cable was moved to
    another product) starts a fresh state, so two devices' fields are never mixed.
    """

    def __init__(self, device_id: str | None = None) -> None:
        self.device_id = device_id
        self.fields: dict[str, str] = {}

    @property
    def complete(self) -> bool:
        """Whether the state has the live values and, for a battery monitor (it sends ``SOC``),
        its history block (``H1``...) too."""
        fields = self.fields
        return "V" in fields and ("SOC" not in fields or "H1" in fields or "H4" in fields)

    def update(self, block: Mapping[str, str], ts: float = 0.0) -> Reading:
        """Merge ``block`` into the state; return the whole state as a reading stamped ``ts``."""
        if any(label in block and label in self.fields and block[label] != self.fields[label]
               for label in _IDENTITY):
            self.fields = {}
        self.fields.update(block)
        return block_to_reading(self.fields, ts, self.device_id)
