"""What `JournalState.apply()` does with each journaled message type, as a passive charon would.

Rules: pure (no IO, no clocks); internal to hasync.journal. One handler per message type
(HANDLERS), each following its ha_dispatcher.c process_*() function (strongswan/strongswan
5.9.8, src/libcharon/plugins/ha/ha_dispatcher.c), as the model in `state.py`'s header sets
out. A handler never raises: input it cannot use is counted (`JournalState.count()`) and
ignored. Handlers read of a message only what `state.NEEDED` names for its type (the message
may be decoded lean); the raw datagram is what they keep.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from hasync.ha import (
    Attribute,
    EncodeError,
    HaMessage,
    IkeSaId,
    MalformedMessage,
    MessageType,
    attribute_names,
    encode,
)

from . import rehome
from .model import (
    _Child,
    _compact,
    _decode,
    _effective,
    _Ike,
    _key,
    _last_uint,
    _Lineage,
    _single,
    _update_shape,
)

if TYPE_CHECKING:
    from .state import JournalState

MAX_UPDATES = 32  # per IKE_SA after compaction; upstream sends 1 to 3

# Attribute order of a synthetic IKE_UPDATE (that of ha_ike.c ike_updown(), VIPs added).
_SYNTH_ORDER = ("local_id", "remote_id", "remote_eap_id", "local_addr", "remote_addr")
_SYNTH_ORDER += ("conditions", "extensions", "local_vip", "remote_vip", "config_name", "peer_addr")


def _live(state: JournalState, msg: HaMessage, stored: bool = True,
          first: str = "ike_id") -> tuple[_Lineage, _Ike] | None:
    """The lineage and live IKE_SA a message names, or None (counted); `first` is the
    datagram's first attribute (an IKE_UPDATE's must be its ike_id)."""
    ok, value = _single(msg, "ike_id")
    key = _key(value) if ok else None
    if key is None or first != "ike_id":
        state.count("bad_ike_id")
        return None
    # A datagram kept for replay must name its IKE_SA exactly: with responder SPI 0 it
    # could match another IKE_SA in a charon holding fewer of them.
    if stored and key[2] == 0:
        state.count("zero_responder_spi")
        return None
    found = state.sas.find(key, wildcard=not stored)
    if found is None:
        state.count("unknown_ike_sa")
        return None
    if state.sas.owner[found] != found:
        state.count("retired_ike_sa")
        return None
    lineage = state.sas.lineages[found]
    return lineage, lineage.ikes[-1]


def on_ike_add(state: JournalState, raw: bytes, msg: HaMessage) -> None:
    """IKE_ADD: a new IKE_SA, adopting the one it rekeys (process_ike_add())."""
    ok, ike_id = _single(msg, "ike_id")
    rekey_ok, rekey_id = _single(msg, "ike_rekey_id")
    key, old = _key(ike_id), _key(rekey_id)
    if not ok or key is None or not rekey_ok or (rekey_id is not None and old is None):
        state.count("bad_ike_id")
        return
    if key[2] == 0 or (old is not None and old[2] == 0):
        state.count("zero_responder_spi")
        return
    if key in state.sas.owner:
        state.count("duplicate_ike_sa")
        return
    ike = _Ike(key, raw, state.last_ts)
    lineage = _Lineage([ike])
    found = state.sas.find(old, wildcard=False) if old is not None else None
    if old is not None and (found is None or state.sas.owner[found] != found):
        state.count("rekey_of_unknown_ike_sa" if found is None else "rekey_of_retired_ike_sa")
        ike.add = _strip_rekey(state, raw)
    elif found is not None:
        lineage = state.sas.take(found)
        retired = lineage.ikes[-1]
        retired.mid_i = retired.mid_r = retired.iv = None
        ike.inherited = _inherit(state, retired, ike_id, msg)
        lineage.ikes.append(ike)
    state.sas.adopt(key, lineage)
    _prune(state, lineage)


def _inherit(state: JournalState, old: _Ike, new_id: IkeSaId, add: HaMessage) -> bytes | None:
    """The synthetic IKE_UPDATE for what `old` hands over (ike_sa.c inherit_pre/post())."""
    fields, ok = _effective(old)
    if add.get_all("remote_addr"):
        fields.pop("remote_addr", None)
    attrs = [a for name in _SYNTH_ORDER for a in fields.get(name, [])]
    if not ok:
        state.count("undecodable_raw")
    if not attrs:
        return None
    try:
        return encode(
            HaMessage(add.version, MessageType.IKE_UPDATE, (Attribute("ike_id", new_id), *attrs))
        )
    except EncodeError:
        state.count("unencodable_inherit")
        return None


def _prune(state: JournalState, lineage: _Lineage) -> None:
    """Drop retired IKE_SAs older than the oldest one a live CHILD_SA was created under."""
    if state.sas.prune(lineage):
        lineage.ikes[0].add = _strip_rekey(state, lineage.ikes[0].add)


def _strip_rekey(state: JournalState, raw: bytes) -> bytes:
    """A lineage's first IKE_ADD without ike_rekey_id, as its predecessor is not replayed."""
    # old_skd and alg_old_prf stay, so the keys derive the same (keymat_v2.c
    # derive_ike_keys()); a replay cannot then adopt an unrelated IKE_SA that reuses the
    # predecessor's SPIs.
    msg = _decode(raw)
    if msg is None:
        state.count("undecodable_raw")
        return raw
    kept = tuple(a for a in msg.attributes if a.name != "ike_rekey_id")
    return encode(HaMessage(msg.version, msg.type, kept))


