"""The guard's driver with a fake journal, kernel, fence, clock and sleep (the real ones run in
the lab: tests/test_lab_takeover.py): promotion = claim, ticks, permits, the loop, health, and
every failure loud. Traffic through the fence: tests/test_guard_fence.py."""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

import pytest

from hasync.fence.port import Permit
from hasync.guard import Guard, Held, KernelSa, MarkFlight, Reserve, SeqEntry, SeqRecord
from hasync.guard.driver import STALL_S
from hasync.guard.marks import BEACON_S
from hasync.guard.ports import claimed_held, prepare_claim
from hasync.journal.seal import EntryError
from hasync.syncobj_compat import FailReason
from hasync.xfrm.errors import XfrmError
from hasync.xfrm.replayrows import ReplayRow

from guardfakes import (
    KEY,
    Clock,
    FakeFence,
    FakeJournal,
    FakeKernel,
    FakeSleep,
    FakeWatch,
    Stop,
    guard,
)


def _timeout() -> XfrmError:
    return XfrmError(110, "GETSA dump", detail="no answer within 2.0 s")


def sender(g: Guard) -> int:
    """Make `g` (gw2) the sender, as a committed claim would."""
    with g.journal.lock:
        epoch = g.journal.seqs.claim(g.node, g.journal.seqs.view())
    g.term.start(epoch)
    return epoch


def test_promotion_claims_jumps_restores_and_then_activates_with_timings_from_the_clock(
) -> None:
    journal, activated, fence = FakeJournal(), [], FakeFence()
    journal.seqs.put(SeqRecord(KEY, 5000, 40, (7,), 50.0, "gw1", 1.0))
    journal.claim_s = 0.2
    kernel = FakeKernel([KernelSa(KEY, False, 0, 0, (0,), 32)], read_s=0.05, write_s=0.1)
    g = guard(journal, kernel, activated, fence=fence)
    rep = asyncio.run(g.promote())
    (w,) = kernel.writes
    assert (w.oseq, w.seq, w.bitmap) == (5000 + 1 + 576, 40, (7,))
    assert rep.claimed and rep.done and rep.writes == 1 and rep.sas == 1 and rep.max_jump == 5577
    assert (rep.epoch, rep.claim_attempts) == (1, 1) and journal.seqs.sender == ("gw2", 1)
    assert activated == [1] and rep.started == 1_000_100.0 and g.term.epoch == 1
    assert (rep.wait_ms, rep.xfrm_ms, rep.activate_ms, rep.total_ms) == (200.0, 150.0, 0.0, 350.0)
    assert fence.calls == ["revoke_all"] and not fence.permits  # permits come with marks
    assert not g.promoting and g.status()["last_promotion"]["done"]
    g.close()
    assert kernel.closed and fence.closed


def test_a_promoted_backup_is_not_stale_for_its_last_backup_read() -> None:
    journal = FakeJournal()
    kernel = FakeKernel([KernelSa(KEY, False, 0, 0, (0,), 32)])
    g = guard(journal, kernel)
    journal.clock.t += 30.0  # a backup that last read long ago (or never)
    asyncio.run(g.promote())
    assert g.health(g.clock() + 1.0) == []  # the promotion's own read counts


def test_a_claim_is_retried_with_backoff_until_it_commits() -> None:
    journal, activated = FakeJournal(), []
    journal.claim_answer = FailReason.MISSING_LEADER
    clock = journal.clock
    sleep = FakeSleep(clock)
    g = guard(journal, FakeKernel([]), activated, sleep=sleep)
    calls: list[int] = []
    real = journal.claim

    def claim(callback: Any, grant: Any = None) -> None:
        calls.append(1)
        if len(calls) == 4:
            journal.claim_answer = FailReason.SUCCESS
        real(callback, grant)
    journal.claim = claim  # type: ignore[method-assign]
    rep = asyncio.run(g.promote())
    assert rep.claimed and rep.claim_attempts == 4 and activated == [1]
    assert g.stats.claim_failed == {"MISSING_LEADER": 3}
    assert sleep.calls == [0.05, 0.1, 0.2]  # the backoff doubles


def test_a_claim_that_never_answers_times_out_and_the_promotion_ends_with_the_role() -> None:
    journal, activated, role = FakeJournal(), [], [True]
    journal.claim_answer = None
    sleep = FakeSleep(journal.clock)
    g = guard(journal, FakeKernel([KernelSa(KEY, False, 0, 0, (0,), 32)]), activated,
              sleep=sleep, master=role)

    async def promote_then_backup() -> Any:
        task = asyncio.ensure_future(g.promote())
        while journal.claims < 3:
            await asyncio.sleep(0)
        role[0] = False  # VRRP BACKUP: the loop ends after this attempt
        return await task
    rep = asyncio.run(promote_then_backup())
    assert not rep.claimed and not rep.done and rep.claim_attempts == 3
    assert g.stats.claim_failed == {"TIMEOUT": 3} and activated == [] and g.term.epoch is None
    assert rep.errors == ["claim not committed after 3 attempts: no activation, nothing sent"]
    assert g.kernel.writes == []  # type: ignore[attr-defined]


def test_a_cancelled_promotion_reports_its_claim_unfinished() -> None:
    journal = FakeJournal()
    journal.claim_answer = None

    async def cancel() -> None:
        g = guard(journal, FakeKernel([]))
        task = asyncio.ensure_future(g.promote())
        while journal.claims < 1:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert g.last_promotion is not None and not g.last_promotion.claimed
        assert g.last_promotion.claim_attempts == 1 and not g.promoting
    asyncio.run(cancel())


def test_a_bug_in_the_claim_propagates() -> None:
    journal, activated = FakeJournal(), []

    def broken(callback: Any, grant: Any = None) -> None:
        raise AttributeError("a bug in the journal")
    journal.claim = broken  # type: ignore[method-assign]
    kernel = FakeKernel([KernelSa(KEY, False, 0, 0, (0,), 32)])
    g = guard(journal, kernel, activated)
    with pytest.raises(AttributeError, match="a bug in the journal"):
        asyncio.run(g.promote())
    assert activated == [] and kernel.writes == [] and not g.promoting


def test_promotion_reads_the_kernel_again_after_an_error() -> None:
    journal, activated = FakeJournal(), []
    journal.seqs.put(SeqRecord(KEY, 5000, 0, (0,), 0.0, "gw1", 1.0))
    kernel = FakeKernel([KernelSa(KEY, False, 0, 0, (0,), 32)])
    kernel.fail_reads, kernel.error = 1, _timeout
    rep = asyncio.run(guard(journal, kernel, activated).promote())
    assert kernel.reads == 2 and rep.writes == 1 and kernel.writes[0].oseq == 5000 + 577
    assert rep.errors and rep.errors[0].startswith("read 1 of 3:") and activated == [1]


def test_promotion_gives_up_after_three_reads_and_still_activates(caplog: Any) -> None:
    journal, activated = FakeJournal(), []
    kernel = FakeKernel([KernelSa(KEY, False, 0, 0, (0,), 32)])
    kernel.fail_reads, kernel.error = 5, _timeout
    with caplog.at_level(logging.INFO, logger="hasync.guard"):
        rep = asyncio.run(guard(journal, kernel, activated).promote())
    assert kernel.reads == 3 and rep.writes == 0 and activated == [1] and rep.done
    assert [e.split(":")[0] for e in rep.errors] == ["read 1 of 3", "read 2 of 3", "read 3 of 3"]
    lines = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("promoted: sender epoch 1 claimed") for m in lines)
    assert sum(m.startswith("promotion: read") for m in lines) == 3


