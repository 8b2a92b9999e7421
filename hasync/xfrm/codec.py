"""Sans-IO codec of XFRM netlink messages: SAs, policies and async (replay) events.

Rules: bodies and attributes follow torvalds/linux include/uapi/linux/xfrm.h, and what the
kernel sends or accepts follows net/xfrm/xfrm_user.c (copy_to_user_state_extra(),
build_aevent(), xfrm_get_ae(), xfrm_new_ae(), xfrma_policy[]); `parse_messages` turns a
whole receive buffer into `Message`s and raises `MalformedMessage` (naming the attribute
and offset) for anything else; unknown attributes are skipped (they are TLV), a repeated
one keeps its last value as nla_parse() does, and a known one shorter than its struct is
malformed; key material is never kept: an XFRMA_ALG_* attribute yields only its algorithm
name; `encode_message` and the builders raise `XfrmUsageError` only; pure functions, no
sockets, clocks or logging.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from hasync.xfrm.enums import (
    AF_INET6,
    XFRM_REPLAY_ESN_MAX_WORDS,
    AeFlag,
    Attr,
    MessageType,
    NlmFlag,
    NlmsgType,
)
from hasync.xfrm.errors import MalformedMessage, XfrmUsageError
from hasync.xfrm.model import (
    Aevent,
    AeventId,
    Body,
    Message,
    PolicyInfo,
    SaInfo,
    SaReplay,
    Unknown,
)
from hasync.xfrm.netlink import (
    U32,
    Done,
    NetlinkError,
    attribute,
    iter_attributes,
    message,
    split_messages,
)
from hasync.xfrm.structs import (
    ADDRESS,
    ALGO,
    ALGO_AEAD,
    ALGO_AUTH,
    ENCAP,
    LIFETIME_CFG,
    LIFETIME_CUR,
    MARK,
    REPLAY,
    SELECTOR,
    STATS,
    USER_TMPL,
    USERSA_ID,
    XFRM_ID,
    Algorithm,
    Encap,
    LifetimeCfg,
    LifetimeCur,
    Mark,
    ReplayState,
    ReplayStateEsn,
    SaId,
    Selector,
    Stats,
    UserTmpl,
    XfrmId,
    layout,
    need,
    pack,
    pack_address,
    unpack_address,
)

# struct xfrm_usersa_info after sel(56) id(24) saddr(16) lft(64) curlft(32) stats(12):
# seq, reqid (u32), family (u16), mode, replay_window, flags (u8), 7 pad -> 224 on x86_64
SA_TAIL = layout("IIHBBB7x", 20)
USERSA_INFO_SIZE = 224
# struct xfrm_userpolicy_info after sel(56) lft(64) curlft(32): priority, index (u32), dir,
# action, flags, share (u8), 4 pad -> 168 on x86_64
POLICY_TAIL = layout("IIBBBB4x", 16)
USERPOLICY_INFO_SIZE = 168
# struct xfrm_aevent_id after sa_id (xfrm_usersa_id, 24): saddr, flags, reqid (u32) -> 48
AEVENT_TAIL = layout("16sII", 24)
AEVENT_ID_SIZE = 48
POLICY_TYPE = layout("B5x", 6)  # struct xfrm_userpolicy_type: type, then u16 + u8 reserved
_SIZES = {
    "xfrm_usersa_info": (SELECTOR.size + XFRM_ID.size + ADDRESS.size + LIFETIME_CFG.size
                         + LIFETIME_CUR.size + STATS.size + SA_TAIL.size, USERSA_INFO_SIZE),
    "xfrm_userpolicy_info": (SELECTOR.size + LIFETIME_CFG.size + LIFETIME_CUR.size
                             + POLICY_TAIL.size, USERPOLICY_INFO_SIZE),
    "xfrm_aevent_id": (USERSA_ID.size + AEVENT_TAIL.size, AEVENT_ID_SIZE),
}
for _name, (_got, _want) in _SIZES.items():  # pragma: no cover - a wrong table must not import
    if _got != _want:
        raise RuntimeError(f"{_name} is {_got} bytes, C says {_want}")

_ALG_KINDS: dict[int, tuple[str, struct.Struct]] = {
    Attr.ALG_AUTH: ("auth", ALGO),
    Attr.ALG_CRYPT: ("crypt", ALGO),
    Attr.ALG_COMP: ("comp", ALGO),
    Attr.ALG_AEAD: ("aead", ALGO_AEAD),
    Attr.ALG_AUTH_TRUNC: ("auth_trunc", ALGO_AUTH),
}
_ALG_BY_KIND = {kind: (attr, fmt) for attr, (kind, fmt) in _ALG_KINDS.items()}

Decoder = Callable[[bytes, int, int, int], Any]  # (buf, offset, length, family) -> value


def _u32(buf: bytes, offset: int, length: int, family: int) -> int:
    need(buf, offset, U32.size, "u32 payload", offset + length)
    return U32.unpack_from(buf, offset)[0]


def _u8(buf: bytes, offset: int, length: int, family: int) -> int:
    need(buf, offset, 1, "u8 payload", offset + length)
    return buf[offset]


def _fixed(fmt: struct.Struct, decode: Callable[..., Any], *, family: bool = False) -> Decoder:
    """A decoder for a struct payload, which may be longer than the struct (as in nla_policy)."""

    def run(buf: bytes, offset: int, length: int, fam: int) -> Any:
        need(buf, offset, fmt.size, "payload", offset + length)
        return decode(buf, offset, fam) if family else decode(buf, offset)

    return run


def _esn(buf: bytes, offset: int, length: int, family: int) -> ReplayStateEsn:
    return ReplayStateEsn.decode(buf, offset, length)


def _templates(buf: bytes, offset: int, length: int, family: int) -> tuple[UserTmpl, ...]:
    if length % USER_TMPL.size:
        raise MalformedMessage(f"{length} bytes are not whole templates", offset=offset)
    return tuple(UserTmpl.decode(buf, offset + i) for i in range(0, length, USER_TMPL.size))


def _ptype(buf: bytes, offset: int, length: int, family: int) -> int:
    need(buf, offset, POLICY_TYPE.size, "payload", offset + length)
    return buf[offset]


_DECODERS: dict[int, tuple[str, Decoder]] = {
    Attr.ENCAP: ("encap", _fixed(ENCAP, Encap.decode, family=True)),
    Attr.REPLAY_VAL: ("replay", _fixed(REPLAY, ReplayState.decode)),
    Attr.REPLAY_ESN_VAL: ("replay_esn", _esn),
    Attr.LTIME_VAL: ("lifetime", _fixed(LIFETIME_CUR, LifetimeCur.decode)),
    Attr.REPLAY_THRESH: ("replay_thresh", _u32),
    Attr.ETIMER_THRESH: ("etimer_thresh", _u32),
    Attr.MARK: ("mark", _fixed(MARK, Mark.decode)),
    Attr.IF_ID: ("if_id", _u32),
    Attr.SA_DIR: ("direction", _u8),
    Attr.TMPL: ("templates", _templates),
    Attr.POLICY_TYPE: ("ptype", _ptype),
}
_SA_ATTRS = frozenset({Attr.ENCAP, Attr.REPLAY_VAL, Attr.REPLAY_ESN_VAL, Attr.MARK,
                       Attr.IF_ID, Attr.SA_DIR, *_ALG_KINDS})
# what the lean decode (`SaReplay`) reads: the replay state, and the mark that GETAE and
# NEWAE need to find a marked SA (xfrm_get_ae()/xfrm_new_ae() look up by xfrm_mark_get())
_LEAN_SA_ATTRS = frozenset({Attr.REPLAY_VAL, Attr.REPLAY_ESN_VAL, Attr.MARK})
_POLICY_ATTRS = frozenset({Attr.TMPL, Attr.MARK, Attr.IF_ID, Attr.POLICY_TYPE})
_AEVENT_ATTRS = frozenset({Attr.REPLAY_VAL, Attr.REPLAY_ESN_VAL, Attr.LTIME_VAL,
                           Attr.REPLAY_THRESH, Attr.ETIMER_THRESH, Attr.MARK, Attr.IF_ID})


def _attr_name(kind: int) -> str:
    return f"XFRMA_{Attr(kind).name}" if kind in Attr._value2member_map_ else f"XFRMA_{kind}"


def _algorithm(buf: bytes, kind: int, offset: int, length: int) -> Algorithm:
    """Kind and name of an XFRMA_ALG_* payload; the key bytes are never read."""
    label, fmt = _ALG_KINDS[kind]
    need(buf, offset, fmt.size, "payload", offset + length)
    raw = buf[offset : offset + 64].split(b"\0", 1)[0]
    return Algorithm(label, raw.decode("ascii", "backslashreplace"))


def _decode_attrs(buf: bytes, start: int, end: int, family: int,
                  wanted: frozenset[int]) -> dict[str, Any]:
    """The wanted attributes of buf[start:end] as dataclass fields; the rest are skipped."""
    fields: dict[str, Any] = {}
    algorithms: list[Algorithm] = []
    for kind, offset, length in iter_attributes(buf, start, end):
        if kind not in wanted:
            continue
        try:
            if kind in _ALG_KINDS:
                algorithms.append(_algorithm(buf, kind, offset, length))
            else:
                name, decode = _DECODERS[kind]
                fields[name] = decode(buf, offset, length, family)
        except MalformedMessage as exc:
            raise MalformedMessage(exc.reason, attribute=_attr_name(kind),
                                   offset=exc.offset) from None
    if algorithms:
        fields["algorithms"] = tuple(algorithms)
    return fields


def _decode_sa(buf: bytes, start: int, end: int) -> SaInfo:
    need(buf, start, USERSA_INFO_SIZE, "xfrm_usersa_info", end)
    seq, reqid, family, mode, window, flags = SA_TAIL.unpack_from(buf, start + 204)
    saddr = unpack_address(buf[start + 80 : start + 96], family)
    return SaInfo(
        Selector.decode(buf, start), XfrmId.decode(buf, start + 56, family), saddr,
        LifetimeCfg.decode(buf, start + 96), LifetimeCur.decode(buf, start + 160),
        Stats.decode(buf, start + 192), seq, reqid, family, mode, window, flags,
        **_decode_attrs(buf, start + USERSA_INFO_SIZE, end, family, _SA_ATTRS))


def _decode_sa_replay(buf: bytes, start: int, end: int) -> SaReplay:
    need(buf, start, USERSA_INFO_SIZE, "xfrm_usersa_info", end)
    _, reqid, family, _, window, flags = SA_TAIL.unpack_from(buf, start + 204)
    return SaReplay(XfrmId.decode(buf, start + 56, family), reqid, family, window, flags,
                    **_decode_attrs(buf, start + USERSA_INFO_SIZE, end, family,
                                   _LEAN_SA_ATTRS))


def _decode_policy(buf: bytes, start: int, end: int) -> PolicyInfo:
    need(buf, start, USERPOLICY_INFO_SIZE, "xfrm_userpolicy_info", end)
    selector = Selector.decode(buf, start)
    return PolicyInfo(
        selector, LifetimeCfg.decode(buf, start + 56), LifetimeCur.decode(buf, start + 120),
        *POLICY_TAIL.unpack_from(buf, start + 152),
        **_decode_attrs(buf, start + USERPOLICY_INFO_SIZE, end, selector.family,
                        _POLICY_ATTRS))


def _decode_aevent(buf: bytes, start: int, end: int) -> Aevent:
    need(buf, start, AEVENT_ID_SIZE, "xfrm_aevent_id", end)
    sa_id = SaId.decode(buf, start)
    saddr, flags, reqid = AEVENT_TAIL.unpack_from(buf, start + USERSA_ID.size)
    aid = AeventId(sa_id, unpack_address(saddr, sa_id.family), AeFlag(flags), reqid)
    return Aevent(aid, **_decode_attrs(buf, start + AEVENT_ID_SIZE, end, sa_id.family,
                                       _AEVENT_ATTRS))


_BODY_DECODERS: dict[int, Callable[[bytes, int, int], Body]] = {
    MessageType.NEWSA: _decode_sa,
    MessageType.UPDSA: _decode_sa,
    MessageType.NEWPOLICY: _decode_policy,
    MessageType.UPDPOLICY: _decode_policy,
    MessageType.NEWAE: _decode_aevent,
    MessageType.GETAE: _decode_aevent,
    NlmsgType.DONE: Done.decode,
}
_DUMPABLE = frozenset({MessageType.GETSA, MessageType.GETPOLICY})


def _type(value: int) -> int:
    if value in MessageType._value2member_map_:
        return MessageType(value)
    if value in NlmsgType._value2member_map_:
        return NlmsgType(value)
    return value


def parse_messages(buf: bytes | bytearray | memoryview, *, lean: bool = False) -> list[Message]:
    """Every message of a netlink receive buffer, in order; NLMSG_ERROR as `NetlinkError`.
    With `lean`, a NEWSA's body is only its `SaReplay` (the sequence guard's dumps)."""
    data = bytes(buf)
    out: list[Message] = []
    for header, start, end in split_messages(data):
        body: Body
        if header.type == NlmsgType.ERROR:
            body = NetlinkError.decode(data, start, end, header.flags)
        elif lean and header.type == MessageType.NEWSA:
            body = _decode_sa_replay(data, start, end)
        elif header.type in _BODY_DECODERS:
            body = _BODY_DECODERS[header.type](data, start, end)
        elif header.type in _DUMPABLE and header.flags & NlmFlag.DUMP and start == end:
            body = None
        else:
            body = Unknown(end - start)
        out.append(Message(_type(header.type), header.flags, header.seq, header.pid, body))
    return out


def _u32_attr(kind: int, value: int | None, what: str) -> bytes:
    return b"" if value is None else attribute(kind, pack(U32, what, value))


def _algorithm_attr(alg: Algorithm) -> bytes:
    if alg.kind not in _ALG_BY_KIND:
        raise XfrmUsageError(f"unknown algorithm kind {alg.kind!r}")
    kind, fmt = _ALG_BY_KIND[alg.kind]
    try:
        name = alg.name.encode("ascii")
    except UnicodeEncodeError:
        raise XfrmUsageError(f"algorithm name {alg.name!r} is not ASCII") from None
    if len(name) > 63 or b"\0" in name:
        raise XfrmUsageError(f"algorithm name {alg.name!r} does not fit alg_name[64]")
    zeros = (0,) * ((fmt.size - 64) // 4)  # key (and ICV/trunc) lengths: no key is sent
    return attribute(kind, pack(fmt, "xfrm_algo", name, *zeros))


def _replay_attrs(replay: ReplayState | None, esn: ReplayStateEsn | None) -> bytes:
    out = b"" if esn is None else attribute(Attr.REPLAY_ESN_VAL, esn.encode())
    return out + (b"" if replay is None else attribute(Attr.REPLAY_VAL, replay.encode()))


def _opt(kind: int, value: Any) -> bytes:
    return b"" if value is None else attribute(kind, value.encode())


def _encode_sa(sa: SaInfo) -> bytes:
    w = "xfrm_usersa_info"
    body = (sa.selector.encode() + sa.id.encode() + pack_address(sa.saddr, w)
            + sa.lifetime.encode() + sa.curlft.encode() + sa.stats.encode()
            + pack(SA_TAIL, w, sa.seq, sa.reqid, sa.family, sa.mode, sa.replay_window,
                   sa.flags))
    body += b"".join(_algorithm_attr(alg) for alg in sa.algorithms)
    body += _opt(Attr.ENCAP, sa.encap) + _opt(Attr.MARK, sa.mark)
    body += _replay_attrs(sa.replay, sa.replay_esn) + _u32_attr(Attr.IF_ID, sa.if_id, "if_id")
    if sa.direction is not None:
        body += attribute(Attr.SA_DIR, pack(struct.Struct("=B"), "direction", sa.direction))
    return body


def _encode_policy(pol: PolicyInfo) -> bytes:
    body = (pol.selector.encode() + pol.lifetime.encode() + pol.curlft.encode()
            + pack(POLICY_TAIL, "xfrm_userpolicy_info", pol.priority, pol.index, pol.dir,
                   pol.action, pol.flags, pol.share))
    if pol.templates:  # in dump_one_policy()'s order: TMPL, POLICY_TYPE, MARK, IF_ID
        body += attribute(Attr.TMPL, b"".join(t.encode() for t in pol.templates))
    if pol.ptype is not None:
        body += attribute(Attr.POLICY_TYPE, pack(POLICY_TYPE, "ptype", pol.ptype))
    return body + _opt(Attr.MARK, pol.mark) + _u32_attr(Attr.IF_ID, pol.if_id, "if_id")


def _encode_aevent(ae: Aevent) -> bytes:
    aid = ae.id
    body = aid.sa_id.encode() + pack(AEVENT_TAIL, "xfrm_aevent_id",
                                     pack_address(aid.saddr, "xfrm_aevent_id"),
                                     int(aid.flags), aid.reqid)
    body += _replay_attrs(ae.replay, ae.replay_esn) + _opt(Attr.LTIME_VAL, ae.lifetime)
    body += _u32_attr(Attr.REPLAY_THRESH, ae.replay_thresh, "replay_thresh")
    body += _u32_attr(Attr.ETIMER_THRESH, ae.etimer_thresh, "etimer_thresh")
    return body + _opt(Attr.MARK, ae.mark) + _u32_attr(Attr.IF_ID, ae.if_id, "if_id")


_BODY_ENCODERS: dict[type, tuple[frozenset[int], Callable[[Any], bytes]]] = {
    SaInfo: (frozenset({MessageType.NEWSA, MessageType.UPDSA}), _encode_sa),
    PolicyInfo: (frozenset({MessageType.NEWPOLICY, MessageType.UPDPOLICY}), _encode_policy),
    Aevent: (frozenset({MessageType.NEWAE, MessageType.GETAE}), _encode_aevent),
    Done: (frozenset({NlmsgType.DONE}), Done.encode),
}


def encode_message(msg: Message) -> bytes:
    """The wire bytes of one message (algorithms as names with empty keys)."""
    body = msg.body
    if body is None:
        payload = b""
    elif isinstance(body, NetlinkError):
        if msg.type != NlmsgType.ERROR:
            raise XfrmUsageError(f"an error body needs type NLMSG_ERROR, not {msg.type}")
        payload = body.encode(msg.flags)
    elif type(body) in _BODY_ENCODERS:
        types, encode = _BODY_ENCODERS[type(body)]
        if msg.type not in types:
            raise XfrmUsageError(f"{type(body).__name__} cannot be sent as type {msg.type}")
        payload = encode(body)
    else:
        raise XfrmUsageError(f"cannot encode a {type(body).__name__} body")
    return message(msg.type, msg.flags, msg.seq, msg.pid, payload)


def getsa_dump_request(*, seq: int = 0) -> bytes:
    """XFRM_MSG_GETSA with NLM_F_DUMP: every SA, answered by NEWSAs then NLMSG_DONE."""
    return encode_message(Message(MessageType.GETSA, NlmFlag.REQUEST | NlmFlag.DUMP, seq))


def getpolicy_dump_request(*, seq: int = 0) -> bytes:
    """XFRM_MSG_GETPOLICY with NLM_F_DUMP: every policy, as NEWPOLICYs then NLMSG_DONE."""
    return encode_message(Message(MessageType.GETPOLICY, NlmFlag.REQUEST | NlmFlag.DUMP, seq))


def _aevent_id(sa: SaId, flags: AeFlag, saddr: IPv4Address | IPv6Address | None,
               reqid: int) -> AeventId:
    if not isinstance(sa, SaId):
        raise XfrmUsageError(f"expected an SaId, got {sa!r}")
    if saddr is None:
        saddr = IPv6Address(0) if sa.family == AF_INET6 else IPv4Address(0)
    return AeventId(sa, saddr, flags, reqid)


def getae_request(sa: SaId, *, seq: int = 0, mark: Mark | None = None,
                  thresholds: bool = True) -> bytes:
    """XFRM_MSG_GETAE for one SA; the kernel answers one NEWAE (or ESRCH if it is missing).

    The answer always carries the replay state and lifetime counters; `thresholds` adds
    XFRM_AE_RTHR | XFRM_AE_ETHR so it also carries both event thresholds. Give the SA's
    `mark` when it has one, or the lookup misses it.
    """
    flags = AeFlag.RVAL | AeFlag.LVAL
    if thresholds:
        flags |= AeFlag.RTHR | AeFlag.ETHR
    body = Aevent(_aevent_id(sa, flags, None, 0), mark=mark)
    return encode_message(Message(MessageType.GETAE, NlmFlag.REQUEST, seq, 0, body))


def _check_esn(esn: ReplayStateEsn) -> None:
    if esn.bmp_len > XFRM_REPLAY_ESN_MAX_WORDS:
        raise XfrmUsageError(f"bmp_len {esn.bmp_len} exceeds {XFRM_REPLAY_ESN_MAX_WORDS}")
    if esn.replay_window > esn.bmp_len * 32:
        raise XfrmUsageError(f"replay_window {esn.replay_window} exceeds the "
                             f"{esn.bmp_len * 32}-bit bitmap (the kernel says EINVAL)")


def newae_request(sa: SaId, *, seq: int = 0, replay: ReplayState | None = None,
                  replay_esn: ReplayStateEsn | None = None,
                  replay_maxdiff: int | None = None, replay_maxage: int | None = None,
                  mark: Mark | None = None, replace: bool = True, ack: bool = True) -> bytes:
    """XFRM_MSG_NEWAE: overwrite an SA's replay state or event thresholds.

    xfrm_new_ae() refuses (EINVAL) a request without NLM_F_REPLACE or without any of these
    values, and one for an SA not in state VALID; it copies `replay` or `replay_esn` whole
    (oseq, seq and the bitmap, for ESN also the window), so send the SA's current inbound
    state along with a new oseq. A non-ESN SA only uses `replay`, an ESN or wide-window SA
    only `replay_esn`, whose bmp_len must equal the SA's. `replay_maxage` is stored as is
    in jiffies (CONFIG_HZ per second) although GETAE reports it in 100 ms units.
    """
    if replay is not None and replay_esn is not None:
        raise XfrmUsageError("give replay (non-ESN SA) or replay_esn (ESN SA), not both")
    if replay_esn is not None:
        _check_esn(replay_esn)
    values = (replay, replay_esn, replay_maxdiff, replay_maxage)
    if all(value is None for value in values):
        raise XfrmUsageError("NEWAE needs a replay state or threshold to set")
    flags = AeFlag.UNSPEC
    if replay is not None or replay_esn is not None:
        flags |= AeFlag.RVAL
    if replay_maxdiff is not None:
        flags |= AeFlag.RTHR
    if replay_maxage is not None:
        flags |= AeFlag.ETHR
    body = Aevent(_aevent_id(sa, flags, None, 0), replay, replay_esn, None,
                  replay_maxdiff, replay_maxage, mark)
    nlm = NlmFlag.REQUEST | (NlmFlag.REPLACE if replace else 0) | (NlmFlag.ACK if ack else 0)
    return encode_message(Message(MessageType.NEWAE, nlm, seq, 0, body))