def on_ike_update(state: JournalState, raw: bytes, msg: HaMessage) -> None:
    """IKE_UPDATE: fields of the IKE_SA (process_ike_update(): ike_id must come first).
    The fields' names come from the datagram (`msg` may hold only the ike_id and the
    extensions: NEEDED): as its decode walked them (`msg.wire`, NAMED), else walked again,
    or from `msg` if the datagram does not decode."""
    names = msg.wire
    if names is None:
        try:
            names = attribute_names(raw)
        except MalformedMessage:
            names = msg.names()
    found = _live(state, msg, first=names[0] if names else "")
    if found is None:
        return
    ike = found[1]
    update = _update_shape(names, msg)
    update.raw = raw
    updates = _compact([*ike.updates, update])
    if len(updates) > MAX_UPDATES:
        state.count("too_many_updates")
        return
    state.sas.forget_host(ike.key)
    moves = "remote_addr" in update.fields and bool(found[0].children)
    before = rehome.remote_host(ike) if moves else None
    ike.updates = updates
    if moves and before is not None and rehome.remote_host(ike) != before:
        state.rehomed.append(ike.key)  # its CHILD_SAs sit at the old host (rehome.py)


def on_mid(state: JournalState, raw: bytes, msg: HaMessage) -> None:
    """IKE_MID_INITIATOR/RESPONDER: latest message ID (process_ike_mid() skips 0)."""
    found = _live(state, msg)
    if found is None:
        return
    if not _last_uint(msg, "mid"):
        state.count("zero_mid")
    elif msg.type == MessageType.IKE_MID_INITIATOR:
        found[1].mid_i = raw
    else:
        found[1].mid_r = raw


def on_iv(state: JournalState, raw: bytes, msg: HaMessage) -> None:
    """IKE_IV: latest IKEv1 Phase 1 IV (process_ike_iv() ignores it for IKEv2)."""
    found = _live(state, msg)
    if found is None:
        return
    ivs = msg.get_all("iv")
    if found[1].key[0] != 1:
        state.count("iv_not_ikev1")
    elif not ivs or not isinstance(ivs[-1], bytes) or not ivs[-1]:
        state.count("empty_iv")
    else:
        found[1].iv = raw


def on_ike_delete(state: JournalState, raw: bytes, msg: HaMessage) -> None:
    """IKE_DELETE: the live IKE_SA and its CHILD_SAs go (process_ike_delete())."""
    found = _live(state, msg, stored=False)
    if found is not None:
        state.sas.drop(found[1].key)


def on_child_add(state: JournalState, raw: bytes, msg: HaMessage) -> None:
    """CHILD_ADD: a CHILD_SA under the live IKE_SA it names (process_child_add())."""
    found = _live(state, msg)
    if found is None:
        return
    lineage, ike = found
    spi = _last_uint(msg, "inbound_spi")
    if spi is None:
        state.count("bad_child_spi")
    elif any(child.spi == spi for child in lineage.children):
        state.count("duplicate_child_sa")  # the kernel refuses the second SA
    else:
        state.sas.add_child(lineage, _Child(spi, ike.key, raw, state.last_ts))


def on_child_delete(state: JournalState, raw: bytes, msg: HaMessage) -> None:
    """CHILD_DELETE: by inbound SPI, 0 if absent (process_child_delete())."""
    found = _live(state, msg, stored=False)
    if found is None:
        return
    lineage = found[0]
    spi = _last_uint(msg, "inbound_spi") or 0
    kept = [child for child in lineage.children if child.spi != spi]
    if len(kept) == len(lineage.children):
        state.count("unknown_child_sa")
        return
    state.sas.set_children(lineage, kept)
    _prune(state, lineage)


HANDLERS: dict[int, Callable[[JournalState, bytes, HaMessage], None]] = {
    MessageType.IKE_ADD: on_ike_add,
    MessageType.IKE_UPDATE: on_ike_update,
    MessageType.IKE_MID_INITIATOR: on_mid,
    MessageType.IKE_MID_RESPONDER: on_mid,
    MessageType.IKE_IV: on_iv,
    MessageType.IKE_DELETE: on_ike_delete,
    MessageType.CHILD_ADD: on_child_add,
    MessageType.CHILD_DELETE: on_child_delete,
}
