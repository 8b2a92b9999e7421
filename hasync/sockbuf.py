"""A socket's receive queue made room for a burst: one rule for every socket that asks.

Rules: pure socket options, no logging; SO_RCVBUFFORCE first (it passes net.core.rmem_max,
CAP_NET_ADMIN: asm-generic/socket.h, socket(7)), else SO_RCVBUF (capped at rmem_max); a socket
that takes neither keeps its default, which the caller's drop counters then show.
"""

from __future__ import annotations

import socket

SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def grow_rcvbuf(sock: socket.socket, size: int) -> None:
    """Ask for a receive queue of `size` bytes, as far as this process may."""
    for opt in (SO_RCVBUFFORCE, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, size)
            return
        except OSError:
            continue
