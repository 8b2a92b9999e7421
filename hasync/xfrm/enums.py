"""Numbers of the XFRM netlink family and of netlink framing.

Rules: every value and its order follow upstream exactly, torvalds/linux
include/uapi/linux/xfrm.h (checked against Debian 12's linux-libc-dev 6.1 header and, for
the attributes after XFRMA_MTIMER_THRESH, mainline up to 6.14) and include/uapi/linux/
netlink.h; comments name the payload each carries; nothing here does I/O.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

NETLINK_XFRM = 6  # include/uapi/linux/netlink.h
SOL_NETLINK = 270  # include/linux/socket.h (Python's socket module lacks it)
NETLINK_ADD_MEMBERSHIP = 1
NETLINK_CAP_ACK = 10  # errors echo only the request's header, not its payload
NETLINK_EXT_ACK = 11  # errors carry NLMSGERR_ATTR_MSG / _OFFS

AF_INET = 2
AF_INET6 = 10
IPPROTO_ESP = 50
IPPROTO_AH = 51
IPPROTO_COMP = 108
PROTO_NAMES = {IPPROTO_ESP: "esp", IPPROTO_AH: "ah", IPPROTO_COMP: "comp"}

XFRM_INF = (1 << 64) - 1  # XFRM_INF: "no limit" in struct xfrm_lifetime_cfg
XFRMA_REPLAY_ESN_MAX = 4096  # bits; so at most 128 bitmap words (verify_replay())
XFRM_REPLAY_ESN_MAX_WORDS = XFRMA_REPLAY_ESN_MAX // 32
# enum xfrm_nlgroups (multicast group numbers), the ones hasync joins
XFRMNLGRP_EXPIRE = 2  # XFRM_MSG_EXPIRE: struct xfrm_user_expire
XFRMNLGRP_SA = 3  # XFRM_MSG_NEWSA, UPDSA, DELSA, FLUSHSA (xfrm_user.c xfrm_notify_sa())
XFRMNLGRP_AEVENTS = 5  # XFRM_MSG_NEWAE: struct xfrm_aevent_id
XFRMNLGRP_MIGRATE = 7  # XFRM_MSG_MIGRATE

# struct xfrm_usersa_info.flags: the one flag hasync reads
XFRM_STATE_ESN = 128


class MessageType(IntEnum):
    """XFRM netlink message types (nlmsg_type), upstream order from XFRM_MSG_BASE = 0x10."""

    NEWSA = 0x10  # struct xfrm_usersa_info + attributes (also each SA of a GETSA dump)
    DELSA = 0x11  # struct xfrm_usersa_id
    GETSA = 0x12  # struct xfrm_usersa_id; with NLM_F_DUMP: no body, answered by NEWSAs
    NEWPOLICY = 0x13  # struct xfrm_userpolicy_info + attributes
    DELPOLICY = 0x14  # struct xfrm_userpolicy_id
    GETPOLICY = 0x15  # struct xfrm_userpolicy_id; with NLM_F_DUMP: no body
    ALLOCSPI = 0x16  # struct xfrm_userspi_info
    ACQUIRE = 0x17  # struct xfrm_user_acquire
    EXPIRE = 0x18  # struct xfrm_user_expire
    UPDPOLICY = 0x19  # struct xfrm_userpolicy_info
    UPDSA = 0x1A  # struct xfrm_usersa_info
    POLEXPIRE = 0x1B  # struct xfrm_user_polexpire
    FLUSHSA = 0x1C  # struct xfrm_usersa_flush
    FLUSHPOLICY = 0x1D  # no body
    NEWAE = 0x1E  # struct xfrm_aevent_id + replay/lifetime/threshold attributes
    GETAE = 0x1F  # struct xfrm_aevent_id, no attributes except XFRMA_MARK
    REPORT = 0x20  # struct xfrm_user_report
    MIGRATE = 0x21  # struct xfrm_userpolicy_id + XFRMA_MIGRATE
    NEWSADINFO = 0x22  # u32 + XFRMA_SAD_* attributes
    GETSADINFO = 0x23  # u32
    NEWSPDINFO = 0x24  # u32 + XFRMA_SPD_* attributes
    GETSPDINFO = 0x25  # u32
    MAPPING = 0x26  # struct xfrm_user_mapping
    SETDEFAULT = 0x27  # struct xfrm_userpolicy_default
    GETDEFAULT = 0x28  # struct xfrm_userpolicy_default


class Attr(IntEnum):
    """enum xfrm_attr_type_t (XFRMA_*): netlink attribute types of XFRM messages."""

    UNSPEC = 0
    ALG_AUTH = 1  # struct xfrm_algo (name + key: only the name is kept)
    ALG_CRYPT = 2  # struct xfrm_algo
    ALG_COMP = 3  # struct xfrm_algo
    ENCAP = 4  # struct xfrm_encap_tmpl
    TMPL = 5  # one or more struct xfrm_user_tmpl
    SA = 6  # struct xfrm_usersa_info
    POLICY = 7  # struct xfrm_userpolicy_info
    SEC_CTX = 8  # struct xfrm_sec_ctx
    LTIME_VAL = 9  # struct xfrm_lifetime_cur
    REPLAY_VAL = 10  # struct xfrm_replay_state
    REPLAY_THRESH = 11  # u32: packets between aevents
    ETIMER_THRESH = 12  # u32: aevent timer (see codec: units differ on set and get)
    SRCADDR = 13  # xfrm_address_t
    COADDR = 14  # xfrm_address_t
    LASTUSED = 15  # u64
    POLICY_TYPE = 16  # struct xfrm_userpolicy_type
    MIGRATE = 17  # struct xfrm_user_migrate
    ALG_AEAD = 18  # struct xfrm_algo_aead
    KMADDRESS = 19  # struct xfrm_user_kmaddress
    ALG_AUTH_TRUNC = 20  # struct xfrm_algo_auth
    MARK = 21  # struct xfrm_mark
    TFCPAD = 22  # u32
    REPLAY_ESN_VAL = 23  # struct xfrm_replay_state_esn + bmp[bmp_len]
    SA_EXTRA_FLAGS = 24  # u32
    PROTO = 25  # u8
    ADDRESS_FILTER = 26  # struct xfrm_address_filter
    PAD = 27  # alignment padding for 64-bit attributes
    OFFLOAD_DEV = 28  # struct xfrm_user_offload
    SET_MARK = 29  # u32
    SET_MARK_MASK = 30  # u32
    IF_ID = 31  # u32
    MTIMER_THRESH = 32  # u32, seconds, input SAs
    SA_DIR = 33  # u8, XFRM_SA_DIR_IN / _OUT (Linux >= 6.10)


class AeFlag(IntFlag):
    """enum xfrm_ae_ftype_t: struct xfrm_aevent_id.flags."""

    UNSPEC = 0
    RTHR = 1  # replay threshold (GETAE: include XFRMA_REPLAY_THRESH in the answer)
    RVAL = 2  # replay value
    LVAL = 4  # lifetime value
    ETHR = 8  # expiry timer threshold (GETAE: include XFRMA_ETIMER_THRESH)
    CR = 16  # event cause: replay counter moved by at least the threshold
    CE = 32  # event cause: timer expired with changes
    CU = 64  # event cause: someone updated the SA with NEWAE


class NlmsgType(IntEnum):
    """Netlink control message types (include/uapi/linux/netlink.h)."""

    NOOP = 1
    ERROR = 2  # struct nlmsgerr: negative errno (0 = ACK) + the request's header
    DONE = 3  # end of a multipart (dump) answer; int error
    OVERRUN = 4


class NlmFlag(IntFlag):
    """nlmsg_flags bits (include/uapi/linux/netlink.h); GET and NEW modifiers share bits."""

    NONE = 0
    REQUEST = 0x1
    MULTI = 0x2
    ACK = 0x4
    ECHO = 0x8
    DUMP_INTR = 0x10  # a dump was interrupted by a change; its answer is inconsistent
    DUMP_FILTERED = 0x20
    ROOT = 0x100  # GET modifier
    MATCH = 0x200  # GET modifier
    REPLACE = 0x100  # NEW modifier: NEWAE requires it
    EXCL = 0x200
    CREATE = 0x400
    APPEND = 0x800
    DUMP = 0x300  # ROOT | MATCH
    CAPPED = 0x100  # NLMSG_ERROR: the request's payload was not echoed
    ACK_TLVS = 0x200  # NLMSG_ERROR: extended-ACK attributes follow


NLMSGERR_ATTR_MSG = 1  # NUL-terminated error string
NLMSGERR_ATTR_OFFS = 2  # u32 byte offset of the offending attribute in the request
