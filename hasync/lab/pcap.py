# hasync.lab.pcap: ESP packets out of a classic libpcap capture, for the lab's replay checks.
# Rules: parsing is pure (bytes in, frozen dataclasses out); only read_pcap touches the file
# system. Both byte orders and the usec and nsec magics are read; link types are Ethernet (with
# VLAN tags), Linux cooked SLL and SLL2, and raw IP. ESP is IP protocol 50, or UDP with port 4500
# on either side (NAT-T, RFC 3948), where a lone 0xff byte is a NAT-keepalive and a payload
# starting with four zero bytes is IKE (the non-ESP marker); both are skipped. A frame that
# cannot be ESP is skipped and counted, never fatal; a frame that may be ESP but is cut before
# the 8 header bytes (SPI, sequence number) counts as short. Lengths come from the IP and UDP
# headers, never the frame, so Ethernet padding is ignored. Later IP fragments are skipped.
# A broken file header raises PcapError (a ValueError) with the byte offset; so does a record
# whose length is absurd. A file that ends inside a record (tcpdump still writing) is not an
# error: the reading stops there and the capture says so.

import socket
import struct
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

MAGIC_USEC = 0xA1B2C3D4
MAGIC_NSEC = 0xA1B23C4D
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
LINKTYPES = frozenset(
    {
        LINKTYPE_ETHERNET,
        LINKTYPE_RAW,
        LINKTYPE_LINUX_SLL,
        LINKTYPE_IPV4,
        LINKTYPE_IPV6,
        LINKTYPE_LINUX_SLL2,
    }
)
NATT_PORT = 4500
IPPROTO_UDP = 17
IPPROTO_ESP = 50
ESP_HEADER_LEN = 8

_GLOBAL_HEADER_LEN = 24
_RECORD_HEADER_LEN = 16
_MAX_RECORD_LEN = 1 << 18
_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
_ETH_P_IP = 0x0800
_ETH_P_IPV6 = 0x86DD
_ETH_VLAN_TAGS = frozenset({0x8100, 0x88A8, 0x9100})
_IPV6_EXT_HEADERS = frozenset({0, 43, 44, 60})
_IPV6_FRAGMENT = 44

# Verdicts for frames that are not an EspPacket.
SHORT = "short"
KEEPALIVE = "keepalive"
IKE = "ike"
OTHER = "other"

_U16 = struct.Struct("!H")
_ESP = struct.Struct("!II")
_UDP = struct.Struct("!HHH")


class PcapError(ValueError):
    """A capture file that cannot be read, with the byte offset of the fault."""

    def __init__(self, offset: int, message: str) -> None:
        super().__init__(f"pcap offset {offset}: {message}")
        self.offset = offset


@dataclass(frozen=True)
class EspPacket:
    """One ESP packet: capture time, IP addresses, SPI, sequence number, UDP encapsulation."""

    ts: float
    src: str
    dst: str
    spi: int
    seq: int
    udp_encap: bool


@dataclass(frozen=True)
class PcapCapture:
    """The ESP packets of a capture and counts of the frames skipped, by reason."""

    linktype: int
    nanosecond: bool
    snaplen: int
    packets: tuple[EspPacket, ...]
    frames: int
    short: int
    keepalives: int
    ike: int
    other: int
    incomplete_tail: bool


@dataclass(frozen=True)
class SpiSummary:
    """One SPI's traffic: first and last sequence number and time, and packet count."""

    spi: int
    first_seq: int
    last_seq: int
    count: int
    first_ts: float
    last_ts: float


@dataclass(frozen=True)
class PcapHeader:
    """The global header: struct byte order prefix, timestamp resolution, snaplen, link type."""

    endian: str
    nanosecond: bool
    snaplen: int
    linktype: int


