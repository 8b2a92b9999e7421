"""A promotion as a state machine: phases in order only, decisions and timings from the `now`
values given (no IO, no clocks)."""

from __future__ import annotations

from itertools import pairwise

import pytest

from hasync.guard.promotion import (
    PROMOTION_READS,
    TRANSITIONS,
    IllegalPhase,
    Phase,
    Promotion,
)
from hasync.guard.records import KernelSa, SeqRecord, WriteResult
from hasync.guard.rules import Reserve

KEY = ("192.0.2.101", 0xC0FFEE01, 50)
SAS = [KernelSa(KEY, False, 10, 0, (0,), 32)]
RECORDS = {KEY: SeqRecord(KEY, 5000, 40, (7,), 0.0, "gw1", 1.0)}


def test_a_promotion_goes_barrier_xfrm_activate_done_and_times_each_phase() -> None:
    p = Promotion(Reserve(), started=1700.0, now=10.0)
    assert p.phase is Phase.BARRIER and p.report.started == 1700.0 and not p.report.done
    p.barrier_done(True, now=10.25)
    assert p.phase is Phase.XFRM and p.report.quorum and p.report.extra_reserve == 0
    (w,) = p.plan(SAS, RECORDS, stretch_s=0.0)
    assert (w.oseq, w.seq, w.bitmap) == (5000 + 576, 40, (7,))
    p.written(WriteResult(done=1), now=10.5)
    assert p.phase is Phase.ACTIVATE
    rep = p.activated(now=10.5625)
    assert p.phase is Phase.DONE and rep.done and (rep.sas, rep.writes) == (1, 1)
    assert rep.max_jump == 5576 - 10
    assert (rep.wait_ms, rep.xfrm_ms, rep.activate_ms, rep.total_ms) == (
        250.0, 250.0, 62.5, 562.5)


def test_without_quorum_every_target_gets_the_no_quorum_reserve() -> None:
    p = Promotion(Reserve(no_quorum=1000), started=0.0, now=0.0)
    p.barrier_done(False, now=2.0)
    assert not p.report.quorum and p.report.extra_reserve == 1000
    (w,) = p.plan(SAS, RECORDS, stretch_s=0.0)
    assert w.oseq == 5000 + 576 + 1000


def test_a_failed_read_is_tried_again_up_to_the_limit_then_charon_is_activated() -> None:
    p = Promotion(Reserve(), started=0.0, now=0.0)
    p.barrier_done(True, now=0.0)
    assert [p.read_failed("timeout", now=1.0) for _ in range(PROMOTION_READS - 1)] == [
        True] * (PROMOTION_READS - 1)
    assert p.read_failed("timeout", now=3.0) is False
    assert p.phase is Phase.ACTIVATE and p.report.xfrm_ms == 3000.0
    assert p.report.errors == [f"read {n} of 3: timeout" for n in (1, 2, 3)]
    with pytest.raises(IllegalPhase, match="phase activate cannot fail a read"):
        p.read_failed("timeout", now=4.0)


def test_write_refusals_are_reported_up_to_twenty() -> None:
    p = Promotion(Reserve(), started=0.0, now=0.0)
    p.barrier_done(True, now=0.0)
    p.plan(SAS, RECORDS, stretch_s=0.0)
    p.written(WriteResult(done=0, errors=[f"refused {n}" for n in range(30)]), now=0.1)
    assert p.report.errors == [f"refused {n}" for n in range(20)] and p.report.writes == 0


@pytest.mark.parametrize("step", ["plan", "written", "read_failed", "activated"])
def test_steps_out_of_order_raise_naming_the_phase(step: str) -> None:
    p = Promotion(Reserve(), started=0.0, now=0.0)
    calls = {"plan": lambda: p.plan(SAS, RECORDS, 0.0),
             "written": lambda: p.written(WriteResult(), 0.0),
             "read_failed": lambda: p.read_failed("x", 0.0),
             "activated": lambda: p.activated(0.0)}
    with pytest.raises(IllegalPhase, match="promotion in phase barrier"):
        calls[step]()


def test_a_result_without_a_plan_and_a_second_barrier_are_refused() -> None:
    p = Promotion(Reserve(), started=0.0, now=0.0)
    p.barrier_done(True, now=0.0)
    with pytest.raises(IllegalPhase, match="unplanned"):
        p.written(WriteResult(), 0.0)
    with pytest.raises(IllegalPhase, match="phase xfrm cannot move to xfrm"):
        p.barrier_done(True, now=0.0)


def test_the_table_allows_one_way_through_and_done_is_final() -> None:
    order = [Phase.BARRIER, Phase.XFRM, Phase.ACTIVATE, Phase.DONE]
    for here, there in pairwise(order):
        assert TRANSITIONS[here] == {there}
    assert TRANSITIONS[Phase.DONE] == frozenset() and set(TRANSITIONS) == set(Phase)
