"""An emulated serial line: a pseudo-terminal behind a stable name, with fault injection.

The agent opens ``port`` (a symlink, like ``/dev/serial/by-id/...``) with pyserial, exactly as
on a board; the emulated device writes and reads the pty's master side. ``unplug`` closes the
pty (a reader gets EIO, the name vanishes) and ``replug`` puts a new pty behind the same name
with an atomic ``os.replace``, as udev does. ``Faults`` damage what the device sends, so tests
can check that no damaged frame ever reaches the agent's state.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import shutil
import tempfile
import threading
import time
import tty
from dataclasses import dataclass, field
from pathlib import Path

# What an MPPT reports asynchronously: charger voltage and current, panel voltage, temperature.
HEX_REGISTERS = (0xEDD5, 0xEDD7, 0xEDBB, 0xEDDB)


@dataclass
class Faults:
    """What goes wrong on the line, per frame the device sends (one ``write`` is one frame).

    ``noise``: probability of random garbage bytes before the frame; ``corrupt``: probability
    that one byte of the frame is changed; ``silent``: nothing is sent (a sleeping or dead
    device); ``hex_frames`` (VE.Direct only): probability of a valid async HEX frame inserted at
    a random place in or after the block. Seeded, so a test sees the same damage every run.
    """

    noise: float = 0.0
    corrupt: float = 0.0
    silent: bool = False
    hex_frames: float = 0.0
    seed: int = 0
    rng: random.Random = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)


@dataclass
class Injected:
    """What the line did to the frames it was given: tests assert against these."""

    frames: int = 0
    noise: int = 0
    corrupted: int = 0
    silenced: int = 0
    hex_frames: int = 0


def async_hex_frame(register: int, value: bytes, flags: int = 0) -> bytes:
    """A VE.Direct async HEX frame (``:A``, register little-endian, flags, value, checksum,
    ``\n``); valid: the command nibble plus every byte is 0x55 mod 256 (research note §1.5)."""
    payload = register.to_bytes(2, "little") + bytes([flags]) + value
    checksum = (0x55 - 0xA - sum(payload)) & 0xFF
    return b":A" + (payload + bytes([checksum])).hex().upper().encode("ascii") + b"\n"


def apply_faults(frame: bytes, faults: Faults, injected: Injected) -> bytes:
    """The bytes that go on the wire for ``frame`` (empty when the line is silent)."""
    injected.frames += 1
    if faults.silent:
        injected.silenced += 1
        return b""
    rng = faults.rng
    data = bytearray(frame)
    if data and rng.random() < faults.corrupt:
        data[rng.randrange(len(data))] ^= rng.randrange(1, 256)
        injected.corrupted += 1
    if rng.random() < faults.hex_frames:
        # Anywhere but between "Checksum\t" and its byte, which is data even when it is ':'.
        at = rng.choice([i for i in range(len(data) + 1) if i != len(data) - 1])
        data[at:at] = async_hex_frame(rng.choice(HEX_REGISTERS), rng.randbytes(2))
        injected.hex_frames += 1
    if rng.random() < faults.noise:
        data[:0] = rng.randbytes(rng.randint(1, 12))
        injected.noise += 1
    return bytes(data)


class EmulatedLine:
    """A pty pair whose slave is reachable as ``port``, a symlink that survives replugs.

    ``link`` is the stable name; without one the line makes a private directory for it. The
    device side never blocks: bytes nobody reads are lost (counted in ``dropped_bytes``), as on
    a real, unread UART. Every method may be called from any thread.
    """

    def __init__(self, link: str | os.PathLike[str] | None = None,
                 faults: Faults | None = None) -> None:
        self._own_dir: Path | None = None
        if link is None:
            self._own_dir = Path(tempfile.mkdtemp(prefix="edgeagent-line-"))
            link = self._own_dir / "tty"
        self.link = Path(link)
        self.link.parent.mkdir(parents=True, exist_ok=True)
        self.faults = faults or Faults()
        self.injected = Injected()
        self.dropped_bytes = 0
        self.plugs = 0
        self._lock = threading.Lock()
        self._fds: tuple[int, int] | None = None  # (master, slave) while plugged in
        self.replug()

    @property
    def port(self) -> str:
        """The stable name the agent opens."""
        return str(self.link)

    def replug(self) -> None:
        """A (new) pty behind the stable name; the name switches atomically."""
        with self._lock:
            self._close_fds()
            master, slave = os.openpty()
            tty.setraw(slave)  # no echo or CR/LF translation: the bytes are binary-exact
            tty.setraw(master)
            os.set_blocking(master, False)
            self._fds = (master, slave)
            self.plugs += 1
            tmp = self.link.with_name(f".{self.link.name}.{os.getpid()}.new")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(os.ttyname(slave))
            os.replace(tmp, self.link)

    def unplug(self) -> None:
        """The cable is pulled: the pty closes (an open reader gets EIO) and the name goes."""
        with self._lock:
            self._close_fds()
            self.link.unlink(missing_ok=True)

    def close(self) -> None:
        self.unplug()
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)

    def _close_fds(self) -> None:
        if self._fds is not None:
            for fd in self._fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._fds = None

    def write(self, frame: bytes) -> None:
        """Send one frame as the device, through the faults; never blocks, never raises."""
        with self._lock:
            data = apply_faults(frame, self.faults, self.injected)
            if self._fds is None:
                self.dropped_bytes += len(data)
                return
            try:
                written = os.write(self._fds[0], data) if data else 0
            except OSError:  # BlockingIOError when the buffer is full: lost, as on a UART
                written = 0
            self.dropped_bytes += len(data) - written

    def read(self, timeout_s: float = 0.01) -> bytes:
        """What the host sent, waiting up to ``timeout_s``; empty when nothing came or the line
        is unplugged."""
        fds = self._fds
        if fds is None:
            time.sleep(timeout_s)
            return b""
        with contextlib.suppress(OSError, ValueError):  # closed under us by unplug: no data
            select.select([fds[0]], [], [], timeout_s)
        with self._lock:
            if self._fds is not fds:  # unplugged or replugged while waiting
                return b""
            try:
                return os.read(fds[0], 4096)
            except OSError:  # nothing there (EAGAIN), or the pty is hung up
                return b""
