"""CPU time per decoded VE.Direct block: edgeagent's SerialReader vs the PyPI readers a user would
otherwise pick (``vedirect``, the headline, and ``vedirect-m8``).

    pip install vedirect vedirect-m8
    python benchmarks/vedirect_read.py [--rounds 7] [--blocks 40]

Why it is built this way (so the comparison is fair):

- Every reader gets the same stream of the same MPPT blocks, written into a pseudo-terminal by a
  writer thread and read through pyserial, as from a real port. By default the writer keeps the
  pace of a real line: 19200 baud through an FTDI cable, which hands over ~32 bytes per 16.7 ms
  (``--chunk``, ``--gap``), blocks back to back (``--period 0``). How often a reader wakes up
  decides most of its CPU, so a faster, compressed pace (``--gap 0.0005 --period 0.005``)
  flatters readers that wake once per USB packet.
- Each reader is used the way its documentation says: our ``SerialReader`` thread with a
  callback; ``vedirect.VEDirect.refresh()`` in a loop (it opens the port, flushes it, waits for a
  ``PID`` line and reads one block with ``readline()``, so it reads about two blocks of the
  stream per block it returns); ``vedirect_m8.Vedirect.read_data_single()`` in a loop (one
  ``read(1)`` per byte; its ``read_data_callback`` sleeps 0.1 s per byte and cannot keep up with
  a line, so it is not used).
- ``edgeagent`` reads the way ``reader.py`` does: after the first byte of a burst it waits
  ``SerialReader.coalesce_s`` (0.12 s, ``--coalesce`` tries other windows) and takes everything
  that arrived, so a block costs one wake-up instead of one per USB packet.
  ``edgeagent-per-packet`` is the same reader with ``coalesce_s=0`` (what it did before), to show
  what the coalescing is worth.
- CPU is each reader's own thread CPU time (``time.thread_time``) between its first and its
  last measured block, so start-up, the writer and the main thread are not counted. Blocks
  that failed their checksum still cost CPU and are not counted as decoded.
- Rounds interleave the readers, rotating their order, and medians are reported; the stream
  blocks read per decoded block are printed too, so the ``vedirect`` skip is visible.

The blocks' checksum bytes avoid CR, LF, TAB and ':' because ``vedirect``'s ``readline()`` split
would raise on them (a real device does send such bytes; our decoder handles them).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from edgeagent.power.reader import SerialReader
from edgeagent.power.reading import Reading
from edgeagent.power.vedirect import encode_block


def mppt_blocks(count: int = 16) -> list[bytes]:
    """SmartSolar-like blocks whose values change from block to block, as a real line's do."""
    blocks: list[bytes] = []
    n = 0
    while len(blocks) < count:
        n += 1
        fields = [("PID", "0xA053"), ("FW", "159"), ("SER#", "HQ2132ABCDE"),
                  ("V", str(13200 + 10 * n)), ("I", str(1100 + 37 * n)),
                  ("VPV", str(17400 + 53 * n)), ("PPV", str(15 + n % 7)), ("CS", "3"),
                  ("MPPT", "2"), ("OR", "0x00000000"), ("ERR", "0"), ("LOAD", "ON"),
                  ("IL", "300"), ("H19", "1234"), ("H20", "12"), ("H21", "35"), ("H22", "20"),
                  ("H23", "40"), ("HSDS", "17")]
        raw = encode_block(fields)
        if raw[-1] not in b"\r\n\t:":
            blocks.append(raw)
    return blocks


BLOCKS = mppt_blocks()
BLOCK_LEN = statistics.mean(len(b) for b in BLOCKS)
# Each block's V identifies its place in the round-robin, so the blocks a reader skipped between
# two decoded ones can be counted exactly.
INDEX = {int(b.split(b"\r\nV\t")[1].split(b"\r")[0]): i for i, b in enumerate(BLOCKS)}


class Skips:
    """Stream blocks passed per decoded block, from the V of consecutive decoded blocks."""

    def __init__(self) -> None:
        self.last: int | None = None
        self.steps: list[int] = []

    def add(self, millivolts: int) -> None:
        i = INDEX[millivolts]
        if self.last is not None:
            self.steps.append((i - self.last) % len(BLOCKS) or len(BLOCKS))
        self.last = i

    def mean(self) -> float:
        return statistics.mean(self.steps) if self.steps else float("nan")


