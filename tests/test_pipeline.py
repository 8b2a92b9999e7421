"""Tests of hasync.pipeline: numbered batches, several in flight, applied once and in order.

Rules: the pipeline is driven with `now` and the apply machine's real answers
(ApplyMachine.order); a property test runs it against a Raft that commits in any order,
fails submissions, and commits some failed ones late, and checks that what the machines
applied is charon's stream exactly: every datagram once, in order.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hasync.journal.machine import APPLIED, DUPLICATE, GAP, OTHER_STREAM, ApplyMachine
from hasync.journal.seal import Batch
from hasync.pipeline import Pipeline

ITEMS = [bytes([i]) for i in range(1, 40)]


def _fill(p: Pipeline, items: list[bytes], now: float = 0.0) -> None:
    for raw in items:
        assert p.add(raw, now)


def test_batches_are_due_when_full_or_old_and_the_window_bounds_them() -> None:
    p = Pipeline(max_messages=2, max_delay=0.005, window=2, stream=7)
    _fill(p, ITEMS[:1])
    assert p.next_batch(0.001) is None and p.wake_at() == 0.005
    first = p.next_batch(0.006)
    assert first is not None and (first.seq, first.items) == (1, ITEMS[:1])
    _fill(p, ITEMS[1:6], 0.007)
    second = p.next_batch(0.007)
    assert second is not None and (second.seq, second.items) == (2, ITEMS[1:3])
    assert p.next_batch(0.007) is None and p.wake_at() is None  # the window is full
    assert p.answered(1, (APPLIED, 2), 0.008) == [first]
    third = p.next_batch(0.008)
    assert third is not None and third.seq == 3 and p.backlog == 2 + 2 + 1


def test_a_gap_rewinds_and_resends_oldest_first_alone() -> None:
    p = Pipeline(max_messages=1, max_delay=0.0, window=3)
    _fill(p, ITEMS[:3])
    flights = [p.next_batch(0.0) for _ in range(3)]
    assert [f.seq for f in flights if f] == [1, 2, 3]
    assert p.answered(2, (GAP, 1), 0.0) == [] and p.rewinding
    assert p.answered(1, None, 0.0) == []  # Raft failed it: back off
    assert p.next_batch(0.1) is None  # 3 not answered yet
    assert p.answered(3, (GAP, 1), 0.1) == []
    assert p.next_batch(0.1) is None and p.wake_at() == 0.2
    again = p.next_batch(0.2)
    assert again is not None and again.seq == 1 and p.next_batch(0.2) is None  # alone
    assert [f.seq for f in p.answered(1, (APPLIED, 2), 0.3)] == [1]
    nxt = p.next_batch(0.3)
    assert nxt is not None and nxt.seq == 2
    assert [f.seq for f in p.answered(2, (DUPLICATE, 4), 0.4)] == [2, 3]  # 3 came in late
    _fill(p, ITEMS[3:5], 0.4)
    after = p.next_batch(0.4)
    assert after is not None and after.seq == 4 and not p.rewinding


def test_a_stream_the_machines_do_not_follow_is_renumbered_into_a_newer_one() -> None:
    p = Pipeline(max_messages=1, max_delay=0.0, window=2, stream=5)
    _fill(p, ITEMS[:2])
    a, b = p.next_batch(0.0), p.next_batch(0.0)
    assert a is not None and b is not None
    p.answered(1, (OTHER_STREAM, 9), 0.0)
    p.answered(2, (OTHER_STREAM, 9), 0.0)
    again = p.next_batch(0.0)
    assert again is not None and (p.stream, again.seq, again.items) == (10, 1, ITEMS[:1])


def test_a_dropped_batch_moves_the_rest_to_a_newer_stream() -> None:
    p = Pipeline(max_messages=1, max_delay=0.0, window=2, stream=5)
    _fill(p, ITEMS[:2])
    p.next_batch(0.0)
    p.next_batch(0.0)
    assert p.dropped(1) == ITEMS[:1]
    p.answered(2, (GAP, 1), 0.0)
    again = p.next_batch(0.0)
    assert again is not None and (p.stream, again.seq, again.items) == (6, 1, ITEMS[1:2])


def test_the_machine_applies_a_stream_in_order_and_a_newer_stream_from_1() -> None:
    m = ApplyMachine()

    def order(stream: int, seq: int) -> object:
        change = m.order(Batch((b"x",), "gw1", 0.0, stream, seq))
        return (APPLIED, seq + 1) if change is None else change.result

    assert order(5, 2) == (GAP, 1)
    assert order(5, 1) == (APPLIED, 2) and order(5, 1) == (DUPLICATE, 2)
    assert order(4, 1) == (OTHER_STREAM, 5)  # an older process's late batch
    assert order(6, 2) == (GAP, 1)  # a newer stream starts at 1
    assert order(6, 1) == (APPLIED, 2) and m.streams == {"gw1": (6, 2)}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from("sdflt"), st.integers(0, 50)), max_size=120),
       st.integers(1, 4), st.integers(1, 3))
def test_whatever_raft_does_every_datagram_is_applied_once_in_order(
        steps: list[tuple[str, int]], window: int, size: int) -> None:
    p = Pipeline(max_messages=size, max_delay=0.0, window=window, stream=100)
    m, applied = ApplyMachine(), []
    transit: list[tuple[Batch, bool]] = []  # submitted, not yet committed: (batch, callback?)
    now, fed = 0.0, 0

    def commit(i: int) -> None:
        batch, callback = transit.pop(i)
        change = m.order(batch)
        if change is None:
            applied.extend(batch.items)
        if callback:
            result = (APPLIED, batch.seq + 1) if change is None else change.result
            p.answered(batch.seq, result, now)

    def submit() -> None:
        while (f := p.next_batch(now)) is not None:
            transit.append((Batch(tuple(f.items), "gw1", now, p.stream, f.seq), True))

    for op, n in steps:
        if op == "s" and fed < len(ITEMS):  # charon sends; the due batches go
            _fill(p, ITEMS[fed:fed + 1 + n % 3], now)
            fed = min(len(ITEMS), fed + 1 + n % 3)
        elif op == "d" and transit:  # Raft commits one, in any order
            commit(n % len(transit))
        elif op in "fl" and transit and transit[n % len(transit)][1]:  # Raft fails one
            batch, _ = transit.pop(n % len(transit))
            p.answered(batch.seq, None, now)
            if op == "l":  # ... and commits it later anyway
                transit.append((batch, False))
        elif op == "t":
            now += 0.3
        submit()
    for _ in range(10 * len(ITEMS) + 10):  # then Raft works: everything goes in
        if not transit and not p.backlog:
            break
        if transit:
            commit(0)
        now += 0.3
        submit()
    assert applied == ITEMS[:fed] and p.backlog == 0