def test_a_bug_in_the_kernel_read_of_a_promotion_propagates() -> None:
    journal, activated = FakeJournal(), []
    kernel = FakeKernel([KernelSa(KEY, False, 0, 0, (0,), 32)])
    kernel.fail_reads, kernel.error = 1, lambda: TypeError("a bug")
    with pytest.raises(TypeError):
        asyncio.run(guard(journal, kernel, activated).promote())
    assert activated == []


def test_a_promotion_waits_for_a_tick_using_the_kernel() -> None:
    journal = FakeJournal()
    kernel = FakeKernel([KernelSa(KEY, False, 100, 0, (0,), 32)])
    g = guard(journal, kernel)

    async def both() -> None:
        kernel.gate = asyncio.Event()
        tick = asyncio.ensure_future(g.tick(master=False))
        await asyncio.sleep(0)  # the tick holds the kernel, its read waits at the gate
        promotion = asyncio.ensure_future(g.promote())
        for _ in range(5):
            await asyncio.sleep(0)
        assert kernel.calls == ["read"]  # the promotion claimed and waits
        kernel.gate.set()
        await tick
        await promotion
    asyncio.run(both())
    assert kernel.calls == ["read", "read", "write"]  # no record: the backup writes nothing


def test_a_master_tick_journals_and_a_backup_tick_prejumps() -> None:
    journal = FakeJournal()
    kernel = FakeKernel([KernelSa(KEY, False, 100, 0, (0,), 32)])
    g = guard(journal, kernel)
    sender(g)

    async def tick() -> None:
        await g.tick(master=True)
        await asyncio.sleep(0)  # the commit callback runs on the loop
    asyncio.run(tick())
    entry = journal.entries[0]
    assert entry.records[0].mark == 100 + 768 and entry.epoch == 1
    assert entry.ts == 1_000_100.0
    assert not g.flight.open and g.stats.committed == g.stats.accepted == 1
    assert g.term.pending[KEY] == Permit(KEY, 100, 868, False)  # granted at the next step
    backup_kernel = FakeKernel([KernelSa(KEY, False, 0, 0, (0,), 32)])
    backup = guard(journal, backup_kernel)
    asyncio.run(backup.tick(master=False))
    assert backup_kernel.writes[0].oseq == 868 + 1 + 576 and backup.stats.prejumps == 1


def test_a_sender_with_nothing_due_commits_an_empty_entry_every_beacon() -> None:
    journal = FakeJournal()
    g = guard(journal, FakeKernel([]))  # idle: no SA, nothing to renew
    sender(g)

    async def tick() -> None:
        await g.tick(master=True)
        await asyncio.sleep(0)
    asyncio.run(tick())
    asyncio.run(tick())  # within BEACON_S of the first: nothing
    assert [(e.records, e.gone, e.epoch) for e in journal.entries] == [((), (), 1)]
    stale = journal.seqs.view()
    journal.clock.t += BEACON_S
    asyncio.run(tick())
    assert len(journal.entries) == 2 and journal.seqs.view() == (1, stale[1] + 1)
    assert journal.seqs.claim("gw3", stale) is None  # a claim from before the beacon: stale


def test_a_master_that_is_not_the_sender_journals_nothing() -> None:
    journal = FakeJournal()
    g = guard(journal, FakeKernel([KernelSa(KEY, False, 100, 0, (0,), 32)]))
    asyncio.run(g.tick(master=True))
    assert journal.entries == [] and g.stats.ticks == 1 and not g.term.pending


def test_a_rejected_entry_grants_nothing() -> None:
    journal = FakeJournal()
    g = guard(journal, FakeKernel([KernelSa(KEY, False, 100, 0, (0,), 32)]))
    sender(g)
    journal.seqs.claim("gw1", journal.seqs.view())  # gw1 claims after: gw2's entries are rejected

    async def tick() -> None:
        await g.tick(master=True)
        await asyncio.sleep(0)
    asyncio.run(tick())
    assert g.stats.committed == g.stats.rejected == 1 and g.stats.accepted == 0
    assert not g.term.pending and not g.term.held and journal.seqs.records == {}


def test_a_failed_commit_is_counted_by_name_and_frees_the_next_renewal() -> None:
    journal = FakeJournal()
    journal.answer = FailReason.NOT_LEADER
    kernel = FakeKernel([KernelSa(KEY, False, 100, 0, (0,), 32)])
    g = guard(journal, kernel)
    sender(g)

    async def ticks() -> None:
        await g.tick(master=True)
        await asyncio.sleep(0)
        journal.answer = FailReason.SUCCESS
        await g.tick(master=True)
        await asyncio.sleep(0)
    asyncio.run(ticks())
    assert g.stats.failed == 1 and g.stats.commit_failed == {"NOT_LEADER": 1}
    assert g.stats.committed == 1 and g.status()["loop"]["commit_failed"] == {"NOT_LEADER": 1}


def test_renewals_wait_while_a_submission_is_in_flight() -> None:
    journal = FakeJournal()
    journal.hold = True
    kernel = FakeKernel([KernelSa(KEY, False, 100, 0, (0,), 32)])
    g = guard(journal, kernel)
    sender(g)

    async def ticks() -> None:
        await g.tick(master=True)
        kernel.sas = [KernelSa(KEY, False, 800, 0, (0,), 32)]  # a renewal is due
        await g.tick(master=True)
        assert len(journal.held) == 1 and g.status()["in_flight"]
        journal.answer_held()
        await asyncio.sleep(0)
        assert not g.flight.open and g.term.held[KEY] == Held(100, 868)
        await g.tick(master=True)
    asyncio.run(ticks())
    assert len(journal.held) == 1 and journal.held[0][0].records[0].mark == 800 + 768
    assert g.tracker.stats.violations == 0


def test_a_late_answer_to_an_earlier_submission_leaves_a_newer_one_open() -> None:
    flight = MarkFlight()
    first = flight.start()
    assert first == 1 and flight.start() is None
    flight.answered(first, ok=False, last=False)  # one entry failed: free for a retry
    second = flight.start()
    assert second == 2
    flight.answered(first, ok=True, last=True)  # the first submission's last entry, late
    assert flight.open and flight.start() is None
    flight.answered(second, ok=True, last=True)
    assert not flight.open


def test_a_submission_raft_never_answers_is_given_up_after_the_stall_bound() -> None:
    """A forwarded command whose message was lost is never answered by pysyncobj while the
    leader stays: without a bound the sender would never submit marks again (fenced)."""
    flight = MarkFlight()
    first = flight.start(10.0)
    assert not flight.expire(13.9, 4.0) and flight.open
    assert flight.expire(14.1, 4.0) and not flight.open
    assert flight.start(14.2) == first + 1
    flight.answered(first, ok=True, last=True)  # the lost one answers after all: ignored
    assert flight.open


