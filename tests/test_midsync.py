"""midsync.py: a new master's responder message IDs, from the journal's recent requests and
from what clients send, with charon's real IKE_MID_RESPONDER datagram (tests/data/ha)."""

from __future__ import annotations

import dataclasses

from hasync.ha import Attribute, IkeSaId, MessageType, decode, encode
from hasync.midsync import (
    AHEAD,
    RECENT_S,
    MidSync,
    child_delete,
    key_of,
    mid_of,
    request_key,
    with_mid,
)
from hasync.node import FeedCharon, NodeCore, Settings, StartPromotion
from hasync.role import Role, RoleState

from hastream import golden

GOLDEN = golden()["ike_mid_responder"]


def mid_datagram(spi_i: int, spi_r: int, mid: int) -> bytes:
    """charon's IKE_MID_RESPONDER with these SPIs (we are the responder) and MID."""
    msg = decode(GOLDEN)
    attrs = tuple(Attribute(a.name, IkeSaId(2, spi_i, spi_r, False)) if a.name == "ike_id"
                  else Attribute(a.name, mid) if a.name == "mid" else a
                  for a in msg.attributes)
    return encode(dataclasses.replace(msg, attributes=attrs))


KEY = request_key(0x11, 0x22, from_initiator=True)
J = mid_datagram(0x11, 0x22, 7)  # the journal: request 6 was processed, 7 is next


def told(got: tuple[list[bytes], bytes | None] | bytes | None) -> int | None:
    """The MID a rewind datagram (or request()'s answer) sets charon to (None: none)."""
    if isinstance(got, tuple):
        got = got[1]
    found = mid_of(got) if got else None
    return found[1] if found else None


NOTHING: tuple[list[bytes], None] = ([], None)


def test_the_golden_datagram_round_trips_with_another_mid() -> None:
    found = mid_of(GOLDEN)
    assert found is not None and found[2].type == MessageType.IKE_MID_RESPONDER
    assert with_mid(found[2], found[1]) == GOLDEN  # both directions, byte for byte
    assert told(with_mid(found[2], 9)) == 9
    assert mid_of(J) is not None and mid_of(J)[0] == KEY == key_of(IkeSaId(2, 0x11, 0x22, False))


def test_a_client_request_initiators_key_is_ours_as_responder() -> None:
    assert request_key(1, 2, True) == (2, 1, 2, False)
    assert request_key(1, 2, False) == (2, 1, 2, True)


def test_only_a_master_acts_and_only_on_untouched_sas() -> None:
    m = MidSync()
    assert m.request(KEY, 6, J) == NOTHING  # a backup: charon is passive, the journal leads
    m.promoted()
    m.charon_moved(KEY)  # this charon processed a request of KEY itself: it has the response
    assert m.request(KEY, 6, J) == NOTHING


def test_a_retransmit_of_the_old_masters_last_request_rewinds_then_a_new_one_restores() -> None:
    m = MidSync()
    m.promoted()
    assert told(m.request(KEY, 6, J)) == 6  # the response was lost: process 6 again
    assert m.request(KEY, 6, J) == NOTHING  # charon already expects 6
    assert told(m.request(KEY, 7, J)) == 7  # the client had it after all: 7 is next
    assert m.request(KEY, 5, J) == NOTHING and m.request(KEY, 7 + AHEAD + 1, J) == NOTHING
    assert m.counters["mid_sync:rewound"] == 1 and m.counters["mid_sync:restored"] == 1


def test_a_request_past_the_journal_advances_charon_to_it() -> None:
    """The old master answered request 7 while its hasync was down: 7's IKE_MID_RESPONDER
    never reached the journal, and the client's 8 would be ignored as a retransmit."""
    m = MidSync()
    m.promoted()
    assert told(m.request(KEY, 8, J)) == 8
    assert m.request(KEY, 8, J) == NOTHING  # charon already expects 8
    assert m.counters["mid_sync:advanced"] == 1 and m.counters["mid_sync:rewound"] == 0
    far = MidSync()
    far.promoted()
    assert told(far.request(KEY, 7 + AHEAD, J)) == 7 + AHEAD


def test_never_back_to_ike_auth() -> None:
    m = MidSync()
    m.promoted()
    assert m.request(KEY, 1, mid_datagram(0x11, 0x22, 2)) == NOTHING


def test_at_promotion_only_the_last_seconds_requests_are_rewound() -> None:
    m = MidSync()
    old, new = request_key(3, 4, True), request_key(5, 6, True)
    rekeyed = request_key(7, 8, True)  # its request created a CHILD_SA: left to the client
    m.applied([(old, mid_datagram(3, 4, 9))], now=100.0)
    m.applied([(new, mid_datagram(5, 6, 4)), (rekeyed, mid_datagram(7, 8, 5)),
               (rekeyed, 0xC0DE)], now=200.0)
    m.applied([], now=200.0 + RECENT_S / 2)  # the old master's last entries
    rewinds = m.promoted()
    assert [told(d) for d in rewinds] == [3] and mid_of(rewinds[0])[0] == new
    assert m.counters["mid_sync:rewound_at_promotion"] == 1
    assert m.request(new, 4 - 1, mid_datagram(5, 6, 9)) == NOTHING  # J moved on: out of range
    assert told(m.request(new, 4, mid_datagram(5, 6, 4))) == 4  # the client moved on
    deletes, rewind = m.request(rekeyed, 4, mid_datagram(7, 8, 5))
    assert deletes == [child_delete(decode(mid_datagram(7, 8, 5)), 0xC0DE)]  # lost: the orphan
    assert told(rewind) == 4


