"""A peer that moved: the IKE_UPDATE that journals its new address, and the datagrams that move
a passive charon's CHILD_SAs there.

Rules: pure (no IO, no clocks); internal to hasync.journal (it reads `JournalState`'s records).
Upstream facts (strongswan src/libcharon/plugins/ha): the ha plugin syncs an IKE_SA's hosts
only when the SA comes up (ha_ike.c ike_updown()); a MOBIKE update or a NAT rebinding on the
active node is never synced. A passive charon applies an IKE_UPDATE's hosts to the IKE_SA
alone (ha_dispatcher.c process_ike_update()); its CHILD_SAs keep the kernel SAs and policies
process_child_add() installed at the IKE_SA's hosts of that time. So:
- the master journals the move itself (`roam_update`): an IKE_UPDATE with the live IKE_SA's
  id and its new remote host, the only fields it sets;
- a mirroring node moves the CHILD_SAs by taking the lineage down and up again in its charon
  (`rehome_plan`): IKE_DELETE of the live IKE_SA (process_ike_delete() destroys it with its
  CHILD_SAs, nothing is sent to the peer), then the lineage's replay, in which every IKE_SA a
  live CHILD_SA was created under gets the live SA's remote host before its CHILD_ADDs
  (`address_fixes`), so process_child_add() installs them at the new address. Same SPIs and
  keys; the sequence guard sets their counters (guard/rules.py `spi_peaks`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hasync.ha import Attribute, EncodeError, HaMessage, Host, MessageType, encode

from .model import Key, _decode, _effective, _Ike, _Lineage

if TYPE_CHECKING:
    from .state import JournalState


def remote_host(ike: _Ike) -> Host | None:
    """The IKE_SA's remote host as a passive charon holds it (IKE_ADD, then IKE_UPDATEs)."""
    state, _ = _effective(ike)
    values = [a.value for a in state.get("remote_addr", []) if isinstance(a.value, Host)]
    return values[-1] if values else None


def _message(ike: _Ike, kind: MessageType, *attrs: Attribute) -> bytes | None:
    """A datagram of `kind` naming `ike` (its IKE_ADD's version and id), then `attrs`; None
    if its IKE_ADD does not decode or the message does not encode."""
    add = _decode(ike.add)
    ike_id = add.get("ike_id") if add is not None else None
    if add is None or ike_id is None:
        return None
    try:
        return encode(HaMessage(add.version, kind, (Attribute("ike_id", ike_id), *attrs)))
    except EncodeError:
        return None


def _update(ike: _Ike, host: Host) -> bytes | None:
    """An IKE_UPDATE that sets `ike`'s remote host to `host`, or None if it cannot be made."""
    return _message(ike, MessageType.IKE_UPDATE, Attribute("remote_addr", host))


def roam_update(state: JournalState, key: Key, host: Host) -> bytes | None:
    """The IKE_UPDATE that journals live IKE_SA `key`'s move to `host`; None if `key` is not
    live, is already there, or has no encodable IKE_ADD."""
    lineage = state.lineage(key)
    if lineage is None:
        return None
    live = lineage.ikes[-1]
    return None if remote_host(live) == host else _update(live, host)


def address_fixes(lineage: _Lineage) -> dict[Key, bytes]:
    """Per retired IKE_SA whose remote address differs from the live SA's, the IKE_UPDATE
    that gives it the live host before its CHILD_ADDs replay (a port alone is left: a rekey
    may float it, and the kernel names SAs by address)."""
    host = remote_host(lineage.ikes[-1])
    if host is None:
        return {}
    fixes: dict[Key, bytes] = {}
    for ike in lineage.ikes[:-1]:
        old = remote_host(ike)
        if (old is None or old.address != host.address) and \
                (raw := _update(ike, host)) is not None:
            fixes[ike.key] = raw
    return fixes


def rehome_plan(state: JournalState, key: Key) -> list[bytes]:
    """Datagrams that move live IKE_SA `key`'s CHILD_SAs in a passive charon to its current
    remote host: IKE_DELETE, then the lineage's replay."""
    lineage = state.lineage(key)
    delete = _message(lineage.ikes[-1], MessageType.IKE_DELETE) if lineage is not None else None
    return [] if lineage is None or delete is None else [delete, *state.lineage_plan(lineage)]
