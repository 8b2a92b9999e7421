"""XFRM SA notifications (XFRMNLGRP_SA, XFRMNLGRP_EXPIRE, XFRMNLGRP_MIGRATE) as what they
tell about the SAs of an earlier read.

Rules: pure (bytes in, `SaEvents` out; no sockets, clocks or logging) and total: a datagram
that does not decode, or a notice that may touch SAs it does not name, gives `EVERY` (no
earlier read can be trusted), never an exception. Per SA key ((daddr, SPI, proto), as
`replayrows` names an SA), the last notice wins:
- NEWSA: a new instance; the notice carries its replay state (`replayrows.sa_row`), the least
  its counters can be now (net/xfrm/xfrm_user.c xfrm_notify_sa() copies the state's
  XFRMA_REPLAY_VAL or XFRMA_REPLAY_ESN_VAL and XFRMA_MARK); one without replay state is
  GONE to the guard, as a dump leaves it out;
- DELSA, and EXPIRE with `hard` set: the instance is gone (a DELSA notice is an
  xfrm_usersa_id, its xfrm_usersa_info in XFRMA_SA; an EXPIRE is an xfrm_user_expire);
- EXPIRE without `hard` (the soft limit): the same instance, nothing to read again;
- UPDSA (xfrm_state_update() may replace a larval instance), FLUSHSA, MIGRATE and any other
  type: `EVERY`.
Layouts: torvalds/linux include/uapi/linux/xfrm.h (xfrm_usersa_id: daddr 16, spi be32,
family u16, proto u8; xfrm_usersa_info: 224 bytes, xfrm_id at 56).
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from ipaddress import IPv6Address

from hasync.xfrm.codec import USERSA_INFO_SIZE
from hasync.xfrm.enums import AF_INET6, MessageType
from hasync.xfrm.errors import MalformedMessage
from hasync.xfrm.replayrows import ReplayRow, sa_row

SaKey = tuple[str, int, int]  # (destination address, SPI, IPPROTO_*), as the guard's
_HEADER = struct.Struct("=IHHII")  # struct nlmsghdr: len, type, flags, seq, pid
_USERSA_ID = struct.Struct("=16s4sHB")  # struct xfrm_usersa_id (24 bytes with its pad)
_USERSA_ID_SIZE = 24
_SPI = struct.Struct("!I")
_FAMILY_AT = 212  # xfrm_usersa_info.family
GONE = None  # an SA key's last notice said its instance is gone


@dataclass(frozen=True, slots=True)
class SaEvents:
    """What a run of notices says: per SA key, its new instance's row or GONE; or `every`."""

    every: bool = False  # a notice may have touched any SA: no earlier read stands
    sas: tuple[tuple[SaKey, ReplayRow | None], ...] = ()  # in arrival order


EVERY = SaEvents(every=True)


def _address(raw: bytes, family: int) -> str:
    """An xfrm_address_t as replayrows prints it."""
    if family == AF_INET6:
        return str(IPv6Address(raw[:16]))
    return socket.inet_ntop(socket.AF_INET, raw[:4])


def _info_key(buf: bytes, start: int, end: int) -> SaKey:
    """The key of the xfrm_usersa_info at buf[start:end]."""
    if end - start < USERSA_INFO_SIZE:
        raise MalformedMessage("xfrm_usersa_info too short", offset=start)
    family = struct.unpack_from("=H", buf, start + _FAMILY_AT)[0]
    return (_address(buf[start + 56:start + 72], family),
            _SPI.unpack_from(buf, start + 72)[0], buf[start + 76])


def _id_key(buf: bytes, start: int, end: int) -> SaKey:
    """The key of the xfrm_usersa_id at buf[start:end]."""
    if end - start < _USERSA_ID_SIZE:
        raise MalformedMessage("xfrm_usersa_id too short", offset=start)
    daddr, spi, family, proto = _USERSA_ID.unpack_from(buf, start)
    return _address(daddr, family), _SPI.unpack(spi)[0], proto


def _notice(kind: int, buf: bytes, start: int, end: int) -> tuple[SaKey, ReplayRow | None] | None:
    """One notice's (key, row or GONE); None for a soft EXPIRE; MalformedMessage for a type
    that may touch SAs it does not name."""
    if kind == MessageType.NEWSA:  # without replay state, as a dump's row: not the guard's
        return _info_key(buf, start, end), sa_row(buf, start, end)
    if kind == MessageType.DELSA:
        return _id_key(buf, start, end), GONE
    if kind == MessageType.EXPIRE:
        key = _info_key(buf, start, end)
        if end - start < USERSA_INFO_SIZE + 1:
            raise MalformedMessage("xfrm_user_expire without hard", offset=start)
        return (key, GONE) if buf[start + USERSA_INFO_SIZE] else None
    raise MalformedMessage(f"notice type {kind} may touch any SA", offset=start)


def sa_events(data: bytes) -> SaEvents:
    """What one received datagram of notices says (EVERY if any part does not decode)."""
    buf, offset, out = bytes(data), 0, []
    try:
        while offset < len(buf):
            if len(buf) - offset < _HEADER.size:
                return EVERY
            length, kind = _HEADER.unpack_from(buf, offset)[:2]
            if length < _HEADER.size or length > len(buf) - offset:
                return EVERY
            found = _notice(kind, buf, offset + _HEADER.size, offset + length)
            if found is not None:
                out.append(found)
            offset += min((length + 3) & ~3, len(buf) - offset)
    except (MalformedMessage, ValueError, struct.error):
        return EVERY
    return SaEvents(sas=tuple(out))