def test_demotion_forgets_and_a_master_ignores_applies() -> None:
    m = MidSync()
    m.promoted()
    m.applied([(KEY, J)], now=1.0)
    assert not m.recent
    m.demoted()
    assert not m.active and m.request(KEY, 6, J) == NOTHING


def _core() -> NodeCore:
    return NodeCore(Settings(), RoleState(role=Role.BACKUP))


def test_the_node_rewinds_through_the_feed_at_promotion_and_on_requests() -> None:
    core = _core()
    core.on_applied([J], [(KEY, J)], ts=10.0)
    out = core.on_vrrp('INSTANCE "VI_1" MASTER 100', 11.0)
    assert out[0] == StartPromotion() and isinstance(out[1], FeedCharon)
    assert [told(d) for d in out[1].datagrams] == [6]
    assert [told(c.datagrams[0]) for c in core.on_ike_request(KEY, 7, J, 11.5)] == [7]
    core.on_ha(J, decode(J), 12.0)  # charon answered on its own: hands off
    assert core.on_ike_request(KEY, 6, J, 12.5) == []
    assert core.on_ike_request(KEY, 7, J, 12.5) == []
    core.on_vrrp('INSTANCE "VI_1" BACKUP 100', 13.0)
    assert not core.mids.active
    assert core.counters["mid_sync:rewound_at_promotion"] == 1


def test_a_lost_response_deletes_the_child_sas_its_request_made_then_rewinds() -> None:
    m = MidSync()
    m.applied([(KEY, J), (KEY, 0xC1), (KEY, 0xC2), (request_key(9, 9, True), 0xC3)], now=5.0)
    m.promoted()
    assert m.counters["mid_sync:rewound_at_promotion"] == 0  # CHILD_SAs made: wait
    deletes, rewind = m.request(KEY, 6, J)  # the client retransmits 6: the response was lost
    assert [decode(d).type for d in deletes] == [MessageType.CHILD_DELETE] * 2
    assert [decode(d).get("inbound_spi") for d in deletes] == [0xC1, 0xC2] and told(rewind) == 6
    assert decode(deletes[0]).get("ike_id") == IkeSaId(2, 0x11, 0x22, False)
    assert m.request(KEY, 6, J) == NOTHING and m.counters["mid_sync:orphans_deleted"] == 2


def test_a_request_after_a_child_add_of_another_exchange_starts_afresh() -> None:
    m = MidSync()
    m.applied([(KEY, mid_datagram(0x11, 0x22, 6)), (KEY, 0xC1), (KEY, J)], now=5.0)
    assert m.promoted() != []  # request 6 created nothing: rewound at once
    assert m.request(KEY, 6, J) == NOTHING  # 0xC1 belongs to request 5: kept


def test_a_catch_up_replaying_old_entries_rewinds_none_of_them() -> None:
    m = MidSync()
    old = [(request_key(n, n, True), mid_datagram(n, n, 5)) for n in range(1, 50)]
    m.applied(old, now=1000.0)  # what the sender journaled an hour ago, applied just now
    m.applied([], now=4600.0)  # the old master's last batch
    assert m.promoted() == []


def test_the_node_journals_the_orphans_delete_and_feeds_it_before_the_rewind() -> None:
    core = _core()
    core.on_applied([J], [(KEY, J), (KEY, 0xC1)], ts=10.0)
    assert core.on_vrrp('INSTANCE "VI_1" MASTER 100', 11.0) == [StartPromotion()]
    out = core.on_ike_request(KEY, 6, J, 12.0)
    feeds = [c for c in out if isinstance(c, FeedCharon)]
    assert [decode(d).type for f in feeds for d in f.datagrams] == [
        MessageType.CHILD_DELETE, MessageType.IKE_MID_RESPONDER]
    assert [decode(d).type for d in core.batcher.pending] == [MessageType.CHILD_DELETE]


def test_only_the_last_seconds_are_remembered() -> None:
    m = MidSync()
    m.applied([(request_key(n, n, True), mid_datagram(n, n, 5)) for n in range(1, 4)], now=1.0)
    m.applied([(KEY, J)], now=1.0 + RECENT_S / 2)
    assert len(m.recent) == 4
    m.applied([], now=2.0 + RECENT_S)  # the first three are older than RECENT_S now
    assert list(m.recent) == [KEY]
