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
Its parts: `dispatch.py` applies each message type, `lineages.py` keeps the IKE_SAs,
`plans.py` makes the replays, `snapshot.py` the `to_dict()` form; records in `model.py`.

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
from typing import TYPE_CHECKING, Any

from hasync.ha import Attribute, HaMessage, Host, MessageType, child_spi

from . import plans, rehome, snapshot
from .dispatch import HANDLERS
from .lineages import Lineages
from .model import Key, _decode, _effective, _last_uint, _Lineage

if TYPE_CHECKING:
    from .summary import IkeSummary

_NOT_JOURNALED = frozenset(
    {MessageType.SEGMENT_DROP, MessageType.SEGMENT_TAKE, MessageType.STATUS, MessageType.RESYNC}
)

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
# Types whose every attribute name the apply reads (an IKE_UPDATE's fields): a journal decode
# gives them with its one walk (`HaMessage.wire`), so the apply does not walk the datagram again.
NAMED: frozenset[int] = frozenset({MessageType.IKE_UPDATE})


class JournalState:
    """The IKE_SAs and CHILD_SAs a passive charon holds after the committed HA stream."""

    def __init__(self) -> None:
        self.sas = Lineages()  # the kept IKE_SAs: changed by dispatch.py and from_dict() only
        self.anomalies: dict[str, int] = {}
        self.applied = 0
        self.last_ts = 0.0
        self.rehomed: list[Key] = []  # live IKE_SAs whose remote host moved (take_rehomed())

    def count(self, reason: str) -> None:
        """Count one ignored input."""
        self.anomalies[reason] = self.anomalies.get(reason, 0) + 1

    def apply(self, raw: bytes, msg: HaMessage, ts: float) -> None:
        """Apply one committed ha message; never raises."""
        self.applied += 1
        if isinstance(ts, int | float) and not isinstance(ts, bool) and math.isfinite(ts):
            self.last_ts = float(ts)
        else:
            self.count("bad_ts")
        if (
            not isinstance(raw, bytes | bytearray)
            or not isinstance(msg, HaMessage)
            or not all(isinstance(a, Attribute) for a in msg.attributes)
            or not isinstance(msg.type, int)
            or isinstance(msg.type, bool)
        ):
            self.count("bad_message")
            return
        if msg.type in _NOT_JOURNALED:
            self.count("not_journaled")
            return
        handler = HANDLERS.get(msg.type)
        if handler is None:
            self.count("unknown_type")
            return
        handler(self, bytes(raw), msg)

    def replay_plan(self, clean: bool = False) -> list[bytes]:
        """Datagrams that rebuild every live IKE_SA and CHILD_SA in a fresh charon, in order
        (`clean`: each lineage's IKE_SAs deleted first, plans.py)."""
        return plans.replay_plan(self.sas.lineages.values(), clean)

    def lineage_plan(self, lineage: _Lineage) -> list[bytes]:
        """One lineage's part of `replay_plan()` (plans.py)."""
        return plans.lineage_plan(lineage)

    def jump_plan(self, before: JournalState) -> list[bytes]:
        """Datagrams that take a passive charon fed `before` to this state (a snapshot from
        the leader installed over it; plans.py)."""
        return plans.jump_plan(before.sas.lineages, self.sas.lineages)

    def lineage(self, key: Key) -> _Lineage | None:
        """The lineage of live IKE_SA `key`, if it is live."""
        return self.sas.lineage(key)

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
        return self.sas.remote_host(key)

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

    def freeze(self) -> snapshot.FrozenState:
        """A structural copy that later applies cannot change, cheap enough to take under the
        journal's lock (snapshot.py)."""
        return snapshot.freeze(self.applied, self.last_ts, self.anomalies,
                               self.sas.lineages.values())

    @classmethod
    def from_dict(cls, data: Any) -> JournalState:
        """Restore a snapshot made by to_dict(); raise StateError if it is malformed."""
        state = cls()
        state.applied, state.last_ts, state.anomalies = snapshot.load(data, state.sas.restore)
        return state

    def digest(self) -> str:
        """A short hash of the live IKE_SAs and CHILD_SAs: nodes at one index must agree."""
        h = hashlib.sha256()
        for lineage in self.sas.lineages.values():
            for ike in lineage.ikes:
                h.update(b"I" + repr(ike.key).encode() + ike.add)
                for part in (*(u.raw for u in ike.updates), ike.mid_i, ike.mid_r, ike.iv):
                    h.update(b"U" + (part or b""))
            for child in lineage.children:
                h.update(b"C" + child.spi.to_bytes(8, "big") + child.add)
        return h.hexdigest()[:16]

    def counts(self) -> tuple[int, int]:
        """(live IKE_SAs, live CHILD_SAs), kept as they change (Lineages.children)."""
        return len(self.sas.lineages), self.sas.children

    def responder_mid(self, key: Key) -> bytes | None:
        """The latest IKE_MID_RESPONDER datagram of live IKE_SA `key`, if any (midsync.py)."""
        lineage = self.sas.lineage(key)
        return None if lineage is None else lineage.ikes[-1].mid_r

    def config_names(self) -> set[str]:
        """The peer configs the live IKE_SAs name (charon needs them loaded for a replay)."""
        names: set[str] = set()
        for lineage in self.sas.lineages.values():
            fields, _ = _effective(lineage.ikes[-1])
            names.update(a.value for a in fields.get("config_name", []) if isinstance(a.value, str))
        return names

    def inbound_spis(self) -> set[int]:
        """The live CHILD_SAs' inbound SPIs as the kernel names them (attrs.child_spi)."""
        lineages = self.sas.lineages.values()
        return {child_spi(c.spi & 0xFFFFFFFF) for x in lineages for c in x.children}

    def summaries(self, now: float, start: int = 0,
                  limit: int | None = None) -> list[IkeSummary]:
        """Read-only, secret-free view of the live IKE_SAs for `hasync sas`: all of them, or
        `limit` from position `start` in creation order (a page)."""
        from .summary import summarize  # summary.py builds on this module's types
        end = None if limit is None else start + limit
        page = itertools.islice(self.sas.lineages.values(), start, end)
        return [summarize(lineage, now) for lineage in page]
