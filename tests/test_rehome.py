"""A peer that moved (journal/rehome.py, roam.py): the master journals its new host, and a
mirroring charon gets the datagrams that re-install its CHILD_SAs there."""

from __future__ import annotations

from collections import Counter
from ipaddress import IPv4Address

from test_journal_state import (
    CLIENT,
    REKEY_STREAM,
    V,
    build,
    child_add,
    child_delete,
    ike_add,
    ike_update,
    sid,
    steps,
)

from hasync.ha import HaMessage, Host, MessageType, child_spi, decode, encode
from hasync.journal.machine import ApplyMachine, Kind, open_entry
from hasync.journal.seal import pack_batch
from hasync.roam import PENDING_S, Roams

NEW = Host(IPv4Address("192.0.2.121"), 4500)
KEY1 = (2, 0xA001, 0xB001, False)
KEY2 = (2, 0xA002, 0xB002, False)
T = MessageType


def _hosts_before_children(plan: list[bytes]) -> dict[int, Host]:
    """Per CHILD_ADD (inbound SPI), the remote host its IKE_SA had when it replayed."""
    hosts: dict[tuple[int, int], Host] = {}
    seen: dict[int, Host] = {}
    for raw in plan:
        msg = decode(raw)
        ike = msg.get("ike_id")
        ident = (ike.initiator_spi, ike.responder_spi)
        if msg.type in (T.IKE_ADD, T.IKE_UPDATE) and msg.get_all("remote_addr"):
            hosts[ident] = msg.get_all("remote_addr")[-1]
        elif msg.type == T.IKE_ADD and msg.get("ike_rekey_id") is not None:
            old = msg.get("ike_rekey_id")
            hosts[ident] = hosts[(old.initiator_spi, old.responder_spi)]
        if msg.type == T.CHILD_ADD:
            seen[msg.get("inbound_spi")] = hosts[ident]
    return seen


def test_a_moved_peer_s_child_sas_replay_after_its_new_host() -> None:
    state = build([ike_add(1), ike_update(1), child_add(1, 0x11)])
    assert state.remote_host(KEY1) == Host(CLIENT, 4500)
    assert state.outbound_spis(KEY1) == {child_spi(0x111)}
    raw = state.roam_update(KEY1, NEW)
    assert raw is not None and decode(raw).get("remote_addr") == NEW
    state.apply(raw, decode(raw), 2.0)
    assert state.rehomed == [KEY1] and state.remote_host(KEY1) == NEW
    plan = state.take_rehomed()
    assert steps(plan)[0] == ("IKE_DELETE", 1, None) and state.rehomed == []
    assert steps(plan[1:]) == steps(state.replay_plan())
    assert _hosts_before_children(plan[1:]) == {0x11: NEW}
    assert state.roam_update(KEY1, NEW) is None  # already there: nothing to journal


def test_an_update_that_moves_nothing_or_precedes_the_children_rehomes_nothing() -> None:
    # charon's own IKE_UPDATE at IKE_AUTH floats 500 -> 4500 before any CHILD_ADD
    state = build([ike_add(1), ike_update(1), child_add(1, 0x11), ike_update(1)])
    assert state.rehomed == [] and state.take_rehomed() == []
    assert state.roam_update((2, 0xDEAD, 0xBEEF, False), NEW) is None  # unknown IKE_SA


def test_a_rekeyed_lineage_moves_whole_and_its_old_children_follow() -> None:
    state = build(REKEY_STREAM)
    raw = state.roam_update(KEY2, NEW)
    assert raw is not None
    state.apply(raw, decode(raw), 3.0)
    plan = state.take_rehomed()
    assert steps(plan)[0] == ("IKE_DELETE", 2, None)
    assert _hosts_before_children(plan[1:]) == {0x11: NEW, 0x12: NEW, 0x21: NEW}
    assert _hosts_before_children(state.replay_plan()) == {0x11: NEW, 0x12: NEW, 0x21: NEW}


def test_the_apply_machine_hands_the_move_to_mirrors_after_the_whole_batch() -> None:
    m = ApplyMachine()
    first = [encode(x) for x in (ike_add(1), ike_update(1), child_add(1, 0x11),
                                 child_add(1, 0x12))]
    m.apply(open_entry(Kind.BATCH, pack_batch(first, "gw1", 1.0)))
    raw = m.state.roam_update(KEY1, NEW)
    assert raw is not None
    gone = encode(child_delete(1, 0x12))  # later in the same batch: not re-installed
    change = m.apply(open_entry(Kind.BATCH, pack_batch([raw, gone], "gw1", 2.0)))
    assert [r for r, _ in change.applied] == [raw, gone]
    assert steps(list(change.refeed))[0] == ("IKE_DELETE", 1, None)
    assert _hosts_before_children(list(change.refeed[1:])) == {0x11: NEW}
    assert change.counts["peers_moved"] == 1
    back = m.apply(open_entry(Kind.BATCH, pack_batch([encode(ike_update(1))], "gw1", 3.0)))
    assert _hosts_before_children(list(back.refeed[1:])) == {0x11: Host(CLIENT, 4500)}
    same = m.apply(open_entry(Kind.BATCH, pack_batch([encode(ike_update(1))], "gw1", 4.0)))
    assert same.refeed == () and "peers_moved" not in same.counts


def test_a_partial_update_without_hosts_moves_nothing() -> None:
    vip = HaMessage.build(V, T.IKE_UPDATE, ("ike_id", sid(1)),
                          ("remote_vip", Host(IPv4Address("10.3.0.7"))))
    state = build([ike_add(1), ike_update(1), child_add(1, 0x11), vip])
    assert state.rehomed == []


# --- roam.py: the master's candidates ----------------------------------------------------

OLD = Host(CLIENT, 4500)
SPI = child_spi(0x111)


def test_a_request_from_a_new_host_is_followed_once_the_kernel_shows_the_move() -> None:
    r = Roams(Counter())
    r.seen(KEY1, NEW, OLD, {SPI}, now=0.0)
    assert r.confirm({(str(CLIENT), SPI, 50)}, now=0.1) == []  # charon has not moved it yet
    assert r.confirm({(str(NEW.address), SPI, 50)}, now=0.2) == [(KEY1, NEW)]
    assert r.counters["roams:followed"] == 1 and not r.pending
    r.seen(KEY1, NEW, OLD, {SPI}, now=0.3)  # journaled, not committed yet: not again
    assert not r.pending


def test_a_move_the_kernel_never_shows_is_dropped_and_counted() -> None:
    r = Roams(Counter())
    r.seen(KEY1, NEW, OLD, {SPI}, now=0.0)  # forged, or refused by charon
    assert r.confirm({(str(CLIENT), SPI, 50)}, now=PENDING_S + 0.1) == []
    assert r.counters["roams:unconfirmed"] == 1 and not r.pending


def test_requests_from_the_journaled_host_or_without_child_sas_make_no_candidate() -> None:
    r = Roams(Counter())
    r.seen(KEY1, OLD, OLD, {SPI}, now=0.0)
    r.seen(KEY1, NEW, None, {SPI}, now=0.0)  # unknown IKE_SA
    r.seen(KEY1, NEW, OLD, set(), now=0.0)
    assert not r.pending and r.counters["roams:no_child_sa"] == 1
    r.seen(KEY1, NEW, OLD, {SPI}, now=1.0)
    r.clear()
    assert not r.pending
