"""This network namespace's UDP sockets as /proc/net/udp and /proc/net/udp6 print them.

Rules: `parse` is pure (text in, rows out); `sockets_at` reads the file for the address's
family. The kernel prints an address as its __be32 words in native byte order, in hex
(net/ipv4/udp.c udp4_format_sock, net/ipv6/datagram.c __ip6_dgram_sock_seq_show); each row
carries the owner's uid and the socket's inode (the pair that names one socket: a bound UDP
socket cannot be bound again, and inode numbers are not reused while it lives), its receive
queue and its drop count (sk_drops).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

Address = tuple[str, int]
PROC = {socket.AF_INET: Path("/proc/net/udp"), socket.AF_INET6: Path("/proc/net/udp6")}


@dataclass(frozen=True)
class UdpSocket:
    """One row: who owns the socket bound where, and what waits on it."""

    local: str  # the kernel's hex form, "0100007F:119E"
    remote: str
    rx_queue: int
    uid: int
    inode: int
    drops: int


def proc_address(addr: Address) -> str:
    """`addr` as /proc/net/udp{,6} prints it (native-order hex words, then the port)."""
    packed = ipaddress.ip_address(addr[0]).packed
    words = struct.unpack(f"={len(packed) // 4}I", packed)
    return "".join(f"{w:08X}" for w in words) + f":{addr[1]:04X}"


def parse(text: str) -> list[UdpSocket]:
    """Every well-formed row of /proc/net/udp{,6} text (the header and odd rows skipped)."""
    rows = []
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 13 or ":" not in parts[4]:
            continue
        try:
            rows.append(UdpSocket(parts[1], parts[2], int(parts[4].split(":")[1], 16),
                                  int(parts[7]), int(parts[9]), int(parts[12])))
        except ValueError:
            continue
    return rows


def family(addr: Address) -> int:
    """AF_INET or AF_INET6 for `addr`."""
    return socket.AF_INET6 if ipaddress.ip_address(addr[0]).version == 6 else socket.AF_INET


def sockets_at(addr: Address, text: str | None = None) -> list[UdpSocket]:
    """The sockets bound to `addr` (read from /proc unless `text` is given)."""
    if text is None:
        text = PROC[family(addr)].read_text()
    want = proc_address(addr)
    return [row for row in parse(text) if row.local == want]
