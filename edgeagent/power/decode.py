"""``edgeagent decode``: turn a captured byte stream into normalized readings, offline.

Useful to check a capture from a site (``cat /dev/ttyUSB0 > capture.bin``) or a bug report. The
readings' ``ts`` is the time of decoding: a raw capture carries no timestamps.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import BinaryIO, TextIO

from edgeagent.power.reading import Reading
from edgeagent.power.vedirect import DecoderStats, VEDirectDecoder, VEDirectDevice

STREAMING_DRIVERS = ("vedirect",)


def decode_stream(chunks: Iterable[bytes], stats: DecoderStats | None = None
                  ) -> Iterator[Reading]:
    """One reading per valid block: the device's merged state after that block."""
    decoder, device = VEDirectDecoder(), VEDirectDevice()
    if stats is not None:
        decoder.stats = stats
    for chunk in chunks:
        for block in decoder.feed(chunk):
            yield device.update(block, ts=time.time())


def run_decode(driver: str, source: BinaryIO, out: TextIO, err: TextIO) -> int:
    if driver not in STREAMING_DRIVERS:
        print(f"edgeagent decode: unknown or non-streaming driver {driver!r}; "
              f"decode supports: {', '.join(STREAMING_DRIVERS)}", file=err)
        return 2
    stats = DecoderStats()
    chunks = iter(lambda: source.read(65536), b"")
    for reading in decode_stream(chunks, stats):
        print(reading.to_json(), file=out)
    print(f"{stats.blocks_ok} valid blocks, {stats.blocks_bad_checksum} invalid (checksum), "
          f"{stats.corrupt} corrupt, {stats.hex_frames} HEX frames skipped, "
          f"{stats.bytes} bytes", file=err)
    return 0
