"""Fixed-size C structures of include/uapi/linux/xfrm.h as frozen dataclasses.

Rules: every layout is a `struct` format in native byte order with the C compiler's padding
spelled out as `x` bytes, and its size is checked at import against the x86_64 size (the
sizes of gcc's `sizeof` for torvalds/linux include/uapi/linux/xfrm.h); `__be` fields (SPIs,
ports) are read big-endian, everything else in host order, as the kernel writes them;
`xfrm_address_t` (16 bytes) becomes an IPv4Address (first 4 bytes) unless the family is
AF_INET6; decoders raise `MalformedMessage` only, encoders `XfrmUsageError` only; pure.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

from hasync.xfrm.enums import AF_INET, AF_INET6, PROTO_NAMES
from hasync.xfrm.errors import MalformedMessage, XfrmUsageError

IPAddress = IPv4Address | IPv6Address
ANY4 = IPv4Address(0)


def layout(fmt: str, size: int) -> struct.Struct:
    """A native-order layout whose size must equal the C `sizeof` on x86_64."""
    compiled = struct.Struct("=" + fmt)
    if compiled.size != size:  # pragma: no cover - a wrong table must not import
        raise RuntimeError(f"layout {fmt!r} is {compiled.size} bytes, C says {size}")
    return compiled


# xfrm_address_t: union of __be32 a4 / __be32 a6[4] / struct in6_addr -> 16 bytes
ADDRESS = layout("16s", 16)
# struct xfrm_selector: daddr, saddr, dport, dport_mask, sport, sport_mask (__be16),
# family (u16), prefixlen_d, prefixlen_s, proto (u8), 3 pad, ifindex (int), user (uid32)
SELECTOR = layout("16s16s2s2s2s2sHBBB3xiI", 56)
# struct xfrm_id: daddr, spi (__be32), proto (u8), 3 pad
XFRM_ID = layout("16s4sB3x", 24)
# struct xfrm_lifetime_cfg: 8 x u64 (soft/hard byte, packet, add, use limits)
LIFETIME_CFG = layout("8Q", 64)
# struct xfrm_lifetime_cur: bytes, packets, add_time, use_time (u64)
LIFETIME_CUR = layout("4Q", 32)
# struct xfrm_stats: replay_window, replay, integrity_failed (u32)
STATS = layout("3I", 12)
# struct xfrm_replay_state: oseq, seq, bitmap (u32) -- oseq comes FIRST
REPLAY = layout("3I", 12)
# struct xfrm_replay_state_esn: bmp_len, oseq, seq, oseq_hi, seq_hi, replay_window; bmp[]
REPLAY_ESN = layout("6I", 24)
# struct xfrm_encap_tmpl: encap_type (u16), sport, dport (__be16), 2 pad, encap_oa
ENCAP = layout("H2s2s2x16s", 24)
# struct xfrm_mark: v, m (u32)
MARK = layout("2I", 8)
# struct xfrm_usersa_id: daddr, spi (__be32), family (u16), proto (u8), 1 pad
USERSA_ID = layout("16s4sHBx", 24)
# struct xfrm_user_tmpl: id, family (u16), 2 pad, saddr, reqid (u32), mode, share, optional
# (u8), 1 pad, aalgos, ealgos, calgos (u32)
USER_TMPL = layout("24sH2x16sIBBBxIII", 64)
# struct xfrm_algo / xfrm_algo_auth / xfrm_algo_aead: alg_name[64], then lengths in bits
ALGO = layout("64sI", 68)
ALGO_AUTH = layout("64sII", 72)  # alg_key_len, alg_trunc_len
ALGO_AEAD = layout("64sII", 72)  # alg_key_len, alg_icv_len


def need(buf: bytes, offset: int, size: int, what: str, end: int | None = None) -> None:
    """Raise MalformedMessage unless `size` bytes are left at `offset` (before `end`)."""
    left = (len(buf) if end is None else min(end, len(buf))) - offset
    if left < size:
        raise MalformedMessage(f"{what} needs {size} bytes, {max(left, 0)} left", offset=offset)


def pack(fmt: struct.Struct, what: str, *values: object) -> bytes:
    """`fmt.pack(*values)`, turning range and type errors into XfrmUsageError."""
    try:
        return fmt.pack(*values)
    except struct.error as exc:
        raise XfrmUsageError(f"{what}: {exc}") from None


def unpack_address(raw: bytes, family: int) -> IPAddress:
    """An xfrm_address_t read as `family` says (AF_INET6 -> 16 bytes, else the first 4)."""
    return IPv6Address(raw) if family == AF_INET6 else IPv4Address(raw[:4])


def pack_address(addr: object, what: str) -> bytes:
    """An IP address as xfrm_address_t (IPv4 zero-padded to 16 bytes)."""
    if not isinstance(addr, IPv4Address | IPv6Address):
        raise XfrmUsageError(f"{what}: {addr!r} is not an IPv4Address or IPv6Address")
    return addr.packed.ljust(16, b"\0")


def family_of(addr: IPAddress) -> int:
    """AF_INET or AF_INET6 for an address object."""
    return AF_INET6 if isinstance(addr, IPv6Address) else AF_INET


def _be(raw: bytes) -> int:
    return int.from_bytes(raw, "big")


def _be_bytes(value: int, size: int, what: str) -> bytes:
    try:
        return value.to_bytes(size, "big")
    except (OverflowError, AttributeError):
        raise XfrmUsageError(f"{what}: {value!r} does not fit {size} bytes") from None


@dataclass(frozen=True, slots=True)
class Selector:
    """struct xfrm_selector: the traffic an SA or policy applies to."""

    daddr: IPAddress = ANY4
    saddr: IPAddress = ANY4
    dport: int = 0
    dport_mask: int = 0
    sport: int = 0
    sport_mask: int = 0
    family: int = 0
    prefixlen_d: int = 0
    prefixlen_s: int = 0
    proto: int = 0
    ifindex: int = 0
    user: int = 0

    @classmethod
    def decode(cls, buf: bytes, offset: int) -> Selector:
        """Read one selector at `offset`."""
        need(buf, offset, SELECTOR.size, "xfrm_selector")
        d, s, dp, dpm, sp, spm, fam, pd, ps, proto, ifi, user = SELECTOR.unpack_from(buf, offset)
        return cls(unpack_address(d, fam), unpack_address(s, fam), _be(dp), _be(dpm),
                   _be(sp), _be(spm), fam, pd, ps, proto, ifi, user)

    def encode(self) -> bytes:
        """The 56 wire bytes."""
        w = "xfrm_selector"
        return pack(SELECTOR, w, pack_address(self.daddr, w), pack_address(self.saddr, w),
                    _be_bytes(self.dport, 2, w), _be_bytes(self.dport_mask, 2, w),
                    _be_bytes(self.sport, 2, w), _be_bytes(self.sport_mask, 2, w),
                    self.family, self.prefixlen_d, self.prefixlen_s, self.proto,
                    self.ifindex, self.user)


@dataclass(frozen=True, slots=True)
class SaId:
    """struct xfrm_usersa_id: what the kernel looks an SA up by (dst, SPI, proto, family)."""

    daddr: IPAddress
    spi: int
    proto: int
    family: int

    def __str__(self) -> str:
        proto = PROTO_NAMES.get(self.proto, str(self.proto))
        return f"spi 0x{self.spi:08x} dst {self.daddr} proto {proto}"

    @classmethod
    def decode(cls, buf: bytes, offset: int) -> SaId:
        """Read one xfrm_usersa_id at `offset`."""
        need(buf, offset, USERSA_ID.size, "xfrm_usersa_id")
        daddr, spi, family, proto = USERSA_ID.unpack_from(buf, offset)
        return cls(unpack_address(daddr, family), _be(spi), proto, family)

    def encode(self) -> bytes:
        """The 24 wire bytes."""
        w = "xfrm_usersa_id"
        return pack(USERSA_ID, w, pack_address(self.daddr, w), _be_bytes(self.spi, 4, w),
                    self.family, self.proto)


@dataclass(frozen=True, slots=True)
class XfrmId:
    """struct xfrm_id: destination, SPI and protocol of an SA or template."""

    daddr: IPAddress
    spi: int
    proto: int

    @classmethod
    def decode(cls, buf: bytes, offset: int, family: int) -> XfrmId:
        """Read one xfrm_id at `offset`; addresses as `family`."""
        need(buf, offset, XFRM_ID.size, "xfrm_id")
        daddr, spi, proto = XFRM_ID.unpack_from(buf, offset)
        return cls(unpack_address(daddr, family), _be(spi), proto)

    def encode(self) -> bytes:
        """The 24 wire bytes."""
        w = "xfrm_id"
        return pack(XFRM_ID, w, pack_address(self.daddr, w), _be_bytes(self.spi, 4, w),
                    self.proto)


@dataclass(frozen=True, slots=True)
class LifetimeCfg:
    """struct xfrm_lifetime_cfg: soft/hard limits (XFRM_INF = none)."""

    soft_byte_limit: int = 0
    hard_byte_limit: int = 0
    soft_packet_limit: int = 0
    hard_packet_limit: int = 0
    soft_add_expires_seconds: int = 0
    hard_add_expires_seconds: int = 0
    soft_use_expires_seconds: int = 0
    hard_use_expires_seconds: int = 0

    @classmethod
    def decode(cls, buf: bytes, offset: int) -> LifetimeCfg:
        """Read one xfrm_lifetime_cfg at `offset`."""
        need(buf, offset, LIFETIME_CFG.size, "xfrm_lifetime_cfg")
        return cls(*LIFETIME_CFG.unpack_from(buf, offset))

    def encode(self) -> bytes:
        """The 64 wire bytes."""
        return pack(LIFETIME_CFG, "xfrm_lifetime_cfg", *_fields(self))


@dataclass(frozen=True, slots=True)
class LifetimeCur:
    """struct xfrm_lifetime_cur: bytes and packets so far, add and last-use times."""

    bytes: int = 0
    packets: int = 0
    add_time: int = 0
    use_time: int = 0

    @classmethod
    def decode(cls, buf: bytes, offset: int) -> LifetimeCur:
        """Read one xfrm_lifetime_cur at `offset`."""
        need(buf, offset, LIFETIME_CUR.size, "xfrm_lifetime_cur")
        return cls(*LIFETIME_CUR.unpack_from(buf, offset))

    def encode(self) -> bytes:
        """The 32 wire bytes."""
        return pack(LIFETIME_CUR, "xfrm_lifetime_cur", *_fields(self))


@dataclass(frozen=True, slots=True)
class Stats:
    """struct xfrm_stats: packets dropped outside the window, as replays, failing ICV."""

    replay_window: int = 0
    replay: int = 0
    integrity_failed: int = 0

    @classmethod
    def decode(cls, buf: bytes, offset: int) -> Stats:
        """Read one xfrm_stats at `offset`."""
        need(buf, offset, STATS.size, "xfrm_stats")
        return cls(*STATS.unpack_from(buf, offset))

    def encode(self) -> bytes:
        """The 12 wire bytes."""
        return pack(STATS, "xfrm_stats", *_fields(self))


@dataclass(frozen=True, slots=True)
class ReplayState:
    """struct xfrm_replay_state (XFRMA_REPLAY_VAL): 32-bit counters of a non-ESN SA."""

    oseq: int = 0
    seq: int = 0
    bitmap: int = 0

    @classmethod
    def decode(cls, buf: bytes, offset: int) -> ReplayState:
        """Read one xfrm_replay_state at `offset`."""
        need(buf, offset, REPLAY.size, "xfrm_replay_state")
        return cls(*REPLAY.unpack_from(buf, offset))

    def encode(self) -> bytes:
        """The 12 wire bytes."""
        return pack(REPLAY, "xfrm_replay_state", self.oseq, self.seq, self.bitmap)


@dataclass(frozen=True, slots=True)
class ReplayStateEsn:
    """struct xfrm_replay_state_esn (XFRMA_REPLAY_ESN_VAL) with its `bmp_len` bitmap words."""

    bmp_len: int
    oseq: int
    seq: int
    oseq_hi: int
    seq_hi: int
    replay_window: int
    bmp: tuple[int, ...] = field(default=())

    @property
    def oseq64(self) -> int:
        """The 64-bit outbound sequence number (oseq_hi:oseq)."""
        return (self.oseq_hi << 32) | self.oseq

    @property
    def seq64(self) -> int:
        """The 64-bit highest inbound sequence number seen (seq_hi:seq)."""
        return (self.seq_hi << 32) | self.seq

    @property
    def size(self) -> int:
        """xfrm_replay_state_esn_len(): 24 bytes plus 4 per bitmap word."""
        return REPLAY_ESN.size + 4 * self.bmp_len

    @classmethod
    def decode(cls, buf: bytes, offset: int, limit: int) -> ReplayStateEsn:
        """Read one ESN state at `offset` with its bitmap, all within `limit` bytes."""
        end = offset + limit
        need(buf, offset, REPLAY_ESN.size, "xfrm_replay_state_esn", end)
        bmp_len, oseq, seq, oseq_hi, seq_hi, window = REPLAY_ESN.unpack_from(buf, offset)
        if bmp_len > limit // 4:  # checked before the multiplication below allocates
            raise MalformedMessage(f"bmp_len {bmp_len} exceeds the attribute", offset=offset)
        need(buf, offset, REPLAY_ESN.size + 4 * bmp_len, "ESN bitmap", end)
        bmp = struct.unpack_from(f"={bmp_len}I", buf, offset + REPLAY_ESN.size)
        return cls(bmp_len, oseq, seq, oseq_hi, seq_hi, window, bmp)

    def encode(self) -> bytes:
        """24 bytes plus the bitmap; `bmp` must hold exactly `bmp_len` words."""
        if not isinstance(self.bmp, tuple) or len(self.bmp) != self.bmp_len:
            raise XfrmUsageError(f"ESN bitmap has {len(self.bmp)} words, bmp_len says "
                                 f"{self.bmp_len}")
        head = pack(REPLAY_ESN, "xfrm_replay_state_esn", self.bmp_len, self.oseq, self.seq,
                    self.oseq_hi, self.seq_hi, self.replay_window)
        try:
            return head + struct.pack(f"={self.bmp_len}I", *self.bmp)
        except struct.error as exc:
            raise XfrmUsageError(f"ESN bitmap: {exc}") from None


@dataclass(frozen=True, slots=True)
class Encap:
    """struct xfrm_encap_tmpl (XFRMA_ENCAP): UDP encapsulation (NAT-T) of an SA."""

    type: int
    sport: int
    dport: int
    oa: IPAddress = ANY4

    @classmethod
    def decode(cls, buf: bytes, offset: int, family: int) -> Encap:
        """Read one xfrm_encap_tmpl at `offset`; `oa` as `family`."""
        need(buf, offset, ENCAP.size, "xfrm_encap_tmpl")
        etype, sport, dport, oa = ENCAP.unpack_from(buf, offset)
        return cls(etype, _be(sport), _be(dport), unpack_address(oa, family))

    def encode(self) -> bytes:
        """The 24 wire bytes."""
        w = "xfrm_encap_tmpl"
        return pack(ENCAP, w, self.type, _be_bytes(self.sport, 2, w),
                    _be_bytes(self.dport, 2, w), pack_address(self.oa, w))


@dataclass(frozen=True, slots=True)
class Mark:
    """struct xfrm_mark (XFRMA_MARK): the SA matches packets with mark & mask == value."""

    value: int
    mask: int = 0xFFFFFFFF

    @classmethod
    def decode(cls, buf: bytes, offset: int) -> Mark:
        """Read one xfrm_mark at `offset`."""
        need(buf, offset, MARK.size, "xfrm_mark")
        return cls(*MARK.unpack_from(buf, offset))

    def encode(self) -> bytes:
        """The 8 wire bytes."""
        return pack(MARK, "xfrm_mark", self.value, self.mask)


@dataclass(frozen=True, slots=True)
class UserTmpl:
    """struct xfrm_user_tmpl (XFRMA_TMPL): one SA template of a policy."""

    id: XfrmId
    family: int
    saddr: IPAddress
    reqid: int = 0
    mode: int = 0
    share: int = 0
    optional: int = 0
    aalgos: int = 0
    ealgos: int = 0
    calgos: int = 0

    @classmethod
    def decode(cls, buf: bytes, offset: int) -> UserTmpl:
        """Read one template at `offset`."""
        need(buf, offset, USER_TMPL.size, "xfrm_user_tmpl")
        _, fam, saddr, *rest = USER_TMPL.unpack_from(buf, offset)
        return cls(XfrmId.decode(buf, offset, fam), fam, unpack_address(saddr, fam), *rest)

    def encode(self) -> bytes:
        """The 64 wire bytes."""
        w = "xfrm_user_tmpl"
        return pack(USER_TMPL, w, self.id.encode(), self.family, pack_address(self.saddr, w),
                    self.reqid, self.mode, self.share, self.optional, self.aalgos,
                    self.ealgos, self.calgos)


@dataclass(frozen=True, slots=True)
class Algorithm:
    """An XFRMA_ALG_* attribute reduced to its kind and algorithm name: never its key."""

    kind: str  # "auth", "crypt", "comp", "aead" or "auth_trunc"
    name: str


def _fields(obj: object) -> list[int]:
    return [getattr(obj, name) for name in obj.__dataclass_fields__]  # type: ignore[attr-defined]
