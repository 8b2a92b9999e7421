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


def test_a_promotion_goes_claim_xfrm_activate_done_and_times_each_phase() -> None:
    p = Promotion(Reserve(), started=1700.0, now=10.0)
    assert p.phase is Phase.CLAIM and p.report.started == 1700.0 and not p.report.done
    p.claim_done(3, attempts=2, now=10.25)
    assert p.phase is Phase.XFRM and p.report.claimed and p.report.quorum
    assert (p.report.epoch, p.report.claim_attempts) == (3, 2)
    (w,) = p.plan(SAS, RECORDS)
    assert (w.oseq, w.seq, w.bitmap) == (5000 + 1 + 576, 40, (7,))
    p.written(WriteResult(done=1), now=10.5)
    assert p.phase is Phase.ACTIVATE
    rep = p.activated(now=10.5625)
    assert p.phase is Phase.DONE and rep.done and (rep.sas, rep.writes) == (1, 1)
    assert rep.max_jump == 5577 - 10
    assert (rep.wait_ms, rep.xfrm_ms, rep.activate_ms, rep.total_ms) == (
        250.0, 250.0, 62.5, 562.5)


def test_a_claim_that_never_committed_ends_the_promotion_with_nothing_done() -> None:
    p = Promotion(Reserve(), started=0.0, now=0.0)
    p.claim_done(None, attempts=7, now=5.0)
    rep = p.report
    assert p.phase is Phase.DONE and not rep.claimed and not rep.quorum and not rep.done
    assert rep.claim_attempts == 7 and rep.wait_ms == 5000.0 and rep.writes == 0
    assert rep.errors == ["claim not committed after 7 attempts: no activation, nothing sent"]
    for step in (lambda: p.plan(SAS, RECORDS), lambda: p.activated(6.0)):
        with pytest.raises(IllegalPhase, match="phase done"):
            step()


def test_a_failed_read_is_tried_again_up_to_the_limit_then_charon_is_activated() -> None:
    p = Promotion(Reserve(), started=0.0, now=0.0)
    p.claim_done(1, 1, now=0.0)
    assert [p.read_failed("timeout", now=1.0) for _ in range(PROMOTION_READS - 1)] == [
        True] * (PROMOTION_READS - 1)
    assert p.read_failed("timeout", now=3.0) is False
    assert p.phase is Phase.ACTIVATE and p.report.xfrm_ms == 3000.0
    assert p.report.errors == [f"read {n} of 3: timeout" for n in (1, 2, 3)]
    with pytest.raises(IllegalPhase, match="phase activate cannot fail a read"):
        p.read_failed("timeout", now=4.0)


def test_write_refusals_are_reported_up_to_twenty() -> None:
    p = Promotion(Reserve(), started=0.0, now=0.0)
    p.claim_done(1, 1, now=0.0)
    p.plan(SAS, RECORDS)
    p.written(WriteResult(done=0, errors=[f"refused {n}" for n in range(30)]), now=0.1)
    assert p.report.errors == [f"refused {n}" for n in range(20)] and p.report.writes == 0


@pytest.mark.parametrize("step", ["plan", "written", "read_failed", "activated"])
def test_steps_out_of_order_raise_naming_the_phase(step: str) -> None:
    p = Promotion(Reserve(), started=0.0, now=0.0)
    calls = {"plan": lambda: p.plan(SAS, RECORDS),
             "written": lambda: p.written(WriteResult(), 0.0),
             "read_failed": lambda: p.read_failed("x", 0.0),
             "activated": lambda: p.activated(0.0)}
    with pytest.raises(IllegalPhase, match="promotion in phase claim"):
        calls[step]()


def test_a_result_without_a_plan_and_a_second_claim_are_refused() -> None:
    p = Promotion(Reserve(), started=0.0, now=0.0)
    p.claim_done(1, 1, now=0.0)
    with pytest.raises(IllegalPhase, match="unplanned"):
        p.written(WriteResult(), 0.0)
    with pytest.raises(IllegalPhase, match="phase xfrm cannot move to xfrm"):
        p.claim_done(2, 1, now=0.0)


def test_the_table_allows_one_way_through_and_done_is_final() -> None:
    order = [Phase.CLAIM, Phase.XFRM, Phase.ACTIVATE, Phase.DONE]
    for here, there in pairwise(order):
        assert there in TRANSITIONS[here]
    assert TRANSITIONS[Phase.CLAIM] == {Phase.XFRM, Phase.DONE}  # no claim: nothing else
    assert TRANSITIONS[Phase.XFRM] == {Phase.ACTIVATE}
    assert TRANSITIONS[Phase.DONE] == frozenset() and set(TRANSITIONS) == set(Phase)
