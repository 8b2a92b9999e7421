"""hasync.ikesniff: the IKE header parser on hand-built packets and fuzz, and the BPF filter on a
real packet socket in a network namespace of its own (issue 18)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hasync import ikesniff
from hasync.ha import MalformedMessage
from hasync.ikesniff import IkeHeader, Sniffed, parse_ip_packet, parse_udp_payload

ROOT = Path(__file__).resolve().parent.parent
SPI_I, SPI_R = 0x0123456789ABCDEF, 0xFEDCBA9876543210
INFORMATIONAL, CREATE_CHILD_SA = 37, 36  # RFC 7296 3.1
MARKER = b"\0\0\0\0"
ESP = b"\x00\x00\x10\x01" + b"\x00\x00\x00\x07" + b"\xaa" * 40  # SPI 0x1001, seq 7 (RFC 4303)


def ike(mid: int = 7, flags: int = 0x08, version: int = 0x20, exchange: int = INFORMATIONAL,
        length: int = 76, body: bytes = b"\x55" * 48) -> bytes:
    """An IKE header (RFC 7296 3.1) followed by `body`."""
    return struct.pack("!QQBBBBII", SPI_I, SPI_R, 46, version, exchange, flags, mid,
                       length) + body


def udp(payload: bytes, dport: int, sport: int = 40000) -> bytes:
    """A UDP header (checksum 0) and `payload`."""
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def ipv4(data: bytes, proto: int = 17, frag: int = 0, options: bytes = b"") -> bytes:
    """An IPv4 header (RFC 791) from 192.0.2.1 to 198.51.100.1 carrying `data`."""
    ihl = 5 + len(options) // 4
    return struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + len(options) + len(data), 1, frag,
                       64, proto, 0, bytes([192, 0, 2, 1]), bytes([198, 51, 100, 1])
                       ) + options + data


def ipv6(data: bytes, nh: int = 17, frag_offset: int | None = None) -> bytes:
    """An IPv6 header (RFC 8200) 2001:db8::1 -> 2001:db8::2, optionally a Fragment header."""
    if frag_offset is not None:
        data = struct.pack("!BBHI", nh, 0, frag_offset << 3 | 1, 99) + data
        nh = 44
    src, dst = (bytes.fromhex("20010db8" + "0" * 23 + last) for last in "12")
    return struct.pack("!IHBB", 6 << 28, len(data), nh, 64) + src + dst + data


HEADER = IkeHeader(SPI_I, SPI_R, INFORMATIONAL, 0x08, 7)


def test_parse_udp_payload_reads_the_header_on_500_and_behind_the_marker_on_4500() -> None:
    assert parse_udp_payload(ike(), 500) == HEADER
    assert parse_udp_payload(MARKER + ike(), 4500) == HEADER
    h = parse_udp_payload(ike(mid=0xFFFFFFFE, flags=0x20, exchange=CREATE_CHILD_SA), 500)
    assert h == IkeHeader(SPI_I, SPI_R, CREATE_CHILD_SA, 0x20, 0xFFFFFFFE)
    assert not h.is_request and not h.from_initiator
    assert HEADER.is_request and HEADER.from_initiator
    assert parse_udp_payload(ike(version=0x21), 500) is not None  # minor version ignored


def test_esp_in_udp_keepalives_and_other_ports_are_not_ike() -> None:
    assert parse_udp_payload(ESP, 4500) is None  # RFC 3948 2.2: non-zero SPI
    assert parse_udp_payload(b"\xff", 4500) is None  # RFC 3948 2.3: NAT-keepalive
    assert parse_udp_payload(b"", 4500) is None
    assert parse_udp_payload(ike(), 4500) is None  # no marker: SPIi's first word is the SPI
    assert parse_udp_payload(ike(), 501) is None
    with pytest.raises(MalformedMessage):  # no marker on 500: the header is 4 bytes off
        parse_udp_payload(MARKER + ike(), 500)


@pytest.mark.parametrize(("payload", "dport", "reason", "offset"), [
    (ike()[:27], 500, "truncated", 27),
    (MARKER + ike()[:10], 4500, "truncated", 14),
    (MARKER, 4500, "truncated", 4),
    (ike(version=0x10), 500, "bad_version", 17),  # IKEv1 (RFC 2408)
    (MARKER + ike(version=0x30), 4500, "bad_version", 21),
    (ike(length=27), 500, "bad_length", 24),
])
def test_bad_ike_raises_malformed_message_naming_reason_and_offset(
        payload: bytes, dport: int, reason: str, offset: int) -> None:
    with pytest.raises(MalformedMessage) as err:
        parse_udp_payload(payload, dport)
    assert (err.value.reason, err.value.offset) == (reason, offset)


def test_every_prefix_gives_none_or_malformed_message_never_another_exception() -> None:
    for packet in (ipv4(udp(MARKER + ike(), 4500)), ipv6(udp(ike(), 500)),
                   ipv6(udp(MARKER + ike(), 4500), frag_offset=0)):
        assert parse_ip_packet(packet) is not None
        for n in range(len(packet)):
            try:
                parse_ip_packet(packet[:n])
            except MalformedMessage as err:
                assert 0 <= err.offset <= n
    payload = MARKER + ike()
    for n in range(len(payload)):
        try:
            assert (parse_udp_payload(payload[:n], 4500) is None) == (n < 4)
        except MalformedMessage as err:
            assert err.reason == "truncated" and 4 <= n < 32
        else:
            assert n < 4 or n >= 32


def test_ipv4_packet_gives_header_and_addresses_with_options_and_ethernet_padding() -> None:
    want = Sniffed(HEADER, "192.0.2.1", 40000, "198.51.100.1", 4500)
    assert parse_ip_packet(ipv4(udp(MARKER + ike(), 4500))) == want
    assert parse_ip_packet(ipv4(udp(MARKER + ike(), 4500), options=b"\x01" * 8)) == want
    keepalive = ipv4(udp(b"\xff", 4500)) + b"\0" * 17  # padded to Ethernet's 46-byte minimum
    assert parse_ip_packet(keepalive) is None
    assert parse_ip_packet(ipv4(udp(b"", 4500)) + b"\0" * 18) is None  # padding is no marker


def test_ipv4_non_first_fragments_and_non_udp_are_not_ike() -> None:
    assert parse_ip_packet(ipv4(udp(ike(), 500), frag=0x2000)) is not None  # MF, offset 0
    assert parse_ip_packet(ipv4(udp(ike(), 500), frag=185)) is None  # offset 1480
    assert parse_ip_packet(ipv4(udp(ike(), 500), frag=0x2000 | 1)) is None
    assert parse_ip_packet(ipv4(udp(ike(), 500), proto=6)) is None
    assert parse_ip_packet(ipv4(udp(ESP, 4500))) is None


def test_ipv6_packet_with_and_without_fragment_header() -> None:
    want = Sniffed(HEADER, "2001:db8::1", 40000, "2001:db8::2", 500)
    assert parse_ip_packet(ipv6(udp(ike(), 500))) == want
    assert parse_ip_packet(ipv6(udp(ike(), 500), frag_offset=0)) == want
    assert parse_ip_packet(ipv6(udp(ike(), 500), frag_offset=185)) is None
    assert parse_ip_packet(ipv6(udp(ike(), 500), nh=60)) is None  # Destination Options: skipped
    assert parse_ip_packet(ipv6(udp(ike(), 500), nh=6)) is None


@pytest.mark.parametrize(("packet", "reason"), [
    (b"", "not_ip"),
    (b"\x50" + bytes(40), "not_ip"),
    (b"\x44" + bytes(40), "bad_ihl"),
    (ipv4(b"")[:19], "truncated"),
    (ipv4(b"\x00\x01\x01\xf4"), "truncated"),
    (ipv4(struct.pack("!HHHH", 1, 500, 7, 0)), "bad_length"),
    (ipv6(b"", nh=44), "truncated"),
    (ipv6(udp(b"\x01" * 27, 500)), "truncated"),
])
def test_bad_ip_raises_malformed_message(packet: bytes, reason: str) -> None:
    with pytest.raises(MalformedMessage) as err:
        parse_ip_packet(packet)
    assert err.value.reason == reason


@given(st.binary(max_size=160), st.sampled_from([500, 4500, 501, 0]))
def test_fuzz_only_malformed_message_escapes_parse_udp_payload(payload: bytes, dport: int) -> None:
    with contextlib.suppress(MalformedMessage):
        parse_udp_payload(payload, dport)


VALID = [ipv4(udp(MARKER + ike(), 4500)), ipv4(udp(ike(), 500), options=b"\x01" * 4),
         ipv6(udp(ike(), 500)), ipv6(udp(MARKER + ike(), 4500), frag_offset=0)]


@given(st.one_of(st.binary(max_size=160),
                 st.tuples(st.sampled_from(VALID), st.integers(0, 140), st.binary(max_size=4),
                           st.integers(0, 140)).map(
                     lambda t: (t[0][:t[1]] + t[2] + t[0][t[1] + len(t[2]):])[:t[3] + 20])))
def test_fuzz_only_malformed_message_escapes_parse_ip_packet(packet: bytes) -> None:
    try:
        parse_ip_packet(packet)
    except MalformedMessage as err:
        assert 0 <= err.offset <= len(packet)


def test_read_all_counts_what_it_drops_by_reason() -> None:
    class Queue:
        def __init__(self, packets: list[bytes]) -> None:
            self.packets = packets

        def recvfrom(self, n: int) -> tuple[bytes, tuple[str, int, int]]:
            if not self.packets:
                raise BlockingIOError
            packet = self.packets.pop(0)
            if packet == b"down":
                raise OSError(errno.ENETDOWN, "Network is down")
            pkttype = socket.PACKET_OUTGOING if packet == OUT else socket.PACKET_HOST
            return packet[:n], ("lo", 0x800, pkttype)

    OUT = ipv4(udp(ike(mid=1), 500))
    sock = Queue([ipv4(udp(ike(), 500)), ipv4(udp(ESP, 4500)), b"\x45", b"down", OUT,
                  ipv4(udp(ike(), 500))])
    counters: Counter[str] = Counter()
    got = ikesniff.read_all(sock, counters)  # type: ignore[arg-type]
    assert [s.header for s in got] == [HEADER, HEADER]
    assert counters == Counter({"ike_sniff:not_ike": 1, "ike_sniff:truncated": 1,
                                "ike_sniff:netdown": 1, "ike_sniff:not_host": 1})
    sock.packets = [ipv4(udp(ike(), 500))] * 3
    assert len(ikesniff.read_all(sock, counters, limit=2)) == 2 and len(sock.packets) == 1


def test_bpf_program_is_valid_classic_bpf_shape() -> None:
    prog = ikesniff.bpf_program()
    assert prog[-2] == (0x06, 0, 0, ikesniff.SNAP) and prog[-1] == (0x06, 0, 0, 0)
    for i, (code, jt, jf, k) in enumerate(prog):
        assert 0 <= code < 1 << 16 and 0 <= jt < 256 and 0 <= jf < 256 and 0 <= k < 1 << 32
        if code & 0x07 == 0x05:  # BPF_JMP: forward, inside the program
            assert i + 1 + (k if code == 0x05 else max(jt, jf)) < len(prog)


def test_open_sniffer_hooks_the_socket_only_after_the_filter_is_attached(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[object, ...]] = []

    class Recorder:
        def __init__(self, family: int, kind: int, proto: int) -> None:
            calls.append(("socket", family, kind, proto))

        def setsockopt(self, level: int, opt: int, value: object) -> None:
            calls.append(("setsockopt", level, opt))

        def setblocking(self, flag: bool) -> None:
            calls.append(("setblocking", flag))

        def fileno(self) -> int:
            return 99

    class Libc:
        def bind(self, fd: int, sll: bytes, n: int) -> int:
            calls.append(("bind", fd, sll[2:8], n))
            return 0

    monkeypatch.setattr(ikesniff.socket, "socket", Recorder)
    monkeypatch.setattr(ikesniff, "_libc", Libc())
    ikesniff.open_sniffer()
    all_ifaces = struct.pack("!H", 3) + struct.pack("=i", 0)  # ETH_P_ALL, ifindex 0
    assert calls == [("socket", socket.AF_PACKET, socket.SOCK_DGRAM, 0),  # no hook yet
                     ("setsockopt", socket.SOL_SOCKET, ikesniff.SO_ATTACH_FILTER),
                     ("setsockopt", ikesniff.SOL_PACKET, ikesniff.PACKET_IGNORE_OUTGOING),
                     ("setblocking", False), ("bind", 99, all_ifaces, 20)]


# In a fresh network namespace: three sockets read while UDP is sent on loopback; each prints
# what it read. On loopback a packet socket sees every packet twice (outgoing, then incoming).
PROBE = r"""
import json, select, socket, struct, subprocess, sys
from collections import Counter
from hasync import ikesniff
subprocess.run(["ip", "link", "set", "lo", "mtu", "1280", "up"], check=True)
def filter_only():  # the BPF program alone: no PACKET_IGNORE_OUTGOING, no interface
    s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
    ikesniff.attach_filter(s, ikesniff.bpf_program()); s.setblocking(False)
    ikesniff.bind_hook(s, None); return s
