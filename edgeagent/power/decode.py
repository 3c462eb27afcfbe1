"""``edgeagent decode``: turn a captured byte stream into normalized readings, offline.

Useful to check a capture from a site (``cat /dev/ttyUSB0 > capture.bin``) or a bug report. The
readings' ``ts`` is the time of decoding: a raw capture carries no timestamps. Works for the
protocols whose frames can be recognised in a stream: VE.Direct TEXT, and the responses of JBD
and Daly BMSes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO, Protocol, TextIO

from edgeagent.power import daly, jbd, vedirect
from edgeagent.power.reading import Reading


class Stats(Protocol):
    @property
    def valid(self) -> int: ...

    @property
    def invalid(self) -> int: ...


class StreamDecoder(Protocol):
    @property
    def stats(self) -> Stats: ...

    def feed(self, data: bytes) -> list[Any]: ...


class Device(Protocol):
    def update(self, frame: Any, ts: float = 0.0) -> Reading: ...


def _jbd_device(decoder: StreamDecoder) -> Device:
    """The device counts implausible frames into its decoder's stats."""
    assert isinstance(decoder, jbd.JBDDecoder)
    return jbd.JBDDevice(stats=decoder.stats)


def _daly_device(decoder: StreamDecoder) -> Device:
    assert isinstance(decoder, daly.DalyDecoder)
    return daly.DalyDevice(stats=decoder.stats)


STREAMING: dict[str, tuple[Callable[[], StreamDecoder], Callable[[StreamDecoder], Device]]] = {
    "vedirect": (vedirect.VEDirectDecoder, lambda _: vedirect.VEDirectDevice()),
    "jbd": (jbd.JBDDecoder, _jbd_device),
    "daly": (daly.DalyDecoder, _daly_device),
}


def decode_stream(chunks: Iterable[bytes], driver: str = "vedirect", *,
                  stats: list[Stats] | None = None,
                  clock: Callable[[], float] = time.time) -> Iterator[Reading]:
    """One reading per valid frame or block: the device's merged state after it, stamped with
    ``clock()`` at decoding (a raw capture has no timestamps). The decoder's counters are
    appended to ``stats`` so a caller can summarise the stream. Raises ValueError for a driver
    that is not a streaming one."""
    if driver not in STREAMING:
        raise ValueError(f"unknown or non-streaming driver {driver!r}; "
                         f"decode supports: {', '.join(STREAMING)}")
    make_decoder, make_device = STREAMING[driver]
    decoder = make_decoder()
    device = make_device(decoder)
    if stats is not None:
        stats.append(decoder.stats)
    for chunk in chunks:
        for frame in decoder.feed(chunk):
            yield device.update(frame, ts=clock())


def run_decode(driver: str, source: BinaryIO, out: TextIO, err: TextIO) -> int:
    """``edgeagent decode --driver D [FILE]``: one JSON line per valid block or frame on ``out``
    and a summary of valid/invalid frames on ``err``. Exit 0; 2 for a driver decode does not
    know; 1 when the source fails mid-read (what was decoded up to then is still printed)."""
    if driver not in STREAMING:
        print(f"edgeagent decode: unknown or non-streaming driver {driver!r}; "
              f"decode supports: {', '.join(STREAMING)}", file=err)
        return 2
    read_error: list[OSError] = []

    def chunks() -> Iterator[bytes]:
        while True:
            try:
                chunk = source.read(65536)
            except OSError as exc:  # e.g. a USB capture device vanished under `decode -`
                read_error.append(exc)
                return
            if not chunk:
                return
            yield chunk

    collected: list[Stats] = []
    for reading in decode_stream(chunks(), driver, stats=collected):
        print(reading.to_json(), file=out)
    stats = collected[0]
    details = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in vars(stats).items())
    print(f"{stats.valid} valid, {stats.invalid} invalid ({details})", file=err)
    if read_error:
        print(f"edgeagent decode: read error: {read_error[0]}", file=err)
        return 1
    return 0
