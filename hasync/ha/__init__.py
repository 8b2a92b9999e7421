"""Pure codec for strongSwan charon's ha plugin protocol (versions 3, 4 and 5).

Rules: this package only turns bytes into `HaMessage` and back; it opens no sockets, reads
no clocks and logs nothing; the wire facts come from strongswan/strongswan
src/libcharon/plugins/ha/ha_message.[ch] at tags 5.9.8 (v3), 6.0.1 (v4) and 6.0.2 (v5).
"""

from hasync.ha.attrs import (
    AF_INET,
    AF_INET6,
    TS_IPV4_ADDR_RANGE,
    TS_IPV6_ADDR_RANGE,
    Host,
    Identification,
    IkeSaId,
    TrafficSelector,
    Value,
    child_cpi,
    child_spi,
)
from hasync.ha.codec import (
    LATEST_VERSION,
    SUPPORTED_VERSIONS,
    TABLES,
    Attribute,
    AttrSpec,
    HaMessage,
    attribute_names,
    decode,
    decode_only,
    encode,
)
from hasync.ha.enums import (
    ATTRIBUTES_BY_VERSION,
    AttributeV3,
    AttributeV4,
    AttributeV5,
    MessageType,
)
from hasync.ha.errors import EncodeError, MalformedMessage

__all__ = [
    "AF_INET",
    "AF_INET6",
    "ATTRIBUTES_BY_VERSION",
    "LATEST_VERSION",
    "SUPPORTED_VERSIONS",
    "TABLES",
    "TS_IPV4_ADDR_RANGE",
    "TS_IPV6_ADDR_RANGE",
    "AttrSpec",
    "Attribute",
    "AttributeV3",
    "AttributeV4",
    "AttributeV5",
    "EncodeError",
    "HaMessage",
    "Host",
    "Identification",
    "IkeSaId",
    "MalformedMessage",
    "MessageType",
    "TrafficSelector",
    "Value",
    "attribute_names",
    "child_cpi",
    "child_spi",
    "decode",
    "decode_only",
    "encode",
]
