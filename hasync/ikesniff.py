"""The plaintext IKEv2 header of requests clients send to this gateway, read off a packet socket.

Rules: `parse_udp_payload` and `parse_ip_packet` are pure (bytes in, `IkeHeader`/`Sniffed` or
None out); they return None for what is not IKE (other ports, ESP-in-UDP, NAT-keepalives,
non-UDP, non-first fragments) and raise `hasync.ha.MalformedMessage` (and nothing else) for
IKE or IP that does not decode; offsets are into the bytes the function was given. Wire facts:
RFC 7296 section 3.1 (IKE header), RFC 3948 sections 2.2/2.3 (non-ESP marker, keepalive),
RFC 791 (IPv4 header), RFC 8200 sections 3 and 4.5 (IPv6 header, Fragment header). IPv6
extension headers other than one Fragment header directly after the fixed header are not
walked: such packets are dropped by the filter and return None here.
The IO part opens one AF_PACKET/SOCK_DGRAM socket for ETH_P_ALL (both families on one socket)
with PACKET_IGNORE_OUTGOING (the kernel never clones transmitted packets for it,
net/core/dev.c dev_queue_xmit_nit) and a classic BPF filter that keeps only incoming
(PACKET_HOST) UDP to port 500, or to 4500 with the zero marker, first fragments only, cut to
`SNAP` bytes; the socket is hooked (bound) only once the filter is attached.
No logging here; `read_all` counts what it drops in the caller's Counter (`ike_sniff:*`).
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import socket
import struct
from collections import Counter
from dataclasses import dataclass

from hasync.ha import MalformedMessage

IKE_PORT, NATT_PORT = 500, 4500
HEADER_LEN = 28  # RFC 7296 3.1
FLAG_I, FLAG_V, FLAG_R = 0x08, 0x10, 0x20  # RFC 7296 3.1
SNAP = 128  # >= 60 (IPv4 with options) + 8 (UDP) + 4 (marker) + 28 (IKE header)
ETH_P_ALL, ETH_P_IP, ETH_P_IPV6 = 0x0003, 0x0800, 0x86DD  # include/uapi/linux/if_ether.h
SOL_PACKET, PACKET_IGNORE_OUTGOING = 263, 23  # include/linux/socket.h, uapi/linux/if_packet.h
SO_ATTACH_FILTER = 26  # include/uapi/asm-generic/socket.h
SKF_AD_OFF, SKF_AD_PROTOCOL, SKF_AD_PKTTYPE = 0xFFFFF000, 0, 4  # include/uapi/linux/filter.h
IPPROTO_UDP, IPV6_FRAGMENT = 17, 44
_libc = ctypes.CDLL(None, use_errno=True)
_IKE = struct.Struct("!QQBBBBII")  # RFC 7296 3.1: SPIi, SPIr, next, version, exchange, flags


@dataclass(frozen=True, slots=True)
class IkeHeader:
    """The fields of an IKEv2 header hasync needs (SPIs as charon prints them)."""

    spi_i: int
    spi_r: int
    exchange: int
    flags: int
    mid: int

    @property
    def is_request(self) -> bool:
        """The R (response) flag is clear."""
        return not self.flags & FLAG_R

    @property
    def from_initiator(self) -> bool:
        """The I flag is set: the sender is the IKE SA's original initiator."""
        return bool(self.flags & FLAG_I)


@dataclass(frozen=True, slots=True)
class Sniffed:
    """One IKE message and the addresses it travelled between."""

    header: IkeHeader
    src: str
    sport: int
    dst: str
    dport: int


def _ike(buf: bytes, base: int) -> IkeHeader:
    """The IKE header at the start of `buf` (RFC 7296 3.1); `base` offsets the error."""
    if len(buf) < HEADER_LEN:
        raise MalformedMessage("truncated", attribute="ike_header", offset=base + len(buf))
    spi_i, spi_r, _next, version, exchange, flags, mid, length = _IKE.unpack_from(buf)
    if version >> 4 != 2:  # major version; the minor is ignored (RFC 7296 3.1)
        raise MalformedMessage("bad_version", attribute="version", offset=base + 17)
    if length < HEADER_LEN:
        raise MalformedMessage("bad_length", attribute="length", offset=base + 24)
    return IkeHeader(spi_i, spi_r, exchange, flags, mid)


def _udp(payload: bytes, dport: int, base: int) -> IkeHeader | None:
    """`parse_udp_payload` with error offsets moved by `base`."""
    if dport == IKE_PORT:
        return _ike(payload, base)
    if dport != NATT_PORT or payload[:4] != b"\0\0\0\0":
        return None  # RFC 3948 2.2: a non-zero first word is an ESP SPI; 2.3: 0xff keepalive
    return _ike(payload[4:], base + 4)


