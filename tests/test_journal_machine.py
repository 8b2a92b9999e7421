"""The pure apply machine: opened entries in, changes out; no threads, sockets or clocks."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from hasync.guard.entries import ACCEPTED, REJECTED, SeqEntry, pack_seq
from hasync.guard.records import SeqRecord
from hasync.guard.rules import Reserve
from hasync.ha import MessageType, decode
from hasync.journal.machine import (
    MAX_MEMBER_FIELDS,
    ApplyMachine,
    Entry,
    Kind,
    MemberReport,
    open_entry,
    pack_claim,
    pack_member,
    unpack_claim,
    unpack_member,
)
from hasync.journal.seal import EntryError, pack_batch
from hasync.journal.state import JournalState

import hastream

KEY = ("192.0.2.101", 0xC0FFEE01, 50)


def _rec(mark: int, seq: int = 0) -> SeqRecord:
    return SeqRecord(KEY, mark, seq, (seq & 0xFF,), 50.0, "gw1", 1000.0, 1)


def test_a_batch_applies_like_the_state_model() -> None:
    s = hastream.tunnels(5)
    m, ref = ApplyMachine(), JournalState()
    for i in range(0, len(s.datagrams), 8):
        items = s.datagrams[i:i + 8]
        change = m.apply(open_entry(Kind.BATCH, pack_batch(items, "gw1", 5.0)))
        assert [raw for raw, _ in change.applied] == items and not change.errors
        assert change.counts == {"batches_applied": 1, "messages_applied": len(items)}
        assert change.child_adds == sum(decode(d).type == MessageType.CHILD_ADD for d in items)
        for raw in items:
            ref.apply(raw, decode(raw), 5.0)
    assert m.state.to_dict() == ref.to_dict() and len(m.state.summaries(0.0)) == 5


def test_a_malformed_datagram_is_counted_and_the_rest_applies() -> None:
    good = hastream.tunnels(1).datagrams[0]
    change = ApplyMachine().apply(open_entry(Kind.BATCH, pack_batch([b"\x00", good], "gw1", 1.0)))
    assert [raw for raw, _ in change.applied] == [good]
    assert change.counts["datagram_rejected"] == 1 and not change.errors


def test_a_state_bug_is_handed_back_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    m = ApplyMachine()

    def broken(*_: Any) -> None:
        raise KeyError("bug")

    monkeypatch.setattr(m.state, "apply", broken)
    items = hastream.tunnels(1).datagrams[:3]
    change = m.apply(open_entry(Kind.BATCH, pack_batch(items, "gw1", 1.0)))
    assert change.applied == () and change.counts == {"batches_applied": 1}
    assert [(name, type(e)) for name, e in change.errors] == [("apply_error", KeyError)] * 3


def _seq(ts: float, *recs: SeqRecord, origin: str = "gw1", epoch: int = 1) -> Entry:
    return open_entry(Kind.SEQ, pack_seq(SeqEntry(origin, ts, recs, epoch=epoch)))


def test_seq_entries_move_marks_forward_only() -> None:
    m = ApplyMachine()
    assert m.apply(open_entry(Kind.CLAIM, pack_claim("gw1", (0, 0)))).result == 1
    first = m.apply(_seq(1.0, _rec(5000, 7)))
    assert first.moved and first.counts == {"seq_entries_applied": 1}
    assert first.result == ACCEPTED
    again = m.apply(_seq(2.0, _rec(4000, 9)))
    assert not again.moved and m.seqs.records[KEY].mark == 5000 and m.seqs.records[KEY].seq == 9


def test_only_the_latest_claimant_s_entries_are_accepted() -> None:
    m = ApplyMachine()
    before = m.apply(_seq(1.0, _rec(5000, 7), epoch=0))  # nobody has claimed yet
    assert before.result == REJECTED and before.counts == {"seq_rejected:not_sender": 1}
    assert m.apply(open_entry(Kind.CLAIM, pack_claim("gw1", (0, 0)))).result == 1
    assert m.apply(open_entry(Kind.CLAIM, pack_claim("gw2", (1, 0)))).result == 2
    for origin, epoch in (("gw1", 1), ("gw2", 1), ("gw1", 2)):
        change = m.apply(_seq(2.0, _rec(9000, 9), origin=origin, epoch=epoch))
        assert change.result == REJECTED and not change.moved
    assert m.seqs.records == {} and m.seqs.rejected == 4
    ok = m.apply(_seq(3.0, SeqRecord(KEY, 100, 0, (), 0.0, "gw2", 1.0), origin="gw2", epoch=2))
    assert ok.result == ACCEPTED and m.seqs.records[KEY].epoch == 2
    assert m.seqs.sender == ("gw2", 2)


def test_a_claim_is_accepted_only_on_the_sender_its_claimant_saw() -> None:
    m = ApplyMachine()
    assert m.apply(open_entry(Kind.CLAIM, pack_claim("gw1", (0, 0)))).result == 1
    assert m.apply(_seq(1.0, _rec(5000, 7))).result == ACCEPTED  # gw1 lives: life 1
    stale = m.apply(open_entry(Kind.CLAIM, pack_claim("gw3", (1, 0))))  # queued in a partition
    assert stale.result == REJECTED and stale.counts == {"claims_rejected:stale": 1}
    assert m.seqs.sender == ("gw1", 1) and not stale.moved
    old_epoch = m.apply(open_entry(Kind.CLAIM, pack_claim("gw3", (0, 0))))
    assert old_epoch.result == REJECTED
    assert m.apply(open_entry(Kind.CLAIM, pack_claim("gw2", (1, 1)))).result == 2
    assert m.seqs.view() == (2, 0)


@pytest.mark.parametrize("payload", [b"", b"\x92\x02\xa3gw1", b"\x92\x01\xa0",
                                     b"\x91\x01", b"\x92\x01\x01", b"\x94\x01\xa3gw1\x00\x00",
                                     b"\x94\x02\xa3gw1\xff\x00", b"\x94\x02\xa3gw1\x00"])
def test_a_bad_claim_is_refused(payload: bytes) -> None:
    with pytest.raises(EntryError):
        open_entry(Kind.CLAIM, payload)


def test_a_claim_with_a_reserve_commits_the_terms_first_marks() -> None:
    """D261: format 3 carries the reserve; applied, every record's mark moves past its target
    to the claimant in the new epoch; a stale one changes nothing; format 2 still reads."""
    m = ApplyMachine()
    assert m.apply(open_entry(Kind.CLAIM, pack_claim("gw1", (0, 0)))).result == 1
    assert m.apply(_seq(1.0, _rec(5000, 7))).result == ACCEPTED
    grant = Reserve(floor=100, horizon_s=0.25, takeover_floor=10)
    raw = pack_claim("gw2", (1, 1), grant)
    assert unpack_claim(raw) == ("gw2", (1, 1), grant)
    assert unpack_claim(pack_claim("gw2", (1, 1))) == ("gw2", (1, 1), None)
    stale = m.apply(open_entry(Kind.CLAIM, pack_claim("gw3", (1, 0), grant)))
    assert stale.result == REJECTED and m.seqs.records[KEY].mark == 5000
    assert m.apply(open_entry(Kind.CLAIM, raw)).result == 2
    rec = m.seqs.records[KEY]
    assert (rec.mark, rec.seq, rec.node, rec.epoch) == (5000 + 1 + 10 + 100, 7, "gw2", 2)


@pytest.mark.parametrize("tail", [[-1, 800, 576], [768, 800, 1 << 31 + 1], [768, 0.8, 576],
                                  [768, 3_600_001, 576], [768, 800], [768, 800, 576, 0]])
def test_a_claim_with_a_bad_reserve_is_refused(tail: list[Any]) -> None:
    with pytest.raises(EntryError):
        open_entry(Kind.CLAIM, msgpack.packb([3, "gw2", 1, 1, *tail]))
    with pytest.raises(EntryError):  # a reserve under format 2
        open_entry(Kind.CLAIM, msgpack.packb([2, "gw2", 1, 1, 768, 800, 576]))


def test_barriers_and_member_reports() -> None:
    m = ApplyMachine()
    assert m.apply(open_entry(Kind.BARRIER, b"")).counts == {"barriers_applied": 1}
    info = {"vrrp": "MASTER", "raft": "leader", "applied": 7, "ts": 1.25, "ok": True, "x": None}
    change = m.apply(open_entry(Kind.MEMBER, pack_member("gw1", info)))
    assert change.member == MemberReport("gw1", info) and m.members == {"gw1": info}
    m.apply(open_entry(Kind.MEMBER, pack_member("gw1", {"vrrp": "BACKUP"})))
    assert m.members == {"gw1": {"vrrp": "BACKUP"}}  # the latest report replaces the last


@pytest.mark.parametrize("node, info", [
    ("", {}),
    ("n" * 65, {}),
    ("gw1", {"k": [1]}),
    ("gw1", {"k": b"bytes"}),
    ("gw1", {"k": "v" * 65}),
    ("gw1", {"": 1}),
    ("gw1", {"k": float("nan")}),
    ("gw1", {str(i): i for i in range(MAX_MEMBER_FIELDS + 1)}),
])
def test_bad_member_reports_are_refused_both_ways(node: str, info: dict[str, Any]) -> None:
    with pytest.raises(EntryError):
        pack_member(node, info)
    with pytest.raises(EntryError):
        unpack_member(msgpack.packb([1, node, info], use_bin_type=True))


@pytest.mark.parametrize("kind, payload", [
    (Kind.BARRIER, b"\x90"),  # a barrier with a payload
    (0, b""),
    (99, b""),
    (Kind.MEMBER, msgpack.packb([2, "gw1", {}])),  # unknown report format
    (Kind.MEMBER, msgpack.packb({"gw1": 1})),
    (Kind.SEQ, pack_batch([b"x"], "gw1", 1.0)),  # a batch is no seq entry
    (Kind.BATCH, msgpack.packb([1, "gw1", 1.0, [], []])),
])
def test_entries_that_do_not_open_raise_entry_error(kind: int, payload: bytes) -> None:
    with pytest.raises(EntryError):
        open_entry(kind, payload)


def test_restore_rebuilds_what_snapshot_saw() -> None:
    m = ApplyMachine()
    items = hastream.tunnels(3).datagrams
    m.apply(open_entry(Kind.BATCH, pack_batch(items[:16], "gw1", 1.0)))
    m.apply(open_entry(Kind.SEQ, pack_seq(SeqEntry("gw1", 1.0, (_rec(5000, 7),)))))
    state, seqs = m.snapshot()
    back = ApplyMachine.restore(state, seqs)
    assert back.snapshot() == (state, seqs) and back.members == {}
