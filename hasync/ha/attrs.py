"""Typed attribute values of the ha protocol and the wire codec of each value layout.

Rules: one `Kind` per layout in upstream's add_attribute()/attribute_enumerate() switch
(strongswan/strongswan src/libcharon/plugins/ha/ha_message.c, tags 5.9.8, 6.0.1, 6.0.2);
integers are network byte order; decoders take (data, offset) and return (value, next
offset) or raise `DecodeFailure`, skippers check the same bytes the same way and return only
the next offset; encoders validate the value and raise `EncodeError`;
decode-then-encode reproduces the input bytes exactly; no I/O.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Any, Literal

from hasync.ha.errors import EncodeError

IPAddress = IPv4Address | IPv6Address

# host_t families as charon writes them: the native AF_* constants of Linux.
AF_INET = 2
AF_INET6 = 10
# ts_type_t (src/libstrongswan/selectors/traffic_selector.h).
TS_IPV4_ADDR_RANGE = 7
TS_IPV6_ADDR_RANGE = 8

_ADDR_LEN_BY_FAMILY = {AF_INET: 4, AF_INET6: 16}
_ADDR_LEN_BY_TS_TYPE = {TS_IPV4_ADDR_RANGE: 4, TS_IPV6_ADDR_RANGE: 16}


@dataclass(frozen=True, slots=True)
class IkeSaId:
    """ike_sa_id_t: IKE version, both SPIs (as printed by charon) and our role."""

    ike_version: int
    initiator_spi: int
    responder_spi: int
    is_initiator: bool


@dataclass(frozen=True, slots=True)
class Host:
    """host_t: an address and a port."""

    address: IPAddress
    port: int = 0

    @property
    def family(self) -> int:
        """The AF_* value charon puts on the wire for this address."""
        return AF_INET if isinstance(self.address, IPv4Address) else AF_INET6


@dataclass(frozen=True, slots=True)
class Identification:
    """identification_t: id_type_t number and its raw encoding (at most 255 bytes)."""

    type: int
    data: bytes


@dataclass(frozen=True, slots=True)
class TrafficSelector:
    """traffic_selector_t: an address range with protocol and port range."""

    protocol: int
    from_address: IPAddress
    to_address: IPAddress
    from_port: int = 0
    to_port: int = 0xFFFF
    dynamic: bool = False

    @property
    def ts_type(self) -> int:
        """TS_IPV4_ADDR_RANGE or TS_IPV6_ADDR_RANGE, from the address version."""
        if isinstance(self.from_address, IPv4Address):
            return TS_IPV4_ADDR_RANGE
        return TS_IPV6_ADDR_RANGE


Value = int | bytes | str | IkeSaId | Host | Identification | TrafficSelector

ByteOrder = Literal["little", "big"]


# ha_child.c passes child_sa->get_spi()/get_cpi() (kept in network order in memory) to
# add_attribute(), which applies htonl()/htons() again: on a little-endian sender the
# inbound_spi/outbound_spi/inbound_cpi/outbound_cpi integers are the real SPI/CPI with
# their bytes swapped. The conversion is its own inverse.
def child_spi(value: int, sender_byteorder: ByteOrder = "little") -> int:
    """Convert between an inbound_spi/outbound_spi value and the kernel's ESP/AH SPI."""
    return int.from_bytes(value.to_bytes(4, "big"), sender_byteorder)


def child_cpi(value: int, sender_byteorder: ByteOrder = "little") -> int:
    """Convert between an inbound_cpi/outbound_cpi value and the kernel's IPComp CPI."""
    return int.from_bytes(value.to_bytes(2, "big"), sender_byteorder)