raw = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ikesniff.ETH_P_ALL))
raw.setblocking(False)
# UDP to port 501 floods loopback while the sniffers open: none may reach them unfiltered.
flood = subprocess.Popen([sys.executable, "-c", "import socket; s = socket.socket(2, 2)\n"
                          "while True: s.sendto(bytes(100), ('127.0.0.1', 501))"])
assert select.select([raw], [], [], 30)[0]  # the flood has started
socks = {"all": ikesniff.open_sniffer(), "lo": ikesniff.open_sniffer("lo"),
         "filter": filter_only()}
flood.kill(); flood.wait()
while True:
    try:
        raw.recv(1)
    except BlockingIOError:
        break
def ike(mid, flags=0x08, size=76, fill=b"\x55"):
    return struct.pack("!QQBBBBII", 0x1122334455667788, 0, 33, 0x20, 34, flags, mid, size
                       ) + (fill * size)[:size - 28]
# Later fragments of mid 8 carry 500 where a UDP header's destination port would be.
PORT_500 = b"\x00\x00\x01\xf4"
sends = [(b"\0\0\0\0" + ike(1), 4500), (ike(2), 500), (ike(3, flags=0x20), 500),
         (b"\0\0\0\0" + ike(4, size=3000), 4500),
         (ike(8, size=3000, fill=PORT_500), 500), (ike(5), 501), (b"\0\0\0\0" + ike(6), 4501),
         (b"\x00\x00\x10\x01" + bytes(60), 4500), (b"\xff", 4500), (b"", 4500), (b"\0\0\0", 4500),
         (ike(7), 4500)]