def sender_whose_submit_raises(exc: Exception) -> Guard:
    """The sender gw2 over one SA, its journal's `submit_seq` raising `exc`."""
    journal = FakeJournal()

    def submit_seq(entry: Any, callback: Any) -> None:
        raise exc
    journal.submit_seq = submit_seq  # type: ignore[method-assign]
    g = guard(journal, FakeKernel([KernelSa(KEY, False, 100, 0, (0,), 32)]))
    sender(g)
    return g


def test_an_entry_that_cannot_be_sealed_is_logged_with_its_traceback_and_counted(
        caplog: Any) -> None:
    g = sender_whose_submit_raises(EntryError("packed entry too large"))
    with caplog.at_level(logging.ERROR, logger="hasync.guard"):
        asyncio.run(g.tick(master=True))
    (record,) = caplog.records
    assert record.exc_info is not None and "submit_errors" in record.getMessage()
    assert g.status()["loop"]["submit_errors"] == 1 and not g.flight.open


def test_any_other_submit_failure_propagates() -> None:
    g = sender_whose_submit_raises(KeyError("a bug"))
    with pytest.raises(KeyError):
        asyncio.run(g.tick(master=True))


def test_a_bug_in_a_tick_propagates_out_of_the_loop() -> None:
    """Formerly `suppress(Exception)` around the tick: the guard died silently."""
    journal = FakeJournal()
    kernel = FakeKernel([])
    kernel.fail_reads, kernel.error = 1, lambda: ValueError("a bug")
    g = guard(journal, kernel)
    with pytest.raises(ValueError, match="a bug"):
        asyncio.run(g.run(lambda: True, lambda: 0))
    assert g.stats.kernel_errors == 0


def test_a_slow_read_makes_the_loop_rest() -> None:
    journal = FakeJournal()
    journal.seqs.put(SeqRecord(KEY, 5000, 0, (0,), 1000.0, "gw1", 1.0))
    kernel = FakeKernel([KernelSa(KEY, False, 0, 0, (0,), 32)], read_s=0.6)
    g = guard(journal, kernel)
    assert g.costs.rest_s() == 0.0
    asyncio.run(g.tick(master=False))  # a dump of thousands of SAs on a slow CPU
    assert g.costs.rest_s() == pytest.approx(3 * 0.6)  # REST_K = 3: at most a quarter CPU
    assert kernel.writes[0].oseq == 5577  # the target, past what a race may add (100)
    assert g.stats.read_max_ms == 600.0


def test_a_backup_writes_outbound_moves_only_and_rests_for_its_read_alone() -> None:
    key_in = ("192.0.2.1", 0xC0FFEE02, 50)
    journal = FakeJournal()
    journal.seqs.put(SeqRecord(KEY, 5000, 0, (0,), 0.0, "gw1", 1.0))
    journal.seqs.put(SeqRecord(key_in, 0, 900, (0xFF,), 0.0, "gw1", 1.0))
    kernel = FakeKernel([KernelSa(KEY, False, 0, 0, (0,), 32),
                         KernelSa(key_in, False, 10_000, 10, (0,), 32)], write_s=0.3)
    g = guard(journal, kernel)  # 2000 NEWAE under QEMU/TCG: 46 s
    asyncio.run(g.tick(master=False))
    assert [w.sa.key for w in kernel.writes] == [KEY]  # the inbound SA waits for promotion
    assert g.stats.write_ms == 300.0 and g.costs.rest_s() == 0.0  # writes do not make it rest
    kernel.writes.clear()
    rep = asyncio.run(g.promote())
    assert [w.sa.key for w in kernel.writes] == [KEY, key_in] and rep.writes == 2


def test_a_guard_that_cannot_read_the_kernel_says_so_once_and_again_when_it_can(
        caplog: Any) -> None:
    kernel = FakeKernel([KernelSa(KEY, False, 0, 0, (0,), 32)])
    kernel.fail_reads, kernel.error = 3, _timeout
    g = guard(FakeJournal(), kernel)
    with caplog.at_level(logging.INFO, logger="hasync.guard"):
        for _ in range(4):
            asyncio.run(g.tick(master=False))
    lines = [r.getMessage() for r in caplog.records]
    assert sum("cannot read or write the kernel's SAs" in m for m in lines) == 1
    assert any("works again, after 3 failures" in m for m in lines)
    assert g.stats.kernel_errors == 3 and g.failing == 0


def test_a_backup_loop_reads_when_due_or_woken_and_waits_its_backup_tick() -> None:
    clock = Clock()
    journal = FakeJournal(clock)
    kernel = FakeKernel([KernelSa(KEY, False, 0, 0, (0,), 32)])
    sleep = FakeSleep(clock, ["pass", "pass", "wake", "pass", "stop"])
    g = guard(journal, kernel, sleep=sleep)
    with pytest.raises(Stop):
        asyncio.run(g.run(lambda: False, lambda: 0))
    # read (first), rest 0, wait 1 s; not due; woken: read, rest 0; wait (stopped)
    assert kernel.reads == 2 and sleep.calls == [0.0, 1.0, 1.0, 0.0, 1.0]
    g.wake_threadsafe()  # the loop is closed now: nothing to wake, nothing raised


def test_a_master_loop_reads_every_tick_and_rests_after_slow_reads() -> None:
    clock = Clock()
    journal = FakeJournal(clock)
    kernel = FakeKernel([KernelSa(KEY, False, 10, 0, (0,), 32)], read_s=0.2)
    sleep = FakeSleep(clock, ["pass", "pass", "pass", "stop"])
    with pytest.raises(Stop):
        asyncio.run(guard(journal, kernel, sleep=sleep).run(lambda: True, lambda: 0))
    assert kernel.reads == 2 and sleep.calls == pytest.approx([0.6, 0.1, 0.6, 0.1])


def test_no_tick_starts_while_a_promotion_runs() -> None:
    kernel = FakeKernel([KernelSa(KEY, False, 0, 0, (0,), 32)])
    g = guard(FakeJournal(), kernel)
    g.promoting = True
    assert asyncio.run(g.step(master=True, mirrored=0)) is None and kernel.reads == 0
    g.promoting = False
    assert asyncio.run(g.step(master=True, mirrored=0)) == 0.0 and kernel.reads == 1


# ---- the fence ----
def test_the_first_step_sets_the_fence_up_and_grants_what_was_accepted() -> None:
    journal, fence = FakeJournal(), FakeFence()
    g = guard(journal, FakeKernel([KernelSa(KEY, False, 100, 0, (0,), 32)]), fence=fence)
    sender(g)

    async def steps() -> None:
        await g.step(master=True, mirrored=0)  # setup; the tick submits the first mark
        assert fence.calls == ["setup"] and not fence.permits  # no counts before the grant
        await asyncio.sleep(0)  # the commit: accepted, the step is woken
        assert g._wake.is_set()
        await g.step(master=True, mirrored=0)
    asyncio.run(steps())
    assert fence.calls == ["setup", "grant", "counts"]  # counts once the term holds permits
    assert fence.permits == {KEY: Permit(KEY, 100, 868, False)} and not g.term.pending
    assert g.status()["fence"]["permits"] == 1


