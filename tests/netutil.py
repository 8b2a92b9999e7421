"""Helpers for tests: ports free on loopback, waiting for a condition.

Rules: test helper only; a port found free may be taken by someone else before it is bound.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable


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


def wait_until(pred: Callable[[], object], timeout: float = 30.0, what: str = "") -> None:
    """Poll `pred` every 50 ms until true; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out{' waiting for ' + what if what else ''}")
