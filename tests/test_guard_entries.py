"""Replay-state journal entries: the codec's limits both ways, and forward-only merging."""

from __future__ import annotations

import ipaddress
import math

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hasync.guard import entries
from hasync.guard.entries import (
    MAX_BITMAP_WORDS,
    MAX_RECORDS,
    SeqEntry,
    SeqLog,
    pack_seq,
    unpack_seq,
)
from hasync.guard.records import U32_MAX, U64_MAX, SeqRecord
from hasync.guard.rules import Held, Reserve, claim_lows, claim_marks
from hasync.journal.seal import EntryError

KEY = ("192.0.2.101", 0xC0FFEE01, 50)


def rec(mark: int, seq: int = 0, node: str = "gw1", key: tuple[str, int, int] = KEY) -> SeqRecord:
    return SeqRecord(key, mark, seq, (seq & 0xFF,), 50.0, node, 1000.0)


def test_an_entry_round_trips() -> None:
    entry = SeqEntry("gw1", 1000.0, (rec(1024, 7), rec(5, key=("2001:db8::1", 1, 51))),
                     (("192.0.2.102", 9, 50),))
    assert unpack_seq(pack_seq(entry)) == entry


@pytest.mark.parametrize("bad", [
    [2, "gw1", 1.0, [], []],  # unknown format
    [1, "", 1.0, [], []],  # no origin
    [1, "gw1", float("nan"), [], []],
    [1, "gw1", 1.0, [[["192.0.2.1", 1, 50], -1, 0, [], 0.0, 1.0]], []],  # negative mark
    [1, "gw1", 1.0, [[["not an ip", 1, 50], 1, 0, [], 0.0, 1.0]], []],
    [1, "gw1", 1.0, [[["192.0.2.1", 1 << 32, 50], 1, 0, [], 0.0, 1.0]], []],  # SPI > u32
    [1, "gw1", 1.0, [[["192.0.2.1", 1, 50], 1, 0, [1 << 32], 0.0, 1.0]], []],  # bitmap word
    [1, "gw1", 1.0, [[["192.0.2.1", 1, 50], 1, 0, [], float("inf"), 1.0]], []],
    [1, "gw1", 1.0, [], [["192.0.2.1", 1]]],  # short key
    {"format": 1},
])
def test_entries_that_break_a_rule_are_refused(bad: object) -> None:
    with pytest.raises(EntryError):
        unpack_seq(msgpack.packb(bad, use_bin_type=True))


def test_a_beacon_packs_and_counts_as_a_sign_of_life() -> None:
    """An empty entry is the sender's beacon (D207): it must pack (it raised EntryError on
    every beacon until issue 17: the sender's `life` never grew from them)."""
    beacon = SeqEntry("gw1", 1.0, (), (), 1)
    assert unpack_seq(pack_seq(beacon)) == beacon
    log = SeqLog()
    log.claim("gw1", log.view())
    assert log.apply(unpack_seq(pack_seq(beacon))).accepted and log.view() == (1, 1)


def test_packing_refuses_what_unpacking_would() -> None:
    with pytest.raises(EntryError):
        pack_seq(SeqEntry("gw1", 1.0, tuple(rec(i, key=("192.0.2.1", i, 50))
                                            for i in range(MAX_RECORDS + 1))))


def test_every_truncation_is_refused() -> None:
    raw = pack_seq(SeqEntry("gw1", 1000.0, (rec(1024, 7),)))
    for n in range(len(raw)):
        with pytest.raises(EntryError):
            unpack_seq(raw[:n])


def _valid(entry: SeqEntry) -> None:
    """What every entry the codec lets through satisfies (the rules of entries.py)."""
    assert isinstance(entry.origin, str) and entry.origin and math.isfinite(entry.ts)
    assert len(entry.records) <= MAX_RECORDS and len(entry.gone) <= MAX_RECORDS
    for key in [r.key for r in entry.records] + list(entry.gone):
        ipaddress.ip_address(key[0])
        assert 0 <= key[1] <= U32_MAX and 0 <= key[2] <= 255
    for r in entry.records:
        assert r.node == entry.origin and 0 <= r.mark <= U64_MAX and 0 <= r.seq <= U64_MAX
        assert len(r.bitmap) <= MAX_BITMAP_WORDS and all(0 <= w <= U32_MAX for w in r.bitmap)
        assert math.isfinite(r.rate) and r.rate >= 0 and math.isfinite(r.ts) and r.ts >= 0
    if entry.records or entry.gone:  # what it lets through packs back to the same entry
        assert unpack_seq(pack_seq(entry)) == entry


def _decoded(data: bytes) -> SeqEntry | None:
    try:
        return unpack_seq(data)
    except EntryError:
        return None


@given(st.binary(max_size=300))
def test_random_bytes_are_refused_or_decode_to_a_valid_entry(data: bytes) -> None:
    entry = _decoded(data)
    if entry is not None:
        _valid(entry)


_keys = st.tuples(st.sampled_from(["192.0.2.1", "2001:db8::7", "10.0.0.255"]),
                  st.integers(0, U32_MAX), st.integers(0, 255))