def test_a_node_that_stops_being_master_revokes_every_permit() -> None:
    journal, fence, role = FakeJournal(), FakeFence(), [True]
    g = guard(journal, FakeKernel([KernelSa(KEY, False, 100, 0, (0,), 32)]), fence=fence,
              master=role)
    sender(g)

    async def steps() -> None:
        await g.step(master=True, mirrored=0)
        await asyncio.sleep(0)
        await g.step(master=True, mirrored=0)
        assert fence.permits
        role[0] = False
        await g.step(master=False, mirrored=0)
    asyncio.run(steps())
    assert fence.permits == {} and fence.calls[-2:] == ["revoke_all", "prepare"]
    assert g.term.epoch is None and g.stats.revocations == 1


def test_a_node_deposed_by_another_claim_revokes_and_health_says_not_sender(
        caplog: Any) -> None:
    journal, fence = FakeJournal(), FakeFence()
    g = guard(journal, FakeKernel([KernelSa(KEY, False, 100, 0, (0,), 32)]), fence=fence)
    sender(g)
    asyncio.run(g.step(master=True, mirrored=0))  # the fence is set up, the first mark made
    asyncio.run(g.step(master=True, mirrored=0))  # and granted
    assert KEY in fence.permits and "revoke_all" not in fence.calls
    journal.seqs.claim("gw1", journal.seqs.view())
    with caplog.at_level(logging.WARNING, logger="hasync.guard"):
        asyncio.run(g.step(master=True, mirrored=0))
    assert g.stats.deposed == 1 and g.deposed_by == ("gw1", 2) and g.term.epoch is None
    assert fence.calls[0] == "setup" and "revoke_all" in fence.calls and not fence.permits
    assert g.health(g.clock()) == ["not_sender"]
    assert any("deposed: gw1 claimed sender epoch 2" in r.getMessage() for r in caplog.records)


def test_a_later_claim_of_its_own_starts_a_new_term_without_revoking() -> None:
    journal = FakeJournal()
    g = guard(journal, FakeKernel([]))
    sender(g)
    journal.seqs.claim("gw2", journal.seqs.view())  # a retried claim that committed after the first
    asyncio.run(g.step(master=True, mirrored=0))
    assert g.term.epoch == 2 and g.stats.deposed == 0


def test_a_failing_fence_is_counted_logged_once_and_makes_health_fail(caplog: Any) -> None:
    fence = FakeFence()
    fence.fail = True
    g = guard(FakeJournal(), FakeKernel([]), fence=fence)
    with caplog.at_level(logging.INFO, logger="hasync.guard"):
        for _ in range(3):
            asyncio.run(g.step(master=False, mirrored=0))
        assert g.health(g.clock()) == ["fence_failing"] and g.stats.fence_errors == 3
        fence.fail = False
        asyncio.run(g.step(master=False, mirrored=0))
    lines = [r.getMessage() for r in caplog.records]
    assert sum("the send fence failed" in m for m in lines) == 1
    assert any("works again, after 3 failures" in m for m in lines)
    assert g.health(g.clock()) == [] and g.status()["fence"]["failing"] == 0


def test_fenced_counts_are_read_at_most_every_second_and_logged_once_per_onset(
        caplog: Any) -> None:
    journal, fence = FakeJournal(), FakeFence()
    g = guard(journal, FakeKernel([KernelSa(KEY, False, 0, 0, (0,), 32)]), fence=fence)

    async def sync_and_count() -> None:  # as each step does: the counts after the marks
        await g.fence_sync(master=False)
        await g.fencing.count(master=True)
    with caplog.at_level(logging.WARNING, logger="hasync.guard"):
        fence.dropped[KEY] = 5
        asyncio.run(sync_and_count())
        fence.dropped[KEY] = 9
        asyncio.run(sync_and_count())  # too soon: not read
        assert g.status()["fence"]["fenced"] == {"c0ffee01@192.0.2.101": 5}
        journal.clock.t += 1.0
        asyncio.run(sync_and_count())  # still dropping: no new line
        journal.clock.t += 1.0
        asyncio.run(sync_and_count())  # stopped dropping
        fence.dropped[KEY] = 10
        journal.clock.t += 1.0
        asyncio.run(sync_and_count())  # a new onset
    assert fence.calls.count("counts") == 4
    assert g.status()["fence"]["fenced"] == {"c0ffee01@192.0.2.101": 10}
    assert sum("SAs fenced" in r.getMessage() for r in caplog.records) == 2


def test_sas_gone_from_the_kernel_are_forgotten_by_the_fence() -> None:
    journal, fence = FakeJournal(), FakeFence()
    kernel = FakeKernel([KernelSa(KEY, False, 100, 0, (0,), 32)])
    g = guard(journal, kernel, fence=fence)
    sender(g)

    async def steps() -> None:
        await g.step(master=True, mirrored=0)
        await asyncio.sleep(0)
        await g.step(master=True, mirrored=0)
        kernel.sas = []
        await g.step(master=True, mirrored=0)  # the read finds it gone
        await g.step(master=True, mirrored=0)  # the fence forgets it
    asyncio.run(steps())
    assert "forget" in fence.calls and fence.permits == {} and g.term.held == {}


def test_health_names_a_stale_or_failing_kernel_and_a_claim_pending_past_its_grace() -> None:
    journal = FakeJournal()
    kernel = FakeKernel([])
    g = guard(journal, kernel)
    now = g.clock()
    assert g.health(now) == []
    # a master reads every tick: stale past the bound and one tick (its reads cost nothing)
    assert g.health(now + STALL_S + 0.1) == []
    assert g.health(now + STALL_S + 0.2) == ["guard_kernel_stale"]
    asyncio.run(g.step(master=True, mirrored=0))  # master since now, not the sender
    assert g.health(now + 1.0) == []
    assert g.health(now + STALL_S + 0.2) == ["guard_kernel_stale", "not_sender"]
    kernel.fail_reads, kernel.error = 1, _timeout
    asyncio.run(g.tick(master=False))
    assert "guard_kernel_failing" in g.health(g.clock())


def test_the_stall_bound_is_the_one_the_daemon_passes() -> None:
    journal = FakeJournal()
    g = guard(journal, FakeKernel([]))
    g.stall_s = 8.0  # the daemon passes [cluster] quorum_timeout_ms: an election's bound
    now = g.clock()
    asyncio.run(g.step(master=True, mirrored=0))
    assert "not_sender" not in g.health(now + STALL_S + 0.1)
    assert g.health(now + 8.2) == ["guard_kernel_stale", "not_sender"]


def test_a_guard_reading_slowly_as_paced_is_not_stale() -> None:
    """At 1082 SAs under QEMU/TCG a master's read took seconds and it rests 3 times as long
    (D59): with the bound alone its health flapped and keepalived moved the VIPs (D258)."""
    journal = FakeJournal()
    kernel = FakeKernel([KernelSa(KEY, False, 10, 0, (0,), 32)], read_s=4.0)
    g = guard(journal, kernel)
    g.stall_s = 12.0  # the lab's quorum_timeout_ms
    asyncio.run(g.tick(master=True))
    done = g.clock()  # a read of 4 s, then a rest of 12 s and a tick before the next one
    assert g.health(done + 12.0 + 4 * 4.0) == []
    assert g.health(done + 12.0 + 4 * 4.0 + 0.2) == ["guard_kernel_stale"]


def test_a_child_add_wakes_the_loop() -> None:
    g = guard(FakeJournal(), FakeKernel([]))
    g.wake()
    assert g._wake.is_set()


