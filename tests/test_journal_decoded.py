"""The master's own decodes reused by the apply of its batches (journal/decoded.py, D272)."""

from __future__ import annotations

import threading

from hasync.ha import decode_only
from hasync.journal.decoded import DecodedCache
from hasync.journal.machine import ApplyMachine, Kind, open_entry
from hasync.journal.seal import pack_batch
from hasync.journal.state import NEEDED
from hasync.mirror import JOURNALED, READ_ON_HA

import hastream


def test_the_endpoint_s_decode_holds_all_the_node_reads_of_a_datagram() -> None:
    assert set(NEEDED) == JOURNALED
    assert all(t in NEEDED and names <= NEEDED[t] for t, names in READ_ON_HA.items())


def test_a_batch_of_this_node_s_datagrams_applies_their_decodes_as_kept() -> None:
    items = hastream.tunnels(8).datagrams
    cache = DecodedCache()
    kept = {raw: decode_only(raw, NEEDED) for raw in items}
    for raw, msg in kept.items():
        cache.put(raw, msg)
    payload = pack_batch(items, "gw1", 5.0)
    mine, other = ApplyMachine(), ApplyMachine()
    change = mine.apply(open_entry(Kind.BATCH, payload, cache))
    assert all(msg is kept[raw] for raw, msg in change.applied)  # not decoded again
    assert change.counts["decodes_reused"] == len(items) and len(cache) == 0
    theirs = other.apply(open_entry(Kind.BATCH, payload))
    assert "decodes_reused" not in theirs.counts
    assert mine.state.to_dict() == other.state.to_dict()
    assert [m for _, m in change.applied] == [m for _, m in theirs.applied]


def test_bytes_not_kept_are_decoded_and_malformed_ones_still_counted() -> None:
    items = hastream.tunnels(2).datagrams
    cache = DecodedCache()
    cache.put(items[0], decode_only(items[0], NEEDED))
    cache.put(items[1] + b"\x00", decode_only(items[1], NEEDED))  # other bytes: not a match
    change = ApplyMachine().apply(open_entry(Kind.BATCH, pack_batch(
        [items[0], b"\x00", *items[1:]], "gw1", 1.0), cache))
    assert [raw for raw, _ in change.applied] == items
    assert change.counts["decodes_reused"] == 1 and change.counts["datagram_rejected"] == 1
    assert len(cache) == 1  # the unmatched one waits to be pushed out


def test_the_cache_keeps_at_most_its_limit_dropping_the_oldest() -> None:
    items = hastream.tunnels(3).datagrams[:10]
    cache = DecodedCache(limit=4)
    for raw in items:
        cache.put(raw, decode_only(raw, NEEDED))
    assert len(cache) == 4
    found = cache.take(items)
    assert [m is not None for m in found] == [False] * 6 + [True] * 4


def test_puts_and_takes_from_two_threads_lose_nothing_kept() -> None:
    items = hastream.tunnels(200).datagrams
    cache = DecodedCache(limit=len(items))
    msgs = [decode_only(raw, NEEDED) for raw in items]
    t = threading.Thread(target=lambda: [cache.put(r, m) for r, m in zip(items, msgs, strict=True)])
    t.start()
    taken = []
    while t.is_alive() or len(cache):
        taken += [m for m in cache.take(items) if m is not None]
    t.join()
    assert sorted(map(id, taken)) == sorted(map(id, msgs))
