"""Sans-IO decode/encode of charon ha plugin datagrams (UDP port 4510) as `HaMessage`.

Rules: a datagram is u8 version, u8 message type, then attributes back to back, each a u8
attribute number followed by a layout fixed by that number (not TLV: an unknown number
stops decoding), as in strongswan/strongswan src/libcharon/plugins/ha/ha_message.c
(ha_message_parse() and attribute_enumerate(); tags 5.9.8, 6.0.1, 6.0.2); every
input that is not a whole valid datagram raises `MalformedMessage`, every unencodable
message `EncodeError`; attribute order and repeats are kept so that
`encode(decode(x)) == x`; pure functions over bytes, no sockets, clocks or logging.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hasync.ha.attrs import KIND_BY_NAME, DecodeFailure, Kind, Value
from hasync.ha.enums import ATTRIBUTES_BY_VERSION, MessageType
from hasync.ha.errors import EncodeError, MalformedMessage

HEADER_SIZE = 2
_INT_SIZES = {"u8": 1, "u16": 2, "u32": 4}  # fixed layouts whose every value is valid


@dataclass(frozen=True, slots=True)
class AttrSpec:
    """One row of a version's attribute table: wire number, name and value layout."""

    number: int
    name: str
    kind: Kind


def _build_table(version: int) -> dict[int, AttrSpec]:
    """Attribute table of one protocol version: number -> (name, layout codec)."""
    return {
        member.value: AttrSpec(member.value, name, KIND_BY_NAME[name])
        for member in ATTRIBUTES_BY_VERSION[version]
        for name in (member.name.lower(),)
    }


TABLES: dict[int, dict[int, AttrSpec]] = {v: _build_table(v) for v in ATTRIBUTES_BY_VERSION}
_BY_NAME: dict[int, dict[str, AttrSpec]] = {
    version: {spec.name: spec for spec in table.values()} for version, table in TABLES.items()
}
_CHUNK = -2  # a _STEPS size: a chunk (u16 length, then that many bytes; ha_message.c chunk_t)
# decode_only()'s rows: number -> (name, size of an integer layout, _CHUNK, or 0, layout).
_STEPS: dict[int, dict[int, tuple[str, int, Kind]]] = {
    version: {n: (spec.name, _CHUNK if spec.kind.name == "chunk" else
                  _INT_SIZES.get(spec.kind.name, 0), spec.kind)
              for n, spec in table.items()}
    for version, table in TABLES.items()
}
_ALL_NAMES = {v: frozenset(spec.name for spec in table.values()) for v, table in TABLES.items()}
SUPPORTED_VERSIONS: tuple[int, ...] = tuple(sorted(TABLES))
LATEST_VERSION = max(SUPPORTED_VERSIONS)
_MESSAGE_TYPES = frozenset(int(t) for t in MessageType)


@dataclass(frozen=True, slots=True)
class Attribute:
    """One attribute of a message: its lower-case upstream name and typed value."""

    name: str
    value: Value


@dataclass(frozen=True, slots=True)
class HaMessage:
    """A decoded ha datagram: protocol version, message type and attributes in wire order."""

    version: int
    type: MessageType
    attributes: tuple[Attribute, ...] = ()
    # every attribute name of the datagram in wire order, when a lean decode was asked for
    # them (`decode_only(..., named)`); not part of the message's value
    wire: tuple[str, ...] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.attributes, tuple):
            object.__setattr__(self, "attributes", tuple(self.attributes))

    @classmethod
    def build(cls, version: int, type: MessageType, *pairs: tuple[str, Value]) -> HaMessage:
        """Build a message from (name, value) pairs."""
        return cls(version, type, tuple(Attribute(name, value) for name, value in pairs))

    def get(self, name: str, default: Any = None) -> Any:
        """Value of the first attribute called `name`, or `default`."""
        for attribute in self.attributes:
            if attribute.name == name:
                return attribute.value
        return default

    def get_all(self, name: str) -> tuple[Any, ...]:
        """Values of every attribute called `name`, in wire order."""
        return tuple(a.value for a in self.attributes if a.name == name)

    def names(self) -> tuple[str, ...]:
        """Attribute names in wire order."""
        return tuple(a.name for a in self.attributes)


def decode(data: bytes | bytearray | memoryview) -> HaMessage:
    """Decode one datagram; raise MalformedMessage unless all of it is a valid message."""
    buf = bytes(data)
    if len(buf) < HEADER_SIZE:
        raise MalformedMessage("datagram shorter than the 2-byte header", offset=len(buf))
    table = TABLES.get(buf[0])
    if table is None:
        raise MalformedMessage(f"unsupported protocol version {buf[0]}", offset=0)
    try:
        msg_type = MessageType(buf[1])
    except ValueError:
        raise MalformedMessage(f"unknown message type {buf[1]}", offset=1) from None
    return HaMessage(buf[0], msg_type, tuple(_walk(buf, _ALL_NAMES[buf[0]], None)))