def test_status_shows_the_sender_and_the_fence() -> None:
    journal = FakeJournal()
    g = guard(journal, FakeKernel([]))
    epoch = sender(g)
    st = g.status()
    assert st["sender"] == {"node": "gw2", "epoch": epoch} and st["epoch"] == epoch
    assert st["fence"] == {"permits": 0, "pending": 0, "fenced": {}, "unknown": 0,
                           "errors": 0, "failing": 0}


def test_a_mark_accepted_while_the_loop_rests_is_granted_at_once() -> None:
    """A slow read makes the loop rest 3 x its time (pacing.REST_K); the fence is what holds
    a new master's traffic, so the first marks' permits must not wait for the rest's end."""
    clock = Clock()
    journal = FakeJournal(clock)
    journal.hold = True  # the marks commit while the loop rests
    kernel = FakeKernel([KernelSa(KEY, False, 10, 0, (0,), 32)], read_s=0.5)
    fence = FakeFence()
    sleep = FakeSleep(clock, ["pass", "stop"])
    g = guard(journal, kernel, sleep=sleep, fence=fence)
    sender(g)
    real = sleep.__call__

    async def resting(seconds: float) -> None:
        if seconds == pytest.approx(1.5) and journal.held:  # the rest after the first read
            clock.t += 0.2
            journal.answer_held()  # accepted: MarkSender wakes the fence (wake_grant)
            await asyncio.Event().wait()  # the grant ends the rest's wait, which cancels this
        await real(seconds)
    g.sleep = resting  # type: ignore[assignment]
    with pytest.raises(Stop):  # without the grant mid-rest: a TimeoutError
        asyncio.run(asyncio.wait_for(g.run(lambda: True, lambda: 0), 5))
    assert KEY in fence.permits and kernel.reads == 1  # granted mid-rest, no second read
    assert sleep.calls[0] == pytest.approx(1.3)  # then the rest of the rest


def test_a_promotion_notes_when_its_term_was_marked_accepted_and_granted() -> None:
    clock = Clock()
    journal = FakeJournal(clock)
    journal.hold = True
    kernel = FakeKernel([KernelSa(KEY, False, 10, 0, (0,), 32)])
    fence = FakeFence()
    g = guard(journal, kernel, fence=fence)

    async def go() -> None:
        await g.promote()
        assert g._wake.is_set()  # the first marks go at once, not a tick later
        clock.t += 0.05
        await g.step(master=True, mirrored=0)  # read, marks submitted
        clock.t += 0.1
        journal.answer_held()
        await asyncio.sleep(0)  # the answer reaches the loop
        await g.step(master=True, mirrored=0)  # accepted, granted
    asyncio.run(go())
    rep = g.last_promotion
    assert rep is not None and KEY in fence.permits
    assert (rep.marks_ms, rep.accepted_ms, rep.granted_ms) == (50.0, 150.0, 150.0)


def test_the_first_marks_after_a_promotion_start_from_its_read() -> None:
    """No second dump before the new term's first marks (seconds at 1000 SAs under TCG):
    the promotion's read, its writes taken as done, and not when it is old or on a backup."""
    journal = FakeJournal()
    journal.seqs.put(SeqRecord(KEY, 5000, 0, (0,), 50.0, "gw1", 1.0))
    kernel = FakeKernel([KernelSa(KEY, False, 0, 0, (0,), 32)])
    g = guard(journal, kernel)
    asyncio.run(g.promote())
    assert kernel.reads == 1 and [w.oseq for w in kernel.writes] == [5577]
    asyncio.run(g.step(master=True, mirrored=0))
    assert kernel.reads == 1 and g.stats.fresh_reads == 1  # the promotion's read served
    assert len(kernel.writes) == 1  # taken as written: no second jump
    assert g.term.held[KEY].lo == 5577  # the claim's permit starts there (D261): nothing due
    assert all(not e.records for e in journal.entries)  # but the term's beacon
    asyncio.run(g.step(master=True, mirrored=0))
    assert kernel.reads == 2  # once only

    late = guard(FakeJournal(), kernel)
    asyncio.run(late.promote())
    late.clock.t += 1.5  # older than FRESH_S: read again
    asyncio.run(late.step(master=True, mirrored=0))
    assert kernel.reads == 4 and late.stats.fresh_reads == 0
    queued = guard(FakeJournal(), kernel)  # a backup tick queued behind the promotion
    asyncio.run(queued.promote())
    asyncio.run(queued.tick(master=False))
    assert kernel.reads == 6 and queued.stats.fresh_reads == 0  # it reads the kernel
    asyncio.run(queued.step(master=True, mirrored=0))
    assert kernel.reads == 6 and queued.stats.fresh_reads == 1  # and leaves it to the master


def test_a_promotion_that_ends_while_the_loop_rests_ends_the_rest() -> None:
    """VRRP makes a backup master while its guard rests after a slow read (3 x the read,
    seconds at 1000 SAs under TCG): the first marks must not wait for the rest's end."""
    clock = Clock()
    journal = FakeJournal(clock)
    kernel = FakeKernel([KernelSa(KEY, False, 10, 0, (0,), 32)], read_s=0.5)
    g = guard(journal, kernel)
    master = [False]
    resting: list[float] = []
    real = FakeSleep(clock)

    async def sleep(seconds: float) -> None:
        if seconds == pytest.approx(1.5) and not resting:  # the rest after the backup's read
            resting.append(seconds)
            master[0] = True
            await g.promote()  # VRRP MASTER: Effects runs it beside the loop
            await asyncio.Event().wait()  # the promotion's end cancels this rest
        if len(real.calls) > 3:
            raise Stop
        await real(seconds)
    g.sleep = sleep  # type: ignore[assignment]
    with pytest.raises(Stop):  # without: a TimeoutError
        asyncio.run(asyncio.wait_for(g.run(lambda: master[0], lambda: 0), 5))
    assert resting and journal.entries and journal.entries[0].records  # marks went out
    assert g.stats.fresh_reads == 1  # from the promotion's read, taken at once


def test_a_promotion_holds_the_claims_own_permits_and_the_next_step_grants_them() -> None:
    """D261: the claim commits the term's first marks, so the fence grants them at the step
    after the promotion with no mark committed; the kernel is written before any is held."""
    clock = Clock()
    journal = FakeJournal(clock)
    journal.seqs.put(SeqRecord(KEY, 5000, 40, (7,), 50.0, "gw1", 1.0))
    journal.hold = True  # no SEQ entry commits in this test
    fence = FakeFence()
    kernel = FakeKernel([KernelSa(KEY, False, 10, 0, (0,), 32)])
    g = guard(journal, kernel, fence=fence)
    held_at_write: list[dict[Any, Held]] = []
    real_write = kernel.write

    async def write(writes: Any) -> Any:
        held_at_write.append({**g.term.held, **g.term.pending})
        return await real_write(writes)
    kernel.write = write  # type: ignore[method-assign]

    async def go() -> None:
        await g.promote()
        clock.t += 0.05
        await g.step(master=True, mirrored=0)
    asyncio.run(go())
    lo = 5000 + 1 + 576
    assert held_at_write == [{}] and [w.oseq for w in kernel.writes] == [lo]
    assert fence.permits[KEY] == Permit(KEY, lo, lo + 768, False)
    assert all(not entry.records for entry, _ in journal.held)  # only the term's beacon
    rep = g.last_promotion
    assert rep is not None and rep.granted_ms == 50.0 and rep.accepted_ms is not None


