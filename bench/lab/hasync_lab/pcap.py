# hasync_lab.pcap: ESP and IKE packets out of a classic libpcap capture, for the lab's checks.
# Rules: parsing is pure (bytes in, frozen dataclasses out); only read_pcap and PcapTail touch the
# file system. Both byte orders and the usec and nsec magics are read; link types are Ethernet (with
# VLAN tags), Linux cooked SLL and SLL2, and raw IP. ESP is IP protocol 50, or UDP with port 4500 on
# either side (NAT-T, RFC 3948), where a lone 0xff byte is a NAT-keepalive (skipped) and a payload
# starting with four zero bytes (the non-ESP marker) is IKE. IKE is also UDP with port 500 on either
# side and no marker (port 4500 wins when both appear). An IKE packet is its 28-byte IKEv2 header
# (RFC 7296 3.1): major version 2 and a length of at least 28, else the frame is other. A frame that
# cannot be ESP or IKE is skipped and counted, never fatal; a frame that may be ESP but is cut
# before the 8 header bytes (SPI, sequence number), or may be IKE but is cut inside the 28-byte
# header, counts as short. Lengths come from the IP and UDP headers, never the frame, so Ethernet
# padding is ignored. Later IP fragments are skipped (a fragmented IKE message is seen through its
# first fragment). A broken file header raises PcapError (a ValueError) with the byte offset; so
# does a record whose length is absurd. A file that ends inside a record (tcpdump still writing) is
# not an error: the reading stops there and the capture says so. Analysis (seq_reuse, spi_summary,
# seq_jumps, ike_sa_inits) is pure; times are the capture's own (wall clock), the caller maps them.

import dataclasses
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
IKE_PORT = 500
IPPROTO_UDP = 17
IPPROTO_ESP = 50
ESP_HEADER_LEN = 8
IKE_HEADER_LEN = 28
NON_ESP_MARKER = b"\x00\x00\x00\x00"
# IKEv2 exchange types and header flags (RFC 7296 3.1)
IKE_SA_INIT = 34
IKE_AUTH = 35
CREATE_CHILD_SA = 36
INFORMATIONAL = 37
FLAG_INITIATOR = 0x08
FLAG_RESPONSE = 0x20

_GLOBAL_HEADER_LEN = 24
_RECORD_HEADER_LEN = 16
_MAX_RECORD_LEN = 1 << 18
_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
_ETH_P_IP = 0x0800
_ETH_P_IPV6 = 0x86DD
_ETH_VLAN_TAGS = frozenset({0x8100, 0x88A8, 0x9100})
_IPV6_EXT_HEADERS = frozenset({0, 43, 44, 60})
_IPV6_FRAGMENT = 44

# Verdicts for frames that are neither an EspPacket nor an IkePacket.
SHORT = "short"
KEEPALIVE = "keepalive"
OTHER = "other"

_U16 = struct.Struct("!H")
_ESP = struct.Struct("!II")
_UDP = struct.Struct("!HHH")
_IKE = struct.Struct("!QQBBBBII")


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
class IkePacket:
    """One IKEv2 packet: capture time, addresses, UDP ports and its IKE header's fields."""

    ts: float
    src: str
    dst: str
    sport: int
    dport: int
    ispi: int
    rspi: int
    exchange: int  # IKE_SA_INIT, IKE_AUTH, CREATE_CHILD_SA, INFORMATIONAL, ...
    flags: int  # FLAG_INITIATOR (0x08), FLAG_RESPONSE (0x20)
    msgid: int


Decoded = EspPacket | IkePacket | str  # a packet, or the reason the frame was skipped


@dataclass(frozen=True)
class PcapCapture:
    """The ESP and IKE packets of a capture and counts of the frames skipped, by reason."""

    linktype: int
    nanosecond: bool
    snaplen: int
    packets: tuple[EspPacket, ...]
    frames: int
    short: int
    keepalives: int
    other: int
    incomplete_tail: bool
    ike: tuple[IkePacket, ...] = ()


@dataclass(frozen=True)
class SeqJump:
    """One SPI's sequence numbers across a fault: last before, first after, and the rate."""

    spi: int
    last_before: int  # highest sequence number seen before the jump
    first_after: int  # the sequence number the jump lands on (the new master's first)
    seq_skipped: int  # first_after - last_before - 1; negative: numbers used again
    packets_2s: int  # packets of the SPI in the rate window before the fault
    rate_pps: float  # packets_2s / the window


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
    """Extract the ESP and IKE packets of a classic pcap file held in memory."""
    header = parse_header(data)
    return _records(data, header, _GLOBAL_HEADER_LEN)[0]


