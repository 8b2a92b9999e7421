# Tests for hasync_lab.pcap: captures are built in memory by a small builder below.
# Rules: no files except tmp_path; the tcpdump test runs only as root with tcpdump installed.

import os
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hasync_lab.pcap import (
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_RAW,
    MAGIC_NSEC,
    MAGIC_USEC,
    NON_ESP_MARKER,
    EspPacket,
    IkePacket,
    PcapError,
    PcapTail,
    SeqJump,
    SpiSummary,
    ike_sa_inits,
    parse_pcap,
    read_pcap,
    seq_jumps,
    seq_reuse,
    spi_summary,
)

A, B = "192.0.2.1", "198.51.100.7"


def esp(spi: int, seq: int, body: bytes = b"\xaa" * 24) -> bytes:
    """An ESP header and some ciphertext."""
    return struct.pack("!II", spi, seq) + body


def ike(exchange: int = 35, flags: int = 0x08, msgid: int = 1, ispi: int = 0x1111,
        rspi: int = 0x2222, body: bytes = b"\x00" * 8, version: int = 0x20) -> bytes:
    """An IKEv2 header (next payload SK) and some encrypted body."""
    head = struct.pack("!QQBBBBII", ispi, rspi, 46, version, exchange, flags, msgid,
                       28 + len(body))
    return head + body


def udp(payload: bytes, sport: int = 4500, dport: int = 4500) -> bytes:
    """A UDP header (checksum 0) and payload."""
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def ipv4(proto: int, payload: bytes, src: str = A, dst: str = B, frag: int = 0) -> bytes:
    """An IPv4 header (no options, checksum 0) and payload."""
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(payload),
        1,
        frag,
        64,
        proto,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    return header + payload


def ipv6(next_header: int, payload: bytes) -> bytes:
    """An IPv6 header and payload."""
    return (
        struct.pack("!IHBB", 6 << 28, len(payload), next_header, 64)
        + socket.inet_pton(socket.AF_INET6, "2001:db8::1")
        + socket.inet_pton(socket.AF_INET6, "2001:db8::2")
        + payload
    )


def ether(ip: bytes, ethertype: int = 0x0800, vlan: int | None = None) -> bytes:
    """An Ethernet frame, padded to 60 bytes like on the wire."""
    tag = struct.pack("!HH", 0x8100, vlan) if vlan is not None else b""
    frame = b"\x02" * 6 + b"\x04" * 6 + tag + struct.pack("!H", ethertype) + ip
    return frame.ljust(60, b"\x00")


def sll(ip: bytes) -> bytes:
    """A Linux cooked (SLL) frame."""
    return struct.pack("!HHH8sH", 0, 1, 6, b"\x02" * 8, 0x0800) + ip


def sll2(ip: bytes) -> bytes:
    """A Linux cooked v2 (SLL2) frame."""
    return struct.pack("!HHIHBB8s", 0x0800, 0, 2, 1, 0, 6, b"\x02" * 8) + ip