def test_a_revoke_runs_no_command_on_a_fence_that_surely_holds_nothing() -> None:
    journal, fence = FakeJournal(), FakeFence()
    g = guard(journal, FakeKernel([KernelSa(KEY, False, 100, 0, (0,), 32)]), fence=fence)
    asyncio.run(g.fence_sync(master=False))  # set up: empty
    asyncio.run(g.fencing.new_term(g.flight))
    assert "revoke_all" not in fence.calls and g.stats.revocations == 0
    sender(g)
    fence.fail = True  # a grant that fails may still have landed in the kernel
    g.term.pending[KEY] = Permit(KEY, 0, 10, False)
    asyncio.run(g.fence_sync(master=True))
    fence.fail = False
    asyncio.run(g.fencing.new_term(g.flight))
    assert fence.calls[-1] == "revoke_all" and g.stats.revocations == 1


def test_a_backup_reads_the_fences_counters_ten_times_less_often() -> None:
    journal, fence = FakeJournal(), FakeFence()
    g = guard(journal, FakeKernel([]), fence=fence)
    asyncio.run(g.fence_sync(master=False))
    for _ in range(12):
        asyncio.run(g.fencing.count(master=False))
        journal.clock.t += 1.0
    assert fence.calls.count("counts") == 2  # at 0 s and 10 s


def test_a_backup_prepares_what_its_claim_would_grant_and_the_promotion_only_links_it() -> None:
    """D262: after a backup's tick the fence holds, unlinked, each SA's permit as the claim
    would make it now; the promotion's grant of that same permit finds it ready."""
    journal, fence, role = FakeJournal(), FakeFence(), [False]
    journal.seqs.put(SeqRecord(KEY, 5000, 0, (0,), 50.0, "gw1", 1.0))
    g = guard(journal, FakeKernel([KernelSa(KEY, False, 10, 0, (0,), 32)]), fence=fence,
              master=role)
    asyncio.run(g.step(master=False, mirrored=0))
    lo = 5000 + 1 + 576
    assert fence.prepared == {KEY: Permit(KEY, lo, lo + 768, False)} and fence.permits == {}
    role[0] = True

    async def promote() -> None:
        await g.promote()
        await g.step(master=True, mirrored=0)
    asyncio.run(promote())
    assert fence.permits == fence.prepared
    sender_calls = fence.calls[fence.calls.index("prepare") + 1:]
    assert "prepare" not in sender_calls  # the sender's grants own its chains


def test_a_promotion_restores_inbound_state_after_the_others_permits_and_before_its_own(
) -> None:
    """D263: the writes that move no outbound counter (inbound replay state) wait until the
    other SAs' permits are held and charon is active; their own SAs' permits come after."""
    journal, fence, activated = FakeJournal(), FakeFence(), []
    inbound = ("192.0.2.1", 0xBEEF, 50)
    journal.seqs.put(SeqRecord(KEY, 5000, 0, (0,), 0.0, "gw1", 1.0))
    journal.seqs.put(SeqRecord(inbound, 5000, 90, (1,), 0.0, "gw1", 1.0))
    lo = 5000 + 1 + 576
    kernel = FakeKernel([KernelSa(KEY, False, 10, 0, (0,), 32),
                         KernelSa(inbound, False, lo + 64, 0, (0,), 32)])
    g = guard(journal, kernel, activated, fence=fence)
    seen: list[tuple[list[Any], set[Any], int]] = []
    real_write = kernel.write

    async def write(writes: Any) -> Any:
        seen.append(([w.sa.key for w in writes], set(g.term.held), len(activated)))
        return await real_write(writes)
    kernel.write = write  # type: ignore[method-assign]
    rep = asyncio.run(g.promote())
    assert seen == [([KEY], set(), 0), ([inbound], {KEY}, 1)]
    assert set(g.term.held) == {KEY, inbound} and rep.writes == 2 and rep.inbound_ms == 0.0


def test_a_promotion_preempts_a_backups_fence_chore() -> None:
    """D263: a backup's counts (or standby permits) running when the promotion starts end
    there, so the new term's grant does not wait behind three nft runs."""
    journal, fence = FakeJournal(), FakeFence()
    g = guard(journal, FakeKernel([]), fence=fence)
    hang = asyncio.Event()

    async def counts() -> Any:
        await hang.wait()  # an nft that takes seconds under TCG
    fence.counts = counts  # type: ignore[method-assign]

    async def go() -> None:
        await g.fence_sync(master=False)
        chore = asyncio.ensure_future(g.fencing.count(master=False))
        await asyncio.sleep(0)
        await g.fencing.new_term(g.flight)
        await asyncio.wait_for(chore, 1.0)  # ended, not hung
        async with g.fencing._lock:  # and the fence is free
            pass
    asyncio.run(go())
    assert g.stats.fence_preempted == 1


def test_the_drop_counters_wait_ten_times_their_last_reads_duration() -> None:
    """D279: a read of the fence's counters grows with the SAs and holds the fence and the
    guard's loop; the next waits COUNTS_DUTY times as long as it took, past COUNTS_S."""
    journal, fence = FakeJournal(), FakeFence()
    clock = journal.clock
    g = guard(journal, FakeKernel([]), fence=fence)
    real = fence.counts

    async def slow() -> Any:
        clock.t += 0.5  # the counters of many SAs
        return await real()
    fence.counts = slow  # type: ignore[method-assign]

    async def go() -> list[int]:
        await g.fence_sync(master=True)
        seen = []
        for step in (0.0, 1.5, 3.5):  # the first read; 2 s after it began; 5.5 s after
            clock.t += step
            await g.fencing.count(master=True)
            seen.append(fence.calls.count("counts"))
        return seen
    assert asyncio.run(go()) == [1, 1, 2]


def test_a_promotion_deposed_during_its_writes_holds_none_of_its_claims_permits() -> None:
    journal, fence = FakeJournal(), FakeFence()
    journal.seqs.put(SeqRecord(KEY, 5000, 0, (0,), 0.0, "gw1", 1.0))
    kernel = FakeKernel([KernelSa(KEY, False, 10, 0, (0,), 32)])
    g = guard(journal, kernel, fence=fence)
    real_snapshot = kernel.snapshot

    async def snapshot() -> Any:
        journal.seqs.claim("gw1", journal.seqs.view())  # another node's claim is applied
        await g.fence_sync(master=True)  # and the loop sees it: the term ends
        return await real_snapshot()
    kernel.snapshot = snapshot  # type: ignore[method-assign]
    asyncio.run(g.promote())
    assert g.term.epoch is None and not g.term.held and not g.term.pending
    assert g.stats.deposed == 1 and fence.permits == {}


