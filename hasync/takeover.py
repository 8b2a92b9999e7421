"""Promotion and the sequence guard's IO loop: what a node does with ESP replay state as
master (journal marks), as backup (keep the kernel at the targets) and when it becomes master.

Rules: all decisions come from the pure `seqguard`; this module only times, sequences and
moves data between Raft (`ClusterJournal`), the kernel (`KernelSas`, on one worker thread)
and charon's control FIFO. Promotion follows issue 4 in this order: (1) a Raft barrier,
bounded by `barrier_timeout_s`, so every entry committed before it is applied here; without it
(no majority) the targets get `Reserve.no_quorum` more, and the report and log say so;
(2) every SA's counters move to the targets (outbound jump, inbound replay state restored);
(3) charon's segments are activated (ha_ctl.c `+N`). Timings of each phase are kept for
`hasync status`. Nothing here raises into the daemon's loop: kernel errors are counted.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from .journal.seqlog import MAX_RECORDS, SeqEntry
from .raft import ClusterJournal
from .seqguard import (
    READS_KEPT,
    KernelSa,
    Reserve,
    SaKey,
    SeqRecord,
    SeqTracker,
    plan_writes,
)
from .xfrm.errors import XfrmError
from .xfrmsync import KernelSas, WriteResult

log = logging.getLogger("hasync.takeover")
PROMOTION_READS = 3  # a promotion reads the kernel again after an error, this many times
REST_K = 3.0  # after a read that took d, the guard rests REST_K x d: at most a quarter CPU


@dataclass
class PromotionReport:
    """The last promotion, for `hasync status` (milliseconds, wall-clock start)."""

    started: float
    quorum: bool = False
    wait_ms: float = 0.0  # Raft barrier: apply everything committed
    xfrm_ms: float = 0.0  # read replay state and write the targets
    activate_ms: float = 0.0  # charon's segments activated
    total_ms: float = 0.0
    sas: int = 0
    writes: int = 0
    max_jump: int = 0
    extra_reserve: int = 0
    errors: list[str] = field(default_factory=list)
    done: bool = False


@dataclass
class GuardStats:
    """Counters of the guard's loop."""

    ticks: int = 0
    submitted: int = 0
    committed: int = 0
    failed: int = 0
    prejumps: int = 0
    prejump_errors: int = 0
    kernel_errors: int = 0
    last_error: str = ""
    read_ms: float = 0.0  # the last read's cost: dump, plan or journal (writes apart)
    write_ms: float = 0.0  # the last tick's writes (backups)
    read_max_ms: float = 0.0  # the largest of the last READS_KEPT
    takeover_stretch_ms: float = 0.0  # what this node's targets add for its own lag


@dataclass
class BackupPace:
    """When a non-master's guard reads the kernel without being woken by a moved mark: when
    a mark moved or an SA came (journal or charon) since its last read, and at least every
    `full_s`, which catches what a missed wake-up left behind. A read costs a dump of every
    SA; only outbound moves are written (inbound state waits for the promotion)."""

    full_s: float = 10.0
    stamp: tuple[int, int] | None = None
    last: float | None = None

    def due(self, stamp: tuple[int, int], now: float) -> bool:
        """Whether to read now; (entries that moved a mark, CHILD_SAs mirrored) is `stamp`."""
        if stamp != self.stamp or self.last is None or now - self.last >= self.full_s:
            self.stamp, self.last = stamp, now
            return True
        return False


