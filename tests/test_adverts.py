"""hasync_lab.adverts: VRRP advertisements parsed, and (as root) heard from inside a namespace."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
import uuid

import pytest

from hasync_lab import adverts, linkfault


def _ip(src: str, payload: bytes, proto: int = adverts.VRRP_PROTO) -> bytes:
    head = bytes([0x45, 0, 0, 20 + len(payload), 0, 0, 0, 0, 255, proto, 0, 0])
    return head + socket.inet_aton(src) + socket.inet_aton("224.0.0.18") + payload


def test_parse_advertisement() -> None:
    adv = adverts.parse_advert(_ip("192.0.2.11", bytes([0x31, 51, 200, 1, 0, 50, 0, 0])), 7.5)
    assert adv == adverts.Advert(7.5, "192.0.2.11", 51, 200)
    assert adverts.parse_advert(_ip("192.0.2.11", bytes([0x31, 51, 0, 1, 0, 50, 0, 0])),
                                1.0).priority == 0  # the master resigns
    assert adverts.parse_advert(_ip("192.0.2.11", bytes(8), proto=17), 1.0) is None
    assert adverts.parse_advert(_ip("192.0.2.11", bytes([0x32, 51, 200, 1])), 1.0) is None
    assert adverts.parse_advert(b"\x45" + bytes(10), 1.0) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
def test_adverts_are_heard_inside_a_namespace() -> None:
    a, b = (f"hasync-adv-{uuid.uuid4().hex[:6]}" for _ in range(2))
    for ns in (a, b):
        subprocess.run(["ip", "netns", "add", ns], check=True)
    log = adverts.AdvertLog(f"/run/netns/{b}", "192.0.2.101")
    try:
        subprocess.run(["ip", "link", "add", "adva", "netns", a, "type", "veth", "peer", "name",
                        "advb", "netns", b], check=True)
        for ns, dev, addr in ((a, "adva", "192.0.2.11/24"), (b, "advb", "192.0.2.101/24")):
            subprocess.run(["ip", "-n", ns, "addr", "add", addr, "dev", dev], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
        log.start()
        assert log.error is None

        def send() -> None:
            linkfault.enter_netns(f"/run/netns/{a}")
            with socket.socket(socket.AF_INET, socket.SOCK_RAW, adverts.VRRP_PROTO) as s:
                s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                             socket.inet_aton("192.0.2.11"))
                for _ in range(3):
                    s.sendto(bytes([0x31, 51, 200, 1, 0, 50, 0, 0]), ("224.0.0.18", 0))
                    time.sleep(0.05)
        t0 = time.monotonic()
        th = threading.Thread(target=send)
        th.start()
        th.join()
        deadline = time.monotonic() + 5
        while len(log.adverts or []) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        heard = log.adverts or []
        assert [(x.src, x.vrid, x.priority) for x in heard] == [("192.0.2.11", 51, 200)] * 3
        assert t0 <= heard[0].t <= heard[-1].t <= time.monotonic()
        assert log.last_from("192.0.2.11", time.monotonic()) == heard[-1]
        assert log.last_from("192.0.2.11", t0 - 1) is None
    finally:
        log.close()
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], check=False)
