"""Network helpers for product tests (no lab import)."""

from __future__ import annotations

import socket


def free_ports(n: int) -> list[int]:
    """n TCP ports free on 127.0.0.1 right now (all bound at once, so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
