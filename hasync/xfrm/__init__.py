"""XFRM netlink for hasync: a pure codec (`codec`) and a thin socket adapter (`socket`).

Rules: the codec turns netlink bytes into frozen dataclasses and back, with no sockets,
clocks or logging, and never keeps key material; only `hasync.xfrm.socket` does I/O; the
wire facts come from torvalds/linux include/uapi/linux/xfrm.h and net/xfrm/xfrm_user.c.
"""

from hasync.xfrm.codec import (
    encode_message,
    getae_request,
    getpolicy_dump_request,
    getsa_dump_request,
    newae_request,
    parse_messages,
)
from hasync.xfrm.enums import AeFlag, Attr, MessageType, NlmFlag, NlmsgType
from hasync.xfrm.errors import MalformedMessage, XfrmError, XfrmUsageError
from hasync.xfrm.model import Aevent, AeventId, Message, PolicyInfo, SaInfo, SaReplay, Unknown
from hasync.xfrm.netlink import Done, Header, NetlinkError
from hasync.xfrm.structs import (
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
)

__all__ = [
    "AeFlag",
    "Aevent",
    "AeventId",
    "Algorithm",
    "Attr",
    "Done",
    "Encap",
    "Header",
    "LifetimeCfg",
    "LifetimeCur",
    "MalformedMessage",
    "Mark",
    "Message",
    "MessageType",
    "NetlinkError",
    "NlmFlag",
    "NlmsgType",
    "PolicyInfo",
    "ReplayState",
    "ReplayStateEsn",
    "SaId",
    "SaInfo",
    "SaReplay",
    "Selector",
    "Stats",
    "Unknown",
    "UserTmpl",
    "XfrmError",
    "XfrmId",
    "XfrmUsageError",
    "encode_message",
    "getae_request",
    "getpolicy_dump_request",
    "getsa_dump_request",
    "newae_request",
    "parse_messages",
]