def pcap(
    frames: list[bytes],
    linktype: int = LINKTYPE_ETHERNET,
    endian: str = "<",
    nsec: bool = False,
    snaplen: int = 262144,
    t0: float = 1000.0,
) -> bytes:
    """A classic pcap file; frame i is stamped t0 + i/4 s, and cut to snaplen."""
    magic = MAGIC_NSEC if nsec else MAGIC_USEC
    out = [struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for i, frame in enumerate(frames):
        t = t0 + i / 4
        frac = round((t % 1) * (1e9 if nsec else 1e6))
        kept = frame[:snaplen]
        out.append(struct.pack(endian + "IIII", int(t), frac, len(kept), len(frame)) + kept)
    return b"".join(out)


def mixed_frames() -> list[bytes]:
    """Plain ESP, NAT-T ESP, IKE on 4500, a keepalive, and unrelated traffic."""
    return [
        ether(ipv4(50, esp(0x1001, 1))),
        ether(ipv4(17, udp(esp(0x2002, 7)), src=B, dst=A)),
        ether(ipv4(17, udp(NON_ESP_MARKER + ike()))),
        ether(ipv4(17, udp(b"\xff"))),
        ether(ipv4(17, udp(esp(0x3003, 1), 5353, 5353))),
        ether(ipv4(6, b"\x00" * 20)),
        ether(b"\x00" * 28, ethertype=0x0806),
    ]


def test_plain_and_natt_esp_with_skips() -> None:
    capture = parse_pcap(pcap(mixed_frames()))
    assert capture.packets == (
        EspPacket(1000.0, A, B, 0x1001, 1, False),
        EspPacket(1000.25, B, A, 0x2002, 7, True),
    )
    assert capture.ike == (IkePacket(1000.5, A, B, 4500, 4500, 0x1111, 0x2222, 35, 0x08, 1),)
    assert (capture.frames, capture.keepalives) == (7, 1)
    assert (capture.other, capture.short, capture.incomplete_tail) == (3, 0, False)


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("nsec", [False, True])
def test_byte_orders_and_timestamp_resolution(endian: str, nsec: bool) -> None:
    data = pcap(mixed_frames(), endian=endian, nsec=nsec, t0=1700000000.123456)
    capture = parse_pcap(data)
    assert capture.nanosecond is nsec
    assert [(p.spi, p.seq) for p in capture.packets] == [(0x1001, 1), (0x2002, 7)]
    assert capture.packets[0].ts == pytest.approx(1700000000.123456, abs=2e-6)
    assert capture.packets[1].ts == pytest.approx(1700000000.373456, abs=2e-6)


def test_truncated_packets_keep_the_esp_header() -> None:
    # 14 (Ethernet) + 20 (IPv4) + 8 (UDP) + 8 (ESP) = 50 bytes kept: enough for NAT-T ESP.
    frames = [ether(ipv4(17, udp(esp(0x2002, n)))) for n in (1, 2)]
    frames.append(ether(ipv4(50, esp(0x1001, 9, b"\x01" * 1000))))
    capture = parse_pcap(pcap(frames, snaplen=50))
    assert [(p.spi, p.seq, p.udp_encap) for p in capture.packets] == [
        (0x2002, 1, True),
        (0x2002, 2, True),
        (0x1001, 9, False),
    ]
    assert capture.short == 0


def test_too_short_packets_are_counted() -> None:
    natt, plain = ether(ipv4(17, udp(esp(0x2002, 1)))), ether(ipv4(50, esp(0x1001, 1)))
    # Ethernet 14 + IPv4 20 + UDP 8: 45 leaves 3 payload bytes, 49 leaves 7 bytes of ESP.
    frames = [natt[:45], natt[:49], natt[:40], plain[:41], plain[:30], plain[:13]]
    capture = parse_pcap(pcap(frames))
    assert (capture.packets, capture.short, capture.other) == ((), 6, 0)
    lying = plain[:14] + ipv4(50, b"\x00\x00\x00\x01")  # the IP length says 4 ESP bytes
    assert parse_pcap(pcap([lying + b"\x00" * 20])).short == 1


def test_keepalive_padding_and_short_ike() -> None:
    # The Ethernet padding after a keepalive must not be read as payload.
    frames = [ether(ipv4(17, udp(b"\xff"), src=B, dst=A)), ether(ipv4(17, udp(b"\x00\x00")))]
    capture = parse_pcap(pcap(frames))
    assert (capture.keepalives, capture.short, capture.packets) == (1, 1, ())


def test_ike_on_port_500_and_behind_the_non_esp_marker() -> None:
    frames = [
        ether(ipv4(17, udp(ike(34, 0x08, 0, rspi=0), 500, 500))),
        ether(ipv4(17, udp(ike(34, 0x20, 0), 500, 500), src=B, dst=A)),
        ether(ipv4(17, udp(NON_ESP_MARKER + ike(35, 0x08, 1), 4500, 4500))),
        ether(ipv4(17, udp(NON_ESP_MARKER + ike(37, 0x28, 2), 4500, 33000), src=B, dst=A)),
        ether(ipv4(17, udp(esp(0x2002, 7)))),
        ether(ipv4(17, udp(b"\xff"))),
    ]
    capture = parse_pcap(pcap(frames))
    assert [(p.sport, p.dport, p.exchange, p.flags, p.msgid, p.rspi) for p in capture.ike] == [
        (500, 500, 34, 0x08, 0, 0),
        (500, 500, 34, 0x20, 0, 0x2222),
        (4500, 4500, 35, 0x08, 1, 0x2222),
        (4500, 33000, 37, 0x28, 2, 0x2222),
    ]
    assert [(p.src, p.dst, p.ts) for p in capture.ike][1] == (B, A, 1000.25)
    assert [p.spi for p in capture.packets] == [0x2002]
    assert (capture.keepalives, capture.short, capture.other) == (1, 0, 0)


def test_truncated_ike_headers_are_short_not_packets() -> None:
    whole500 = ether(ipv4(17, udp(ike(34, 0x08, 0), 500, 500)))
    whole4500 = ether(ipv4(17, udp(NON_ESP_MARKER + ike(35), 4500, 4500)))
    # Ethernet 14 + IPv4 20 + UDP 8 = 42; the IKE header ends at 70 (74 behind the marker)
    frames = [whole500[:69], whole500[:43], whole4500[:73], whole4500[:47],
              ether(ipv4(17, udp(ike(34)[:20], 500, 500))),  # the UDP length says 20 bytes
              ether(ipv4(17, udp(NON_ESP_MARKER + ike(34)[:27])))]
    capture = parse_pcap(pcap(frames))
    assert (capture.ike, capture.packets, capture.short, capture.other) == ((), (), 6, 0)
    kept = parse_pcap(pcap([whole500, whole4500], snaplen=74))  # cut after the headers
    assert [p.exchange for p in kept.ike] == [34, 35]


def test_ike_that_is_not_ikev2_is_other() -> None:
    frames = [ether(ipv4(17, udp(ike(version=0x10), 500, 500))),
              ether(ipv4(17, udp(NON_ESP_MARKER + b"\x00" * 40))),  # version 0, length 0
              ether(ipv4(17, udp(ike(34), 501, 502)))]
    capture = parse_pcap(pcap(frames))
    assert (capture.ike, capture.other, capture.short) == ((), 3, 0)


def test_ike_over_ipv6() -> None:
    (p,) = parse_pcap(pcap([ether(ipv6(17, udp(ike(34), 500, 500)), 0x86DD)])).ike
    assert (p.src, p.dst, p.exchange) == ("2001:db8::1", "2001:db8::2", 34)


def ike_packet(ts: float, exchange: int = 34, flags: int = 0x08, src: str = A) -> IkePacket:
    """A synthetic IkePacket from src to B."""
    return IkePacket(ts, src, B, 500, 500, 1, 0, exchange, flags, 0)


def test_ike_sa_inits_counts_requests_in_the_window() -> None:
    packets = [ike_packet(1.0), ike_packet(1.5, flags=0x20), ike_packet(2.0),
               ike_packet(3.0, exchange=35), ike_packet(4.0, src="203.0.113.9"),
               ike_packet(5.0)]
    assert ike_sa_inits(packets, 0.0, 10.0) == 4
    assert ike_sa_inits(packets, 1.0, 5.0) == 3  # start included, end excluded
    assert ike_sa_inits(packets, 0.0, 10.0, initiator=A) == 3
    assert ike_sa_inits(packets, 0.0, 10.0, initiator=B) == 0
    assert ike_sa_inits([], 0.0, 10.0) == 0


def test_later_fragments_are_not_esp() -> None:
    frames = [ether(ipv4(50, esp(0x1001, 5), frag=0x2000)), ether(ipv4(50, esp(1, 1), frag=185))]
    capture = parse_pcap(pcap(frames))
    assert [p.seq for p in capture.packets] == [5]
    assert capture.other == 1


@pytest.mark.parametrize(
    ("linktype", "wrap"),
    [
        (LINKTYPE_LINUX_SLL, sll),
        (LINKTYPE_LINUX_SLL2, sll2),
        (LINKTYPE_RAW, lambda ip: ip),
        (LINKTYPE_ETHERNET, lambda ip: ether(ip, vlan=42)),
    ],
)
def test_link_types(linktype: int, wrap: Callable[[bytes], bytes]) -> None:
    frames = [wrap(ipv4(50, esp(0x1001, 3))), wrap(ipv4(17, udp(esp(0x2002, 4), 4500, 33000)))]
    capture = parse_pcap(pcap(frames, linktype=linktype))
    assert capture.linktype == linktype
    assert [(p.spi, p.seq, p.udp_encap) for p in capture.packets] == [
        (0x1001, 3, False),
        (0x2002, 4, True),
    ]


def test_ipv6_esp() -> None:
    frames = [ether(ipv6(50, esp(0x6006, 2)), 0x86DD), ether(ipv6(17, udp(esp(0x6007, 3))), 0x86DD)]
    packets = parse_pcap(pcap(frames)).packets
    assert [(p.src, p.dst, p.spi, p.seq) for p in packets] == [
        ("2001:db8::1", "2001:db8::2", 0x6006, 2),
        ("2001:db8::1", "2001:db8::2", 0x6007, 3),
    ]


def test_incomplete_last_record_stops_reading() -> None:
    data = pcap([ether(ipv4(50, esp(0x1001, n))) for n in (1, 2)])
    capture = parse_pcap(data[:-10])
    assert [p.seq for p in capture.packets] == [1]
    assert capture.incomplete_tail
    assert parse_pcap(data[:30]).incomplete_tail
    assert parse_pcap(data[:24]).packets == ()


@pytest.mark.parametrize(
    ("data", "offset"),
    [
        (b"", 0),
        (b"\xd4\xc3\xb2\xa1\x02\x00", 6),
        (b"\x00" * 24, 0),
        (b"\x0a\x0d\x0d\x0a" + b"\x00" * 40, 0),
        (struct.pack("<IHHiIII", MAGIC_USEC, 1, 0, 0, 0, 65535, 1), 4),
        (struct.pack(">IHHiIII", MAGIC_USEC, 2, 4, 0, 0, 65535, 147), 20),
    ],
)
def test_bad_header_raises(data: bytes, offset: int) -> None:
    with pytest.raises(PcapError) as info:
        parse_pcap(data)
    assert info.value.offset == offset
    assert isinstance(info.value, ValueError)


def test_absurd_record_length_raises() -> None:
    data = pcap([]) + struct.pack("<IIII", 0, 0, 1 << 30, 1 << 30)
    with pytest.raises(PcapError, match="offset 32"):
        parse_pcap(data)


def packet(spi: int, seq: int, dst: str = B, ts: float = 0.0) -> EspPacket:
    """A synthetic EspPacket."""
    return EspPacket(ts, A, dst, spi, seq, False)


def test_seq_reuse() -> None:
    packets = [
        packet(1, 1),
        packet(1, 2),
        packet(1, 1),
        packet(1, 1),
        packet(2, 1),
        packet(2, 2, dst=A),
        packet(2, 2, dst=A),
    ]
    assert seq_reuse(packets) == 3
    assert seq_reuse(packets, dst=B) == 2
    assert seq_reuse(packets, dst=A) == 1
    assert seq_reuse(packets, dst="203.0.113.1") == 0
    assert seq_reuse([]) == 0


def test_spi_summary() -> None:
    packets = [
        packet(1, 10, ts=1.0),
        packet(2, 1, ts=1.5),
        packet(1, 11, ts=2.0),
        packet(9, 1, dst=A, ts=2.2),
        packet(1, 12, ts=3.0),
    ]
    summary = spi_summary(packets, B)
    assert list(summary) == [1, 2]
    assert summary[1] == SpiSummary(1, 10, 12, 3, 1.0, 3.0)
    assert summary[2] == SpiSummary(2, 1, 1, 1, 1.5, 1.5)
    assert set(spi_summary(packets, None)) == {1, 2, 9}


def test_seq_jumps_per_spi_across_the_fault() -> None:
    packets = [
        packet(1, 100, ts=7.0),
        packet(1, 101, ts=9.5),
        packet(2, 50, ts=9.9),
        packet(1, 102, ts=9.99),
        packet(3, 7, ts=9.0),  # only before: no jump
        packet(1, 100_203, ts=12.0),
        packet(2, 48, ts=10.2),  # after the fault, 0.3 s after 50: numbers used again
        packet(1, 100_200, ts=11.0),  # the first after, though listed later
        packet(2, 60, ts=13.0),
        packet(4, 1, ts=11.0),  # only after: no jump
        packet(1, 103, dst=A, ts=10.5),  # another destination
    ]
    assert seq_jumps(packets, B, 10.0) == [
        SeqJump(1, 102, 100_200, 100_097, 2, 1.0),
        SeqJump(2, 50, 48, -3, 1, 0.5),
    ]
    wide = seq_jumps(packets, B, 10.0, rate_window_s=4.0)
    assert [(j.spi, j.packets_2s, j.rate_pps) for j in wide] == [(1, 3, 0.75), (2, 1, 0.25)]
    assert seq_jumps(packets, A, 10.0) == []
    assert seq_jumps([], B, 10.0) == []


def test_seq_jumps_finds_the_switch_when_the_old_master_sends_on_after_the_fault() -> None:
    # charon died at 10.0 but its kernel forwarded until the VIP moved at 14.0
    packets = [packet(1, n, ts=8.0 + 0.5 * (n - 1)) for n in range(1, 13)]  # 8.0 .. 13.5
    packets += [packet(1, 1500 + n, ts=14.0 + 0.5 * n) for n in range(4)]
    assert seq_jumps(packets, B, 10.0) == [SeqJump(1, 12, 1500, 1487, 4, 2.0)]
    # a step back anywhere after the fault is what counts, however large a later step forward
    back = [*packets, packet(1, 1502, ts=16.0)]
    j = seq_jumps(back, B, 10.0)[0]
    assert (j.last_before, j.first_after, j.seq_skipped) == (1503, 1502, -2)
    # a continuous stream after the fault: no jump at all
    assert seq_jumps(packets[:12], B, 10.0) == [SeqJump(1, 4, 5, 0, 4, 2.0)]


def test_seq_jumps_last_before_is_the_highest_and_window_must_be_positive() -> None:
    packets = [packet(1, 9, ts=1.0), packet(1, 5, ts=2.0), packet(1, 10, ts=3.0)]
    assert seq_jumps(packets, B, 2.5) == [SeqJump(1, 9, 10, 0, 2, 1.0)]
    with pytest.raises(ValueError, match="rate_window_s"):
        seq_jumps(packets, B, 2.5, rate_window_s=0)


def test_read_pcap(tmp_path: Path) -> None:
    path = tmp_path / "x.pcap"
    path.write_bytes(pcap(mixed_frames()))
    assert len(read_pcap(path).packets) == 2


@pytest.mark.skipif(
    shutil.which("tcpdump") is None or os.geteuid() != 0, reason="needs tcpdump and root"
)
@pytest.mark.parametrize("interface", ["lo", "any"])
def test_tcpdump_capture(tmp_path: Path, interface: str) -> None:
    path = tmp_path / "cap.pcap"
    port = 4500
    cmd = ["tcpdump", "-i", interface, "--immediate-mode", "-U", "-n", "-w", str(path)]
    cmd += ["udp", "and", "port", str(port), "and", "dst", "127.0.0.1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        while b"listening" not in (line := proc.stderr.readline()):
            assert line, "tcpdump exited before listening"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for payload in (esp(0x1234, 1), b"\xff", NON_ESP_MARKER + ike(), esp(0x1234, 2)):
                sock.sendto(payload, ("127.0.0.1", port))
                time.sleep(0.05)
        time.sleep(0.3)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    capture = read_pcap(path)
    assert capture.linktype in (LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2)
    assert {(p.spi, p.seq, p.udp_encap, p.dst) for p in capture.packets} == {
        (0x1234, 1, True, "127.0.0.1"),
        (0x1234, 2, True, "127.0.0.1"),
    }
    assert capture.keepalives >= 1
    assert (0x1111, 0x2222, 35) in {(p.ispi, p.rspi, p.exchange) for p in capture.ike}


def test_a_growing_capture_is_read_incrementally_to_the_same_result(tmp_path: Path) -> None:
    whole = pcap(mixed_frames())
    f = tmp_path / "c.pcap"
    tail = PcapTail(f)
    for cut in (24, 60, len(whole) // 2, len(whole) - 3, len(whole)):  # records cut anywhere
        f.write_bytes(whole[:cut])
        got = tail.read()
    assert got == parse_pcap(whole)
    assert tail.read() == got  # nothing new, nothing added


def test_seq_jumps_ignores_a_burst_captured_slightly_out_of_order() -> None:
    # the matrix run: the new master's first burst behind NAT, timestamped within 1 ms and
    # not in sequence order; the jump is the step from the old master's last number
    packets = [packet(1, n, ts=8.0 + 0.05 * n) for n in range(1, 11)]  # up to 10 at 8.5
    burst = [(3831, 12.00015), (3795, 12.0), *[(3796 + k, 12.0001 + k * 1e-5) for k in range(35)]]
    packets += [packet(1, n, ts=t) for n, t in burst]
    (j,) = seq_jumps(packets, B, 10.0)
    assert (j.last_before, j.first_after, j.seq_skipped) == (10, 3795, 3784)
    # a real step back (below what was captured well before) still wins
    late = [*packets, packet(1, 5, ts=13.0)]
    assert seq_jumps(late, B, 10.0)[0].seq_skipped < 0


def test_seq_jumps_ignores_a_burst_the_old_master_sent_out_of_order() -> None:
    # CI, the charon fault: the old master's chacha20 burst completed out of order, 5549 on
    # the wire about 40 ms before 5511..5548 (async crypto); the new master came 3 s later
    packets = [packet(1, n, ts=10.0 + 0.025 * (n - 5400)) for n in range(5400, 5511)]
    packets.append(packet(1, 5549, ts=12.8))
    packets += [packet(1, n, ts=12.84 + 1e-4 * (n - 5511)) for n in range(5511, 5549)]
    packets += [packet(1, 6700 + n, ts=16.0 + 0.025 * n) for n in range(10)]
    (j,) = seq_jumps(packets, B, 12.5)
    assert (j.last_before, j.first_after, j.seq_skipped) == (5549, 6700, 1150)
    # the same numbers again a second after, their first copies lost: a step back
    again = [*packets, packet(1, 5520, ts=17.0)]
    (j,) = seq_jumps(again, B, 12.5)
    assert (j.last_before, j.first_after) == (6709, 5520)
