"""The pure parts between hasync and charon: heartbeat, STATUS messages (batching:
test_pipeline.py)."""

from __future__ import annotations

from hasync.ha import MessageType, decode
from hasync.mirror import Heartbeat, claimed_segments, status_message


def test_status_matches_charon_and_segments_parse() -> None:
    assert status_message(3, 1) == bytes.fromhex("030a220001")  # as charon 5.9.8 sends it
    msg = decode(status_message(3, 2))
    assert msg.type == MessageType.STATUS and claimed_segments(msg) == {1, 2}


def test_heartbeat_every_second_only_while_mirroring() -> None:
    hb = Heartbeat()
    assert hb.due(True, 0.0) and not hb.due(True, 0.5) and hb.due(True, 1.0)
    assert not hb.due(False, 1.5) and not hb.due(False, 3.0)  # a master sends none
    assert hb.due(True, 3.1)  # a demoted node starts again at once
