"""Replay-state journal entries: the codec's limits both ways, and forward-only merging."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hasync.guard.entries import MAX_RECORDS, SeqEntry, SeqLog, pack_seq, unpack_seq
from hasync.guard.records import SeqRecord
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


def test_packing_refuses_what_unpacking_would() -> None:
    with pytest.raises(EntryError):
        pack_seq(SeqEntry("gw1", 1.0, ()))
    with pytest.raises(EntryError):
        pack_seq(SeqEntry("gw1", 1.0, tuple(rec(i, key=("192.0.2.1", i, 50))
                                            for i in range(MAX_RECORDS + 1))))


def test_every_truncation_is_refused() -> None:
    raw = pack_seq(SeqEntry("gw1", 1000.0, (rec(1024, 7),)))
    for n in range(len(raw)):
        with pytest.raises(EntryError):
            unpack_seq(raw[:n])


@given(st.binary(max_size=300))
def test_only_entry_error_escapes_the_codec(data: bytes) -> None:
    with contextlib.suppress(EntryError):
        unpack_seq(data)


def test_merging_moves_counters_forward_only() -> None:
    log = SeqLog()
    log.apply(SeqEntry("gw1", 1.0, (rec(2000, 50),)))
    log.apply(SeqEntry("gw1", 2.0, (rec(1000, 40),)))  # late or repeated: changes nothing
    assert (log.records[KEY].mark, log.records[KEY].seq) == (2000, 50)
    log.apply(SeqEntry("gw2", 3.0, (rec(1500, 60, node="gw2"),)))
    assert (log.records[KEY].mark, log.records[KEY].seq, log.records[KEY].node) == (
        2000, 60, "gw2")
    log.apply(SeqEntry("gw2", 4.0, (), (KEY,)))
    assert KEY not in log.records


def test_apply_tells_whether_a_backup_s_targets_moved() -> None:
    log = SeqLog()
    assert log.apply(SeqEntry("gw1", 1.0, (rec(2000, 50),)))  # a new SA
    assert not log.apply(SeqEntry("gw1", 2.0, (rec(2000, 90),)))  # inbound state only
    assert not log.apply(SeqEntry("gw1", 3.0, (rec(1000, 95),)))  # a stale mark
    assert not log.apply(SeqEntry("gw1", 4.0, (), (KEY,)))  # gone
    assert log.apply(SeqEntry("gw1", 5.0, (rec(1, 0),)))  # back as new
    assert log.apply(SeqEntry("gw1", 6.0, (rec(1, 0, key=("192.0.2.9", 1, 50)), rec(5, 0))))
    assert (log.applied, log.moves) == (6, 3)


def test_a_snapshot_restores_the_same_records() -> None:
    log = SeqLog()
    log.apply(SeqEntry("gw1", 1.0, (rec(2000, 50), rec(3, key=("2001:db8::1", 2, 50)))))
    assert SeqLog.from_dict(log.to_dict()) == log
