"""Read-only, secret-free views of the journal for `hasync sas` and `hasync status`.

Rules: a summary is built from a whitelist of fields (SPIs, addresses, identities, names,
MIDs, ages); nothing here ever copies a nonce, a DH secret, SK_d or a key.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from hasync.ha import Attribute, Host, Identification, child_spi

from .model import (
    _ID_FQDN,
    _ID_IPV4,
    _ID_IPV6,
    _ID_RFC822,
    Key,
    _decode,
    _effective,
    _Lineage,
    _uint,
)


@dataclass(frozen=True, slots=True)
class ChildSummary:
    """A live CHILD_SA: kernel ESP SPIs (hex), config name, mode, age, creating IKE_SA."""

    name: str | None
    inbound_spi: str
    outbound_spi: str | None
    mode: int | None
    age: float
    created_under: str


@dataclass(frozen=True, slots=True)
class IkeSummary:
    """A live IKE_SA without secrets: SPIs, role, endpoints, identities, MIDs, CHILD_SAs."""

    ike_version: int
    initiator_spi: str
    responder_spi: str
    is_initiator: bool
    config_name: str | None
    local_addr: str | None
    remote_addr: str | None
    local_id: str | None
    remote_id: str | None
    remote_vips: tuple[str, ...]
    mid_initiator: int | None
    mid_responder: int | None
    age: float
    rekeys_kept: int
    children: tuple[ChildSummary, ...] = ()


def _spis(key: Key) -> str:
    """IKE SPIs as charon prints them."""
    return f"{key[1]:016x}_i {key[2]:016x}_r"


def _host(attr: list[Attribute] | None) -> str | None:
    """charon's %H form of the last host of a field: address[port]."""
    value = attr[-1].value if attr else None
    return f"{value.address}[{value.port}]" if isinstance(value, Host) else None


def _identity(attr: list[Attribute] | None) -> str | None:
    """A readable identity: addresses and names as text, other types as type:hex."""
    value = attr[-1].value if attr else None
    if not isinstance(value, Identification):
        return None
    if value.type in (_ID_IPV4, _ID_IPV6) and len(value.data) in (4, 16):
        address = IPv4Address(value.data) if len(value.data) == 4 else IPv6Address(value.data)
        return str(address)
    if value.type in (_ID_FQDN, _ID_RFC822):
        return value.data.decode("utf-8", "replace")
    return f"{value.type}:{value.data.hex()}"


def _value(values: Iterable[Any] | None, kind: type) -> Any:
    """The last of `values` if it is of `kind`, or None."""
    values = list(values or ())
    return values[-1] if values and isinstance(values[-1], kind) else None


def summarize(lineage: _Lineage, now: float) -> IkeSummary:
    """Summary of one lineage's live IKE_SA (only whitelisted, non-secret fields)."""
    ike = lineage.ikes[-1]
    state, _ = _effective(ike)
    mids = [_decode(raw) for raw in (ike.mid_i, ike.mid_r)]
    children = []
    for child in lineage.children:
        add = _decode(child.add)
        out = _uint(add.get("outbound_spi")) if add else None
        children.append(
            ChildSummary(
                name=_value(add.get_all("config_name"), str) if add else None,
                inbound_spi=f"{child_spi(child.spi & 0xFFFFFFFF):08x}",
                outbound_spi=None if out is None else f"{child_spi(out & 0xFFFFFFFF):08x}",
                mode=_uint(add.get("ipsec_mode")) if add else None,
                age=max(0.0, now - child.created),
                created_under=_spis(child.origin),
            )
        )
    return IkeSummary(
        ike_version=ike.key[0],
        initiator_spi=f"{ike.key[1]:016x}",
        responder_spi=f"{ike.key[2]:016x}",
        is_initiator=ike.key[3],
        config_name=_value((a.value for a in state.get("config_name", [])), str),
        local_addr=_host(state.get("local_addr")),
        remote_addr=_host(state.get("remote_addr")),
        local_id=_identity(state.get("local_id")),
        remote_id=_identity(state.get("remote_id")),
        remote_vips=tuple(
            str(a.value.address) for a in state.get("remote_vip", []) if isinstance(a.value, Host)
        ),
        mid_initiator=_uint(mids[0].get("mid")) if mids[0] else None,
        mid_responder=_uint(mids[1].get("mid")) if mids[1] else None,
        age=max(0.0, now - ike.created),
        rekeys_kept=len(lineage.ikes) - 1,
        children=tuple(children),
    )