def _backup_then_promote(kernel_after: list[KernelSa] | None, mark_after: int | None = 5000,
                         watch: FakeWatch | None = None, before: Any = lambda: None
                         ) -> tuple[Guard, FakeKernel, FakeFence, list[dict[Any, Permit]]]:
    """A backup's tick reads KEY at 10 and jumps it; the old master's mark is then
    `mark_after` (journaled again; None: no entry since the tick), the kernel holds
    `kernel_after` (None: KEY where the jump left it), `before` runs and the node promotes;
    what the fence had in force at each of the promotion's reads."""
    journal, fence, role = FakeJournal(), FakeFence(), [False]
    journal.seqs.put(SeqRecord(KEY, 5000, 0, (0,), 50.0, "gw1", 1.0))
    kernel = FakeKernel([KernelSa(KEY, False, 10, 0, (0,), 32)])
    g = guard(journal, kernel, fence=fence, master=role, watch=watch)
    asyncio.run(g.step(master=False, mirrored=0))
    (jump,) = kernel.writes
    if mark_after is not None:
        journal.seqs.put(SeqRecord(KEY, mark_after, 0, (0,), 50.0, "gw1", 1.0))
    kernel.sas = [KernelSa(KEY, False, jump.oseq, 0, (0,), 32)] if kernel_after is None \
        else kernel_after
    kernel.writes, role[0] = [], True
    before()
    at_read: list[dict[Any, Permit]] = []
    real_snapshot = kernel.snapshot

    async def snapshot() -> Any:
        at_read.append(dict(fence.permits))
        return await real_snapshot()
    kernel.snapshot = snapshot  # type: ignore[method-assign]
    asyncio.run(g.promote())
    return g, kernel, fence, at_read


LO = 5000 + 1 + 576  # the claim's permit of KEY: (LO, LO + 768]


def test_a_promotion_grants_the_sas_of_its_last_read_before_it_reads_the_kernel() -> None:
    """D265: the claim's permits of the SAs the backup last read are in force before the
    promotion reads the kernel; the backup kept their counters at lo: nothing is written."""
    g, kernel, fence, at_read = _backup_then_promote([KernelSa(KEY, False, LO, 0, (0,), 32)])
    assert at_read == [{KEY: Permit(KEY, LO, LO + 768, False)}]
    assert kernel.writes == [] and g.term.held[KEY] == Held(LO, LO + 768, claimed=True)
    assert "grant_uncounted" in fence.calls  # its counters wait (D266)
    rep = g.last_promotion
    assert rep is not None and rep.granted_ms == rep.wait_ms  # no read before it (fake clock)


def test_a_promotion_writes_an_sa_whose_permit_is_in_force_past_that_permit() -> None:
    """D265: an SA re-created since the backup's read (its counter below the permit's lo) is
    written past the permit's hi: the write re-exposes nothing the permit let out."""
    _, kernel, fence, at_read = _backup_then_promote([KernelSa(KEY, False, 10, 0, (0,), 32)])
    assert at_read == [{KEY: Permit(KEY, LO, LO + 768, False)}]
    assert [w.sa.key for w in kernel.writes] == [KEY]
    assert kernel.writes[0].oseq > LO + 768
    assert fence.permits[KEY] == Permit(KEY, LO, LO + 768, False)


def test_a_claim_that_found_the_backups_records_holds_the_permits_the_backup_prepared(
) -> None:
    """D281: nothing journaled since the backup's tick, so the claim's marks are the ones the
    tick prepared: the promotion takes them whole, with no pass over the records."""
    g, kernel, fence, at_read = _backup_then_promote(None, mark_after=None)
    rep = g.last_promotion
    assert rep is not None and rep.held_from == "prepared" and kernel.writes == []
    assert g.term.held[KEY] == Held(LO, LO + 768, claimed=True)
    assert fence.permits[KEY] == Permit(KEY, LO, LO + 768, False)
    assert all(p == {KEY: Permit(KEY, LO, LO + 768, False)} for p in at_read)  # before reads
    assert g.journal.seqs.records[KEY].mark == LO + 768  # the claim's mark, made on the look


def test_an_sa_the_last_read_left_below_lo_is_written_to_lo_before_its_permit() -> None:
    """D269: the old master moved the mark after the backup's last tick, so the counter lags
    the claim's lo. Its permit waits for the write to lo; granted early, it would make the
    write go past hi and drop the SA's traffic until its first mark."""
    g, kernel, fence, at_read = _backup_then_promote(None, mark_after=9000)
    lo = LO + 4000
    assert g.last_promotion is not None and g.last_promotion.held_from == "records"  # D281
    assert at_read == [{}]
    assert [w.sa.key for w in kernel.writes] == [KEY] and lo <= kernel.writes[0].oseq < lo + 768
    assert g.term.held[KEY] == Held(lo, lo + 768, claimed=True)  # the loop grants it next
    asyncio.run(g.fence_sync(master=True))
    assert fence.permits[KEY] == Permit(KEY, lo, lo + 768, False)


def test_a_backup_write_that_was_refused_counts_for_no_sa() -> None:
    """D269: a refusal does not name its SA: after one, the last read's counters stand."""
    journal, fence, role = FakeJournal(), FakeFence(), [False]
    journal.seqs.put(SeqRecord(KEY, 5000, 0, (0,), 50.0, "gw1", 1.0))
    kernel = FakeKernel([KernelSa(KEY, False, 10, 0, (0,), 32)])
    g = guard(journal, kernel, fence=fence, master=role)
    real_write = kernel.write

    async def refused(writes: Any) -> Any:
        res = await real_write(writes)
        res.errors.append("ESRCH")
        return res
    kernel.write = refused  # type: ignore[method-assign]
    asyncio.run(g.step(master=False, mirrored=0))
    assert kernel.writes and g.reads.floors() == {KEY: 10}
    kernel.write = real_write  # type: ignore[method-assign]
    asyncio.run(g.tick(master=False))
    assert g.reads.floors()[KEY] >= LO


def test_a_promotion_grants_nothing_while_a_backup_tick_may_still_write() -> None:
    """D265: a backup's write planned before the claim could set a counter back below numbers
    a permit in force let out; the early grant waits for that tick to finish."""
    journal, role = FakeJournal(), [False]
    journal.seqs.put(SeqRecord(KEY, 5000, 0, (0,), 50.0, "gw1", 1.0))
    kernel = FakeKernel([KernelSa(KEY, False, 10, 0, (0,), 32)])
    fence = FakeFence()
    g = guard(journal, kernel, fence=fence, master=role)
    asyncio.run(g.step(master=False, mirrored=0))  # KEY is in the last read
    kernel.sas = [KernelSa(KEY, False, 10, 0, (0,), 32)]
    permits_at_write: list[dict[Any, Permit]] = []
    release = asyncio.Event()
    real_write = kernel.write

    async def write(writes: Any) -> Any:
        await release.wait()  # the backup's pre-jump, planned before the claim, is slow
        permits_at_write.append(dict(fence.permits))
        return await real_write(writes)
    kernel.write = write  # type: ignore[method-assign]

    async def go() -> None:
        tick = asyncio.ensure_future(g.tick(master=False))
        await asyncio.sleep(0)
        role[0] = True
        promotion = asyncio.ensure_future(g.promote())
        for _ in range(10):
            await asyncio.sleep(0)
        release.set()
        await tick
        await promotion
    asyncio.run(go())
    assert permits_at_write[0] == {}  # the tick's write landed before any permit
    assert fence.permits[KEY] == Permit(KEY, LO, LO + 768, False)


