"""Network helpers for tests: ports free on loopback.

Rules: test helper only; a port found free may be taken by someone else before it is bound.
"""

from __future__ import annotations

import socket


def free_ports(n: int) -> list[int]:
    """n TCP/UDP ports free on 127.0.0.1 right now."""
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports
