"""A new master's responder message IDs, set from what the clients show (issue 18, in-flight
exchanges).

The problem (strongswan 5.9.8): charon's ha plugin syncs IKE_MID_RESPONDER = n + 1 when a
request n arrives (ha_ike.c message_hook(), before the response is built), and a new master's
charon holds no cached response (task_manager_v2.c is_retransmit(): a retransmit of n without
one is ignored). A client whose response the old master never delivered retransmits n until
it gives up and re-authenticates. RFC 6311 MID sync cannot help: a strongSwan responder never
sends IKEV2_MESSAGE_ID_SYNC_SUPPORTED (ike_auth.c build_i() only), so a strongSwan client
ignores the sync (ike_mid_sync.c pre_process()).

What hasync does instead, on the master only, per IKE_SA whose responder MID this node's
charon has not moved since the promotion (it then holds the response itself):
- at the promotion, the IKE_SAs whose responder MID was journaled within RECENT_S of the last
  entry (by the batches' sender time: a node catching up replays old entries with their own
  times), the exchanges the old master may have left in flight, get J - 1, J being the
  journal's value: the client's retransmit of request J - 1 is then processed again; unless
  that request created CHILD_SAs (a CHILD rekey or creation): those wait for the client;
- later, a request the client sends with J - 1 or J (seen by ikesniff.py) sets charon to that
  value if it is not already there: a wrong guess costs the client one retransmission. A
  request up to AHEAD past J does too: the old master answered the requests before it while
  their IKE_MID_RESPONDERs never reached the journal (its hasync was down: charon's datagrams
  went nowhere), and charon would ignore it as a retransmit ("received message ID 5, expected
  4, ignored" in the lab's `restart` fault) until the client gives up. A
  retransmit of J - 1 first deletes the CHILD_SAs the lost request created on the old master
  (an HA CHILD_DELETE to charon, and the same datagram journaled), then rewinds: the retransmission
  carries the client's SPI again, and a CHILD_SA re-created beside the orphan would collide
  with its outbound SA (the kernel refuses it, ALREADY_DONE, on every backup), while a passive
  charon installs a CHILD_ADD's outbound SA at once (ha_dispatcher.c process_child_add()).
charon is set through an HA IKE_MID_RESPONDER datagram (ha_dispatcher.c process_ike_mid()
applies it to any IKE_SA, active ones included; ike_sa.c set_message_id() resets its tasks).
Never below 2: request 1 is IKE_AUTH, which an established IKE_SA cannot process again.

Rules: pure (time comes as `now`), no IO, no logging; counters by name for `hasync status`.
"""

from __future__ import annotations

import itertools
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from .ha import Attribute, HaMessage, IkeSaId, MessageType, decode, encode
from .ha.errors import MalformedMessage

Key = tuple[int, int, int, bool]  # journal/model.py's key: version, SPIs, our role
RECENT_S = 2.0  # applied this close to the old master's last MID: maybe in flight
RECENT_MAX = 200_000  # keys remembered at most within RECENT_S (memory bound; oldest go first)
MIN_MID = 2  # never rewind to 1 (IKE_AUTH)
AHEAD = 4  # a request this far past the journal's MID is followed (a bound on a forged one)
COUNTED = ("mid_sync:rewound_at_promotion", "mid_sync:rewound", "mid_sync:restored",
           "mid_sync:advanced", "mid_sync:orphans_deleted")


def key_of(ike_id: object) -> Key | None:
    """The journal key of an IkeSaId (ike_sa_id.c equals(); IKEv1 ignores the role)."""
    if not isinstance(ike_id, IkeSaId):
        return None
    return (ike_id.ike_version, ike_id.initiator_spi, ike_id.responder_spi,
            ike_id.is_initiator and ike_id.ike_version != 1)


def request_key(spi_i: int, spi_r: int, from_initiator: bool) -> Key:
    """The gateway's key of an IKEv2 request: we are the initiator if the client is not."""
    return (2, spi_i, spi_r, not from_initiator)


def mid_of(raw: bytes) -> tuple[Key, int, HaMessage] | None:
    """(key, mid, message) of an IKE_MID_RESPONDER datagram, or None."""
    try:
        msg = decode(raw)
    except MalformedMessage:
        return None
    if msg.type != MessageType.IKE_MID_RESPONDER:
        return None
    key, mids = key_of(msg.get("ike_id")), msg.get_all("mid")
    if key is None or not mids or not isinstance(mids[-1], int):
        return None
    return key, mids[-1], msg


def with_mid(msg: HaMessage, mid: int) -> bytes:
    """The same IKE_MID_RESPONDER datagram carrying `mid` instead."""
    attrs = tuple(Attribute(a.name, mid) if a.name == "mid" else a for a in msg.attributes)
    return encode(HaMessage(msg.version, msg.type, attrs))


Applied = tuple[Key, "bytes | int"]  # an IKE_MID_RESPONDER datagram, or a CHILD_ADD's inbound_spi


