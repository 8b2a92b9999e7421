"""sockbuf.grow_rcvbuf: as root the queue passes net.core.rmem_max (SO_RCVBUFFORCE); a socket
option the kernel refuses leaves the next one to try."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from hasync.sockbuf import grow_rcvbuf


@pytest.mark.skipif(os.geteuid() != 0, reason="SO_RCVBUFFORCE needs CAP_NET_ADMIN")
def test_root_gets_a_queue_past_rmem_max() -> None:
    rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        grow_rcvbuf(s, 4 * rmem_max)
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 4 * rmem_max


class _Refusing:
    """A socket that refuses the first option it is given."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def setsockopt(self, level: int, opt: int, value: int) -> None:
        self.calls.append(opt)
        if len(self.calls) == 1:
            raise PermissionError(1, "not permitted")


def test_a_refused_force_falls_back_to_rcvbuf() -> None:
    s = _Refusing()
    grow_rcvbuf(s, 1 << 20)  # type: ignore[arg-type]
    assert s.calls[1] == socket.SO_RCVBUF and len(s.calls) == 2
