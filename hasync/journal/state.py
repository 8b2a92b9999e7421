"""Pure model of the journaled cluster state: what a passive charon holds after the HA stream.

Rules: `JournalState.apply()` takes each committed ha message with its raw datagram (`msg ==
decode(raw)`) in Raft commit order and does what charon's ha plugin does on a passive node
(strongswan/strongswan 5.9.8, src/libcharon/plugins/ha/ha_dispatcher.c), so that
`replay_plan()` rebuilds the same IKE_SAs and CHILD_SAs in a fresh charon. Pure and
deterministic: no sockets, clocks, logging or randomness (time comes only from `ts`).
`apply()` never raises: input it cannot use is ignored and counted in `anomalies` by reason.
A state restored from `to_dict()` and fed the rest of a stream equals (by `to_dict()`) one
fed the whole stream. Raw datagrams are replayed byte for byte, except one synthetic
IKE_UPDATE per lineage (below). Summaries carry no secret (nonces, DH secrets, SK_d, keys).

Upstream facts (5.9.8) and the model built on them:
- process_ike_add() derives an IKE_SA's keys from its IKE_ADD alone: on an IKE rekey the old
  SA's SK_d travels in it (old_skd, alg_old_prf; ha_ike.c ike_keys()), so the old SA is not
  needed for keys. It is looked up (ike_rekey_id) only to hand over what ike_sa.c
  inherit_pre()/inherit_post() move: peer config, hosts, identities, virtual IPs, peer
  addresses, auth data, conditions, extensions and ALL its CHILD_SAs; then it is destroyed
  at once (if missing, the new SA is created alone). The old SA's IKE_DELETE that follows
  (ike_rekey() -> ike_updown(old, FALSE)) finds nothing.
- process_child_add() derives a CHILD_SA's keys from the SK_d of the IKE_SA named in its
  CHILD_ADD and needs that SA's peer config (find_child_cfg()), hosts and NAT condition: a
  CHILD_SA created under an IKE_SA since rekeyed replays only under that old SA, which the
  lineage's next IKE_ADD then hands over. After a rekey, CHILD_DELETE names the current
  holder (ha_child.c child_state_change()).
- Hence a lineage: the live IKE_SA last, after the rekeyed ("retired") IKE_SAs it descends
  from, back to the oldest one a live CHILD_SA was created under; older ones are pruned after
  every change. What an IKE_SA was handed at its rekey is kept as one synthetic IKE_UPDATE
  (`inherited`: the old SA's effective process_ike_update() fields, minus remote_addr if the
  IKE_ADD has its own, which process_ike_add() sets after inheriting), replayed after the
  IKE_ADD of a lineage's first IKE_SA, whose predecessor a fresh charon lacks; that IKE_ADD
  is kept without its ike_rekey_id (old_skd stays), so each lineage replays on its own.
  Messages naming a retired SA are ignored, as on a passive charon.
- Per IKE_SA: IKE_ADD; its IKE_UPDATEs (all, as ha_cache.c keeps them: sync_vips() in
  ha_ike.c sends partial ones with only virtual IPs), dropping one once later ones overwrite
  all it sets; the latest non-zero IKE_MID_INITIATOR and _RESPONDER (process_ike_mid()
  ignores 0); the latest IKE_IV (IKEv1 only, process_ike_iv()). Per CHILD_SA its CHILD_ADD
  until its CHILD_DELETE (by inbound SPI, ike_sa.c get_child_sa()).
- replay_plan(): per lineage in creation order, each IKE_SA oldest first: IKE_ADD,
  [inherited], IKE_UPDATEs, MIDs and IV (live SA only), then the CHILD_ADDs of the live
  CHILD_SAs created under it in commit order (ha_cache.c resync() order, then children).
- IKE_SAs match as in ike_sa_id.c equals() (version, SPIs, role unless IKEv1); deletes with
  responder SPI 0 match as in ike_sa_manager.c entry_match_by_id(). Refused: a kept message
  naming an IKE_SA with responder SPI 0, any message with more than one ike_id.
- Not modeled: what the stream cannot show (configs missing on the node, failed key
  derivation or kernel installs) and IKEv1 CHILD_SA adoption (adopt_children_job).
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .summary import IkeSummary

from hasync.ha import (
    Attribute,
    EncodeError,
    HaMessage,
    Host,
    IkeSaId,
    MalformedMessage,
    MessageType,
    attribute_names,
    child_spi,
    encode,
)

from . import rehome
from .model import (
    Key,
    _Child,
    _compact,
    _decode,
    _effective,
    _Ike,
    _key,
    _last_uint,
    _Lineage,
    _single,
    _Update,
    _update_shape,
)

SNAPSHOT_FORMAT = 1
MAX_UPDATES = 32  # per IKE_SA after compaction; upstream sends 1 to 3

# Attribute order of a synthetic IKE_UPDATE (that of ha_ike.c ike_updown(), VIPs added).
_SYNTH_ORDER = ("local_id", "remote_id", "remote_eap_id", "local_addr", "remote_addr")
_SYNTH_ORDER += ("conditions", "extensions", "local_vip", "remote_vip", "config_name", "peer_addr")
_NOT_JOURNALED = frozenset(
    {MessageType.SEGMENT_DROP, MessageType.SEGMENT_TAKE, MessageType.STATUS, MessageType.RESYNC}
)


class StateError(ValueError):
    """A snapshot given to JournalState.from_dict() has the wrong shape."""


class JournalState:
    """The IKE_SAs and CHILD_SAs a passive charon holds after the committed HA stream."""

    def __init__(self) -> None:
        self._lineages: dict[Key, _Lineage] = {}  # by live IKE_SA, in creation order
        self._owner: dict[Key, Key] = {}  # every kept IKE_SA -> the live IKE_SA of its lineage
        self.anomalies: dict[str, int] = {}
        self.applied = 0
        self.last_ts = 0.0
        self.rehomed: list[Key] = []  # live IKE_SAs whose remote host moved (take_rehomed())
        self._hosts: dict[Key, Host | None] = {}  # remote_host() cache, by live IKE_SA

    def _count(self, reason: str) -> None:
        """Count one ignored input."""
        self.anomalies[reason] = self.anomalies.get(reason, 0) + 1

    def apply(self, raw: bytes, msg: HaMessage, ts: float) -> None:
        """Apply one committed ha message; never raises."""
        self.applied += 1
        if isinstance(ts, int | float) and not isinstance(ts, bool) and math.isfinite(ts):
            self.last_ts = float(ts)
        else:
            self._count("bad_ts")
        if (
            not isinstance(raw, bytes | bytearray)
            or not isinstance(msg, HaMessage)
            or not all(isinstance(a, Attribute) for a in msg.attributes)
            or not isinstance(msg.type, int)
            or isinstance(msg.type, bool)
        ):
            self._count("bad_message")
            return
        if msg.type in _NOT_JOURNALED:
            self._count("not_journaled")
            return
        handler = _HANDLERS.get(msg.type)
        if handler is None:
            self._count("unknown_type")
            return
        handler(self, bytes(raw), msg)

    def _find(self, key: Key, wildcard: bool) -> Key | None:
        """The kept IKE_SA a lookup finds (ike_sa_manager.c entry_match_by_id())."""
        if key in self._owner:
            return key
        if key[2] != 0 or not wildcard:
            return None
        matches = [k for k in self._owner if (k[0], k[1], k[3]) == (key[0], key[1], key[3])]
        return min(matches) if matches else None

    def _live(self, msg: HaMessage, stored: bool = True,
              first: str = "ike_id") -> tuple[_Lineage, _Ike] | None:
        """The lineage and live IKE_SA a message names, or None (counted); `first` is the
        datagram's first attribute (an IKE_UPDATE's must be its ike_id)."""
        ok, value = _single(msg, "ike_id")
        key = _key(value) if ok else None
        if key is None or first != "ike_id":
            self._count("bad_ike_id")
            return None
        # A datagram kept for replay must name its IKE_SA exactly: with responder SPI 0 it
        # could match another IKE_SA in a charon holding fewer of them.
        if stored and key[2] == 0:
            self._count("zero_responder_spi")
            return None
        found = self._find(key, wildcard=not stored)
        if found is None:
            self._count("unknown_ike_sa")
            return None
        if self._owner[found] != found:
            self._count("retired_ike_sa")
            return None
        lineage = self._lineages[found]
        return lineage, lineage.ikes[-1]

    def _on_ike_add(self, raw: bytes, msg: HaMessage) -> None:
        """IKE_ADD: a new IKE_SA, adopting the one it rekeys (process_ike_add())."""
        ok, ike_id = _single(msg, "ike_id")
        rekey_ok, rekey_id = _single(msg, "ike_rekey_id")
        key, old = _key(ike_id), _key(rekey_id)
        if not ok or key is None or not rekey_ok or (rekey_id is not None and old is None):
            self._count("bad_ike_id")
            return
        if key[2] == 0 or (old is not None and old[2] == 0):
            self._count("zero_responder_spi")
            return
        if key in self._owner:
            self._count("duplicate_ike_sa")
            return
        ike = _Ike(key, raw, self.last_ts)
        lineage = _Lineage([ike])
        found = self._find(old, wildcard=False) if old is not None else None
        if old is not None and (found is None or self._owner[found] != found):
            self._count("rekey_of_unknown_ike_sa" if found is None else "rekey_of_retired_ike_sa")
            ike.add = self._strip_rekey(raw)
        elif found is not None:
            lineage = self._lineages.pop(found)
            retired = lineage.ikes[-1]
            retired.mid_i = retired.mid_r = retired.iv = None
            ike.inherited = self._inherit(retired, ike_id, msg)
            lineage.ikes.append(ike)
        self._lineages[key] = lineage
        for member in lineage.ikes:
            self._owner[member.key] = key
            self._hosts.pop(member.key, None)
        self._prune(lineage)

    def _inherit(self, old: _Ike, new_id: IkeSaId, add: HaMessage) -> bytes | None:
        """The synthetic IKE_UPDATE for what `old` hands over (ike_sa.c inherit_pre/post())."""
        state, ok = _effective(old)
        if add.get_all("remote_addr"):
            state.pop("remote_addr", None)
        attrs = [a for name in _SYNTH_ORDER for a in state.get(name, [])]
        if not ok:
            self._count("undecodable_raw")
        if not attrs:
            return None
        try:
            return encode(
                HaMessage(
                    add.version, MessageType.IKE_UPDATE, (Attribute("ike_id", new_id), *attrs)
                )
            )
        except EncodeError:
            self._count("unencodable_inherit")
            return None

    def _prune(self, lineage: _Lineage) -> None:
        """Drop retired IKE_SAs older than the oldest one a live CHILD_SA was created under."""
        origins = {child.origin for child in lineage.children}
        pruned = False
        while len(lineage.ikes) > 1 and lineage.ikes[0].key not in origins:
            del self._owner[lineage.ikes.pop(0).key]
            pruned = True
        if pruned:
            lineage.ikes[0].add = self._strip_rekey(lineage.ikes[0].add)

    def _strip_rekey(self, raw: bytes) -> bytes:
        """A lineage's first IKE_ADD without ike_rekey_id, as its predecessor is not replayed."""
        # old_skd and alg_old_prf stay, so the keys derive the same (keymat_v2.c
        # derive_ike_keys()); a replay cannot then adopt an unrelated IKE_SA that reuses the
        # predecessor's SPIs.
        msg = _decode(raw)
        if msg is None:
            self._count("undecodable_raw")
            return raw
        kept = tuple(a for a in msg.attributes if a.name != "ike_rekey_id")
        return encode(HaMessage(msg.version, msg.type, kept))

    def _on_ike_update(self, raw: bytes, msg: HaMessage) -> None:
        """IKE_UPDATE: fields of the IKE_SA (process_ike_update(): ike_id must come first).
        The fields' names come from the datagram (`msg` may hold only the ike_id and the
        extensions: NEEDED), or from `msg` if the datagram does not decode."""
        try:
            names = attribute_names(raw)
        except MalformedMessage:
            names = msg.names()
        found = self._live(msg, first=names[0] if names else "")
        if found is None:
            return
        ike = found[1]
        update = _update_shape(names, msg)
        update.raw = raw
        updates = _compact([*ike.updates, update])
        if len(updates) > MAX_UPDATES:
            self._count("too_many_updates")
            return
        self._hosts.pop(ike.key, None)
        moves = "remote_addr" in update.fields and bool(found[0].children)
        before = rehome.remote_host(ike) if moves else None
        ike.updates = updates
        if moves and before is not None and rehome.remote_host(ike) != before:
            self.rehomed.append(ike.key)  # its CHILD_SAs sit at the old host (rehome.py)

    def _on_mid(self, raw: bytes, msg: HaMessage) -> None:
        """IKE_MID_INITIATOR/RESPONDER: latest message ID (process_ike_mid() skips 0)."""
        found = self._live(msg)
        if found is None:
            return
        if not _last_uint(msg, "mid"):
            self._count("zero_mid")
        elif msg.type == MessageType.IKE_MID_INITIATOR:
            found[1].mid_i = raw
        else:
            found[1].mid_r = raw

    def _on_iv(self, raw: bytes, msg: HaMessage) -> None:
        """IKE_IV: latest IKEv1 Phase 1 IV (process_ike_iv() ignores it for IKEv2)."""
        found = self._live(msg)
        if found is None:
            return
        ivs = msg.get_all("iv")
        if found[1].key[0] != 1:
            self._count("iv_not_ikev1")
        elif not ivs or not isinstance(ivs[-1], bytes) or not ivs[-1]:
            self._count("empty_iv")
        else:
            found[1].iv = raw

    def _on_ike_delete(self, raw: bytes, msg: HaMessage) -> None:
        """IKE_DELETE: the live IKE_SA and its CHILD_SAs go (process_ike_delete())."""
        found = self._live(msg, stored=False)
        if found is not None:
            lineage = self._lineages.pop(found[1].key)
            for member in lineage.ikes:
                del self._owner[member.key]
                self._hosts.pop(member.key, None)

    def _on_child_add(self, raw: bytes, msg: HaMessage) -> None:
        """CHILD_ADD: a CHILD_SA under the live IKE_SA it names (process_child_add())."""
        found = self._live(msg)
        if found is None:
            return
        lineage, ike = found
        spi = _last_uint(msg, "inbound_spi")
        if spi is None:
            self._count("bad_child_spi")
        elif any(child.spi == spi for child in lineage.children):
            self._count("duplicate_child_sa")  # the kernel refuses the second SA
        else:
            lineage.children.append(_Child(spi, ike.key, raw, self.last_ts))

    def _on_child_delete(self, raw: bytes, msg: HaMessage) -> None:
        """CHILD_DELETE: by inbound SPI, 0 if absent (process_child_delete())."""
        found = self._live(msg, stored=False)
        if found is None:
            return
        lineage = found[0]
        spi = _last_uint(msg, "inbound_spi") or 0
        kept = [child for child in lineage.children if child.spi != spi]
        if len(kept) == len(lineage.children):
            self._count("unknown_child_sa")
            return
        lineage.children = kept
        self._prune(lineage)

    def replay_plan(self) -> list[bytes]:
        """Datagrams that rebuild every live IKE_SA and CHILD_SA in a fresh charon, in order."""
        plan: list[bytes] = []
        for lineage in self._lineages.values():
            plan.extend(self.lineage_plan(lineage))
        return plan

    def lineage_plan(self, lineage: _Lineage) -> list[bytes]:
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

    def jump_plan(self, before: JournalState) -> list[bytes]:
        """Datagrams that take a passive charon fed `before` to this state (a snapshot from
        the leader installed over it): every IKE_SA of each lineage that changed or went is
        deleted (process_ike_delete() destroys its CHILD_SAs with it), then each lineage that
        changed or came is replayed; a lineage whose replay is the same is left alone."""
        was = {key: before.lineage_plan(lineage) for key, lineage in before._lineages.items()}
        now = {key: self.lineage_plan(lineage) for key, lineage in self._lineages.items()}
        deletes = [raw for key, lineage in before._lineages.items() if now.get(key) != was[key]
                   for ike in lineage.ikes
                   if (raw := rehome._message(ike, MessageType.IKE_DELETE)) is not None]
        return deletes + [raw for key, plan in now.items() if was.get(key) != plan
                          for raw in plan]

    def lineage(self, key: Key) -> _Lineage | None:
        """The lineage of live IKE_SA `key`, if it is live."""
        return self._lineages.get(key) if self._owner.get(key) == key else None

    def take_rehomed(self) -> list[bytes]:
        """Datagrams that move the CHILD_SAs of IKE_SAs whose peer moved since the last call
        to their new host in a passive charon (rehome.py); empty if none moved."""
        out: list[bytes] = []
        for key in dict.fromkeys(self.rehomed):
            out += rehome.rehome_plan(self, key)
        self.rehomed.clear()
        return out

    def remote_host(self, key: Key) -> Host | None:
        """Live IKE_SA `key`'s remote host as a passive charon holds it."""
        if key in self._hosts:
            return self._hosts[key]
        lineage = self.lineage(key)
        if lineage is None:
            return None
        host = self._hosts[key] = rehome.remote_host(lineage.ikes[-1])
        return host

    def roam_update(self, key: Key, host: Host) -> bytes | None:
        """The IKE_UPDATE that journals live IKE_SA `key`'s move to `host` (rehome.py)."""
        return rehome.roam_update(self, key, host)

    def outbound_spis(self, key: Key) -> set[int]:
        """Live IKE_SA `key`'s CHILD_SAs' outbound SPIs as the kernel names them."""
        lineage = self.lineage(key)
        spis: set[int] = set()
        for child in lineage.children if lineage is not None else ():
            msg = _decode(child.add)
            value = _last_uint(msg, "outbound_spi") if msg is not None else None
            if value is not None:
                spis.add(child_spi(value & 0xFFFFFFFF))
        return spis

    def to_dict(self) -> dict[str, Any]:
        """A msgpack-friendly snapshot (lists, dicts, ints, floats, str, bytes, None)."""
        return self.freeze().to_dict()

    def freeze(self) -> FrozenState:
        """A structural copy that later applies cannot change, cheap enough to take under the
        journal's lock (issue 17 finding 6): stored _Update and _Child objects are never
        mutated, so they are shared; _Ike fields and the lists that change are copied."""
        lineages = [([(i.key, i.add, i.created, i.inherited, tuple(i.updates), i.mid_i, i.mid_r,
                       i.iv) for i in lin.ikes], tuple(lin.children))
                    for lin in self._lineages.values()]
        return FrozenState(self.applied, self.last_ts, dict(self.anomalies), lineages)

    @classmethod
    def from_dict(cls, data: Any) -> JournalState:
        """Restore a snapshot made by to_dict(); raise StateError if it is malformed."""
        state = cls()
        try:
            if data["format"] != SNAPSHOT_FORMAT:
                raise StateError(f"unknown snapshot format {data['format']!r}")
            state.applied = _check(data["applied"], int)
            state.last_ts = _check(data["last_ts"], float)
            anomalies = _check(data["anomalies"], dict)
            state.anomalies = {_check(k, str): _check(v, int) for k, v in anomalies.items()}
            for item in _check(data["lineages"], list):
                ikes, children = _typed(item, (list, list))
                state._restore(
                    [_Ike(*_typed(i, _IKE_KINDS)) for i in ikes],
                    [_Child(*_typed(c, _CHILD_KINDS)) for c in children],
                )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, StateError):
                raise
            raise StateError(f"malformed snapshot: {exc!r}") from None
        return state

    def _restore(self, ikes: list[_Ike], children: list[_Child]) -> None:
        """Add one restored lineage, checking it is consistent."""
        keys = [ike.key for ike in ikes]
        if not ikes or len(set(keys)) != len(keys) or any(k in self._owner for k in keys):
            raise StateError("snapshot lineage empty or with a repeated IKE_SA")
        if any(child.origin not in keys for child in children):
            raise StateError("snapshot CHILD_SA created under an IKE_SA not in its lineage")
        self._lineages[keys[-1]] = _Lineage(ikes, children)
        self._owner.update(dict.fromkeys(keys, keys[-1]))

    def digest(self) -> str:
        """A short hash of the live IKE_SAs and CHILD_SAs: nodes at one index must agree."""
        h = hashlib.sha256()
        for lineage in self._lineages.values():
            for ike in lineage.ikes:
                h.update(b"I" + repr(ike.key).encode() + ike.add)
                for part in (*(u.raw for u in ike.updates), ike.mid_i, ike.mid_r, ike.iv):
                    h.update(b"U" + (part or b""))
            for child in lineage.children:
                h.update(b"C" + child.spi.to_bytes(8, "big") + child.add)
        return h.hexdigest()[:16]

    def counts(self) -> tuple[int, int]:
        """(live IKE_SAs, live CHILD_SAs), without building summaries."""
        return len(self._lineages), sum(len(x.children) for x in self._lineages.values())

    def responder_mid(self, key: Key) -> bytes | None:
        """The latest IKE_MID_RESPONDER datagram of live IKE_SA `key`, if any (midsync.py)."""
        if self._owner.get(key) != key:
            return None
        return self._lineages[key].ikes[-1].mid_r

    def config_names(self) -> set[str]:
        """The peer configs the live IKE_SAs name (charon needs them loaded for a replay)."""
        names: set[str] = set()
        for lineage in self._lineages.values():
            state, _ = _effective(lineage.ikes[-1])
            names.update(a.value for a in state.get("config_name", []) if isinstance(a.value, str))
        return names

    def inbound_spis(self) -> set[int]:
        """The live CHILD_SAs' inbound SPIs as the kernel names them (attrs.child_spi)."""
        return {child_spi(c.spi & 0xFFFFFFFF) for x in self._lineages.values() for c in x.children}

    def summaries(self, now: float, start: int = 0,
                  limit: int | None = None) -> list[IkeSummary]:
        """Read-only, secret-free view of the live IKE_SAs for `hasync sas`: all of them, or
        `limit` from position `start` in creation order (a page)."""
        from .summary import summarize  # summary.py builds on this module's types
        end = None if limit is None else start + limit
        page = itertools.islice(self._lineages.values(), start, end)
        return [summarize(lineage, now) for lineage in page]


