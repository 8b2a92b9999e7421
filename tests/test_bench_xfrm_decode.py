"""bench/xfrm_decode.py: its SA is what a dump carries, and both decodes read it alike."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import xfrm_decode

from hasync.xfrm import SaInfo, SaReplay
from hasync.xfrm.codec import parse_messages


def test_the_benchmark_s_dump_decodes_both_ways_to_the_same_replay_state() -> None:
    buf = b"".join(xfrm_decode.one_sa(0xC0000000 + k) for k in range(3))
    whole, lean = parse_messages(buf), parse_messages(buf, lean=True)
    assert [type(m.body) for m in whole] == [SaInfo] * 3
    assert [type(m.body) for m in lean] == [SaReplay] * 3
    for w, x in zip(whole, lean, strict=True):
        assert isinstance(w.body, SaInfo) and isinstance(x.body, SaReplay)
        assert (x.body.id, x.body.replay) == (w.body.id, w.body.replay)
    assert xfrm_decode.time_decode(buf, True, 1) > 0