def _records(data: bytes, header: PcapHeader, off: int) -> tuple[PcapCapture, int]:
    """The packets of the complete records from `off` on, and where the next record starts."""
    record = struct.Struct(header.endian + "IIII")
    scale = 1e-9 if header.nanosecond else 1e-6
    max_len = max(header.snaplen, _MAX_RECORD_LEN)
    packets: list[EspPacket] = []
    ike: list[IkePacket] = []
    skipped: Counter[str] = Counter()
    frames, incomplete = 0, False
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
        elif isinstance(verdict, IkePacket):
            ike.append(verdict)
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
        other=skipped[OTHER],
        incomplete_tail=incomplete,
        ike=tuple(ike),
    ), off


class PcapTail:
    """A capture file that is still being written, read incrementally: each read() parses
    only the records added since the last one (a long lab run re-reads its captures often)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.header: PcapHeader | None = None
        self.offset = 0
        self.cap: PcapCapture | None = None

    def read(self) -> PcapCapture:
        """Everything captured so far."""
        with open(self.path, "rb") as f:
            if self.header is None:
                head = f.read(_GLOBAL_HEADER_LEN)
                self.header = parse_header(head)
                self.offset = _GLOBAL_HEADER_LEN
            f.seek(self.offset)
            data = f.read()
        new, used = _records(data, self.header, 0)
        self.offset += used
        old = self.cap
        self.cap = new if old is None else dataclasses.replace(
            new, packets=old.packets + new.packets, ike=old.ike + new.ike,
            frames=old.frames + new.frames, short=old.short + new.short,
            keepalives=old.keepalives + new.keepalives, other=old.other + new.other)
        return self.cap


def read_pcap(path: str | Path) -> PcapCapture:
    """Read a capture file and extract its ESP and IKE packets."""
    return parse_pcap(Path(path).read_bytes())


def decode_frame(linktype: int, frame: bytes, ts: float) -> Decoded:
    """Decode one captured frame: an EspPacket, an IkePacket, or the reason it was skipped."""
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


def _ipv4(frame: bytes, off: int, ts: float) -> Decoded:
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


def _ipv6(frame: bytes, off: int, ts: float) -> Decoded:
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


def _transport(payload: bytes, proto: int, src: str, dst: str, ts: float) -> Decoded:
    """Decode the IP payload: plain ESP, UDP 500 carrying IKE, or UDP 4500 (see _natt)."""
    if proto == IPPROTO_ESP:
        return _esp(payload, src, dst, ts, udp_encap=False)
    if proto != IPPROTO_UDP:
        return OTHER
    if len(payload) < 8:
        return SHORT
    sport, dport, udp_len = _UDP.unpack_from(payload)
    data = payload[8:udp_len] if udp_len >= 8 else payload[8:]
    if NATT_PORT in (sport, dport):
        return _natt(data, udp_len, (src, dst, sport, dport), ts)
    if IKE_PORT in (sport, dport):
        return _ike(data, (src, dst, sport, dport), ts)
    return OTHER


def _natt(data: bytes, udp_len: int, flow: tuple[str, str, int, int], ts: float) -> Decoded:
    """Decode a UDP 4500 payload: a NAT-keepalive, IKE after the non-ESP marker, or ESP."""
    if udp_len == 9:
        if data == b"\xff":
            return KEEPALIVE
        return SHORT if not data else OTHER
    if len(data) < 4:
        return SHORT
    if data[:4] == NON_ESP_MARKER:
        return _ike(data[4:], flow, ts)
    return _esp(data, flow[0], flow[1], ts, udp_encap=True)


def _ike(data: bytes, flow: tuple[str, str, int, int], ts: float) -> IkePacket | str:
    """Read an IKEv2 header; flow is (src, dst, sport, dport)."""
    if len(data) < IKE_HEADER_LEN:
        return SHORT
    ispi, rspi, _next, version, exchange, flags, msgid, length = _IKE.unpack_from(data)
    if version >> 4 != 2 or length < IKE_HEADER_LEN:
        return OTHER
    src, dst, sport, dport = flow
    return IkePacket(ts=ts, src=src, dst=dst, sport=sport, dport=dport, ispi=ispi, rspi=rspi,
                     exchange=exchange, flags=flags, msgid=msgid)


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


def addresses(a: str | Iterable[str]) -> frozenset[str]:
    """One address or several (a peer that moved, MOBIKE), as a set."""
    return frozenset((a,) if isinstance(a, str) else a)


def seq_jumps(packets: Iterable[EspPacket], dst: str | Iterable[str], t_kill: float, *,
              rate_window_s: float = 2.0) -> list[SeqJump]:
    """Per SPI to dst (one address or several: a roaming peer's) seen before and at/after
    t_kill: its sequence-number jump across it.

    The jump is where, at or after t_kill, the stream departs most from continuity (each
    packet's seq against the highest seen before it): a step back (numbers sent again) if
    there is one, else the largest step forward. The old master may still send after t_kill
    (a charon fault leaves its kernel forwarding until the VIP moves), so the jump is found,
    not assumed at t_kill. The rate is the SPI's packets in the window before t_kill.
    """
    if rate_window_s <= 0:
        raise ValueError(f"rate_window_s must be positive, not {rate_window_s}")
    by_spi: dict[int, list[EspPacket]] = {}
    want = addresses(dst)
    for p in sorted((p for p in packets if p.dst in want), key=lambda p: p.ts):
        by_spi.setdefault(p.spi, []).append(p)
    jumps = []
    for spi, seq in by_spi.items():
        jump = _jump(seq, t_kill)
        if jump is not None:
            recent = sum(1 for p in seq if t_kill - rate_window_s <= p.ts < t_kill)
            jumps.append(SeqJump(spi, jump[0], jump[1], jump[1] - jump[0] - 1, recent,
                                 recent / rate_window_s))
    return jumps


# One sender's packets can reach the wire out of sequence order: the kernel numbers an ESP
# packet before it encrypts it, and an asynchronous AEAD (chacha20poly1305 through cryptd when
# the FPU is not usable in softirq) completes out of order. In the lab's captures (TCG) such a
# burst lagged by up to 31 ms (mx3) and by more than 10 ms in CI; a failover's silence on an SA
# is seconds (VRRP detection, then a claim and a mark committed through Raft before the fence
# passes anything). A real reuse whose first copy was lost therefore shows as a step back far
# more than REORDER_S after the numbers it repeats; a reused pair captured twice is seq_reuse.
REORDER_S = 0.25


def _jump(seq: list[EspPacket], t_kill: float) -> tuple[int, int] | None:
    """(highest seq before, seq) at the step of one SPI's time-ordered packets that departs
    most from continuity at or after t_kill (steps back first); None without both sides.
    A step back counts only below every number captured REORDER_S or more earlier: one
    sender's burst can reach the wire out of order (asynchronous crypto, see REORDER_S), and
    that is no number sent again."""
    high: int | None = None
    settled: int | None = None  # the highest seq captured at least REORDER_S before p
    best: tuple[int, int] | None = None
    j = 0
    for p in seq:
        while seq[j] is not p and seq[j].ts <= p.ts - REORDER_S:
            settled = seq[j].seq if settled is None else max(settled, seq[j].seq)
            j += 1
        if p.ts >= t_kill and high is not None:
            reordered = p.seq <= high and (settled is None or p.seq > settled)
            dev = p.seq - high - 1
            if not reordered and (best is None or _worse(dev, best[1] - best[0] - 1)):
                best = (high, p.seq)
        high = p.seq if high is None else max(high, p.seq)
    return best


def _worse(dev: int, than: int) -> bool:
    """Whether a step of `dev` is the one to report over `than` (any step back wins)."""
    if (dev < 0) != (than < 0):
        return dev < 0
    return dev < than if dev < 0 else dev > than


def ike_sa_inits(ike: Iterable[IkePacket], start: float, end: float, *,
                 initiator: str | Iterable[str] | None = None) -> int:
    """IKE_SA_INIT request packets in [start, end) (retransmissions count), from initiator
    (one address or several)."""
    src = None if initiator is None else addresses(initiator)
    return sum(1 for p in ike if p.exchange == IKE_SA_INIT and not p.flags & FLAG_RESPONSE
               and start <= p.ts < end and (src is None or p.src in src))
