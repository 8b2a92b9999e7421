"""An attacker on the Raft port, run as its own process (its descriptors are not the node's):
idle connections, or junk.

Rules: test helper only. `python raftflood.py idle HOST PORT SRC N` prints "ready", waits for a
line on stdin, opens N connections from SRC, prints {"opened", "failed"} as JSON and holds them
until stdin closes. `python raftflood.py junk HOST PORT SRC BYTES` sends BYTES of junk over as
many connections as it takes (each starts with a 1 GiB length, a 3 MiB length or random bytes)
and prints {"sent", "connections"}; it gives up after `JUNK_DEADLINE_S`.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import struct
import sys
import time

CONNECT_TIMEOUT_S = 2.0
JUNK_DEADLINE_S = 60.0
_BLOCK = os.urandom(1 << 20)
_HEADS = (struct.pack("i", 1 << 30), struct.pack("i", 3 << 20), b"")


def _raise_nofile(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 64 if hard == resource.RLIM_INFINITY else min(hard, n + 64)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _connect(host: str, port: int, src: str) -> socket.socket:
    sock = socket.socket()
    try:
        sock.bind((src, 0))
        sock.settimeout(CONNECT_TIMEOUT_S)
        sock.connect((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def idle(host: str, port: int, src: str, n: int) -> None:
    """Open `n` connections from `src` that never send a byte; hold them until stdin closes."""
    _raise_nofile(n)
    print("ready", flush=True)
    sys.stdin.readline()
    held, failed = [], 0
    for _ in range(n):
        try:
            held.append(_connect(host, port, src))
        except OSError:
            failed += 1
    print(json.dumps({"opened": len(held), "failed": failed}), flush=True)
    sys.stdin.read()
    for sock in held:
        sock.close()


def junk(host: str, port: int, src: str, total: int) -> None:
    """Send `total` bytes of junk (counted as the kernel takes them), reconnecting as needed."""
    sent, conns, deadline = 0, 0, time.monotonic() + JUNK_DEADLINE_S
    while sent < total and time.monotonic() < deadline:
        try:
            sock = _connect(host, port, src)
        except OSError:
            time.sleep(0.05)
            continue
        conns += 1
        sock.settimeout(5.0)
        data = _HEADS[conns % len(_HEADS)] + _BLOCK
        try:
            while sent < total:
                sent += sock.send(data)
                data = _BLOCK
        except OSError:
            pass
        finally:
            sock.close()
    print(json.dumps({"sent": sent, "connections": conns}), flush=True)


if __name__ == "__main__":
    what, host, port, src, n = sys.argv[1:6]
    (idle if what == "idle" else junk)(host, int(port), src, int(n))
