"""A node's links down (or up) at one instant, for the lab's faults.

Rules: one thread enters the node's network namespace (setns(2) acts on the calling thread
only, and the thread ends with it), opens an rtnetlink socket there, sends one RTM_NEWLINK per
link (struct ifinfomsg with IFF_UP in the change mask, include/uapi/linux/rtnetlink.h) and
reads every acknowledgement. The time returned is taken right before that one send(2):
rtnetlink acts on the request inside the call, and a link stops sending first
(net/core/dev.c __dev_close_many: dev_deactivate_many) and then waits for an RCU grace
period (synchronize_net), which on a starved emulated CPU took over a second; a time taken
after the acknowledgement made VRRP look 1.3 s faster than its own timer. `ip link set`
would start a process per call, which takes about a second under QEMU/TCG, so its time says
little about when the links went down.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import threading
import time

CLONE_NEWNET = 0x40000000  # include/uapi/linux/sched.h
NETLINK_ROUTE = 0
RTM_NEWLINK = 16  # include/uapi/linux/rtnetlink.h
NLMSG_ERROR = 2  # include/uapi/linux/netlink.h
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
IFF_UP = 0x1
_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, seq, pid
_IFINFOMSG = struct.Struct("=BxHiII")  # family, pad, type, index, flags, change


def newlink_request(seq: int, index: int, up: bool) -> bytes:
    """An RTM_NEWLINK request setting link `index` up or down (nothing else changes)."""
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, IFF_UP if up else 0, IFF_UP)
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), RTM_NEWLINK,
                          NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def ack_errors(data: bytes) -> list[tuple[int, int]]:
    """(seq, errno) of each NLMSG_ERROR in `data` (errno 0 is an acknowledgement)."""
    out, off = [], 0
    while off + _NLMSGHDR.size <= len(data):
        length, kind, _flags, seq, _pid = _NLMSGHDR.unpack_from(data, off)
        if length < _NLMSGHDR.size:
            break
        if kind == NLMSG_ERROR and off + _NLMSGHDR.size + 4 <= len(data):
            (err,) = struct.unpack_from("=i", data, off + _NLMSGHDR.size)
            out.append((seq, -err))
        off += (length + 3) & ~3
    return out


def enter_netns(ns_path: str) -> None:
    """Move the calling thread (only it: setns(2)) into the network namespace at `ns_path`."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(ns_path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({ns_path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def _in_netns(ns_path: str, names: list[str], up: bool) -> float:
    """Body of the thread: enter the namespace, set the links, return when acknowledged."""
    enter_netns(ns_path)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE) as s:
        s.settimeout(10)
        indexes = [socket.if_nametoindex(n) for n in names]
        request = b"".join(newlink_request(k, i, up) for k, i in enumerate(indexes, 1))
        t = time.monotonic()
        s.send(request)
        acked: dict[int, int] = {}
        while len(acked) < len(indexes):
            acked.update(ack_errors(s.recv(65536)))
    bad = {names[seq - 1]: os.strerror(err) for seq, err in acked.items() if err}
    if bad:
        raise OSError(f"setting links {'up' if up else 'down'} failed: {bad}")
    return t


def set_links(ns_path: str, names: list[str], up: bool) -> float:
    """Set `names` in the network namespace at `ns_path` up or down at once; return
    time.monotonic() when the request went to the kernel."""
    result: dict[str, object] = {}

    def work() -> None:
        try:
            result["t"] = _in_netns(ns_path, names, up)
        except BaseException as e:  # handed to the caller's thread
            result["error"] = e

    th = threading.Thread(target=work, name="linkfault")
    th.start()
    th.join()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return float(result["t"])  # type: ignore[arg-type]
