"""hasync_lab.linkfault: the RTM_NEWLINK request, acknowledgement parsing, and (as root) links
of a real network namespace taken down at once."""

from __future__ import annotations

import os
import struct
import subprocess
import uuid

import pytest

from hasync_lab import linkfault


def test_request_sets_only_the_up_flag() -> None:
    msg = linkfault.newlink_request(7, 42, up=False)
    length, kind, flags, seq, _pid = struct.unpack_from("=IHHII", msg)
    assert (length, kind, seq) == (len(msg), linkfault.RTM_NEWLINK, 7) and len(msg) == 32
    assert flags == linkfault.NLM_F_REQUEST | linkfault.NLM_F_ACK
    _fam, _type, index, ifflags, change = struct.unpack_from("=BxHiII", msg, 16)
    assert (index, ifflags, change) == (42, 0, linkfault.IFF_UP)
    assert struct.unpack_from("=I", linkfault.newlink_request(1, 3, up=True), 24)[0] == 1


def test_ack_errors_reads_each_error_message() -> None:
    def err(seq: int, errno: int) -> bytes:
        body = struct.pack("=i", -errno) + bytes(16)
        return struct.pack("=IHHII", 16 + len(body), linkfault.NLMSG_ERROR, 0, seq, 0) + body
    assert linkfault.ack_errors(err(1, 0) + err(2, 19)) == [(1, 0), (2, 19)]
    assert linkfault.ack_errors(b"") == [] and linkfault.ack_errors(err(1, 0)[:10]) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
def test_links_of_a_namespace_go_down_at_once() -> None:
    ns = f"hasync-lf-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for argv in (["link", "add", "a0", "type", "veth", "peer", "name", "a1"],
                     ["link", "set", "a0", "up"], ["link", "set", "a1", "up"]):
            subprocess.run(["ip", "-n", ns, *argv], check=True)
        linkfault.set_links(f"/run/netns/{ns}", ["a0", "a1"], up=False)
        out = subprocess.run(["ip", "-n", ns, "-o", "link", "show"], check=True,
                             capture_output=True, text=True).stdout
        assert all("UP" not in line.split(">")[0] for line in out.splitlines()
                   if " a0@" in line or " a1@" in line)
        with pytest.raises(OSError):
            linkfault.set_links(f"/run/netns/{ns}", ["nonexistent0"], up=False)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