@dataclass(frozen=True, slots=True)
class FrozenState:
    """`JournalState.freeze()`: what `to_dict()` formats, outside the lock if need be."""

    applied: int
    last_ts: float
    anomalies: dict[str, int]
    lineages: list[tuple[list[tuple[Any, ...]], tuple[_Child, ...]]]  # never mutated

    def to_dict(self) -> dict[str, Any]:
        """`JournalState.to_dict()` of the state as it was when frozen."""
        return {
            "format": SNAPSHOT_FORMAT,
            "applied": self.applied,
            "last_ts": self.last_ts,
            "anomalies": dict(sorted(self.anomalies.items())),
            "lineages": [
                [[_ike_to_list(i) for i in ikes], [_child_to_list(c) for c in children]]
                for ikes, children in self.lineages
            ],
        }


_HANDLERS: dict[int, Callable[[JournalState, bytes, HaMessage], None]] = {
    MessageType.IKE_ADD: JournalState._on_ike_add,
    MessageType.IKE_UPDATE: JournalState._on_ike_update,
    MessageType.IKE_MID_INITIATOR: JournalState._on_mid,
    MessageType.IKE_MID_RESPONDER: JournalState._on_mid,
    MessageType.IKE_IV: JournalState._on_iv,
    MessageType.IKE_DELETE: JournalState._on_ike_delete,
    MessageType.CHILD_ADD: JournalState._on_child_add,
    MessageType.CHILD_DELETE: JournalState._on_child_delete,
}