class SeqSync:
    """The guard on one node: tick() while running, promote() on VRRP MASTER."""

    def __init__(self, node: str, journal: ClusterJournal, reserve: Reserve,
                 activate: Callable[[], None], barrier_timeout_s: float,
                 tick_s: float = 0.1) -> None:
        self.node, self.journal, self.reserve = node, journal, reserve
        self.activate = activate
        self.barrier_timeout_s = barrier_timeout_s
        self.tick_s = tick_s
        self.tracker = SeqTracker(node, reserve, tick_s=tick_s)
        self.costs: deque[float] = deque(maxlen=READS_KEPT)  # ticks without their writes
        self.write_costs: deque[float] = deque(maxlen=READS_KEPT)  # their writes
        self.failing = 0  # reads that failed in a row
        self.stats = GuardStats()
        self.last_promotion: PromotionReport | None = None
        self.in_flight = False
        self.busy = False
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="xfrm")
        self._kernel: KernelSas | None = None

    def close(self) -> None:
        """Stop the worker thread and close the socket."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._kernel is not None:
            self._kernel.close()

    def _records(self) -> dict[SaKey, SeqRecord]:
        with self.journal.lock:
            return dict(self.journal.seqs.records)

    def _kernel_sas(self) -> KernelSas:
        if self._kernel is None:
            self._kernel = KernelSas()
        return self._kernel

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # ---- pacing (docs/takeover.md, Slow reads) ----
    def rest_s(self) -> float:
        """How long the loop rests after the last read, so reads take at most 1 / (1 + REST_K)
        of a CPU. Writes do not count: they are what the journal asks, not a repeated cost,
        and a rest after them would hold back the next marks."""
        return REST_K * self.costs[-1] if self.costs else 0.0

    def takeover_stretch_s(self) -> float:
        """What this node's targets add for its own lag: a moved mark reaches its kernel up to
        a rest, a read and the writes before its own after the commit, where the nominal
        tick_s is assumed."""
        lag = (1 + REST_K) * max(self.costs, default=0.0) + max(self.write_costs, default=0.0)
        return max(0.0, lag - self.tick_s)

    def _read_done(self, started: float, write_s: float = 0.0) -> None:
        cost = time.monotonic() - started - write_s
        self.costs.append(cost)
        self.write_costs.append(write_s)
        self.stats.read_ms = round(cost * 1000, 1)
        self.stats.write_ms = round(write_s * 1000, 1)
        self.stats.read_max_ms = round(max(self.costs) * 1000, 1)
        self.stats.takeover_stretch_ms = round(self.takeover_stretch_s() * 1000, 1)

    # ---- every tick ----
    async def tick(self, master: bool) -> None:
        """Master: journal the marks due. Others: move the kernel up to the targets."""
        if self.busy:
            return
        self.busy = True
        started, write_s = time.monotonic(), 0.0
        try:
            sas: list[KernelSa] = await self._run(lambda: self._kernel_sas().snapshot())
            self.stats.ticks += 1
            if self.failing:
                log.info("reading the kernel's SAs works again, after %d failures",
                         self.failing)
                self.failing = 0
            if master:
                self._journal_due(sas)
            else:
                writes = plan_writes(sas, self._records(), self.reserve,
                                     stretch_s=self.takeover_stretch_s(), inbound=False)
                if writes:
                    wrote = time.monotonic()
                    res: WriteResult = await self._run(self._kernel_sas().write, writes)
                    write_s = time.monotonic() - wrote
                    self.stats.prejumps += res.done
                    self.stats.prejump_errors += len(res.errors)
                    if res.errors:
                        self.stats.last_error = res.errors[-1]
        except XfrmError as e:
            self.stats.kernel_errors += 1
            self.stats.last_error = str(e)
            if not self.failing:  # once per run of failures: the guard stands still meanwhile
                log.warning("the sequence guard cannot read the kernel's SAs: %s (retried "
                            "every tick; `hasync status`: takeover.loop.kernel_errors)", e)
            self.failing += 1
        finally:
            self._read_done(started, write_s)
            self.busy = False

    def _journal_due(self, sas: list[KernelSa]) -> None:
        """Submit the records the tracker finds due (one entry in flight at a time)."""
        before = self.tracker.stats.violations
        recs, gone = self.tracker.observe(sas, self._records(), time.monotonic(), time.time())
        if self.tracker.stats.violations > before:
            log.warning("an SA sent past its journaled mark (by up to %d): traffic grew faster "
                        "than the reserve assumes; raise [takeover] reserve_floor "
                        "(docs/takeover.md)", self.tracker.stats.max_overrun)
        if self.in_flight:
            return  # violations are still counted; renewals wait for the commit
        if not recs and not gone:
            return
        self.tracker.submitted(recs, time.monotonic())
        loop = asyncio.get_running_loop()
        for i in range(0, max(len(recs), len(gone)), MAX_RECORDS):
            entry = SeqEntry(self.node, time.time(), tuple(recs[i:i + MAX_RECORDS]),
                             tuple(gone[i:i + MAX_RECORDS]))
            last = i + MAX_RECORDS >= max(len(recs), len(gone))
            self.in_flight = True
            self.stats.submitted += 1

            def done(result: Any, error: Any, last: bool = last) -> None:
                loop.call_soon_threadsafe(self._committed, error in (0, None), last)
            try:
                self.journal.submit_seq(entry, done)
            except Exception as e:  # a local bug: log it, keep the loop
                self.in_flight = False
                self.stats.failed += 1
                log.exception("journaling replay state failed: %s", e)
                return

    def _committed(self, ok: bool, last: bool) -> None:
        if ok:
            self.stats.committed += 1
        else:
            self.stats.failed += 1
        if last or not ok:
            self.in_flight = False

    # ---- promotion ----
    async def barrier(self) -> bool:
        """Wait until everything committed is applied here; False after the timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.barrier_timeout_s
        while loop.time() < deadline:
            fut: asyncio.Future[bool] = loop.create_future()

            def done(result: Any, error: Any, fut: asyncio.Future[bool] = fut) -> None:
                loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(
                    error in (0, None)))
            try:
                self.journal.barrier(done)
                ok = await asyncio.wait_for(fut, max(0.01, deadline - loop.time()))
            except (TimeoutError, Exception):
                ok = False
            if ok:
                return True
            await asyncio.sleep(0.05)
        return False

    async def promote(self) -> PromotionReport:
        """Barrier, jump and restore every SA, activate charon; returns the timings."""
        rep = PromotionReport(started=time.time())
        self.tracker.master_since = rep.started  # marks of an earlier term do not bind it
        self.tracker.restart()
        self.last_promotion = rep
        t0 = time.monotonic()
        rep.quorum = await self.barrier()
        t1 = time.monotonic()
        rep.wait_ms = round((t1 - t0) * 1000, 1)
        rep.extra_reserve = 0 if rep.quorum else self.reserve.no_quorum
        if not rep.quorum:
            log.warning("promotion without a Raft majority: outbound counters jump by %d "
                        "more than the journal asks", rep.extra_reserve)
        while self.busy:  # a tick is using the worker: let it finish
            await asyncio.sleep(0.005)
        for attempt in range(1, PROMOTION_READS + 1):  # a failed read leaves counters behind
            try:
                sas = await self._run(lambda: self._kernel_sas().snapshot())
                writes = plan_writes(sas, self._records(), self.reserve, rep.extra_reserve,
                                     self.takeover_stretch_s())
                res: WriteResult = await self._run(self._kernel_sas().write, writes)
                rep.sas, rep.writes = len(sas), res.done
                rep.errors += res.errors[:20]
                rep.max_jump = max((w.jump for w in writes), default=0)
                break
            except XfrmError as e:
                rep.errors.append(f"read {attempt} of {PROMOTION_READS}: {e}")
        t2 = time.monotonic()
        rep.xfrm_ms = round((t2 - t1) * 1000, 1)
        self.activate()
        t3 = time.monotonic()
        rep.activate_ms = round((t3 - t2) * 1000, 1)
        rep.total_ms = round((t3 - t0) * 1000, 1)
        rep.done = True
        log.info("promoted: barrier %s in %.0f ms, %d of %d SAs written in %.0f ms "
                 "(largest jump %d), charon activated in %.0f ms", "ok" if rep.quorum else
                 "TIMED OUT", rep.wait_ms, rep.writes, rep.sas, rep.xfrm_ms, rep.max_jump,
                 rep.activate_ms)
        for err in rep.errors:
            log.warning("promotion: %s", err)
        return rep

    def status(self) -> dict[str, Any]:
        """The guard's view for `hasync status` (no key material)."""
        with self.journal.lock:
            n = len(self.journal.seqs.records)
        return {"records": n, "reserve": asdict(self.reserve), "tracker": asdict(
            self.tracker.stats), "loop": asdict(self.stats), "in_flight": self.in_flight,
            "last_promotion": asdict(self.last_promotion) if self.last_promotion else None}