def parse_header(data: bytes) -> PcapHeader:
    """Parse the 24-byte global header; raise PcapError on anything unsupported."""
    if data[:4] == _PCAPNG_MAGIC:
        raise PcapError(0, "pcapng is not supported; capture with tcpdump -w (classic pcap)")
    if len(data) < _GLOBAL_HEADER_LEN:
        raise PcapError(len(data), f"file ends inside the global header ({len(data)} bytes)")
    for endian in "<>":
        (magic,) = struct.unpack_from(endian + "I", data)
        if magic in (MAGIC_USEC, MAGIC_NSEC):
            break
    else:
        raise PcapError(0, f"bad magic {data[:4].hex()}")
    major, minor = struct.unpack_from(endian + "HH", data, 4)
    if major != 2:
        raise PcapError(4, f"unsupported pcap version {major}.{minor}")
    snaplen, network = struct.unpack_from(endian + "II", data, 16)
    linktype = network & 0x0FFFFFFF  # the top bits may carry FCS information
    if linktype not in LINKTYPES:
        raise PcapError(20, f"unsupported link type {linktype}")
    return PcapHeader(endian, magic == MAGIC_NSEC, snaplen, linktype)


def parse_pcap(data: bytes) -> PcapCapture:
    """Extract the ESP packets of a classic pcap file held in memory."""
    header = parse_header(data)
    record = struct.Struct(header.endian + "IIII")
    scale = 1e-9 if header.nanosecond else 1e-6
    max_len = max(header.snaplen, _MAX_RECORD_LEN)
    packets: list[EspPacket] = []
    skipped: Counter[str] = Counter()
    frames, off, incomplete = 0, _GLOBAL_HEADER_LEN, False
    while off < len(data):
        if len(data) - off < _RECORD_HEADER_LEN:
            incomplete = True
            break
        sec, frac, incl_len, _orig_len = record.unpack_from(data, off)
        if incl_len > max_len:
            raise PcapError(off + 8, f"record length {incl_len} exceeds {max_len}")
        body = off + _RECORD_HEADER_LEN
        if body + incl_len > len(data):
            incomplete = True
            break
        frames += 1
        verdict = decode_frame(header.linktype, data[body : body + incl_len], sec + frac * scale)
        if isinstance(verdict, EspPacket):
            packets.append(verdict)
        else:
            skipped[verdict] += 1
        off = body + incl_len
    return PcapCapture(
        linktype=header.linktype,
        nanosecond=header.nanosecond,
        snaplen=header.snaplen,
        packets=tuple(packets),
        frames=frames,
        short=skipped[SHORT],
        keepalives=skipped[KEEPALIVE],
        ike=skipped[IKE],
        other=skipped[OTHER],
        incomplete_tail=incomplete,
    )


def read_pcap(path: str | Path) -> PcapCapture:
    """Read a capture file and extract its ESP packets."""
    return parse_pcap(Path(path).read_bytes())


def decode_frame(linktype: int, frame: bytes, ts: float) -> EspPacket | str:
    """Decode one captured frame: an EspPacket, or the reason it was skipped."""
    link = _network_start(linktype, frame)
    if isinstance(link, str):
        return link
    ethertype, off = link
    if ethertype == _ETH_P_IP:
        return _ipv4(frame, off, ts)
    if ethertype == _ETH_P_IPV6:
        return _ipv6(frame, off, ts)
    return OTHER


def _network_start(linktype: int, frame: bytes) -> tuple[int, int] | str:
    """Return (ethertype, offset of the network header) or a skip verdict."""
    if linktype == LINKTYPE_ETHERNET:
        off = 12
        while len(frame) >= off + 2:
            (ethertype,) = _U16.unpack_from(frame, off)
            if ethertype not in _ETH_VLAN_TAGS:
                return ethertype, off + 2
            off += 4
        return SHORT
    if linktype == LINKTYPE_LINUX_SLL:
        return (_U16.unpack_from(frame, 14)[0], 16) if len(frame) >= 16 else SHORT
    if linktype == LINKTYPE_LINUX_SLL2:
        return (_U16.unpack_from(frame, 0)[0], 20) if len(frame) >= 20 else SHORT
    if linktype == LINKTYPE_IPV4:
        return _ETH_P_IP, 0
    if linktype == LINKTYPE_IPV6:
        return _ETH_P_IPV6, 0
    if not frame:
        return SHORT
    version = frame[0] >> 4
    return {4: _ETH_P_IP, 6: _ETH_P_IPV6}.get(version, 0), 0


