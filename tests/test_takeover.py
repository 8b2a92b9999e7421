"""Promotion and the guard's loop, with a fake journal and a fake kernel (the real ones run in
the lab: tests/test_lab_takeover.py)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from hasync.journal.seqlog import SeqEntry, SeqLog
from hasync.seqguard import KernelSa, Reserve, SeqRecord, Write
from hasync.takeover import BackupPace, SeqSync
from hasync.xfrm.replayrows import ReplayRow
from hasync.xfrmsync import WriteResult, esn_state, row_sa

KEY = ("192.0.2.101", 0xC0FFEE01, 50)


class FakeJournal:
    """Commits at once (or never, without a majority)."""

    def __init__(self, majority: bool = True) -> None:
        self.lock = threading.RLock()
        self.seqs = SeqLog()
        self.majority = majority
        self.entries: list[SeqEntry] = []

    def submit_seq(self, entry: SeqEntry, callback: Any) -> None:
        if self.majority:
            self.entries.append(entry)
            self.seqs.apply(entry)
        callback(None, 0 if self.majority else 2)

    def barrier(self, callback: Any) -> None:
        callback(None, 0 if self.majority else 2)  # 2: pysyncobj's MISSING_LEADER


class FakeKernel:
    def __init__(self, sas: list[KernelSa]) -> None:
        self.sas = sas
        self.writes: list[Write] = []

    def snapshot(self) -> list[KernelSa]:
        return list(self.sas)

    def write(self, writes: list[Write]) -> WriteResult:
        self.writes += writes
        return WriteResult(done=len(writes))

    def close(self) -> None:
        pass


def _sync(journal: FakeJournal, kernel: FakeKernel, activated: list[int]) -> SeqSync:
    s = SeqSync("gw2", journal, Reserve(), lambda: activated.append(1), 0.3)  # type: ignore[arg-type]
    s._kernel = kernel  # type: ignore[assignment]
    return s


def test_promotion_jumps_restores_and_then_activates() -> None:
    journal, activated = FakeJournal(), []
    journal.seqs.records[KEY] = SeqRecord(KEY, 5000, 40, (7,), 50.0, "gw1", 1.0)
    kernel = FakeKernel([KernelSa(KEY, False, 0, 0, (0,), 32)])
    sync = _sync(journal, kernel, activated)
    rep = asyncio.run(sync.promote())
    (w,) = kernel.writes
    assert (w.oseq, w.seq, w.bitmap) == (5000 + 576, 40, (7,))
    assert rep.quorum and rep.done and rep.writes == 1 and rep.max_jump == 5576
    assert activated == [1] and rep.extra_reserve == 0
    sync.close()


def test_promotion_without_a_majority_adds_the_no_quorum_reserve() -> None:
    journal, activated = FakeJournal(majority=False), []
    journal.seqs.records[KEY] = SeqRecord(KEY, 5000, 0, (0,), 0.0, "gw1", 1.0)
    kernel = FakeKernel([KernelSa(KEY, False, 0, 0, (0,), 32)])
    sync = _sync(journal, kernel, activated)
    rep = asyncio.run(sync.promote())
    assert not rep.quorum and rep.extra_reserve == Reserve().no_quorum
    assert kernel.writes[0].oseq == 5000 + 576 + Reserve().no_quorum
    assert activated == [1] and sync.status()["last_promotion"]["quorum"] is False
    sync.close()


def test_a_master_tick_journals_and_a_backup_tick_prejumps() -> None:
    journal = FakeJournal()
    kernel = FakeKernel([KernelSa(KEY, False, 100, 0, (0,), 32)])
    sync = _sync(journal, kernel, [])

    async def ticks() -> None:
        await sync.tick(master=True)
        await asyncio.sleep(0.01)  # the commit callback runs on the loop
    asyncio.run(ticks())
    assert journal.entries[0].records[0].mark == 100 + 768
    assert not sync.in_flight and sync.stats.committed == 1
    backup = FakeKernel([KernelSa(KEY, False, 0, 0, (0,), 32)])
    sync._kernel = backup  # type: ignore[assignment]
    asyncio.run(sync.tick(master=False))
    assert backup.writes[0].oseq == 868 + 576
    sync.close()


def test_kernel_views_and_esn_writes_convert_both_ways() -> None:
    sa = row_sa(ReplayRow("192.0.2.101", 7, 50, 4, 32, True, (1 << 32) | 5, (2 << 32) | 9,
                          (3,)))
    assert sa.key == ("192.0.2.101", 7, 50) and sa.esn and sa.reqid == 4 and sa.window == 32
    state = esn_state(Write(sa, (3 << 32) | 1, (2 << 32) | 9, (3,)))
    assert (state.oseq_hi, state.oseq, state.seq_hi, state.seq, state.bmp_len) == (3, 1, 2, 9, 1)
    plain = row_sa(ReplayRow("192.0.2.101", 7, 50, 4, 0, False, 11, 0, (0,)))
    assert not plain.esn and plain.oseq == 11 and plain.reqid == 4


def test_an_idle_backup_reads_the_kernel_only_on_change_or_every_full_period() -> None:
    pace = BackupPace(full_s=10.0)
    assert pace.due((0, 0), 100.0)  # the first read
    assert not pace.due((0, 0), 101.0) and not pace.due((0, 0), 109.9)
    assert pace.due((1, 0), 110.0)  # an entry applied
    assert not pace.due((1, 0), 111.0)
    assert pace.due((1, 3), 112.0)  # CHILD_SAs mirrored into charon
    assert not pace.due((1, 3), 121.9)
    assert pace.due((1, 3), 122.0)  # the full period


def test_a_slow_read_makes_the_loop_rest_and_stretches_the_targets() -> None:
    journal = FakeJournal()
    journal.seqs.records[KEY] = SeqRecord(KEY, 5000, 0, (0,), 1000.0, "gw1", 1.0)
    kernel = FakeKernel([KernelSa(KEY, False, 0, 0, (0,), 32)])
    sync = _sync(journal, kernel, [])
    assert sync.rest_s() == 0.0 and sync.takeover_stretch_s() == 0.0
    sync.costs.append(0.6)  # a dump of thousands of SAs on a slow CPU
    assert sync.rest_s() == pytest.approx(3 * 0.6)  # REST_K = 3: at most a quarter CPU
    assert sync.takeover_stretch_s() == pytest.approx(4 * 0.6 - 0.1)  # rest + read, past tick
    asyncio.run(sync.tick(master=False))
    # 1000 packets/s for 1.0 s + 2.3 s of this node's lag: past the 576 floor
    assert kernel.writes[0].oseq == 5000 + 3300
    assert sync.stats.read_max_ms >= 600.0 and sync.stats.takeover_stretch_ms >= 2300.0
    sync.close()


def test_a_backup_writes_outbound_moves_only_and_rests_for_its_read_alone() -> None:
    key_in = ("192.0.2.1", 0xC0FFEE02, 50)
    journal = FakeJournal()
    journal.seqs.records[KEY] = SeqRecord(KEY, 5000, 0, (0,), 0.0, "gw1", 1.0)
    journal.seqs.records[key_in] = SeqRecord(key_in, 0, 900, (0xFF,), 0.0, "gw1", 1.0)
    kernel = FakeKernel([KernelSa(KEY, False, 0, 0, (0,), 32),
                         KernelSa(key_in, False, 10_000, 10, (0,), 32)])
    slow_writes = kernel.write

    def write(writes: list[Write]) -> WriteResult:
        time.sleep(0.3)  # 2000 NEWAE under QEMU/TCG: 46 s
        return slow_writes(writes)

    kernel.write = write  # type: ignore[method-assign]
    sync = _sync(journal, kernel, [])
    asyncio.run(sync.tick(master=False))
    assert [w.sa.key for w in kernel.writes] == [KEY]  # the inbound SA waits for promotion
    assert sync.stats.write_ms >= 300 and sync.rest_s() < 0.3  # writes do not make it rest
    assert sync.takeover_stretch_s() >= 0.3 - sync.tick_s  # but they delay the next mark
    kernel.writes.clear()
    rep = asyncio.run(sync.promote())
    assert [w.sa.key for w in kernel.writes] == [KEY, key_in] and rep.writes == 2
    sync.close()


def test_promotion_reads_the_kernel_again_after_an_error() -> None:
    from hasync.xfrm.errors import XfrmError

    journal, activated = FakeJournal(), []
    journal.seqs.records[KEY] = SeqRecord(KEY, 5000, 0, (0,), 0.0, "gw1", 1.0)

    class Flaky(FakeKernel):
        reads = 0

        def snapshot(self) -> list[KernelSa]:
            self.reads += 1
            if self.reads == 1:
                raise XfrmError(110, "GETSA dump", detail="no answer within 2.0 s")
            return super().snapshot()
    kernel = Flaky([KernelSa(KEY, False, 0, 0, (0,), 32)])
    sync = _sync(journal, kernel, activated)
    rep = asyncio.run(sync.promote())
    assert kernel.reads == 2 and rep.writes == 1 and kernel.writes[0].oseq == 5000 + 576
    assert rep.errors and rep.errors[0].startswith("read 1 of 3:") and activated == [1]
    sync.close()


def test_a_guard_that_cannot_read_the_kernel_says_so_once_and_again_when_it_can(
        caplog: Any) -> None:
    import logging

    from hasync.xfrm.errors import XfrmError

    class Broken(FakeKernel):
        broken = True

        def snapshot(self) -> list[KernelSa]:
            if self.broken:
                raise XfrmError(110, "GETSA dump", detail="no answer within 2.0 s")
            return super().snapshot()
    kernel = Broken([KernelSa(KEY, False, 0, 0, (0,), 32)])
    sync = _sync(FakeJournal(), kernel, [])
    with caplog.at_level(logging.INFO, logger="hasync.takeover"):
        for _ in range(3):
            asyncio.run(sync.tick(master=False))
        kernel.broken = False
        asyncio.run(sync.tick(master=False))
    lines = [r.getMessage() for r in caplog.records]
    assert sum("cannot read the kernel's SAs" in m for m in lines) == 1
    assert any("works again, after 3 failures" in m for m in lines)
    assert sync.stats.kernel_errors == 3 and sync.failing == 0
    sync.close()
