"""Property-based: whatever the line delivers, the decoder never raises and never lets a field
of a damaged block through."""

from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st

from edgeagent.power.vedirect import VEDirectDecoder, VEDirectDevice, encode_block

LABEL = st.text(string.ascii_uppercase + string.digits + "#", min_size=1, max_size=8).filter(
    lambda s: s != "Checksum")
# Printable ASCII without ':' (which would open a HEX frame) and without TAB/CR/LF.
VALUE = st.text("".join(c for c in string.printable if c not in ":\t\r\n\x0b\x0c"), max_size=20)
BLOCK = st.lists(st.tuples(LABEL, VALUE), min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_never_raise(data: bytes) -> None:
    decoder, device = VEDirectDecoder(), VEDirectDevice()
    for block in decoder.feed(data):
        device.update(block)


@settings(max_examples=300, deadline=None)
@given(st.lists(BLOCK, min_size=1, max_size=6), st.data())
def test_a_damaged_block_never_leaks_and_clean_ones_decode(blocks: list[list[tuple[str, str]]],
                                                          data: st.DataObject) -> None:
    stream = b"\r\nChecksum\t\x00"  # the end of the block before: the decoder is in step
    clean: list[dict[str, str]] = []
    damaged_any = False
    for fields in blocks:
        raw = bytearray(encode_block(fields))
        if data.draw(st.booleans()):
            # One change per block: an additive checksum cannot catch two that cancel out.
            pos = data.draw(st.integers(0, len(raw) - 1))
            kind = data.draw(st.sampled_from(["flip", "drop", "insert"]))
            if kind == "flip":
                raw[pos] ^= 1 << data.draw(st.integers(0, 7))
            elif kind == "drop":
                del raw[pos]
            else:
                raw.insert(pos, data.draw(st.integers(1, 255)))
            damaged_any = True
        else:
            clean.append(dict(fields))
        stream += bytes(raw)
    decoded = VEDirectDecoder().feed(stream)
    for block in decoded:
        assert block in clean, f"a damaged block leaked: {block}"
    if not damaged_any:
        assert decoded == clean