def _ipv4(frame: bytes, off: int, ts: float) -> EspPacket | str:
    """Decode an IPv4 packet starting at off."""
    if len(frame) < off + 20:
        return SHORT
    ihl = (frame[off] & 0x0F) * 4
    if frame[off] >> 4 != 4 or ihl < 20:
        return OTHER
    (total,) = _U16.unpack_from(frame, off + 2)
    (fragment,) = _U16.unpack_from(frame, off + 6)
    if fragment & 0x1FFF:
        return OTHER
    if len(frame) < off + ihl:
        return SHORT
    end = len(frame) if total < ihl else min(len(frame), off + total)  # 0 with TSO captures
    src = socket.inet_ntop(socket.AF_INET, frame[off + 12 : off + 16])
    dst = socket.inet_ntop(socket.AF_INET, frame[off + 16 : off + 20])
    return _transport(frame[off + ihl : end], frame[off + 9], src, dst, ts)


def _ipv6(frame: bytes, off: int, ts: float) -> EspPacket | str:
    """Decode an IPv6 packet starting at off, walking the common extension headers."""
    if len(frame) < off + 40:
        return SHORT
    if frame[off] >> 4 != 6:
        return OTHER
    (payload_len,) = _U16.unpack_from(frame, off + 4)
    next_header = frame[off + 6]
    src = socket.inet_ntop(socket.AF_INET6, frame[off + 8 : off + 24])
    dst = socket.inet_ntop(socket.AF_INET6, frame[off + 24 : off + 40])
    end = min(len(frame), off + 40 + payload_len) if payload_len else len(frame)
    pos = off + 40
    while next_header in _IPV6_EXT_HEADERS:
        if end < pos + 8:
            return SHORT
        if next_header == _IPV6_FRAGMENT:
            if _U16.unpack_from(frame, pos + 2)[0] & 0xFFF8:
                return OTHER
            length = 8
        else:
            length = (frame[pos + 1] + 1) * 8
        next_header = frame[pos]
        pos += length
    return _transport(frame[pos:end], next_header, src, dst, ts)


def _transport(payload: bytes, proto: int, src: str, dst: str, ts: float) -> EspPacket | str:
    """Decode the IP payload: plain ESP, or UDP port 4500 carrying ESP, IKE or a keepalive."""
    if proto == IPPROTO_ESP:
        return _esp(payload, src, dst, ts, udp_encap=False)
    if proto != IPPROTO_UDP:
        return OTHER
    if len(payload) < 8:
        return SHORT
    sport, dport, udp_len = _UDP.unpack_from(payload)
    if NATT_PORT not in (sport, dport):
        return OTHER
    data = payload[8:udp_len] if udp_len >= 8 else payload[8:]
    if udp_len == 9:
        if data == b"\xff":
            return KEEPALIVE
        return SHORT if not data else OTHER
    if len(data) < 4:
        return SHORT
    if data[:4] == b"\x00\x00\x00\x00":
        return IKE
    return _esp(data, src, dst, ts, udp_encap=True)


def _esp(data: bytes, src: str, dst: str, ts: float, *, udp_encap: bool) -> EspPacket | str:
    """Read SPI and sequence number from an ESP header."""
    if len(data) < ESP_HEADER_LEN:
        return SHORT
    spi, seq = _ESP.unpack_from(data)
    return EspPacket(ts=ts, src=src, dst=dst, spi=spi, seq=seq, udp_encap=udp_encap)


def seq_reuse(packets: Iterable[EspPacket], dst: str | None = None) -> int:
    """Count repeated (SPI, seq) pairs among packets to dst (all if None): sum of count - 1."""
    counts = Counter((p.spi, p.seq) for p in packets if dst is None or p.dst == dst)
    return sum(n - 1 for n in counts.values() if n > 1)


def spi_summary(packets: Iterable[EspPacket], dst: str | None = None) -> dict[int, SpiSummary]:
    """Summarise each SPI's packets to dst (all if None), in order of first appearance."""
    out: dict[int, SpiSummary] = {}
    for p in packets:
        if dst is not None and p.dst != dst:
            continue
        seen = out.get(p.spi)
        if seen is None:
            out[p.spi] = SpiSummary(p.spi, p.seq, p.seq, 1, p.ts, p.ts)
        else:
            out[p.spi] = replace(seen, last_seq=p.seq, count=seen.count + 1, last_ts=p.ts)
    return out
