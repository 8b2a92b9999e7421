"""The guard's driver with a fake journal, kernel, clock and sleep (the real ones run in the
lab: tests/test_lab_takeover.py): promotion, ticks, the loop, and every failure loud."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from hasync.guard import KernelSa, MarkFlight, Reserve, SeqRecord
from hasync.journal.seal import EntryError
from hasync.syncobj_compat import FailReason
from hasync.xfrm.errors import XfrmError

from guardfakes import KEY, Clock, FakeJournal, FakeKernel, FakeSleep, Stop, guard


def _timeout() -> XfrmError:
    return XfrmError(110, "GETSA dump", detail="no answer within 2.0 s")


def test_promotion_jumps_restores_and_then_activates_with_timings_from_the_clock() -> None:
    journal, activated = FakeJournal(), []
    journal.seqs.records[KEY] = SeqRecord(KEY, 5000, 40, (7,), 50.0, "gw1", 1.0)
    journal.barrier_s = 0.2
    kernel = FakeKernel([KernelSa(KEY, False, 0, 0, (0,), 32)], read_s=0.05, write_s=0.1)
    g = guard(journal, kernel, activated)
    rep = asyncio.run(g.promote())
    (w,) = kernel.writes
    assert (w.oseq, w.seq, w.bitmap) == (5000 + 576, 40, (7,))
    assert rep.quorum and rep.done and rep.writes == 1 and rep.sas == 1 and rep.max_jump == 5576
    assert activated == [1] and rep.extra_reserve == 0 and rep.started == 1_000_100.0
    assert (rep.wait_ms, rep.xfrm_ms, rep.activate_ms, rep.total_ms) == (200.0, 150.0, 0.0, 350.0)
    assert not g.promoting and g.status()["last_promotion"]["done"]
    g.close()
    assert kernel.closed


def test_promotion_without_a_majority_adds_the_no_quorum_reserve() -> None:
    journal, activated = FakeJournal(majority=False), []
    journal.seqs.records[KEY] = SeqRecord(KEY, 5000, 0, (0,), 0.0, "gw1", 1.0)
    kernel = FakeKernel([KernelSa(KEY, False, 0, 0, (0,), 32)])
    sleep = FakeSleep(journal.clock)
    g = guard(journal, kernel, activated, sleep=sleep, barrier_timeout_s=0.3)
    rep = asyncio.run(g.promote())
    assert not rep.quorum and rep.extra_reserve == Reserve().no_quorum
    assert kernel.writes[0].oseq == 5000 + 576 + Reserve().no_quorum
    assert activated == [1] and g.status()["last_promotion"]["quorum"] is False
    # asked every 50 ms until the bound, 0.3 s (6 or 7 times as the floats fall)
    n = journal.barriers
    assert n in (6, 7) and sleep.calls == [0.05] * n and rep.wait_ms == round(n * 50.0, 1)
    assert g.stats.barrier_failed == {"MISSING_LEADER": n}


def test_a_barrier_that_never_answers_times_out_by_name() -> None:
    journal = FakeJournal()
    journal.barrier_answer = None
    g = guard(journal, FakeKernel([]), barrier_timeout_s=0.02)
    assert asyncio.run(g.barrier()) is False
    assert g.stats.barrier_failed == {"TIMEOUT": 1}


def test_a_bug_in_the_barrier_propagates_instead_of_passing_for_no_quorum() -> None:
    """Formerly `except (TimeoutError, Exception)`: any bug became a 2^22 jump."""
    journal, activated = FakeJournal(), []

    def broken(callback: Any) -> None:
        raise AttributeError("a bug in the journal")
    journal.barrier = broken  # type: ignore[method-assign]
    kernel = FakeKernel([KernelSa(KEY, False, 0, 0, (0,), 32)])
    g = guard(journal, kernel, activated)
    with pytest.raises(AttributeError, match="a bug in the journal"):
        asyncio.run(g.promote())
    assert activated == [] and kernel.writes == [] and not g.promoting


def test_promotion_reads_the_kernel_again_after_an_error() -> None:
    journal, activated = FakeJournal(), []
    journal.seqs.records[KEY] = SeqRecord(KEY, 5000, 0, (0,), 0.0, "gw1", 1.0)
    kernel = FakeKernel([KernelSa(KEY, False, 0, 0, (0,), 32)])
    kernel.fail_reads, kernel.error = 1, _timeout
    rep = asyncio.run(guard(journal, kernel, activated).promote())
    assert kernel.reads == 2 and rep.writes == 1 and kernel.writes[0].oseq == 5000 + 576
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
    assert any(m.startswith("promoted: barrier ok") for m in lines)
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
        assert kernel.calls == ["read"]  # the promotion passed its barrier and waits
        kernel.gate.set()
        await tick
        await promotion
    asyncio.run(both())
    assert kernel.calls == ["read", "write", "read", "write"]


def test_a_master_tick_journals_and_a_backup_tick_prejumps() -> None:
    journal = FakeJournal()
    kernel = FakeKernel([KernelSa(KEY, False, 100, 0, (0,), 32)])
    g = guard(journal, kernel)

    async def tick() -> None:
        await g.tick(master=True)
        await asyncio.sleep(0)  # the commit callback runs on the loop
    asyncio.run(tick())
    assert journal.entries[0].records[0].mark == 100 + 768
    assert journal.entries[0].ts == 1_000_100.0
    assert not g.flight.open and g.stats.committed == 1
    backup_kernel = FakeKernel([KernelSa(KEY, False, 0, 0, (0,), 32)])
    backup = guard(journal, backup_kernel)
    asyncio.run(backup.tick(master=False))
    assert backup_kernel.writes[0].oseq == 868 + 576 and backup.stats.prejumps == 1


def test_a_failed_commit_is_counted_by_name_and_frees_the_next_renewal() -> None:
    journal = FakeJournal()
    journal.answer = FailReason.NOT_LEADER
    kernel = FakeKernel([KernelSa(KEY, False, 100, 0, (0,), 32)])
    g = guard(journal, kernel)

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

    async def ticks() -> None:
        await g.tick(master=True)
        kernel.sas = [KernelSa(KEY, False, 800, 0, (0,), 32)]  # a renewal is due
        await g.tick(master=True)
        assert len(journal.held) == 1 and g.status()["in_flight"]
        _, callback = journal.held.pop()
        callback(None, None)
        await asyncio.sleep(0)
        assert not g.flight.open
        await g.tick(master=True)
    asyncio.run(ticks())
    assert len(journal.held) == 1 and journal.held[0][0].records[0].mark == 800 + 768


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


def test_an_entry_that_cannot_be_sealed_is_logged_with_its_traceback_and_counted(
        caplog: Any) -> None:
    journal = FakeJournal()

    def refuse(entry: Any, callback: Any) -> None:
        raise EntryError("packed entry too large")
    journal.submit_seq = refuse  # type: ignore[method-assign]
    g = guard(journal, FakeKernel([KernelSa(KEY, False, 100, 0, (0,), 32)]))
    with caplog.at_level(logging.ERROR, logger="hasync.guard"):
        asyncio.run(g.tick(master=True))
    (record,) = caplog.records
    assert record.exc_info is not None and "submit_errors" in record.getMessage()
    assert g.status()["loop"]["submit_errors"] == 1 and not g.flight.open


def test_any_other_submit_failure_propagates() -> None:
    journal = FakeJournal()

    def broken(entry: Any, callback: Any) -> None:
        raise KeyError("a bug")
    journal.submit_seq = broken  # type: ignore[method-assign]
    g = guard(journal, FakeKernel([KernelSa(KEY, False, 100, 0, (0,), 32)]))
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


def test_a_slow_read_makes_the_loop_rest_and_stretches_the_targets() -> None:
    journal = FakeJournal()
    journal.seqs.records[KEY] = SeqRecord(KEY, 5000, 0, (0,), 1000.0, "gw1", 1.0)
    kernel = FakeKernel([KernelSa(KEY, False, 0, 0, (0,), 32)], read_s=0.6)
    g = guard(journal, kernel)
    assert g.costs.rest_s() == 0.0 and g.costs.takeover_stretch_s() == 0.0
    asyncio.run(g.tick(master=False))  # a dump of thousands of SAs on a slow CPU
    assert g.costs.rest_s() == pytest.approx(3 * 0.6)  # REST_K = 3: at most a quarter CPU
    assert g.costs.takeover_stretch_s() == pytest.approx(4 * 0.6 - 0.1)  # rest + read
    kernel.writes.clear()
    kernel.sas = [KernelSa(KEY, False, 5576, 0, (0,), 32)]
    asyncio.run(g.tick(master=False))
    # 1000 packets/s for 1.0 s + 2.3 s of this node's lag: past the 576 floor
    assert kernel.writes[0].oseq == 5000 + 3300
    assert g.stats.read_max_ms == 600.0 and g.stats.takeover_stretch_ms == 2300.0


def test_a_backup_writes_outbound_moves_only_and_rests_for_its_read_alone() -> None:
    key_in = ("192.0.2.1", 0xC0FFEE02, 50)
    journal = FakeJournal()
    journal.seqs.records[KEY] = SeqRecord(KEY, 5000, 0, (0,), 0.0, "gw1", 1.0)
    journal.seqs.records[key_in] = SeqRecord(key_in, 0, 900, (0xFF,), 0.0, "gw1", 1.0)
    kernel = FakeKernel([KernelSa(KEY, False, 0, 0, (0,), 32),
                         KernelSa(key_in, False, 10_000, 10, (0,), 32)], write_s=0.3)
    g = guard(journal, kernel)  # 2000 NEWAE under QEMU/TCG: 46 s
    asyncio.run(g.tick(master=False))
    assert [w.sa.key for w in kernel.writes] == [KEY]  # the inbound SA waits for promotion
    assert g.stats.write_ms == 300.0 and g.costs.rest_s() == 0.0  # writes do not make it rest
    assert g.costs.takeover_stretch_s() == pytest.approx(0.3 - g.tick_s)  # but delay marks
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
    assert sum("cannot read the kernel's SAs" in m for m in lines) == 1
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
