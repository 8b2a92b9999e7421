"""This network namespace's UDP sockets as /proc/net/udp and /proc/net/udp6 print them.

Rules: `parse` and `rows_at` are pure (text in, rows out); `sockets_at` reads the file for the
address's family through a `ProcFile`, kept open and read again from its start (D272): the
kernel builds the text anew on each read from offset 0, and opening the file costs twice what
reading it does. Each read() walks the whole UDP hash table (16384 buckets here) for one
buffer of rows; seq_read_iter() (fs/seq_file.c) stops filling a buffer of at least a page
only at the end of the rows or when the next row does not fit, so a read that returns less
than a page less two rows is the whole file, and the read that would return nothing is
skipped. The kernel prints an address as its __be32 words in native byte order, in hex
(net/ipv4/udp.c udp4_format_sock, net/ipv6/datagram.c __ip6_dgram_sock_seq_show); each row
carries the owner's uid and the socket's inode (the pair that names one socket: a bound UDP
socket cannot be bound again, and inode numbers are not reused while it lives), its receive
queue and its drop count (sk_drops).
"""

from __future__ import annotations

import functools
import ipaddress
import os
import socket
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

Address = tuple[str, int]
PROC = {socket.AF_INET: Path("/proc/net/udp"), socket.AF_INET6: Path("/proc/net/udp6")}
READ_SIZE = 65536
WHOLE_BELOW = 4096 - 2 * 256  # a page less two rows (udp4 rows are 128 bytes, udp6 169)


@dataclass(frozen=True)
class UdpSocket:
    """One row: who owns the socket bound where, and what waits on it."""

    local: str  # the kernel's hex form, "0100007F:119E"
    remote: str
    rx_queue: int
    uid: int
    inode: int
    drops: int


@functools.lru_cache(maxsize=64)
def proc_address(addr: Address) -> str:
    """`addr` as /proc/net/udp{,6} prints it (native-order hex words, then the port)."""
    packed = ipaddress.ip_address(addr[0]).packed
    words = struct.unpack(f"={len(packed) // 4}I", packed)
    return "".join(f"{w:08X}" for w in words) + f":{addr[1]:04X}"


class ProcFile:
    """One /proc file, opened once and read whole from its start on each `read`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._lock = threading.Lock()  # one reader at a time: the offset is shared

    def read(self) -> str:
        """The file's text now; OSError if it cannot be opened or read (then it is opened
        again next time)."""
        with self._lock:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.lseek(self._fd, 0, os.SEEK_SET)
                chunks = [os.read(self._fd, READ_SIZE)]
                while len(chunks[-1]) > WHOLE_BELOW and (chunk := os.read(self._fd, READ_SIZE)):
                    chunks.append(chunk)
            except OSError:
                self.close()
                raise
        return b"".join(chunks).decode("ascii", "replace")

    def close(self) -> None:
        """Close the file (the next `read` opens it again)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __del__(self) -> None:
        self.close()


_FILES = {family: ProcFile(path) for family, path in PROC.items()}


def _row(line: str) -> UdpSocket | None:
    """One well-formed row, or None."""
    parts = line.split()
    if len(parts) < 13 or ":" not in parts[4]:
        return None
    try:
        return UdpSocket(parts[1], parts[2], int(parts[4].split(":")[1], 16),
                         int(parts[7]), int(parts[9]), int(parts[12]))
    except ValueError:
        return None


def parse(text: str) -> list[UdpSocket]:
    """Every well-formed row of /proc/net/udp{,6} text (the header and odd rows skipped)."""
    return [row for line in text.splitlines()[1:] if (row := _row(line)) is not None]


def rows_at(text: str, local: str) -> list[UdpSocket]:
    """The well-formed rows of `text` bound to `local` (`proc_address` form); only lines
    that hold it are split."""
    return [row for line in text.splitlines()[1:]
            if local in line and (row := _row(line)) is not None and row.local == local]


def family(addr: Address) -> int:
    """AF_INET or AF_INET6 for `addr`."""
    return socket.AF_INET6 if ipaddress.ip_address(addr[0]).version == 6 else socket.AF_INET


def sockets_at(addr: Address, text: str | None = None) -> list[UdpSocket]:
    """The sockets bound to `addr` (read from /proc unless `text` is given)."""
    if text is None:
        text = _FILES[family(addr)].read()
    return rows_at(text, proc_address(addr))
