"""Decoded XFRM messages: SAs, policies, async events, and the netlink message around them.

Rules: frozen dataclasses only, one per body that torvalds/linux net/xfrm/xfrm_user.c
sends or accepts for the messages hasync uses (NEWSA, NEWPOLICY, NEWAE/GETAE, NLMSG_ERROR,
NLMSG_DONE); field names follow include/uapi/linux/xfrm.h; no field ever holds key
material: algorithms are kept by name only; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from hasync.xfrm.enums import XFRM_STATE_ESN, AeFlag
from hasync.xfrm.netlink import Done, NetlinkError
from hasync.xfrm.structs import (
    Algorithm,
    Encap,
    IPAddress,
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
)


@dataclass(frozen=True, slots=True)
class SaInfo:
    """struct xfrm_usersa_info (XFRM_MSG_NEWSA) and the attributes hasync uses; no keys."""

    selector: Selector
    id: XfrmId
    saddr: IPAddress
    lifetime: LifetimeCfg
    curlft: LifetimeCur
    stats: Stats
    seq: int
    reqid: int
    family: int
    mode: int
    replay_window: int
    flags: int
    encap: Encap | None = None
    replay: ReplayState | None = None
    replay_esn: ReplayStateEsn | None = None
    mark: Mark | None = None
    if_id: int | None = None
    direction: int | None = None  # XFRMA_SA_DIR (Linux >= 6.10)
    algorithms: tuple[Algorithm, ...] = ()

    @property
    def sa_id(self) -> SaId:
        """What GETAE/NEWAE look this SA up by."""
        return SaId(self.id.daddr, self.id.spi, self.id.proto, self.family)

    @property
    def esn(self) -> bool:
        """True when the SA uses 64-bit extended sequence numbers (XFRM_STATE_ESN)."""
        return bool(self.flags & XFRM_STATE_ESN)


@dataclass(frozen=True, slots=True)
class SaReplay:
    """The part of a dumped NEWSA the sequence guard reads: id, reqid, window, replay state,
    mark (`parse_messages(lean=True)`: decoding every SA whole cost 0.17 ms each on hardware)."""

    id: XfrmId
    reqid: int
    family: int
    replay_window: int
    flags: int
    replay: ReplayState | None = None
    replay_esn: ReplayStateEsn | None = None
    mark: Mark | None = None  # GETAE/NEWAE find a marked SA only with it (xfrm_new_ae())


@dataclass(frozen=True, slots=True)
class PolicyInfo:
    """struct xfrm_userpolicy_info (XFRM_MSG_NEWPOLICY) with its templates and mark."""

    selector: Selector
    lifetime: LifetimeCfg
    curlft: LifetimeCur
    priority: int
    index: int
    dir: int
    action: int
    flags: int
    share: int
    templates: tuple[UserTmpl, ...] = ()
    mark: Mark | None = None
    if_id: int | None = None
    ptype: int | None = None  # XFRMA_POLICY_TYPE (only with CONFIG_XFRM_SUB_POLICY)


@dataclass(frozen=True, slots=True)
class AeventId:
    """struct xfrm_aevent_id: the SA, its source and reqid, and XFRM_AE_* flags."""

    sa_id: SaId
    saddr: IPAddress
    flags: int = 0
    reqid: int = 0


@dataclass(frozen=True, slots=True)
class Aevent:
    """XFRM_MSG_NEWAE/GETAE: an SA's replay state, lifetime counters and event thresholds."""

    id: AeventId
    replay: ReplayState | None = None
    replay_esn: ReplayStateEsn | None = None
    lifetime: LifetimeCur | None = None
    replay_thresh: int | None = None  # XFRMA_REPLAY_THRESH: replay_maxdiff (packets)
    etimer_thresh: int | None = None  # XFRMA_ETIMER_THRESH (see newae_request for units)
    mark: Mark | None = None
    if_id: int | None = None

    @property
    def flags(self) -> AeFlag:
        """The XFRM_AE_* flags (on events: the cause, CR, CE or CU)."""
        return AeFlag(self.id.flags)


@dataclass(frozen=True, slots=True)
class Unknown:
    """A message type this codec does not model; only its payload length is kept."""

    payload_len: int


Body = SaInfo | SaReplay | PolicyInfo | Aevent | NetlinkError | Done | Unknown | None


@dataclass(frozen=True, slots=True)
class Message:
    """One netlink message: header fields and the decoded body."""

    type: int
    flags: int = 0
    seq: int = 0
    pid: int = 0
    body: Body = None