for fam, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
    with socket.socket(fam, socket.SOCK_DGRAM) as tx:
        for data, port in sends + [(ike(99), 500)]:
            tx.sendto(data, (host, port))
ignoring = [s.getsockopt(ikesniff.SOL_PACKET, ikesniff.PACKET_IGNORE_OUTGOING)
            for s in socks.values()]
out = {"ignore_outgoing": ignoring}
for name, s in socks.items():
    got, counters = [], Counter()
    while sum(m == 99 for m in got) < 2:  # the sentinel, sent last on each family
        assert select.select([s], [], [], 30)[0], (name, got)
        got += [m.header.mid for m in ikesniff.read_all(s, counters)]
    got += [m.header.mid for m in ikesniff.read_all(s, counters)]
    out[name] = {"mids": sorted(got), "counters": counters}
frags = 0
while True:
    try:
        p = raw.recv(64)
    except BlockingIOError:
        break
    frags += (p[0] >> 4 == 4 and struct.unpack_from("!H", p, 6)[0] & 0x1FFF != 0) or (
        p[0] >> 4 == 6 and p[6] == 44 and struct.unpack_from("!H", p, 42)[0] & 0xFFF8 != 0)
out["non_first_fragments_seen_raw"] = frags
print(json.dumps(out))
"""


AS_ROOT = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare")
                             or not shutil.which("ip"), reason="needs root, unshare and ip")


def in_netns(probe: str) -> dict:
    """Run `probe` in a new network namespace; what it printed, as JSON."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(["unshare", "--net", sys.executable, "-c", probe], env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@AS_ROOT
