"""Replay plans: the datagrams that rebuild `JournalState`'s lineages in a passive charon.

Rules: pure (no IO, no clocks); internal to hasync.journal; plans are made only of kept raw
datagrams and of the synthetic ones `rehome.py` makes. Order (ha_cache.c resync() order, then
children; strongswan 5.9.8, src/libcharon/plugins/ha): per lineage in creation order, each
IKE_SA oldest first: IKE_ADD, [inherited], IKE_UPDATEs, MIDs and IV (live SA only), then the
CHILD_ADDs of the live CHILD_SAs created under it in commit order.
"""

from __future__ import annotations

from collections.abc import Iterable

from hasync.ha import Attribute, EncodeError, HaMessage, IkeSaId, MessageType, encode

from . import rehome
from .model import Key, _Ike, _Lineage


def replay_plan(lineages: Iterable[_Lineage], clean: bool = False) -> list[bytes]:
    """Datagrams that rebuild every live IKE_SA and CHILD_SA in a fresh charon, in order;
    `clean`: for a charon that may hold some of them (a restarted hasync, an overflowed feed),
    each lineage's IKE_SAs are deleted first. Fed over a held IKE_SA, an IKE_ADD makes a second
    one with its ID (ha_dispatcher.c process_ike_add, checkout_new) and each CHILD_ADD fails on
    the kernel's SA (ALREADY_DONE), which the lab saw go with it; process_ike_delete() of an
    IKE_SA charon lacks does nothing."""
    plan: list[bytes] = []
    for lineage in lineages:
        if clean:
            plan.extend(raw for ike in lineage.ikes if (raw := ike_delete(ike)) is not None)
        plan.extend(lineage_plan(lineage))
    return plan


def ike_delete(ike: _Ike) -> bytes | None:
    """The IKE_DELETE of `ike`, built from its key and its IKE_ADD's version byte (no decode:
    a plan deletes every IKE_SA of the journal); None if it does not encode. The key keeps
    an IKEv1 SA's role as false, which charon's match ignores (ike_sa_id.c equals())."""
    try:
        return encode(HaMessage(ike.add[0], MessageType.IKE_DELETE,
                                (Attribute("ike_id", IkeSaId(*ike.key)),)))
    except EncodeError:
        return None


def lineage_plan(lineage: _Lineage) -> list[bytes]:
    """One lineage's part of `replay_plan()`; a retired IKE_SA whose peer has moved
    since gets the live SA's remote host before its CHILD_ADDs (rehome.py)."""
    plan: list[bytes] = []
    fixes = rehome.address_fixes(lineage) if len(lineage.ikes) > 1 else {}
    for index, ike in enumerate(lineage.ikes):
        plan.append(ike.add)
        if index == 0 and ike.inherited is not None:
            plan.append(ike.inherited)
        plan.extend(update.raw for update in ike.updates)
        if ike.key in fixes:
            plan.append(fixes[ike.key])
        plan.extend(m for m in (ike.mid_i, ike.mid_r, ike.iv) if m is not None)
        plan.extend(c.add for c in lineage.children if c.origin == ike.key)
    return plan


def jump_plan(before: dict[Key, _Lineage], after: dict[Key, _Lineage]) -> list[bytes]:
    """Datagrams that take a passive charon fed the lineages `before` to `after` (a snapshot
    from the leader installed over it): every IKE_SA of each lineage that changed or went is
    deleted (process_ike_delete() destroys its CHILD_SAs with it), then each lineage that
    changed or came is replayed; a lineage whose replay is the same is left alone."""
    was = {key: lineage_plan(lineage) for key, lineage in before.items()}
    now = {key: lineage_plan(lineage) for key, lineage in after.items()}
    deletes = [raw for key, lineage in before.items() if now.get(key) != was[key]
               for ike in lineage.ikes if (raw := ike_delete(ike)) is not None]
    return deletes + [raw for key, plan in now.items() if was.get(key) != plan
                      for raw in plan]
