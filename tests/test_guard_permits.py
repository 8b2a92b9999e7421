"""The sender's term (hasync/guard/permits.py): permits only from accepted entries of its epoch,
and an ESN SA's permit emptied once its counter runs 2^30 past it, before its low 32 bits can
wrap into the permit's window (the fence matches only the low 32 bits)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from hasync.fence.port import Permit
from hasync.fence.rules import permitted
from hasync.guard import KernelSa, SeqEntry, SeqRecord
from hasync.guard.permits import ESN_STOP, SenderTerm

from guardfakes import KEY, FakeFence, FakeJournal, FakeKernel, guard

HI = 5_000_000_000  # an ESN mark past 2^32


def esn_sa(oseq: int) -> KernelSa:
    return KernelSa(KEY, True, oseq, 0, (0,) * 4, 128)


def entry(mark: int, epoch: int = 1) -> SeqEntry:
    return SeqEntry("gw2", 1.0, (SeqRecord(KEY, mark, 0, (0,) * 4, 0.0, "gw2", 1.0, epoch),),
                    (), epoch)


def held_term(hi: int = HI, lo: int = HI - 1000) -> SenderTerm:
    term = SenderTerm()
    term.start(1)
    term.plan({KEY: lo}, {KEY: True})
    (p,) = term.accepted(entry(hi))
    term.granted([p])
    return term


def test_an_unstopped_esn_permit_would_let_a_wrapped_number_through() -> None:
    """Why the stop exists: the fence sees only the low 32 bits of an ESN number."""
    p = Permit(KEY, HI - 1000, HI, True)
    assert permitted(p, HI) and not permitted(p, HI + 1)
    assert permitted(p, HI + (1 << 32))  # 2^32 past the mark: same low bits, let through


def test_an_esn_counter_2_30_past_its_permit_empties_the_permit_once() -> None:
    term = held_term()
    assert term.stop_wrapping([esn_sa(HI + ESN_STOP)]) == []  # at 2^30: not yet
    assert term.stop_wrapping([esn_sa(HI + ESN_STOP + 1)]) == [KEY]
    (p,) = term.pending.values()
    assert p == Permit(KEY, HI, HI, True)
    assert not any(permitted(p, s) for s in (HI, HI + 1, HI + (1 << 32), HI - 5))
    term.granted([p])
    assert term.stop_wrapping([esn_sa(HI + ESN_STOP + 50)]) == [] and not term.pending


def test_non_esn_sas_and_sas_without_a_permit_are_never_stopped() -> None:
    term = held_term(hi=1000, lo=0)
    assert term.stop_wrapping([KernelSa(KEY, False, 1000 + ESN_STOP + 1, 0, (0,), 32)]) == []
    assert SenderTerm().stop_wrapping([esn_sa(ESN_STOP * 3)]) == []


def test_a_stopped_esn_permit_returns_only_with_a_mark_near_the_counter() -> None:
    term = held_term()
    counter = HI + ESN_STOP + 10
    term.stop_wrapping([esn_sa(counter)])
    term.granted(list(term.pending.values()))
    assert term.accepted(entry(HI + 5)) == []  # a late renewal still far behind: stays empty
    assert term.held[KEY].hi == HI + 5 and not term.pending
    (p,) = term.accepted(entry(counter + 768))
    assert p == Permit(KEY, HI - 1000, counter + 768, True) and not term.stopped
    assert permitted(p, counter + 1) and not permitted(p, counter + 769)


def test_a_new_term_or_a_gone_sa_forgets_the_stop() -> None:
    term = held_term()
    term.stop_wrapping([esn_sa(HI + ESN_STOP + 1)])
    term.forget([KEY])
    assert not term.stopped
    term = held_term()
    term.stop_wrapping([esn_sa(HI + ESN_STOP + 1)])
    term.drop()
    assert not term.stopped and term.revoke


def test_the_master_s_tick_empties_a_wrapping_esn_permit_in_the_fence(caplog: Any) -> None:
    journal, fence = FakeJournal(), FakeFence()
    kernel = FakeKernel([esn_sa(HI - 2000)])
    g = guard(journal, kernel, fence=fence)
    with journal.lock:
        g.term.start(journal.seqs.claim("gw2", journal.seqs.view()))

    async def steps() -> None:
        await g.step(master=True, mirrored=0)  # first mark committed and accepted
        await asyncio.sleep(0)  # the commit's answer comes through the loop
        await g.step(master=True, mirrored=0)  # granted
        mark = fence.permits[KEY].hi
        kernel.sas = [esn_sa(mark + ESN_STOP + 7)]  # Raft stalled for 2^30 packets meanwhile
        journal.hold = True
        with caplog.at_level(logging.WARNING, logger="hasync.guard"):
            await g.step(master=True, mirrored=0)  # the read finds it
            assert g._wake.is_set()
            await g.step(master=True, mirrored=0)  # the fence empties it
        assert fence.permits[KEY] == Permit(KEY, mark, mark, True)
    asyncio.run(steps())
    assert g.stats.esn_stops == 1 and g.status()["loop"]["esn_stops"] == 1
    assert sum("ESN SAs ran 2^30 past" in r.getMessage() for r in caplog.records) == 1
