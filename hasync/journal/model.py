"""The records the journal keeps per IKE_SA and CHILD_SA, and the IKE_UPDATE arithmetic
(what an update sets, compaction, folding) that `state.py`, `dispatch.py` and `summary.py` share.

Rules: pure (no IO, no clocks); internal to hasync.journal; the upstream behaviour each
function follows is named in its docstring (strongswan 5.9.8, src/libcharon/plugins/ha/
ha_dispatcher.c process_ike_update()).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hasync.ha import Attribute, HaMessage, IkeSaId, MalformedMessage, decode

Key = tuple[int, int, int, bool]

# process_ike_update(): attributes that overwrite a field, and lists a message replaces.
_SET_FIELDS = ("local_id", "remote_id", "local_addr", "remote_addr", "conditions", "config_name")
_LIST_FIELDS = ("local_vip", "remote_vip", "peer_addr")
_ID_IPV4, _ID_FQDN, _ID_RFC822, _ID_IPV6 = 1, 2, 3, 5  # identification.h id_type_t


def _uint(value: object) -> int | None:
    """`value` if it is a non-negative int (not bool), else None."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return value if ok else None  # type: ignore[return-value]


def _key(value: object) -> Key | None:
    """The match key of an ike_sa_id (ike_sa_id.c equals(): IKEv1 ignores the role)."""
    if not isinstance(value, IkeSaId) or not isinstance(value.is_initiator, bool):
        return None
    version = _uint(value.ike_version)
    spi_i, spi_r = _uint(value.initiator_spi), _uint(value.responder_spi)
    if version is None or spi_i is None or spi_r is None:
        return None
    return (version, spi_i, spi_r, value.is_initiator and version != 1)


def _single(msg: HaMessage, name: str) -> tuple[bool, Any]:
    """(ok, value): ok unless `name` occurs more than once; value None if absent."""
    values = msg.get_all(name)
    return len(values) <= 1, (values[0] if values else None)


def _last_uint(msg: HaMessage, name: str) -> int | None:
    """The last `name` value as upstream's loops keep it, if it is a non-negative int."""
    values = msg.get_all(name)
    return _uint(values[-1]) if values else None


@dataclass(slots=True)
class _Update:
    """A kept IKE_UPDATE: its datagram, the fields it sets, extension bits, EAP identity."""

    raw: bytes
    fields: list[str]
    extensions: int
    additive: bool


@dataclass(slots=True)
class _Ike:
    """One IKE_SA of a lineage, live (last) or retired."""

    key: Key
    add: bytes
    created: float
    inherited: bytes | None = None
    updates: list[_Update] = field(default_factory=list)
    mid_i: bytes | None = None
    mid_r: bytes | None = None
    iv: bytes | None = None


@dataclass(slots=True)
class _Child:
    """A live CHILD_SA: inbound SPI (wire value), the IKE_SA it was created under, CHILD_ADD."""

    spi: int
    origin: Key
    add: bytes
    created: float


@dataclass(slots=True)
class _Lineage:
    """A live IKE_SA (last) with the retired IKE_SAs its CHILD_SAs need, and those CHILD_SAs."""

    ikes: list[_Ike]
    children: list[_Child] = field(default_factory=list)


def _update_shape(all_names: tuple[str, ...], msg: HaMessage) -> _Update:
    """What an IKE_UPDATE sets, for compaction (process_ike_update()): from the names of all
    its attributes (the first is its ike_id) and its extensions."""
    names = all_names[1:]
    fields = sorted({n for n in names if n in _SET_FIELDS or n in _LIST_FIELDS})
    extensions = 0
    for value in msg.get_all("extensions"):
        extensions |= _uint(value) or 0
    return _Update(b"", fields, extensions & 0xFFFFFFFF, "remote_eap_id" in names)


def _compact(updates: list[_Update]) -> list[_Update]:
    """Drop updates whose every field later ones overwrite (EAP identities accumulate)."""
    kept: list[_Update] = []
    later: set[str] = set()
    later_ext = 0
    for update in reversed(updates):
        covered = set(update.fields) <= later and not update.extensions & ~later_ext
        if update.additive or not covered:
            kept.append(update)
        later.update(update.fields)
        later_ext |= update.extensions
    return kept[::-1]


def _fold_update(state: dict[str, list[Attribute]], msg: HaMessage) -> None:
    """Apply one IKE_UPDATE's fields to an effective state, as process_ike_update() does."""
    replaced: set[str] = set()
    for attr in msg.attributes[1:]:
        name = attr.name
        if name in _SET_FIELDS:
            state[name] = [attr]
        elif name in _LIST_FIELDS:
            if name not in replaced:
                state[name] = []
                replaced.add(name)
            state[name].append(attr)
        elif name == "remote_eap_id":  # add_auth_cfg() appends
            state.setdefault(name, []).append(attr)
        elif name == "extensions":  # set_extensions() only enables
            old = state.get(name, [Attribute(name, 0)])[0].value
            state[name] = [Attribute(name, old | (_uint(attr.value) or 0))]


def _decode(raw: bytes | None) -> HaMessage | None:
    """Decode a stored datagram, None if absent or undecodable."""
    if raw is None:
        return None
    try:
        return decode(raw)
    except MalformedMessage:
        return None


def _effective(ike: _Ike) -> tuple[dict[str, list[Attribute]], bool]:
    """An IKE_SA's update state: inherited, IKE_ADD's remote_addr, own updates; ok flag."""
    state: dict[str, list[Attribute]] = {}
    inherited, add = _decode(ike.inherited), _decode(ike.add)
    ok = (inherited is not None or ike.inherited is None) and add is not None
    if inherited is not None:
        _fold_update(state, inherited)
    if add is not None and add.get_all("remote_addr"):
        state["remote_addr"] = [Attribute("remote_addr", add.get_all("remote_addr")[-1])]
    for update in ike.updates:
        msg = _decode(update.raw)
        ok = ok and msg is not None
        if msg is not None:
            _fold_update(state, msg)
    return state, ok