class Writer(threading.Thread):
    """Writes the blocks round-robin into the pty master until stopped, in paced chunks."""

    def __init__(self, fd: int, chunk: int, gap_s: float, period_s: float) -> None:
        super().__init__(daemon=True)
        self.fd, self.chunk, self.gap_s, self.period_s = fd, chunk, gap_s, period_s
        self.stop = threading.Event()
        self.written = 0

    def run(self) -> None:
        due = time.perf_counter()
        while not self.stop.is_set():
            block = BLOCKS[self.written % len(BLOCKS)]
            for i in range(0, len(block), self.chunk):
                try:
                    os.write(self.fd, block[i:i + self.chunk])
                except OSError:  # the round is over and the pty is gone
                    return
                time.sleep(self.gap_s)
            self.written += 1
            due += self.period_s
            time.sleep(max(0.0, due - time.perf_counter()))


@dataclass
class Result:
    cpu_per_block_s: float
    stream_blocks_per_block: float  # 1.0: every block of the stream was decoded
    checksum_failures: int = 0


class Pty:
    """A raw pseudo-terminal with a writer on the master side; the slave stays open so a reader
    that closes and reopens the port (``vedirect``) does not make the master's writes fail."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.port = os.ttyname(self.slave)
        self.writer = Writer(self.master, args.chunk, args.gap, args.period)

    def __enter__(self) -> Pty:
        self.writer.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.writer.stop.set()
        self.writer.join(5)
        os.close(self.master)
        os.close(self.slave)


def ours(args: argparse.Namespace, coalesce_s: float | None = None) -> Result:
    """``SerialReader`` with its default ``coalesce_s`` unless one is given."""
    with Pty(args) as pty:
        done = threading.Event()
        mark: dict[str, float] = {}
        skips = Skips()
        count = 0

        def on_reading(reading: Reading) -> None:
            nonlocal count
            count += 1
            if count == args.warmup:
                mark["cpu"] = time.thread_time()
            elif count == args.warmup + args.blocks:
                mark["cpu"] = time.thread_time() - mark["cpu"]
                done.set()
            if count >= args.warmup and reading.battery_voltage_v is not None:
                skips.add(round(reading.battery_voltage_v * 1000))

        options: dict[str, Any] = {} if coalesce_s is None else {"coalesce_s": coalesce_s}
        reader = SerialReader(pty.port, on_reading=on_reading, **options)
        reader.start()
        if not done.wait(300):
            raise RuntimeError("edgeagent reader did not finish")
        reader.stop()
        failures = reader.stats.invalid
        return Result(mark["cpu"] / args.blocks, skips.mean(), failures)


def _loop_in_thread(read_one: Callable[[], dict[str, str] | None],
                    args: argparse.Namespace) -> Result:
    """Call ``read_one`` (a decoded block, or None when one failed its checksum) in a thread
    until ``--blocks`` blocks after the warm-up; return that thread's CPU per decoded block."""
    out: dict[str, float] = {}
    skips = Skips()

    def run() -> None:
        decoded = failures = 0
        while decoded < args.warmup:
            decoded += read_one() is not None
        cpu = time.thread_time()
        decoded = 0
        while decoded < args.blocks:
            block = read_one()
            if block is None:
                failures += 1
                continue
            decoded += 1
            skips.add(int(block["V"]))
        out.update(cpu=time.thread_time() - cpu, failures=failures)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(300)
    if "cpu" not in out:
        raise RuntimeError("reader did not finish")
    return Result(out["cpu"] / args.blocks, skips.mean(), int(out["failures"]))


def theirs_vedirect(args: argparse.Namespace) -> Result:
    import vedirect  # PyPI "vedirect" (Frankkkkk/python-vedirect)

    with Pty(args) as pty:
        device = vedirect.VEDirect(pty.port)  # its __init__ already reads one block

        def read_one() -> dict[str, str] | None:
            try:
                device.refresh()
            except vedirect.InvalidChecksumException:
                return None
            return dict(device._data)  # what refresh() parsed (the package has no getter)

        return _loop_in_thread(read_one, args)