# What `apply()` and the journal's readers (journalio.py: ike_id and inbound_spi of the MID
# types) read of each message type; hasync.ha.decode_only() skips the rest (nonces, keys,
# proposals, selectors stay bytes in `raw`; an IKE_UPDATE's fields are read from `raw` when
# it is kept or folded). A type not named here is decoded whole.
NEEDED: dict[int, frozenset[str]] = {
    MessageType.IKE_ADD: frozenset({"ike_id", "ike_rekey_id", "remote_addr"}),
    MessageType.IKE_UPDATE: frozenset({"ike_id", "extensions"}),
    MessageType.IKE_MID_INITIATOR: frozenset({"ike_id", "mid"}),
    MessageType.IKE_MID_RESPONDER: frozenset({"ike_id", "mid"}),
    MessageType.IKE_IV: frozenset({"ike_id", "iv"}),
    MessageType.IKE_DELETE: frozenset({"ike_id"}),
    MessageType.CHILD_ADD: frozenset({"ike_id", "inbound_spi"}),
    MessageType.CHILD_DELETE: frozenset({"ike_id", "inbound_spi"}),
}


def _check(value: Any, kind: type) -> Any:
    """`value` if it is exactly of `kind` (bool is not int), else StateError."""
    if type(value) is not kind:
        raise StateError(f"expected {kind.__name__}, got {type(value).__name__}")
    return value


