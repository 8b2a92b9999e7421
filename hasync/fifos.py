"""The two FIFOs the daemon uses: keepalived's notify FIFO (read) and charon's HA control FIFO
(written).

Rules: lines are split by the pure `LineBuffer` (a partial line longer than KEEP bytes is cut,
so a writer without newlines cannot grow memory); the notify FIFO is opened read-write and
non-blocking, so the daemon never waits for keepalived and never sees EOF when keepalived
restarts; a charon command goes with one non-blocking write and any failure is raised as
OSError for the caller to count (ha_ctl.c reads `+N`, `-N`, `*N` lines).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

KEEP = 4096  # bytes of an unfinished line kept between reads


class LineBuffer:
    """Bytes in, complete decoded lines out."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[str]:
        """The lines `data` completes, without their newlines."""
        self._buf.extend(data)
        *lines, rest = bytes(self._buf).split(b"\n")
        self._buf[:] = rest[-KEEP:]
        return [line.decode(errors="replace") for line in lines]


def open_notify_fifo(path: Path) -> int:
    """keepalived's notify FIFO, created mode 0600 if missing, as a non-blocking fd."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        os.mkfifo(path, 0o600)
    if not stat.S_ISFIFO(path.stat().st_mode):
        raise RuntimeError(f"{path} exists and is not a FIFO")
    return os.open(path, os.O_RDWR | os.O_NONBLOCK)


def read_available(fd: int) -> bytes:
    """What the FIFO holds now (b"" if nothing)."""
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return b""


def write_command(path: Path, command: str) -> None:
    """Write one line to charon's control FIFO without blocking; OSError if it cannot go
    (ENXIO: charon does not read it, ENOENT: no FIFO, EAGAIN: its pipe is full)."""
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, (command + "\n").encode())
    finally:
        os.close(fd)
