"""Replay-state journal entries: the codec's limits both ways, and forward-only merging."""

from __future__ import annotations

import ipaddress
import math

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hasync.guard.entries import (
    MAX_BITMAP_WORDS,
    MAX_RECORDS,
    SeqEntry,
    SeqLog,
    pack_seq,
    unpack_seq,
)
from hasync.guard.records import U32_MAX, U64_MAX, SeqRecord
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
