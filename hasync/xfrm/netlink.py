"""Netlink framing: nlmsghdr, nlattr TLVs, NLMSG_ERROR and NLMSG_DONE bodies.

Rules: layouts follow torvalds/linux include/uapi/linux/netlink.h (struct nlmsghdr 16 bytes,
struct nlattr 4 bytes, struct nlmsgerr = int error + the request's nlmsghdr); messages and
attributes are 4-byte aligned (NLMSG_ALIGN / NLA_ALIGN) and a length that counts its own
header; attributes are TLV, so callers skip the types they do not know; the NLA_F_NESTED
and NLA_F_NET_BYTEORDER bits are masked off the type; every short or inconsistent length
raises `MalformedMessage`, every unencodable value `XfrmUsageError`; pure.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from hasync.xfrm.enums import NLMSGERR_ATTR_MSG, NLMSGERR_ATTR_OFFS, NlmFlag
from hasync.xfrm.errors import MalformedMessage, XfrmUsageError
from hasync.xfrm.structs import need, pack

NLMSGHDR = struct.Struct("=IHHII")  # nlmsg_len, nlmsg_type, nlmsg_flags, nlmsg_seq, nlmsg_pid
NLATTR = struct.Struct("=HH")  # nla_len, nla_type
I32 = struct.Struct("=i")
U32 = struct.Struct("=I")
NLA_TYPE_MASK = 0x3FFF  # ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER)
ERROR_MIN = I32.size + NLMSGHDR.size  # sizeof(struct nlmsgerr)


def align4(length: int) -> int:
    """NLMSG_ALIGN / NLA_ALIGN: round up to a multiple of 4."""
    return (length + 3) & ~3


@dataclass(frozen=True, slots=True)
class Header:
    """struct nlmsghdr: total length (header included), type, flags, sequence, port id."""

    length: int
    type: int
    flags: int
    seq: int
    pid: int

    def encode(self) -> bytes:
        """The 16 wire bytes."""
        return pack(NLMSGHDR, "nlmsghdr", self.length, self.type, self.flags, self.seq,
                    self.pid)


def split_messages(buf: bytes) -> Iterator[tuple[Header, int, int]]:
    """Each message of a receive buffer as (header, body start, body end)."""
    offset = 0
    while offset < len(buf):
        need(buf, offset, NLMSGHDR.size, "nlmsghdr")
        header = Header(*NLMSGHDR.unpack_from(buf, offset))
        if header.length < NLMSGHDR.size:
            raise MalformedMessage(f"nlmsg_len {header.length} < 16", offset=offset)
        if header.length > len(buf) - offset:
            raise MalformedMessage(
                f"nlmsg_len {header.length} exceeds the {len(buf) - offset} bytes left",
                offset=offset)
        yield header, offset + NLMSGHDR.size, offset + header.length
        offset += min(align4(header.length), len(buf) - offset)


def iter_attributes(buf: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """Each attribute in buf[start:end] as (type, payload offset, payload length)."""
    offset = start
    while offset < end:
        need(buf, offset, NLATTR.size, "nlattr header", end)
        length, kind = NLATTR.unpack_from(buf, offset)
        if length < NLATTR.size or length > end - offset:
            raise MalformedMessage(f"nla_len {length} with {end - offset} bytes left",
                                   attribute=kind & NLA_TYPE_MASK, offset=offset)
        yield kind & NLA_TYPE_MASK, offset + NLATTR.size, length - NLATTR.size
        offset += min(align4(length), end - offset)


def attribute(kind: int, payload: bytes) -> bytes:
    """One nlattr with `payload`, padded to 4 bytes."""
    length = NLATTR.size + len(payload)
    if length > 0xFFFF:
        raise XfrmUsageError(f"attribute {kind} of {length} bytes exceeds nla_len")
    return pack(NLATTR, "nlattr", length, kind) + payload + b"\0" * (align4(length) - length)


def message(kind: int, flags: int, seq: int, pid: int, body: bytes) -> bytes:
    """One netlink message: header plus `body`, padded to 4 bytes (counted in nlmsg_len)."""
    padded = body + b"\0" * (align4(len(body)) - len(body))
    length = NLMSGHDR.size + len(padded)
    if length > 0xFFFFFFFF:
        raise XfrmUsageError(f"message of {length} bytes exceeds nlmsg_len")
    return Header(length, kind, flags, seq, pid).encode() + padded


@dataclass(frozen=True, slots=True)
class NetlinkError:
    """An NLMSG_ERROR body: 0 is an ACK, otherwise a negative errno, for `request`."""

    error: int
    request: Header
    message: str | None = None  # NLMSGERR_ATTR_MSG, with NETLINK_EXT_ACK
    bad_offset: int | None = None  # NLMSGERR_ATTR_OFFS: offending byte of the request

    @property
    def errno(self) -> int:
        """The positive errno (0 for an ACK)."""
        return -self.error

    @property
    def is_ack(self) -> bool:
        """True for a success acknowledgement."""
        return self.error == 0

    @classmethod
    def decode(cls, buf: bytes, start: int, end: int, flags: int) -> NetlinkError:
        """Read a struct nlmsgerr (and its extended-ACK attributes) from buf[start:end]."""
        need(buf, start, ERROR_MIN, "nlmsgerr", end)
        (error,) = I32.unpack_from(buf, start)
        request = Header(*NLMSGHDR.unpack_from(buf, start + I32.size))
        if not flags & NlmFlag.CAPPED and not NLMSGHDR.size <= request.length <= 0xFFFF:
            # an uncapped error echoes the whole request (af_netlink.c netlink_ack)
            raise MalformedMessage(f"echoed nlmsg_len {request.length} outside 16..65535",
                                   offset=start + I32.size)
        if not flags & NlmFlag.ACK_TLVS:
            return cls(error, request)
        if flags & NlmFlag.CAPPED:
            tlvs = start + ERROR_MIN
        else:
            tlvs = start + I32.size + align4(request.length)
        need(buf, start, tlvs - start, "echoed request", end)
        text: str | None = None
        bad: int | None = None
        for kind, offset, length in iter_attributes(buf, tlvs, end):
            if kind == NLMSGERR_ATTR_MSG:
                raw = buf[offset : offset + length].split(b"\0", 1)[0]
                text = raw.decode("utf-8", "backslashreplace")
            elif kind == NLMSGERR_ATTR_OFFS:
                need(buf, offset, U32.size, "NLMSGERR_ATTR_OFFS", offset + length)
                (bad,) = U32.unpack_from(buf, offset)
        return cls(error, request, text, bad)

    def encode(self, flags: int) -> bytes:
        """The body for a message with `flags` (the request's payload echoed as zeros)."""
        out = pack(I32, "nlmsgerr.error", self.error) + self.request.encode()
        if not flags & NlmFlag.CAPPED:
            if not NLMSGHDR.size <= self.request.length <= 0xFFFF:
                raise XfrmUsageError("an uncapped error echoes a request of 16 to 65535 bytes")
            echoed = align4(self.request.length) - NLMSGHDR.size
            out += b"\0" * echoed
        tlvs = b""
        if self.message is not None:
            tlvs += attribute(NLMSGERR_ATTR_MSG, self.message.encode() + b"\0")
        if self.bad_offset is not None:
            tlvs += attribute(NLMSGERR_ATTR_OFFS, pack(U32, "bad_offset", self.bad_offset))
        if tlvs and not flags & NlmFlag.ACK_TLVS:
            raise XfrmUsageError("extended-ACK attributes need the NLM_F_ACK_TLVS flag")
        return out + tlvs


@dataclass(frozen=True, slots=True)
class Done:
    """An NLMSG_DONE body: the end of a dump, with its error (0 or a negative errno)."""

    error: int = 0

    @classmethod
    def decode(cls, buf: bytes, start: int, end: int) -> Done:
        """Read the int error (an empty body counts as 0)."""
        if start == end:
            return cls(0)
        need(buf, start, I32.size, "NLMSG_DONE error", end)
        return cls(I32.unpack_from(buf, start)[0])

    def encode(self) -> bytes:
        """The 4 wire bytes."""
        return pack(I32, "NLMSG_DONE error", self.error)
