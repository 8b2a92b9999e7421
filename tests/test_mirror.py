"""The pure parts between hasync and charon: batching, heartbeat, STATUS messages."""

from __future__ import annotations

from hasync.ha import MessageType, decode
from hasync.mirror import Batcher, Heartbeat, claimed_segments, status_message


def test_batch_is_due_when_full_or_old() -> None:
    b = Batcher(max_messages=3, max_delay=0.005)
    b.add(b"a", 0.0)
    b.add(b"b", 0.001)
    assert b.next_batch(0.002) is None and b.wake_at() == 0.005
    assert b.next_batch(0.006) == [b"a", b"b"]
    b.add(b"c", 0.007)
    assert b.next_batch(0.007) is None  # one batch in flight at a time
    b.done(True, 0.008)
    for x in (b"d", b"e"):
        b.add(x, 0.009)
    assert b.next_batch(0.009) == [b"c", b"d", b"e"]  # full
    assert b.backlog == 3


def test_failed_batch_is_retried_first_and_in_order() -> None:
    b = Batcher(max_messages=2, max_delay=0.0)
    for x in (b"1", b"2", b"3"):
        b.add(x, 0.0)
    first = b.next_batch(0.0)
    assert first == [b"1", b"2"]
    b.done(False, 1.0, backoff=0.5)
    assert b.next_batch(1.2) is None  # backing off
    assert b.next_batch(1.5) == [b"1", b"2"]  # the same batch again, before b"3"
    b.done(True, 1.6)
    assert b.next_batch(1.6) == [b"3"] and b.backlog == 1


def test_status_matches_charon_and_segments_parse() -> None:
    assert status_message(3, 1) == bytes.fromhex("030a220001")  # as charon 5.9.8 sends it
    msg = decode(status_message(3, 2))
    assert msg.type == MessageType.STATUS and claimed_segments(msg) == {1, 2}


def test_heartbeat_every_second_only_while_mirroring() -> None:
    hb = Heartbeat()
    assert hb.due(True, 0.0) and not hb.due(True, 0.5) and hb.due(True, 1.0)
    assert not hb.due(False, 1.5) and not hb.due(False, 3.0)  # a master sends none
    assert hb.due(True, 3.1)  # a demoted node starts again at once