def theirs_m8(args: argparse.Namespace) -> Result:
    from vedirect_m8.serconnect import SerialConnection
    from vedirect_m8.vedirect import Vedirect

    with Pty(args) as pty:
        # vedirect-m8 only opens /dev/ttyUSBn, /dev/ttyACMn or <home>/vmodemN: give it a
        # /tmp/vmodemN link to the pty and let it accept /tmp (its reading path is unchanged).
        link = os.path.join("/tmp", f"vmodem{os.getpid() % 1000}")
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(pty.port, link)
        SerialConnection._get_virtual_ports_paths = staticmethod(
            lambda: ["/tmp"])
        try:
            device = Vedirect({"serial_port": link, "baud": 19200, "timeout": 1},
                              max_packet_blocks=None)

            def read_one() -> dict[str, str] | None:
                block: dict[str, str] | None = device.read_data_single(timeout=10)
                return block

            return _loop_in_thread(read_one, args)
        finally:
            os.unlink(link)


READERS: dict[str, tuple[str, Callable[[argparse.Namespace], Result]]] = {
    "edgeagent": ("edgeagent", lambda args: ours(args, args.coalesce)),
    "edgeagent-per-packet": ("edgeagent", lambda args: ours(args, 0.0)),
    "vedirect": ("vedirect", theirs_vedirect),
    "vedirect-m8": ("vedirect_m8", theirs_m8),
}


def package_version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--blocks", type=int, default=40, help="measured blocks per round")
    parser.add_argument("--warmup", type=int, default=3, help="blocks read before measuring")
    parser.add_argument("--chunk", type=int, default=32, help="bytes per write on the pty")
    parser.add_argument("--gap", type=float, default=32 / 1920,
                        help="pause after each chunk (s); 32/1920 is 19200 baud")
    parser.add_argument("--period", type=float, default=0.0,
                        help="start a block at most every PERIOD s (0: back to back)")
    parser.add_argument("--coalesce", type=float, default=None,
                        help="edgeagent's coalesce_s (default: SerialReader's own)")
    parser.add_argument("--readers",
                        default="edgeagent,vedirect,vedirect-m8,edgeagent-per-packet")
    args = parser.parse_args()
    names = [n for n in args.readers.split(",") if package_version(READERS[n][0]) is not None
             or n.startswith("edgeagent")]
    skipped = set(args.readers.split(",")) - set(names)
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs; "
          f"{len(BLOCKS)} MPPT blocks of ~{BLOCK_LEN:.0f} bytes in {args.chunk}-byte chunks "
          f"every {args.gap * 1000:.1f} ms"
          + (f", one block per {args.period * 1000:g} ms" if args.period else "")
          + f"; {args.rounds} rounds x {args.blocks} blocks"
          + (f"; not installed: {', '.join(sorted(skipped))}" if skipped else ""))
    results: dict[str, list[Result]] = {n: [] for n in names}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]  # rotate who goes first
        for name in order:
            results[name].append(READERS[name][1](args))
        print(f"  round {r + 1}: " + ", ".join(
            f"{n} {results[n][-1].cpu_per_block_s * 1e6:.0f} us" for n in names), flush=True)
    print(f"\nCPU per decoded block, median of {args.rounds} rounds (min-max), and the stream "
          "blocks read per decoded block")
    cpu = {n: [x.cpu_per_block_s for x in results[n]] for n in names}
    for name in names:
        label = (name if name.startswith("edgeagent")
                 else f"{name} {package_version(READERS[name][0])}")
        print(f"  {label:22s} {statistics.median(cpu[name]) * 1e6:7.1f} us"
              f"  ({min(cpu[name]) * 1e6:.0f}-{max(cpu[name]) * 1e6:.0f})"
              f"  x{statistics.median(x.stream_blocks_per_block for x in results[name]):.2f}"
              f"  checksum failures {sum(x.checksum_failures for x in results[name])}")
    print("CPU ratio (theirs / ours): of the medians; median of the per-round ratios")
    for mine in (n for n in names if n.startswith("edgeagent")):
        for theirs in (n for n in names if not n.startswith("edgeagent")):
            of_medians = statistics.median(cpu[theirs]) / statistics.median(cpu[mine])
            per_round = statistics.median(t / o for t, o in zip(cpu[theirs], cpu[mine],
                                                                strict=True))
            print(f"  {theirs} / {mine}: {of_medians:.2f}x; {per_round:.2f}x")
    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")


if __name__ == "__main__":
    main()