def test_the_filter_on_a_real_socket_passes_each_incoming_ike_request_once() -> None:
    out = in_netns(PROBE)
    assert out.pop("ignore_outgoing") == [1, 1, 0]  # sent packets are never cloned for ours
    assert out.pop("non_first_fragments_seen_raw") >= 8  # 3000 B on MTU 1280
    want = sorted([1, 2, 3, 4, 8, 99] * 2)  # IKE to 500, or 4500 with the marker; once each
    for name, seen in out.items():
        assert seen == {"mids": want, "counters": {}}, name  # nothing left for Python to drop


# Frames sent into veth v1 arrive on v0: to v0's MAC (PACKET_HOST) or another (OTHERHOST).
VETH_PROBE = r"""
import json, select, socket, struct, subprocess
from collections import Counter
from hasync import ikesniff
for cmd in (["link", "add", "v0", "type", "veth", "peer", "name", "v1"],
            ["link", "set", "v0", "up"], ["link", "set", "v1", "up"]):
    subprocess.run(["ip", *cmd], check=True)
link = subprocess.run(["ip", "-j", "link", "show", "v0"], check=True, capture_output=True)
mac = bytes.fromhex(json.loads(link.stdout)[0]["address"].replace(":", ""))
def frame(mid, dport=500):
    ike = struct.pack("!QQBBBBII", 7, 0, 33, 0x20, 37, 0x08, mid, 28)
    udp = struct.pack("!HHHH", 500, dport, 8 + len(ike), 0) + ike
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                       bytes([192, 0, 2, 9]), bytes([192, 0, 2, 1])) + udp
sniff = ikesniff.open_sniffer("v0")
tx = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM)
tx.sendto(frame(1), ("v1", ikesniff.ETH_P_IP, 0, 0, mac))
tx.sendto(frame(2), ("v1", ikesniff.ETH_P_IP, 0, 0, b"\x02\x00\x00\x00\x00\x09"))
tx.sendto(frame(3), ("v1", ikesniff.ETH_P_IP, 0, 0, mac))  # the last, so 1 and 2 are in
counters, got = Counter(), []
while 3 not in got:
    assert select.select([sniff], [], [], 30)[0], got
    got += [s.header.mid for s in ikesniff.read_all(sniff, counters)]
subprocess.run(["ip", "link", "set", "v0", "down"], check=True)
got += [s.header.mid for s in ikesniff.read_all(sniff, counters)]
print(json.dumps({"mids": got, "counters": counters}))
"""


@AS_ROOT
def test_on_a_link_only_frames_for_this_host_pass_and_the_link_going_down_is_counted() -> None:
    out = in_netns(VETH_PROBE)
    assert out == {"mids": [1, 3], "counters": {"ike_sniff:netdown": 1}}


def test_the_shipped_unit_lets_the_daemon_open_its_sniffer() -> None:
    unit = (Path(__file__).resolve().parent.parent / "deploy" / "hasync.service").read_text()
    (bounding,) = [ln for ln in unit.splitlines() if ln.startswith("CapabilityBoundingSet=")]
    assert "CAP_NET_RAW" in bounding.split("=", 1)[1].split()


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root to drop CAP_NET_RAW from the bounding set")
def test_without_cap_net_raw_the_sniffer_says_what_it_needs() -> None:
    code = ("from hasync.ikesniff import open_sniffer, SnifferUnavailable\n"
            "try:\n    open_sniffer()\nexcept SnifferUnavailable as e:\n    print(e)\n")
    res = subprocess.run(["setpriv", "--bounding-set", "-net_raw", "--inh-caps", "-net_raw",
                          sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "CAP_NET_RAW" in res.stdout and "deploy/hasync.service" in res.stdout