_records = st.builds(SeqRecord, _keys, st.integers(0, U64_MAX), st.integers(0, U64_MAX),
                     st.lists(st.integers(0, U32_MAX), max_size=4).map(tuple),
                     st.floats(0, 1e9), st.just("gw1"), st.floats(0, 2e9),
                     st.just(0))  # a record carries its entry's epoch (0 here)
_entries = st.builds(SeqEntry, st.just("gw1"), st.floats(0, 2e9),
                     st.lists(_records, min_size=1, max_size=5).map(tuple),
                     st.lists(_keys, max_size=3).map(tuple))


@given(_entries, st.data())
def test_an_entry_round_trips_and_a_corrupted_one_is_refused_or_valid(
        entry: SeqEntry, data: st.DataObject) -> None:
    raw = pack_seq(entry)
    assert unpack_seq(raw) == entry
    at = data.draw(st.integers(0, len(raw) - 1))
    byte = data.draw(st.integers(0, 255))
    corrupted = _decoded(raw[:at] + bytes([byte]) + raw[at + 1:])
    if corrupted is not None:
        _valid(corrupted)


def test_merging_moves_counters_forward_only() -> None:
    log = SeqLog()
    log.claim("gw1", log.view())
    log.apply(SeqEntry("gw1", 1.0, (rec(2000, 50),), epoch=1))
    log.apply(SeqEntry("gw1", 2.0, (rec(1000, 40),), epoch=1))  # late or repeated: no change
    assert (log.records[KEY].mark, log.records[KEY].seq) == (2000, 50)
    assert log.claim("gw2", log.view()) == 2
    log.apply(SeqEntry("gw2", 3.0, (rec(1500, 60, node="gw2"),), epoch=2))
    assert (log.records[KEY].mark, log.records[KEY].seq, log.records[KEY].node) == (
        2000, 60, "gw2")
    log.apply(SeqEntry("gw2", 4.0, (), (KEY,), epoch=2))
    assert KEY not in log.records


def test_an_entry_not_from_the_sender_changes_nothing() -> None:
    log = SeqLog()
    assert not log.apply(SeqEntry("gw1", 1.0, (rec(2000, 50),), epoch=0)).accepted
    log.claim("gw1", log.view())
    assert log.apply(SeqEntry("gw1", 1.0, (rec(2000, 50),), epoch=1)).accepted
    log.claim("gw2", log.view())
    late = log.apply(SeqEntry("gw1", 2.0, (rec(9000, 90),), (KEY,), epoch=1))  # deposed
    assert not late.accepted and not late.moved
    assert log.records[KEY].mark == 2000 and log.rejected == 2


def test_apply_tells_whether_a_backup_s_targets_moved() -> None:
    log = SeqLog()
    log.claim("gw1", log.view())

    def moved(e: SeqEntry) -> bool:
        return log.apply(e).moved
    assert moved(SeqEntry("gw1", 1.0, (rec(2000, 50),), epoch=1))  # a new SA
    assert not moved(SeqEntry("gw1", 2.0, (rec(2000, 90),), epoch=1))  # inbound state only
    assert not moved(SeqEntry("gw1", 3.0, (rec(1000, 95),), epoch=1))  # a stale mark
    assert not moved(SeqEntry("gw1", 4.0, (), (KEY,), epoch=1))  # gone
    assert moved(SeqEntry("gw1", 5.0, (rec(1, 0),), epoch=1))  # back as new
    assert moved(SeqEntry("gw1", 6.0, (rec(1, 0, key=("192.0.2.9", 1, 50)), rec(5, 0)),
                          epoch=1))
    assert (log.applied, log.moves) == (6, 4)  # the claim moved too


def test_a_snapshot_restores_the_same_records_and_sender() -> None:
    log = SeqLog()
    log.claim("gw1", log.view())
    log.apply(SeqEntry("gw1", 1.0, (rec(2000, 50), rec(3, key=("2001:db8::1", 2, 50))),
                       epoch=1))
    again = SeqLog.from_dict(log.to_dict())
    assert again == log and again.sender == ("gw1", 1)


# ---- a claim's marks, made on the next look (D281) ----

_KEYS = [(d, spi, 50) for d in ("192.0.2.1", "198.51.100.7") for spi in (1, 2, 0xFFFFFFFF)]
_GRANTS = [Reserve(), Reserve(floor=1, horizon_s=0.5, takeover_floor=0),
           Reserve(floor=1 << 20, horizon_s=60.0, takeover_floor=1 << 10)]
_records = st.lists(st.tuples(st.sampled_from(_KEYS),
                              st.sampled_from([0, 5, 5000, U32_MAX - 600, U32_MAX, 1 << 40]),
                              st.integers(0, 1 << 20),
                              st.sampled_from([0.0, 50.0, 1e6, 1e12])), max_size=6)
_ops = st.lists(st.one_of(
    st.tuples(st.just("claim"), st.sampled_from(["gw1", "gw2", "gw3"]),
              st.sampled_from(range(len(_GRANTS)))),
    st.tuples(st.just("seq"), _records, st.lists(st.sampled_from(_KEYS), max_size=2)),
    st.tuples(st.just("look")), st.tuples(st.just("prepare"), st.sampled_from(range(3))),
    st.tuples(st.just("snapshot"))), max_size=25)