def _promote_on_notices(changes: dict[Any, Any] | None, then: dict[Any, Any] | None = None
                        ) -> tuple[Guard, FakeKernel, FakeFence, list[dict[Any, Permit]]]:
    """As `_backup_then_promote(None)`, with the kernel's SA notices since the backup's read
    set to `changes` (None: unknown) and, from the promotion's second look on, `then` too."""
    watch = FakeWatch()

    def notices() -> None:
        assert watch.begun == 1  # the backup's read began the account
        watch.now, watch.then = changes, [then] if then else []
    return _backup_then_promote(None, watch=watch, before=notices)


def _row(oseq: int) -> ReplayRow:
    """KEY's new instance as its NEWSA notice shows it."""
    return ReplayRow(KEY[0], KEY[1], KEY[2], 1, 32, False, oseq, 0, (0,))


def test_a_promotion_without_sa_notices_since_the_last_read_reads_no_sa() -> None:
    """D273, D275: nothing changed since the backup's read: the promotion plans from that
    read and its jump, passes over KEY (granted early at lo), writes nothing and activates
    charon; only then does the inbound restore read the kernel, with the permit in force."""
    g, kernel, fence, at_read = _promote_on_notices({})
    permit = Permit(KEY, LO, LO + 768, False)
    assert at_read == [{KEY: permit}] and kernel.writes == []
    assert kernel.calls[-1] == "read"  # the restore's, after activation: nothing after it
    assert fence.permits[KEY] == permit
    rep = g.last_promotion
    assert rep is not None and (rep.read, rep.changed, rep.sas) == ("notices", 0, 1)


def test_an_sa_the_notices_name_is_planned_from_its_new_instance_after_the_grant() -> None:
    """D273: KEY was created again since the read: its permit is not granted early, and its
    new instance (at 10) is written to the permit's lo, without a read."""
    g, kernel, _fence, at_read = _promote_on_notices({KEY: _row(10)})
    assert at_read == []
    assert [w.sa.key for w in kernel.writes] == [KEY]
    assert LO <= kernel.writes[0].oseq < LO + 768
    assert g.term.held[KEY] == Held(LO, LO + 768, claimed=True)
    rep = g.last_promotion
    assert rep is not None and (rep.read, rep.changed) == ("notices", 1)


def test_an_sa_created_again_after_its_early_grant_is_written_past_its_permit() -> None:
    """D273 with D265: the notice comes after the early grant; the XFRM phase sees the new
    instance below lo under a permit in force and writes it past hi."""
    _, kernel, fence, at_read = _promote_on_notices({}, then={KEY: _row(10)})
    assert at_read == []
    assert [w.sa.key for w in kernel.writes] == [KEY] and kernel.writes[0].oseq > LO + 768
    assert fence.permits[KEY] == Permit(KEY, LO, LO + 768, False)


def test_an_sa_gone_since_the_read_is_not_written() -> None:
    _, kernel, _, at_read = _promote_on_notices({KEY: None})
    assert at_read == [] and kernel.writes == []


def test_a_promotion_reads_every_sa_when_the_notices_do_not_account_for_all() -> None:
    """D273: notices lost (ENOBUFS) or not placed: the promotion reads the kernel, as before."""
    g, _kernel, _fence, at_read = _promote_on_notices(None)
    assert len(at_read) == 1
    rep = g.last_promotion
    assert rep is not None and rep.read == "dump"


@pytest.mark.parametrize(("kernel_seq", "written"), [(50, True), (200, False)])
def test_inbound_state_planned_from_the_notices_is_restored_forward_only(
        kernel_seq: int, written: bool) -> None:
    """D273: the backup's read saw the inbound SA at 5 and the journal holds 90; the client
    then sent to the new master. The restore reads the kernel again: at 50 it writes 90,
    at 200 (past the journal) it writes nothing, where the older read would have set the
    window back to 90."""
    journal, fence, role, watch = FakeJournal(), FakeFence(), [False], FakeWatch()
    inbound = ("192.0.2.1", 0xBEEF, 50)
    journal.seqs.put(SeqRecord(inbound, 0, 90, (1,), 0.0, "gw1", 1.0))
    kernel = FakeKernel([KernelSa(inbound, False, 10_000, 5, (1,), 32)])  # past any target
    g = guard(journal, kernel, fence=fence, master=role, watch=watch)
    asyncio.run(g.step(master=False, mirrored=0))
    assert kernel.writes == []  # no outbound move, so no inbound state either (D61)
    kernel.sas = [KernelSa(inbound, False, 10_000, kernel_seq, (1,), 32)]
    role[0] = True
    rep = asyncio.run(g.promote())
    assert rep.read == "notices" and kernel.reads == 2  # the backup's, then the restore's
    inbound_only = [(w.sa.key, w.seq) for w in kernel.writes if w.oseq == w.sa.oseq]
    assert inbound_only == ([(inbound, 90)] if written else [])


class _GcAtActivation(list):  # type: ignore[type-arg]
    """The guard's activation list: records whether the cyclic collector ran then."""

    def append(self, _: object) -> None:
        super().append(gc.isenabled())


def test_the_collector_is_paused_from_the_claim_to_activation_and_resumed_after() -> None:
    """D275: no collection walks the daemon's heap on the promotion's critical path; the
    collector is on again once charon is active (and stays off if it was off before)."""
    for before in (True, False):
        (gc.enable if before else gc.disable)()
        try:
            journal, kernel = FakeJournal(), FakeKernel([KernelSa(KEY, False, 10, 0, (0,), 32)])
            journal.seqs.put(SeqRecord(KEY, 5000, 0, (0,), 50.0, "gw1", 1.0))
            at_activation = _GcAtActivation()
            g = guard(journal, kernel, activated=at_activation)
            asyncio.run(g.promote())
            assert at_activation == [False] and gc.isenabled() is before
        finally:
            gc.enable()


def test_prepared_permits_stand_for_a_claim_only_at_its_version_epoch_and_terms() -> None:
    """D281: a backup's prepared claim is the claim's own only if the claim found the same
    records version, is this node's at that epoch, and granted with the same terms (the
    reserve's other fields, such as its inbound interval, do not change a claim's marks)."""
    journal = FakeJournal()
    journal.seqs.claim("gw1", journal.seqs.view())
    journal.seqs.apply(SeqEntry("gw1", 1.0, (SeqRecord(KEY, 5000, 0, (0,), 50.0, "gw1", 1.0,
                                                       1),), epoch=1))
    prepared = prepare_claim(journal, Reserve(inbound_interval_s=2.0))
    assert prepared.held == {KEY: Held(LO, LO + 768, claimed=True)}
    epoch = journal.seqs.claim("gw2", journal.seqs.view(), Reserve())
    assert claimed_held(journal, prepared, "gw2", epoch) is prepared.held
    assert claimed_held(journal, prepared, "gw3", epoch) is None
    assert claimed_held(journal, prepared, "gw2", epoch + 1) is None
    assert claimed_held(journal, prepare_claim(journal, Reserve(floor=1000)), "gw2", epoch) is None
    journal.seqs.apply(SeqEntry("gw2", 2.0, (SeqRecord(KEY, 9000, 0, (0,), 50.0, "gw2", 2.0,
                                                       epoch),), epoch=epoch))
    again = prepare_claim(journal, Reserve())
    epoch = journal.seqs.claim("gw2", journal.seqs.view(), Reserve())
    assert claimed_held(journal, again, "gw2", epoch) is again.held
    assert claimed_held(journal, prepared, "gw2", epoch) is None  # older records