def parse_udp_payload(payload: bytes, dport: int) -> IkeHeader | None:
    """The IKE header in a UDP payload sent to `dport`, None if it is not IKE."""
    return _udp(payload, dport, 0)


def _ipv4(packet: bytes) -> tuple[int, int, bool, str, str]:
    """(UDP offset, protocol, first fragment, src, dst) of an IPv4 packet (RFC 791)."""
    if len(packet) < 20:
        raise MalformedMessage("truncated", attribute="ipv4", offset=len(packet))
    ihl = (packet[0] & 0x0F) * 4
    if ihl < 20 or len(packet) < ihl:
        raise MalformedMessage("bad_ihl", attribute="ihl", offset=0)
    first = struct.unpack_from("!H", packet, 6)[0] & 0x1FFF == 0  # fragment offset
    src, dst = (str(ipaddress.IPv4Address(packet[i:i + 4])) for i in (12, 16))
    return ihl, packet[9], first, src, dst


def _ipv6(packet: bytes) -> tuple[int, int, bool, str, str]:
    """(UDP offset, protocol, first fragment, src, dst) of an IPv6 packet (RFC 8200 3, 4.5)."""
    if len(packet) < 40:
        raise MalformedMessage("truncated", attribute="ipv6", offset=len(packet))
    src, dst = (str(ipaddress.IPv6Address(packet[i:i + 16])) for i in (8, 24))
    if packet[6] != IPV6_FRAGMENT:
        return 40, packet[6], True, src, dst
    if len(packet) < 48:
        raise MalformedMessage("truncated", attribute="ipv6_fragment", offset=len(packet))
    first = struct.unpack_from("!H", packet, 42)[0] & 0xFFF8 == 0  # fragment offset
    return 48, packet[40], first, src, dst


def parse_ip_packet(packet: bytes) -> Sniffed | None:
    """The IKE message in an IPv4/IPv6 packet (as SOCK_DGRAM delivers it), None if not IKE."""
    if not packet or packet[0] >> 4 not in (4, 6):
        raise MalformedMessage("not_ip", attribute="version", offset=0)
    off, proto, first, src, dst = (_ipv4 if packet[0] >> 4 == 4 else _ipv6)(packet)
    if proto != IPPROTO_UDP or not first:
        return None
    if len(packet) < off + 8:
        raise MalformedMessage("truncated", attribute="udp", offset=len(packet))
    sport, dport, ulen = struct.unpack_from("!HHH", packet, off)
    if ulen < 8:
        raise MalformedMessage("bad_length", attribute="udp_length", offset=off + 4)
    # UDP length, not the capture, ends the payload: Ethernet pads short frames.
    header = _udp(packet[off + 8:off + ulen], dport, off + 8)
    return None if header is None else Sniffed(header, src, sport, dst, dport)


def bpf_program(snap: int = SNAP) -> list[tuple[int, int, int, int]]:
    """The classic BPF filter (code, jt, jf, k); offsets are from the IP header (SOCK_DGRAM)."""
    ld_ad, ldb, ldh, ld_ind, ldh_ind = 0x20, 0x30, 0x28, 0x40, 0x48  # BPF_LD|size|mode
    ldx_msh, ldx_imm, jeq, jset, ja, ret = 0xB1, 0x01, 0x15, 0x45, 0x05, 0x06
    asm: list[tuple[int, int | str, int | str, int] | str] = [
        (ld_ad, 0, 0, SKF_AD_OFF + SKF_AD_PKTTYPE),  # A = skb->pkt_type
        (jeq, 0, "drop", socket.PACKET_HOST),  # not outgoing, not someone else's frame
        (ld_ad, 0, 0, SKF_AD_OFF + SKF_AD_PROTOCOL),  # A = ethertype
        (jeq, 0, "v6", ETH_P_IP),
        (ldb, 0, 0, 9),  # IPv4 protocol (RFC 791)
        (jeq, 0, "drop", IPPROTO_UDP),
        (ldh, 0, 0, 6),  # flags and fragment offset
        (jset, "drop", 0, 0x1FFF),  # not a first fragment
        (ldx_msh, 0, 0, 0),  # X = 4 * IHL
        (ja, 0, 0, "udp"),
        "v6",
        (jeq, 0, "drop", ETH_P_IPV6),
        (ldb, 0, 0, 6),  # next header (RFC 8200 3)
        (jeq, "udp6", 0, IPPROTO_UDP),
        (jeq, 0, "drop", IPV6_FRAGMENT),
        (ldh, 0, 0, 42),  # fragment offset << 3 | flags (RFC 8200 4.5)
        (jset, "drop", 0, 0xFFF8),  # not a first fragment
        (ldb, 0, 0, 40),  # the Fragment header's next header
        (jeq, 0, "drop", IPPROTO_UDP),
        (ldx_imm, 0, 0, 48),  # X = 40 + 8: UDP after the Fragment header
        (ja, 0, 0, "udp"),
        "udp6",
        (ldx_imm, 0, 0, 40),  # X = 40: UDP after the fixed header
        "udp",
        (ldh_ind, 0, 0, 2),  # A = UDP destination port
        (jeq, "accept", 0, IKE_PORT),
        (jeq, 0, "drop", NATT_PORT),
        (ld_ind, 0, 0, 8),  # first payload word: 0 = non-ESP marker (RFC 3948 2.2);
        (jeq, "accept", "drop", 0),  # a keepalive is too short to load: the filter drops it
        "accept",
        (ret, 0, 0, snap),
        "drop",
        (ret, 0, 0, 0),
    ]
    return _assemble(asm)


