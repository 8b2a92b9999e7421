"""bench/xfrm_decode.py: its SA is what a dump carries, and all three decoders read it alike."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import xfrm_decode

from hasync.xfrm import SaInfo, SaReplay
from hasync.xfrm.codec import parse_messages
from hasync.xfrm.replayrows import parse_replay_rows


def test_the_benchmark_s_dump_decodes_both_ways_to_the_same_replay_state() -> None:
    buf = b"".join(xfrm_decode.one_sa(0xC0000000 + k) for k in range(3))
    whole, lean = parse_messages(buf), parse_messages(buf, lean=True)
    assert [type(m.body) for m in whole] == [SaInfo] * 3
    assert [type(m.body) for m in lean] == [SaReplay] * 3
    for w, x in zip(whole, lean, strict=True):
        assert isinstance(w.body, SaInfo) and isinstance(x.body, SaReplay)
        assert (x.body.id, x.body.replay) == (w.body.id, w.body.replay)
    rows = parse_replay_rows(buf, 1).rows
    assert [(r.spi, r.oseq, r.seq) for r in rows] == [
        (m.body.id.spi, m.body.replay.oseq, m.body.replay.seq) for m in whole
        if isinstance(m.body, SaInfo) and m.body.replay is not None]
    assert xfrm_decode.time_decode(buf, True, 1) > 0
    assert xfrm_decode.time_decode(buf, True, 1, rows=True) > 0