class DecodeFailure(Exception):
    """Internal: a value could not be decoded at `offset`; the codec adds the attribute."""

    def __init__(self, reason: str, offset: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.offset = offset


@dataclass(frozen=True, slots=True)
class Kind:
    """A value layout: its name (as in the enums' comments), decoder, encoder, and a skipper
    that checks what the decoder checks but builds no value (returns the next offset)."""

    name: str
    decode: Callable[[bytes, int], tuple[Any, int]]
    encode: Callable[[Any], bytes]
    skip: Callable[[bytes, int], int]


def _take(data: bytes, pos: int, size: int, what: str) -> bytes:
    """Return data[pos:pos+size] or fail if the datagram ends first."""
    if pos + size > len(data):
        raise DecodeFailure(f"truncated {what}: need {size} bytes, have {len(data) - pos}", pos)
    return data[pos : pos + size]


def _need(data: bytes, pos: int, size: int, what: str) -> int:
    """The offset after `size` bytes at `pos`, or fail as `_take` does."""
    if pos + size > len(data):
        raise DecodeFailure(f"truncated {what}: need {size} bytes, have {len(data) - pos}", pos)
    return pos + size


def _flag(raw: int, what: str, pos: int) -> bool:
    """Decode a C bool byte; charon only ever writes 0 or 1."""
    if raw not in (0, 1):
        raise DecodeFailure(f"{what} flag is {raw}, not 0 or 1", pos)
    return raw == 1


def _check_int(value: object, bits: int, what: str) -> int:
    """Validate an unsigned integer of `bits` bits for encoding."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise EncodeError(f"{what} must be int, not {type(value).__name__}")
    if not 0 <= value < 1 << bits:
        raise EncodeError(f"{what} {value} does not fit in u{bits}")
    return value


def _check_bool(value: object, what: str) -> bool:
    """Validate a flag for encoding."""
    if not isinstance(value, bool):
        raise EncodeError(f"{what} must be bool, not {type(value).__name__}")
    return value


def _wrong_type(value: object, expected: str) -> EncodeError:
    """The error for a value whose Python type does not match its layout."""
    return EncodeError(f"value must be {expected}, not {type(value).__name__}")


def _check_address(value: object, what: str) -> bytes:
    """Validate an address for encoding and return its packed bytes."""
    if not isinstance(value, IPv4Address | IPv6Address):
        raise EncodeError(f"{what} must be IPv4Address or IPv6Address, not {type(value).__name__}")
    return value.packed


def _uint_kind(bits: int) -> Kind:
    """Kind for u8/u16/u32 (ha_message.c: the uint8_t/uint16_t/uint32_t cases)."""
    fmt = struct.Struct({8: ">B", 16: ">H", 32: ">I"}[bits])

    def decode(data: bytes, pos: int) -> tuple[int, int]:
        (value,) = fmt.unpack(_take(data, pos, fmt.size, f"u{bits}"))
        return value, pos + fmt.size

    def encode(value: object) -> bytes:
        return fmt.pack(_check_int(value, bits, f"u{bits} value"))

    def skip(data: bytes, pos: int) -> int:
        return _need(data, pos, fmt.size, f"u{bits}")

    return Kind(f"u{bits}", decode, encode, skip)


# ha_message.c, chunk_t case: u16 length, then that many bytes.
def _decode_chunk(data: bytes, pos: int) -> tuple[bytes, int]:
    """Decode a length-prefixed byte string."""
    (size,) = struct.unpack(">H", _take(data, pos, 2, "chunk length"))
    return _take(data, pos + 2, size, "chunk data"), pos + 2 + size


def _skip_chunk(data: bytes, pos: int) -> int:
    """Check and pass a length-prefixed byte string."""
    _need(data, pos, 2, "chunk length")
    return _need(data, pos + 2, (data[pos] << 8) | data[pos + 1], "chunk data")


def _encode_chunk(value: object) -> bytes:
    """Encode a length-prefixed byte string."""
    if not isinstance(value, bytes | bytearray):
        raise _wrong_type(value, "bytes")
    _check_int(len(value), 16, "chunk length")
    return struct.pack(">H", len(value)) + bytes(value)


# ha_message.c, char* case (HA_CONFIG_NAME): bytes up to and including a NUL. Bytes that are
# not UTF-8 survive as surrogate escapes so that any valid datagram round-trips.
def _decode_string(data: bytes, pos: int) -> tuple[str, int]:
    """Decode a NUL-terminated string."""
    end = data.find(b"\0", pos)
    if end < 0:
        raise DecodeFailure("string has no NUL terminator", pos)
    return data[pos:end].decode("utf-8", "surrogateescape"), end + 1


def _skip_string(data: bytes, pos: int) -> int:
    """Check and pass a NUL-terminated string."""
    end = data.find(b"\0", pos)
    if end < 0:
        raise DecodeFailure("string has no NUL terminator", pos)
    return end + 1


def _encode_string(value: object) -> bytes:
    """Encode a NUL-terminated string."""
    if not isinstance(value, str):
        raise _wrong_type(value, "str")
    if "\0" in value:
        raise EncodeError("string must not contain NUL")
    try:
        return value.encode("utf-8", "surrogateescape") + b"\0"
    except UnicodeEncodeError as exc:
        raise EncodeError(f"string cannot be encoded: {exc}") from None


# ha_message.c, ike_sa_id_encoding_t: packed {u8 ike_version; u64 spi_i; u64 spi_r; u8
# initiator}. The SPIs are copied from memory where charon keeps them in network order, so
# big-endian reading gives the value charon logs.
_IKE_SA_ID = struct.Struct(">BQQB")


def _decode_ike_sa_id(data: bytes, pos: int) -> tuple[IkeSaId, int]:
    """Decode an ike_sa_id."""
    end = _need(data, pos, _IKE_SA_ID.size, "ike_sa_id")
    version, spi_i, spi_r, initiator = _IKE_SA_ID.unpack_from(data, pos)
    return IkeSaId(version, spi_i, spi_r, _flag(initiator, "initiator", end - 1)), end


def _skip_ike_sa_id(data: bytes, pos: int) -> int:
    """Check and pass an ike_sa_id."""
    end = _need(data, pos, _IKE_SA_ID.size, "ike_sa_id")
    _flag(data[end - 1], "initiator", end - 1)
    return end


def _encode_ike_sa_id(value: object) -> bytes:
    """Encode an ike_sa_id."""
    if not isinstance(value, IkeSaId):
        raise _wrong_type(value, "IkeSaId")
    return _IKE_SA_ID.pack(
        _check_int(value.ike_version, 8, "ike_version"),
        _check_int(value.initiator_spi, 64, "initiator_spi"),
        _check_int(value.responder_spi, 64, "responder_spi"),
        _check_bool(value.is_initiator, "is_initiator"),
    )


# ha_message.c, identification_encoding_t: packed {u8 type; u8 len; data[len]}. The length
# is ONE byte, unlike chunks.
def _decode_identification(data: bytes, pos: int) -> tuple[Identification, int]:
    """Decode an identification."""
    id_type, size = _take(data, pos, 2, "identification header")
    raw = _take(data, pos + 2, size, "identification data")
    return Identification(id_type, raw), pos + 2 + size


def _skip_identification(data: bytes, pos: int) -> int:
    """Check and pass an identification."""
    _need(data, pos, 2, "identification header")
    return _need(data, pos + 2, data[pos + 1], "identification data")


def _encode_identification(value: object) -> bytes:
    """Encode an identification."""
    if not isinstance(value, Identification):
        raise _wrong_type(value, "Identification")
    if not isinstance(value.data, bytes | bytearray):
        raise EncodeError(f"identification data must be bytes, not {type(value.data).__name__}")
    id_type = _check_int(value.type, 8, "identification type")
    size = _check_int(len(value.data), 8, "identification length")
    return bytes((id_type, size)) + bytes(value.data)


# ha_message.c, host_encoding_t: packed {u16 port; u8 family; address}. The address length
# follows from the family; charon's decoder would also take AF_UNSPEC with exactly 4 or 16
# bytes left, which its encoder never produces, so it is rejected here.
_HOST = struct.Struct(">HB")


def _decode_host(data: bytes, pos: int) -> tuple[Host, int]:
    """Decode a host."""
    port, family = _HOST.unpack(_take(data, pos, _HOST.size, "host header"))
    size = _ADDR_LEN_BY_FAMILY.get(family)
    if size is None:
        raise DecodeFailure(f"unsupported address family {family}", pos + 2)
    raw = _take(data, pos + _HOST.size, size, "host address")
    address: IPAddress = IPv4Address(raw) if size == 4 else IPv6Address(raw)
    return Host(address, port), pos + _HOST.size + size


def _skip_host(data: bytes, pos: int) -> int:
    """Check and pass a host."""
    _need(data, pos, _HOST.size, "host header")
    size = _ADDR_LEN_BY_FAMILY.get(data[pos + 2])
    if size is None:
        raise DecodeFailure(f"unsupported address family {data[pos + 2]}", pos + 2)
    return _need(data, pos + _HOST.size, size, "host address")


def _encode_host(value: object) -> bytes:
    """Encode a host."""
    if not isinstance(value, Host):
        raise _wrong_type(value, "Host")
    packed = _check_address(value.address, "host address")
    return _HOST.pack(_check_int(value.port, 16, "port"), value.family) + packed


# ha_message.c, ts_encoding_t: packed {u8 type; u8 protocol; u16 from_port; u16 to_port; u8
# dynamic; from_address; to_address}. Both addresses are always present (a dynamic selector's
# second one is ignored by charon but kept here for exact round trips).
_TS = struct.Struct(">BBHHB")


def _decode_ts(data: bytes, pos: int) -> tuple[TrafficSelector, int]:
    """Decode a traffic selector."""
    ts_type, proto, from_port, to_port, dyn = _TS.unpack(_take(data, pos, _TS.size, "ts header"))
    size = _ADDR_LEN_BY_TS_TYPE.get(ts_type)
    if size is None:
        raise DecodeFailure(f"unsupported traffic selector type {ts_type}", pos)
    dynamic = _flag(dyn, "dynamic", pos + _TS.size - 1)
    raw = _take(data, pos + _TS.size, 2 * size, "ts addresses")
    cls = IPv4Address if size == 4 else IPv6Address
    ts = TrafficSelector(proto, cls(raw[:size]), cls(raw[size:]), from_port, to_port, dynamic)
    return ts, pos + _TS.size + 2 * size


def _skip_ts(data: bytes, pos: int) -> int:
    """Check and pass a traffic selector."""
    _need(data, pos, _TS.size, "ts header")
    size = _ADDR_LEN_BY_TS_TYPE.get(data[pos])
    if size is None:
        raise DecodeFailure(f"unsupported traffic selector type {data[pos]}", pos)
    _flag(data[pos + _TS.size - 1], "dynamic", pos + _TS.size - 1)
    return _need(data, pos + _TS.size, 2 * size, "ts addresses")


def _encode_ts(value: object) -> bytes:
    """Encode a traffic selector."""
    if not isinstance(value, TrafficSelector):
        raise _wrong_type(value, "TrafficSelector")
    start = _check_address(value.from_address, "from_address")
    end = _check_address(value.to_address, "to_address")
    if len(start) != len(end):
        raise EncodeError("traffic selector addresses must be of the same IP version")
    header = _TS.pack(
        value.ts_type,
        _check_int(value.protocol, 8, "protocol"),
        _check_int(value.from_port, 16, "from_port"),
        _check_int(value.to_port, 16, "to_port"),
        _check_bool(value.dynamic, "dynamic"),
    )
    return header + start + end


U8 = _uint_kind(8)
U16 = _uint_kind(16)
U32 = _uint_kind(32)
CHUNK = Kind("chunk", _decode_chunk, _encode_chunk, _skip_chunk)
STRING = Kind("string", _decode_string, _encode_string, _skip_string)
IKE_SA_ID = Kind("ike_sa_id", _decode_ike_sa_id, _encode_ike_sa_id, _skip_ike_sa_id)
IDENTIFICATION = Kind("identification", _decode_identification, _encode_identification,
                      _skip_identification)
HOST = Kind("host", _decode_host, _encode_host, _skip_host)
TRAFFIC_SELECTOR = Kind("traffic_selector", _decode_ts, _encode_ts, _skip_ts)


def _names(kind: Kind, names: str) -> dict[str, Kind]:
    """Map each whitespace-separated attribute name to `kind`."""
    return dict.fromkeys(names.split(), kind)


# Layout of every attribute name of any version: the case groups of ha_message.c's switch
# (5.9.8; 6.0.1 renames alg_dh to alg_ke and adds add_secret and alg_add_kes as chunks).
KIND_BY_NAME: dict[str, Kind] = {
    **_names(IKE_SA_ID, "ike_id ike_rekey_id"),
    **_names(IDENTIFICATION, "local_id remote_id remote_eap_id"),
    **_names(HOST, "local_addr remote_addr local_vip remote_vip peer_addr"),
    **_names(STRING, "config_name"),
    **_names(U8, "ike_version initiator ipsec_mode ipcomp"),
    **_names(
        U16,
        "alg_dh alg_ke alg_prf alg_old_prf alg_encr alg_encr_len alg_integ inbound_cpi"
        " outbound_cpi segment esn auth_method",
    ),
    **_names(U32, "conditions extensions inbound_spi outbound_spi mid"),
    **_names(
        CHUNK,
        "nonce_i nonce_r secret add_secret local_dh remote_dh psk iv old_skd alg_add_kes",
    ),
    **_names(TRAFFIC_SELECTOR, "local_ts remote_ts"),
}
