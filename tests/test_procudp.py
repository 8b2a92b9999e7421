"""/proc/net/udp read through a kept-open file, and the rows at one address (procudp.py)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from hasync import procudp

HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n"  # noqa: E501


def row(sl: int, local: str, remote: str = "00000000:0000", rx: int = 0, inode: int = 7) -> str:
    """One /proc/net/udp row as udp4_format_sock() prints it."""
    return (f"{sl:5d}: {local} {remote} 07 00000000:{rx:08X} 00:00000000 00000000     0"
            f"        0 {inode} 2 0000000000000000 0\n")


def test_rows_at_keeps_only_rows_bound_there_not_those_sending_there() -> None:
    text = HEADER + row(1, "0100007F:119E", inode=11) + row(2, "0200007F:1000",
                                                           "0100007F:119E", inode=12)
    text += "garbage line holding 0100007F:119E\n" + row(3, "0100007F:119E", rx=768, inode=13)
    assert [(r.inode, r.rx_queue) for r in procudp.rows_at(text, "0100007F:119E")] == [
        (11, 0), (13, 768)]
    assert procudp.rows_at(text, "0100007F:119E") == [
        r for r in procudp.parse(text) if r.local == "0100007F:119E"]


@pytest.mark.parametrize("bound", [1, 40, 200])  # one buffer of rows, or several reads
def test_a_kept_open_proc_file_reads_what_a_fresh_open_reads(bound: int) -> None:
    socks = []
    try:
        for _ in range(bound):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(s)
            s.bind(("127.0.0.1", 0))
        f = procudp.ProcFile(procudp.PROC[socket.AF_INET])
        for _ in range(3):  # read again from the start each time
            text = f.read()
            assert text == Path("/proc/net/udp").read_text()
            ours = {s.getsockname()[1] for s in socks}
            seen = {int(r.local.split(":")[1], 16) for r in procudp.parse(text)}
            assert ours <= seen
        inode = os.stat(f"/proc/self/fd/{socks[-1].fileno()}").st_ino  # socket:[inode]
        assert [r.inode for r in procudp.sockets_at(socks[-1].getsockname())] == [inode]
        f.close()
    finally:
        for s in socks:
            s.close()


def test_a_file_that_cannot_be_read_raises_and_is_opened_again_later(tmp_path: Path) -> None:
    path = tmp_path / "udp"
    f = procudp.ProcFile(path)
    with pytest.raises(OSError):
        f.read()
    path.write_text(HEADER + row(1, "0100007F:119E"))
    assert f.read().endswith(" 0\n")
    path.write_text(HEADER)  # rewritten in place: the kept file sees it
    assert f.read() == HEADER