@dataclass
class _Recent:
    """An IKE_SA's last applied responder MID and the CHILD_SAs applied after it."""

    t: float
    raw: bytes
    children: list[int] = field(default_factory=list)  # CHILD_ADD inbound_spi values


def child_delete(msg: HaMessage, inbound_spi: int) -> bytes:
    """A CHILD_DELETE for the IKE_SA `msg` (an IKE_MID_RESPONDER) names (ha_child.c)."""
    return encode(HaMessage.build(msg.version, MessageType.CHILD_DELETE,
                                  ("ike_id", msg.get("ike_id")), ("inbound_spi", inbound_spi)))


@dataclass
class MidSync:
    """Which responder MID each IKE_SA's charon should hold on a new master."""

    active: bool = False  # this node is master
    # in apply order; an OrderedDict finds its oldest in O(1), where a dict whose front was
    # deleted scans the deleted slots on every next(iter()) until it resizes (D272)
    recent: OrderedDict[Key, _Recent] = field(default_factory=OrderedDict)
    newest: float = 0.0  # the sender time of the last batch applied here
    touched: set[Key] = field(default_factory=set)  # charon moved them since the promotion
    told: dict[Key, int] = field(default_factory=dict)  # what hasync set charon to
    orphans: dict[Key, list[int]] = field(default_factory=dict)  # created by a rewound request
    counters: Counter[str] = field(default_factory=Counter)

    def applied(self, items: list[Applied], now: float) -> None:
        """A committed batch applied on this (mirroring) node, sent at `now` (its sender's
        clock): the IKE_MID_RESPONDERs and CHILD_ADDs in it, in order, with their keys."""
        if self.active:
            return
        self.newest = now
        for key, item in items:
            if isinstance(item, bytes):  # a new request: what came before it is answered
                self.recent[key] = _Recent(now, item)
                self.recent.move_to_end(key)  # the order is apply order
            elif key in self.recent:  # created while processing that request
                self.recent[key].children.append(item)
        for key in list(itertools.islice(self.recent, max(0, len(self.recent) - RECENT_MAX))):
            del self.recent[key]  # the memory bound
        while self.recent:  # only the last RECENT_S can matter at a promotion
            first = next(iter(self.recent))
            if self.recent[first].t >= now - RECENT_S:
                break
            del self.recent[first]

    def promoted(self) -> list[bytes]:
        """This node became master: the rewinds of the exchanges that may be in flight."""
        self.active, self.touched, self.told, self.orphans = True, set(), {}, {}
        out = []
        for key, r in self.recent.items():
            found = mid_of(r.raw) if r.t >= self.newest - RECENT_S else None
            if found is None or found[1] - 1 < MIN_MID:
                continue
            if r.children:  # a CHILD_SA may be an orphan: wait for the client to tell
                self.orphans[key] = r.children
            else:
                self.told[key] = found[1] - 1
                out.append(with_mid(found[2], found[1] - 1))
        self.recent.clear()
        self.counters["mid_sync:rewound_at_promotion"] += len(out)
        return out

    def demoted(self) -> None:
        """No longer master: charon is passive again and the journal leads."""
        self.active, self.touched, self.told, self.orphans = False, set(), {}, {}

    def charon_moved(self, key: Key) -> None:
        """The local charon synced a responder MID for this IKE_SA: it holds the response
        from now on (and any orphan was deleted before it processed the request again)."""
        if self.active:
            self.touched.add(key)
            self.told.pop(key, None)
            self.orphans.pop(key, None)

    def request(self, key: Key, mid: int, journal_raw: bytes | None
                ) -> tuple[list[bytes], bytes | None]:
        """A client's request `mid` on IKE_SA `key`: (CHILD_DELETEs of orphans, the datagram
        that sets charon's responder MID), either empty.

        A retransmit of J - 1 proves the old master's response was lost: the CHILD_SAs that
        request created (known for the IKE_SAs applied just before the promotion) are orphans
        the client never knew. They go before the rewind, to charon and to the journal (a
        passive charon deletes without syncing, ha_child.c child_state_change()). A request J
        proves the response arrived: the children were real."""
        if not self.active or journal_raw is None or key in self.touched:
            return [], None
        found = mid_of(journal_raw)
        if found is None or not found[1] - 1 <= mid <= found[1] + AHEAD or mid < MIN_MID:
            return [], None
        lost = mid < found[1]
        gone = self.orphans.pop(key, [])
        deletes = [child_delete(found[2], spi) for spi in gone] if lost else []
        self.counters["mid_sync:orphans_deleted"] += len(deletes)
        if self.told.get(key, found[1]) == mid:
            return deletes, None
        self.told[key] = mid
        self.counters["mid_sync:" + ("rewound" if lost else "restored" if mid == found[1]
                                     else "advanced")] += 1
        return deletes, with_mid(found[2], mid)
