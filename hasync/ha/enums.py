"""Message types and per-version attribute numbers of charon's ha plugin protocol.

Rules: values and order follow upstream exactly (strongswan/strongswan,
src/libcharon/plugins/ha/ha_message.h at the tag named on each enum); every attribute
member's comment names the wire layout it carries, which `attrs.KIND_BY_NAME` must match;
nothing here does I/O.
"""

from __future__ import annotations

from enum import IntEnum


class MessageType(IntEnum):
    """Byte 1 of a datagram: ha_message_type_t (same numbering in protocol versions 3, 4, 5)."""

    IKE_ADD = 1  # add a completely new IKE_SA
    IKE_UPDATE = 2  # update an existing IKE_SA (identities, addresses, ...)
    IKE_MID_INITIATOR = 3  # update initiator message ID
    IKE_MID_RESPONDER = 4  # update responder message ID
    IKE_DELETE = 5  # delete an existing IKE_SA
    CHILD_ADD = 6  # add a new CHILD_SA
    CHILD_DELETE = 7  # delete an existing CHILD_SA
    SEGMENT_DROP = 8  # segments the sending node gives up
    SEGMENT_TAKE = 9  # segments the sending node takes over
    STATUS = 10  # heartbeat: segments the sending node currently serves
    RESYNC = 11  # segments the receiving node is asked to resync
    IKE_IV = 12  # IV synchronization for IKEv1 Main/Aggressive Mode


class AttributeV3(IntEnum):
    """ha_message_attribute_t of protocol version 3 (strongSwan 5.x up to 6.0.0; tag 5.9.8)."""

    IKE_ID = 1  # ike_sa_id
    IKE_REKEY_ID = 2  # ike_sa_id
    LOCAL_ID = 3  # identification
    REMOTE_ID = 4  # identification
    REMOTE_EAP_ID = 5  # identification
    LOCAL_ADDR = 6  # host
    REMOTE_ADDR = 7  # host
    CONFIG_NAME = 8  # string
    CONDITIONS = 9  # u32
    EXTENSIONS = 10  # u32
    LOCAL_VIP = 11  # host
    REMOTE_VIP = 12  # host
    PEER_ADDR = 13  # host
    INITIATOR = 14  # u8
    NONCE_I = 15  # chunk
    NONCE_R = 16  # chunk
    SECRET = 17  # chunk
    OLD_SKD = 18  # chunk
    ALG_PRF = 19  # u16
    ALG_OLD_PRF = 20  # u16
    ALG_ENCR = 21  # u16
    ALG_ENCR_LEN = 22  # u16
    ALG_INTEG = 23  # u16
    ALG_DH = 24  # u16
    IPSEC_MODE = 25  # u8
    IPCOMP = 26  # u8
    INBOUND_SPI = 27  # u32
    OUTBOUND_SPI = 28  # u32
    INBOUND_CPI = 29  # u16
    OUTBOUND_CPI = 30  # u16
    LOCAL_TS = 31  # traffic_selector
    REMOTE_TS = 32  # traffic_selector
    MID = 33  # u32
    SEGMENT = 34  # u16
    ESN = 35  # u16
    IKE_VERSION = 36  # u8
    LOCAL_DH = 37  # chunk
    REMOTE_DH = 38  # chunk
    PSK = 39  # chunk
    IV = 40  # chunk
    AUTH_METHOD = 41  # u16


class AttributeV4(IntEnum):
    """ha_message_attribute_t of protocol version 4 (tag 6.0.1); version 5 numbers it alike."""

    IKE_ID = 1  # ike_sa_id
    IKE_REKEY_ID = 2  # ike_sa_id
    LOCAL_ID = 3  # identification
    REMOTE_ID = 4  # identification
    REMOTE_EAP_ID = 5  # identification
    LOCAL_ADDR = 6  # host
    REMOTE_ADDR = 7  # host
    CONFIG_NAME = 8  # string
    CONDITIONS = 9  # u32
    EXTENSIONS = 10  # u32
    LOCAL_VIP = 11  # host
    REMOTE_VIP = 12  # host
    PEER_ADDR = 13  # host
    INITIATOR = 14  # u8
    NONCE_I = 15  # chunk
    NONCE_R = 16  # chunk
    SECRET = 17  # chunk
    ADD_SECRET = 18  # chunk (new in v4: additional KE shared secret(s))
    OLD_SKD = 19  # chunk
    ALG_PRF = 20  # u16
    ALG_OLD_PRF = 21  # u16
    ALG_ENCR = 22  # u16
    ALG_ENCR_LEN = 23  # u16
    ALG_INTEG = 24  # u16
    ALG_KE = 25  # u16 (was ALG_DH)
    ALG_ADD_KES = 26  # chunk (new in v4: u16 network-order KE methods, packed)
    IPSEC_MODE = 27  # u8
    IPCOMP = 28  # u8
    INBOUND_SPI = 29  # u32
    OUTBOUND_SPI = 30  # u32
    INBOUND_CPI = 31  # u16
    OUTBOUND_CPI = 32  # u16
    LOCAL_TS = 33  # traffic_selector
    REMOTE_TS = 34  # traffic_selector
    MID = 35  # u32
    SEGMENT = 36  # u16
    ESN = 37  # u16
    IKE_VERSION = 38  # u8
    LOCAL_DH = 39  # chunk
    REMOTE_DH = 40  # chunk
    PSK = 41  # chunk
    IV = 42  # chunk
    AUTH_METHOD = 43  # u16


# Version 5 (tag 6.0.2 onwards) keeps version 4's numbering and layouts byte for byte; the
# bump only marks that IKE_ADD/IKE_UPDATE may now also carry CONDITIONS and EXTENSIONS with
# bit 31 (COND_PRIVATE_MARKER / EXT_PRIVATE_MARKER) set (upstream commit 46674e64c1).
AttributeV5 = AttributeV4

ATTRIBUTES_BY_VERSION: dict[int, type[IntEnum]] = {3: AttributeV3, 4: AttributeV4, 5: AttributeV5}