def decode_only(data: bytes | bytearray | memoryview,
                wanted: Mapping[int, frozenset[str]],
                named: frozenset[int] = frozenset()) -> HaMessage:
    """Decode one datagram keeping only the attributes `wanted[type]` names (all of them for
    a type not in `wanted`); the others are checked as `decode` checks them and skipped, so
    this raises exactly when `decode` does, and its attributes are the wanted subsequence of
    `decode`'s. For a type in `named` the message's `wire` holds every attribute name, as
    `attribute_names` gives them, from the same walk."""
    buf = bytes(data)
    if len(buf) < HEADER_SIZE or buf[0] not in TABLES or buf[1] not in wanted:
        return decode(buf)
    if buf[1] not in named:
        return HaMessage(buf[0], MessageType(buf[1]), tuple(_walk(buf, wanted[buf[1]], None)))
    names: list[str] = []
    kept = tuple(_walk(buf, wanted[buf[1]], names))
    return HaMessage(buf[0], MessageType(buf[1]), kept, tuple(names))


def attribute_names(data: bytes | bytearray | memoryview) -> tuple[str, ...]:
    """The names of a datagram's attributes in wire order, building no value; raises exactly
    when `decode` does."""
    buf = bytes(data)
    if len(buf) < HEADER_SIZE or buf[0] not in TABLES or buf[1] not in _MESSAGE_TYPES:
        decode(buf)  # raises the header's MalformedMessage
    names: list[str] = []
    _walk(buf, frozenset(), names)
    return tuple(names)


def _walk(buf: bytes, keep: frozenset[str], names: list[str] | None) -> list[Attribute]:
    """The attributes after the header that `keep` names, each other one checked and
    skipped; every name goes to `names` if given."""
    steps = _STEPS[buf[0]]
    out: list[Attribute] = []
    pos, end = HEADER_SIZE, len(buf)
    while pos < end:
        step = steps.get(buf[pos])
        if step is None:
            raise MalformedMessage(f"unknown attribute {buf[pos]} in version {buf[0]}",
                                   attribute=buf[pos], offset=pos)
        name, size, kind = step
        if names is not None:
            names.append(name)
        if size and name not in keep:
            if size > 0 and pos + 1 + size <= end:
                pos += 1 + size  # a whole integer: nothing to check
                continue
            if size == _CHUNK and pos + 3 <= end:
                after = pos + 3 + ((buf[pos + 1] << 8) | buf[pos + 2])
                if after <= end:
                    pos = after  # a whole chunk: nothing else to check
                    continue
        try:
            if name in keep:
                value, pos = kind.decode(buf, pos + 1)
                out.append(Attribute(name, value))
            else:
                pos = kind.skip(buf, pos + 1)
        except DecodeFailure as exc:
            raise MalformedMessage(exc.reason, attribute=name, offset=exc.offset) from None
    return out


def encode(msg: HaMessage) -> bytes:
    """Encode a message; raise EncodeError if it does not fit its version's table."""
    if not isinstance(msg, HaMessage):
        raise EncodeError(f"expected HaMessage, not {type(msg).__name__}")
    by_name = _BY_NAME.get(msg.version) if _is_int(msg.version) else None
    if by_name is None:
        raise EncodeError(f"unsupported protocol version {msg.version!r}")
    if not _is_int(msg.type) or msg.type not in _MESSAGE_TYPES:
        raise EncodeError(f"unknown message type {msg.type!r}")
    msg_type = MessageType(msg.type)
    out = bytearray((msg.version, msg_type))
    for index, attribute in enumerate(msg.attributes):
        out += _encode_attribute(by_name, index, attribute, msg.version)
    return bytes(out)


def _is_int(value: object) -> bool:
    """True for ints (including IntEnum members) but not bools."""
    return isinstance(value, int) and not isinstance(value, bool)


def _encode_attribute(
    by_name: dict[str, AttrSpec], index: int, attribute: object, version: int
) -> bytes:
    """Encode one attribute: its number, then its value in its layout."""
    if not isinstance(attribute, Attribute):
        raise EncodeError(f"attribute #{index} is {type(attribute).__name__}, not Attribute")
    spec = by_name.get(attribute.name)
    if spec is None:
        raise EncodeError(f"attribute {attribute.name!r} does not exist in version {version}")
    try:
        return bytes((spec.number,)) + spec.kind.encode(attribute.value)
    except EncodeError as exc:
        raise EncodeError(f"attribute {attribute.name!r} (#{index}): {exc}") from None