def _assemble(asm: list[tuple[int, int | str, int | str, int] | str]) -> list[
        tuple[int, int, int, int]]:
    """Resolve label operands (jt/jf, and k of `ja`) into relative jumps."""
    code = [ins for ins in asm if not isinstance(ins, str)]
    labels, n = {}, 0
    for ins in asm:
        if isinstance(ins, str):
            labels[ins] = n
        else:
            n += 1

    def rel(at: int, to: int | str) -> int:
        return to if isinstance(to, int) else labels[to] - at - 1

    return [(c, rel(i, jt), rel(i, jf), rel(i, k)) for i, (c, jt, jf, k) in enumerate(code)]


class _SockFilter(ctypes.Structure):
    _fields_ = (("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32))  # struct sock_filter, include/uapi/linux/filter.h


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_uint16),  # ctypes pads to the pointer's alignment, as C does
                ("filter", ctypes.POINTER(_SockFilter)))  # struct sock_fprog


def attach_filter(sock: socket.socket, program: list[tuple[int, int, int, int]]) -> None:
    """SO_ATTACH_FILTER `program` to `sock` (the kernel copies it during the call)."""
    insns = (_SockFilter * len(program))(*(_SockFilter(*ins) for ins in program))
    fprog = _SockFprog(len(program), insns)
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))


def bind_hook(sock: socket.socket, ifname: str | None) -> None:
    """bind() `sock` to ETH_P_ALL on `ifname` or on all interfaces (ifindex 0)."""
    # Python's AF_PACKET bind() cannot say ifindex 0, so struct sockaddr_ll is built here
    # (include/uapi/linux/if_packet.h) and libc's bind() called on the descriptor.
    index = socket.if_nametoindex(ifname) if ifname else 0
    sll = struct.pack("=H", socket.AF_PACKET) + struct.pack("!H", ETH_P_ALL) + struct.pack(
        "=iHBB8s", index, 0, 0, 0, b"")
    if _libc.bind(sock.fileno(), sll, len(sll)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class SnifferUnavailable(RuntimeError):
    """This process may not open a packet socket (it lacks CAP_NET_RAW)."""


def open_sniffer(ifname: str | None = None) -> socket.socket:
    """A non-blocking packet socket that reads IKE requests sent to this host (root only)."""
    # Protocol 0: no hook until bind(), after the filter is attached, so no unfiltered
    # packet is ever queued (net/packet/af_packet.c packet_create, packet_do_bind).
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
    except PermissionError as e:
        raise SnifferUnavailable(
            "reading clients' IKE headers (midsync.py) needs a packet socket: run hasync as "
            "root with CAP_NET_RAW in its unit's CapabilityBoundingSet (deploy/hasync.service)"
        ) from e
    try:
        attach_filter(sock, bpf_program())
        sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        sock.setblocking(False)
        bind_hook(sock, ifname)
    except BaseException:
        sock.close()
        raise
    return sock


def read_all(sock: socket.socket, counters: Counter[str], limit: int = 256) -> list[Sniffed]:
    """Up to `limit` queued IKE messages without blocking; what is dropped is counted."""
    found: list[Sniffed] = []
    for _ in range(limit):
        try:
            packet, addr = sock.recvfrom(SNAP)
        except BlockingIOError:
            break
        except OSError as err:  # the bound link went down (af_packet.c packet_notifier)
            if err.errno != errno.ENETDOWN:
                raise
            counters["ike_sniff:netdown"] += 1
            continue
        if addr[2] != socket.PACKET_HOST:  # the filter drops these: a second line
            counters["ike_sniff:not_host"] += 1
            continue
        try:
            sniffed = parse_ip_packet(packet)
        except MalformedMessage as err:
            counters[f"ike_sniff:{err.reason}"] += 1
            continue
        if sniffed is None:
            counters["ike_sniff:not_ike"] += 1  # the filter should have dropped it
        else:
            found.append(sniffed)
    return found