def _eager(records: dict, node: str, epoch: int, grant: Reserve) -> dict:
    """What a claim's apply did before D281: every record's claim mark at once."""
    out = dict(records)
    for key, (_, hi) in claim_marks(records, grant).items():
        r = out[key]
        out[key] = SeqRecord(key, hi, r.seq, r.bitmap, r.rate, node, r.ts, epoch)
    return out


@given(_ops)
def test_a_claims_marks_made_late_equal_the_marks_made_at_once(ops: list) -> None:
    """Whatever comes between a claim and the first look at the records (entries, claims,
    snapshots), they end as an apply that made every mark at once (the code before D281)
    leaves them; and marks prepared at the version a claim found are the claim's own."""
    lazy, ref = SeqLog(), SeqLog()
    ref_records: dict = {}
    prepared: dict[int, tuple[int, dict]] = {}
    for op in ops:
        if op[0] == "claim":
            grant = _GRANTS[op[2]]
            epoch = lazy.claim(op[1], lazy.view(), grant)
            assert epoch == ref.claim(op[1], ref.view(), grant) and epoch is not None
            ref.records  # noqa: B018 -- looked at at once: as if made in the apply
            ref_records = _eager(ref_records, op[1], epoch, grant)
            mine = prepared.get(op[2])
            if mine is not None and lazy.claimed.version == mine[0]:
                assert claim_lows(lazy.records, op[1], epoch, grant) == {
                    k: Held(lo, hi, True) for k, (lo, hi) in mine[1].items()}
        elif op[0] == "seq":
            node, epoch = lazy.sender
            recs = tuple(SeqRecord(k, m, s, (s & 0xFF,), r, node, 1.0, epoch)
                         for k, m, s, r in op[1] if m <= U64_MAX)
            entry = SeqEntry(node, 1.0, recs, tuple(op[2]), epoch)
            assert lazy.apply(entry) == ref.apply(entry)
            ref_records = _merge(ref_records, entry)
        elif op[0] == "look":
            assert dict(lazy.records) == ref_records
        elif op[0] == "prepare":
            records = dict(lazy.records)
            prepared[op[1]] = (lazy.version, claim_marks(records, _GRANTS[op[1]]))
        else:
            lazy = SeqLog.from_dict(lazy.to_dict())
    assert lazy == ref and dict(ref.records) == ref_records


def _merge(records: dict, entry: SeqEntry) -> dict:
    """Forward-only merge, as SeqLog.apply documents it."""
    out = dict(records)
    for r in entry.records:
        old = out.get(r.key)
        if old is not None and (r.seq < old.seq or r.mark < old.mark):
            seq, bitmap = (r.seq, r.bitmap) if r.seq >= old.seq else (old.seq, old.bitmap)
            r = SeqRecord(r.key, max(r.mark, old.mark), seq, bitmap, r.rate, r.node, r.ts,
                          r.epoch)
        out[r.key] = r
    for k in entry.gone:
        out.pop(k, None)
    return out


def test_a_claims_apply_makes_no_mark_until_the_records_are_looked_at(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The claim is the promotion's barrier: its apply, on every node, does nothing per SA."""
    log = SeqLog()
    log.claim("gw1", log.view())
    log.apply(SeqEntry("gw1", 1.0, tuple(rec(100, key=k) for k in _KEYS), epoch=1))
    calls = []
    real = entries.claim_marks
    monkeypatch.setattr(entries, "claim_marks", lambda *a: calls.append(1) or real(*a))
    version = log.version
    assert log.claim("gw2", log.view(), Reserve()) == 2 and calls == []
    assert log.claimed == ("gw2", 2, Reserve(), version) and log.version == version
    assert {r.node for r in log.records.values()} == {"gw2"} and calls == [1]
    assert log.version != version
    log.records  # noqa: B018 -- made once
    assert calls == [1]


def test_records_are_read_only_and_their_version_follows_what_a_claim_reads() -> None:
    log = SeqLog()
    with pytest.raises(TypeError):
        log.records[KEY] = rec(1)  # type: ignore[index]
    log.claim("gw1", log.view())
    versions = [log.version]

    def apply(*recs: SeqRecord, gone: tuple = ()) -> int:
        log.apply(SeqEntry("gw1", 1.0, recs, gone, epoch=1))
        versions.append(log.version)
        return versions[-1] != versions[-2]
    assert apply(rec(100, 5))  # a new SA
    assert not apply(rec(100, 9))  # inbound state only: no claim mark depends on it
    assert not apply(rec(50, 12))  # a stale mark: merged forward, the mark stays
    assert apply(SeqRecord(KEY, 100, 12, (0,), 900.0, "gw1", 1.0, 1))  # a new rate
    assert apply(rec(200, 12))
    assert not apply(gone=(("192.0.2.9", 1, 50),))  # not held
    assert apply(gone=(KEY,))
    assert SeqLog.from_dict(log.to_dict()).version not in versions