def _typed(value: Any, kinds: tuple[Any, ...]) -> list[Any]:
    """Check a snapshot list item by item: each kind is a type or a converter."""
    items = _check(value, list)
    if len(items) != len(kinds):
        raise StateError(f"expected {len(kinds)} items, got {len(items)}")
    return [
        _check(v, k) if isinstance(k, type) else k(v) for v, k in zip(items, kinds, strict=True)
    ]


def _opt_bytes(value: Any) -> bytes | None:
    """A snapshot's optional datagram."""
    return None if value is None else _check(value, bytes)


def _key_from(value: Any) -> Key:
    """A Key from its snapshot list."""
    version, spi_i, spi_r, initiator = _typed(value, (int, int, int, bool))
    return (version, spi_i, spi_r, initiator)


def _updates_from(value: Any) -> list[_Update]:
    """Kept IKE_UPDATEs from their snapshot lists."""
    names = lambda v: [_check(n, str) for n in _check(v, list)]  # noqa: E731
    return [_Update(*_typed(u, (bytes, names, int, bool))) for u in _check(value, list)]


_IKE_KINDS = (
    _key_from,
    bytes,
    float,
    _opt_bytes,
    _updates_from,
    _opt_bytes,
    _opt_bytes,
    _opt_bytes,
)
_CHILD_KINDS = (int, _key_from, bytes, float)


def _ike_to_list(ike: tuple[Any, ...]) -> list[Any]:
    """Snapshot form of one frozen IKE_SA (`JournalState.freeze()`), in _Ike field order."""
    key, add, created, inherited, updates, mid_i, mid_r, iv = ike
    ups = [[u.raw, list(u.fields), u.extensions, u.additive] for u in updates]
    return [list(key), add, created, inherited, ups, mid_i, mid_r, iv]


def _child_to_list(child: _Child) -> list[Any]:
    """Snapshot form of one CHILD_SA, in _Child field order."""
    return [child.spi, list(child.origin), child.add, child.created]
