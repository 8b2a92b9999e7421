"""The sequence guard's driver: what a node does with ESP replay state as master (journal
marks), as backup (keep the kernel at the targets) and when it becomes master (`promote`).

Rules: every decision comes from the pure parts (`rules`, `pacing`, `promotion`); this module
only sequences IO between Raft (a `JournalPort`, the daemon's `ClusterJournal`), the kernel (an
injected `KernelPort`) and charon (`activate`). The injected clock is read once per step and
passed in as `now`; wall time (`wall`) only stamps entries and reports. One `asyncio.Lock`
keeps a tick and a promotion from using the kernel at once, and the loop starts no tick while
a promotion runs. Marks go one submission at a time (`MarkFlight`). Handled failures are only
named ones: a kernel read or write (`kernel.KERNEL_FAILURES`: counted, logged once per run of
failures), a Raft commit or barrier that fails (`syncobj_compat.FailReason`, counted by name)
or times out, an entry that cannot be sealed (logged with its traceback, counted). Anything
else propagates: `run()` then raises, the daemon stops and keepalived moves the VIP.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from ..journal.seal import EntryError, SealError
from ..syncobj_compat import FailReason, outcome
from .entries import MAX_RECORDS, SeqEntry, SeqLog
from .kernel import KERNEL_FAILURES, KernelPort, KernelSas
from .pacing import BACKUP_SEQ_TICK_S, BackupPace, ReadCosts
from .promotion import Promotion, PromotionReport
from .records import KernelSa, SaKey, SeqRecord
from .rules import Reserve, SeqTracker, plan_writes

log = logging.getLogger("hasync.guard")
BARRIER_RETRY_S = 0.05  # a failed barrier is asked again after this long, within its bound
Callback = Callable[[Any, Any], None]  # pysyncobj's callback(result, error)


class JournalPort(Protocol):
    """What the guard uses of the cluster journal (`raft.ClusterJournal`)."""

    lock: threading.RLock
    seqs: SeqLog

    def submit_seq(self, entry: SeqEntry, callback: Callback) -> None:
        """Seal and replicate `entry`; `callback` runs on commit or failure."""
        ...

    def barrier(self, callback: Callback) -> None:
        """Commit an empty entry; `callback` says when everything before it is applied."""
        ...


@dataclass
class GuardStats:
    """Counters of the guard's loop (shown by `hasync status` under takeover.loop)."""

    ticks: int = 0
    submitted: int = 0
    committed: int = 0
    failed: int = 0
    commit_failed: dict[str, int] = field(default_factory=dict)  # FailReason name -> count
    submit_errors: int = 0  # entries that could not be sealed (logged with a traceback)
    barrier_failed: dict[str, int] = field(default_factory=dict)  # reason name or TIMEOUT
    prejumps: int = 0
    prejump_errors: int = 0
    kernel_errors: int = 0
    last_error: str = ""
    read_ms: float = 0.0  # the last read's cost: dump, plan or journal (writes apart)
    write_ms: float = 0.0  # the last tick's writes (backups)
    read_max_ms: float = 0.0  # the largest of the last READS_KEPT
    takeover_stretch_ms: float = 0.0  # what this node's targets add for its own lag


def _count(counts: dict[str, int], name: str) -> None:
    counts[name] = counts.get(name, 0) + 1


@dataclass
class MarkFlight:
    """Marks go one submission at a time: the records one read finds due go as entries of up
    to MAX_RECORDS; until the last of them commits or any of them fails, later reads still
    count violations but submit nothing, so a renewal never races an older one. Answers carry
    the submission's number: a late answer to an earlier submission changes nothing."""

    open: bool = False
    number: int = 0

    def start(self) -> int | None:
        """Open a submission; its number, or None while one is open."""
        if self.open:
            return None
        self.open, self.number = True, self.number + 1
        return self.number

    def answered(self, number: int, ok: bool, last: bool) -> None:
        """Raft answered one entry of submission `number`."""
        if number == self.number and (last or not ok):
            self.open = False


class Guard:
    """The guard on one node: `run()` as its loop, `promote()` on VRRP MASTER."""

    def __init__(self, node: str, journal: JournalPort, reserve: Reserve,
                 activate: Callable[[], None], barrier_timeout_s: float, tick_s: float = 0.1,
                 kernel: KernelPort | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.node, self.journal, self.reserve = node, journal, reserve
        self.activate = activate
        self.barrier_timeout_s, self.tick_s = barrier_timeout_s, tick_s
        self.kernel: KernelPort = kernel if kernel is not None else KernelSas()
        self.clock, self.wall, self.sleep = clock, wall, sleep
        self.tracker = SeqTracker(node, reserve, tick_s=tick_s)
        self.costs = ReadCosts(tick_s)
        self.pace = BackupPace()
        self.flight = MarkFlight()
        self.failing = 0  # reads that failed in a row
        self.stats = GuardStats()
        self.last_promotion: PromotionReport | None = None
        self.promoting = False
        self._kernel_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._is_master: Callable[[], bool] | None = None

    def close(self) -> None:
        """Release the kernel port (its worker thread and socket)."""
        self.kernel.close()

    def _records(self) -> dict[SaKey, SeqRecord]:
        with self.journal.lock:
            return dict(self.journal.seqs.records)

    # ---- the loop ----
    async def run(self, is_master: Callable[[], bool], mirrored: Callable[[], int]) -> None:
        """The guard's loop: marks on the master, targets everywhere else. Never returns."""
        self._loop, self._is_master = asyncio.get_running_loop(), is_master
        while True:
            master = is_master()
            rest = await self.step(master, mirrored())
            if rest is not None:
                await self.sleep(rest)  # reads take at most a quarter CPU (pacing.REST_K)
            # a master reads its counters every tick; a backup moves its kernel when a mark
            # moves, within BACKUP_SEQ_TICK_S of a new SA, and every 10 s (BackupPace)
            await self._wait_wake(self.tick_s if master else max(self.tick_s,
                                                                 BACKUP_SEQ_TICK_S))

    async def step(self, master: bool, mirrored: int) -> float | None:
        """One pass of the loop: tick if due; the rest to take after it (None: no tick)."""
        woken = self._wake.is_set()
        self._wake.clear()  # a mark applied from here on wakes the next wait
        with self.journal.lock:
            moves = self.journal.seqs.moves
        due = master or self.pace.due((moves, mirrored), self.clock()) or woken
        if self.promoting or not due:
            return None
        await self.tick(master)
        return self.costs.rest_s()

    async def _wait_wake(self, timeout_s: float) -> None:
        """Until `wake_threadsafe()` or `timeout_s` (on the injected sleep)."""
        waiter = asyncio.ensure_future(self._wake.wait())
        sleeper = asyncio.ensure_future(self.sleep(timeout_s))
        try:
            await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            sleeper.cancel()
        if sleeper.done() and not sleeper.cancelled():
            sleeper.result()  # a failing sleep is a bug: raise it

    def wake_threadsafe(self) -> None:
        """Raft's thread applied an entry that moved a mark: wake a non-master's loop."""
        loop, is_master = self._loop, self._is_master
        if loop is None or is_master is None or is_master():
            return
        try:
            loop.call_soon_threadsafe(self._wake.set)
        except RuntimeError:
            if not loop.is_closed():
                raise
            log.debug("a mark moved while the daemon stops: nothing to wake")

    # ---- every tick ----
    async def tick(self, master: bool) -> None:
        """Master: journal the marks due. Others: move the kernel up to the targets."""
        async with self._kernel_lock:
            started, write_s = self.clock(), 0.0
            try:
                write_s = await self._read_and_act(master)
            except KERNEL_FAILURES as e:
                self._kernel_failed(e)
            self._read_done(self.clock() - started - write_s, write_s)

    async def _read_and_act(self, master: bool) -> float:
        """Read the kernel, then journal (master) or pre-jump (others); the writes' time."""
        sas: list[KernelSa] = await self.kernel.snapshot()
        now = self.clock()
        self.stats.ticks += 1
        if self.failing:
            log.info("reading the kernel's SAs works again, after %d failures", self.failing)
            self.failing = 0
        if master:
            self._journal_due(sas, now)
            return 0.0
        writes = plan_writes(sas, self._records(), self.reserve,
                             stretch_s=self.costs.takeover_stretch_s(), inbound=False)
        if not writes:
            return 0.0
        wrote = self.clock()
        res = await self.kernel.write(writes)
        write_s = self.clock() - wrote
        self.stats.prejumps += res.done
        self.stats.prejump_errors += len(res.errors)
        if res.errors:
            self.stats.last_error = res.errors[-1]
        return write_s

    def _kernel_failed(self, e: Exception) -> None:
        self.stats.kernel_errors += 1
        self.stats.last_error = str(e)
        if not self.failing:  # once per run of failures: the guard stands still meanwhile
            log.warning("the sequence guard cannot read the kernel's SAs: %s (retried "
                        "every tick; `hasync status`: takeover.loop.kernel_errors)", e)
        self.failing += 1

    def _read_done(self, read_s: float, write_s: float) -> None:
        self.costs.note(read_s, write_s)
        self.stats.read_ms = round(read_s * 1000, 1)
        self.stats.write_ms = round(write_s * 1000, 1)
        self.stats.read_max_ms = round(max(self.costs.reads) * 1000, 1)
        self.stats.takeover_stretch_ms = round(self.costs.takeover_stretch_s() * 1000, 1)

    def _journal_due(self, sas: list[KernelSa], now: float) -> None:
        """Submit the records the tracker finds due (`MarkFlight`: one submission at a time)."""
        before = self.tracker.stats.violations
        recs, gone = self.tracker.observe(sas, self._records(), now, self.wall())
        if self.tracker.stats.violations > before:
            log.warning("an SA sent past its journaled mark (by up to %d): traffic grew faster "
                        "than the reserve assumes; raise [takeover] reserve_floor "
                        "(docs/takeover.md)", self.tracker.stats.max_overrun)
        if not recs and not gone:
            return
        number = self.flight.start()
        if number is None:
            return  # violations are still counted; renewals wait for the commit
        self.tracker.submitted(recs, now)
        self._submit(number, recs, gone)

    def _submit(self, number: int, recs: list[SeqRecord], gone: list[SaKey]) -> None:
        loop, wall = asyncio.get_running_loop(), self.wall()
        n = max(len(recs), len(gone))
        for i in range(0, n, MAX_RECORDS):
            entry = SeqEntry(self.node, wall, tuple(recs[i:i + MAX_RECORDS]),
                             tuple(gone[i:i + MAX_RECORDS]))
            last = i + MAX_RECORDS >= n
            self.stats.submitted += 1

            def done(result: Any, error: Any, last: bool = last) -> None:
                loop.call_soon_threadsafe(self._committed, number, outcome(error), last)
            try:
                self.journal.submit_seq(entry, done)
            except (EntryError, SealError):  # a local bug: say it loudly, keep the loop
                self.flight.answered(number, ok=False, last=True)
                self.stats.failed += 1
                self.stats.submit_errors += 1
                log.exception("journaling replay state failed (`hasync status`: "
                              "takeover.loop.submit_errors)")
                return

    def _committed(self, number: int, reason: FailReason, last: bool) -> None:
        ok = reason is FailReason.SUCCESS
        if ok:
            self.stats.committed += 1
        else:
            self.stats.failed += 1
            _count(self.stats.commit_failed, reason.name)
        self.flight.answered(number, ok, last)

    # ---- promotion ----
    async def barrier(self) -> bool:
        """Wait until everything committed is applied here; False after barrier_timeout_s."""
        deadline = self.clock() + self.barrier_timeout_s
        while (now := self.clock()) < deadline:
            reason = await self._barrier_once(deadline - now)
            if reason is FailReason.SUCCESS:
                return True
            _count(self.stats.barrier_failed, "TIMEOUT" if reason is None else reason.name)
            await self.sleep(BARRIER_RETRY_S)
        return False

    async def _barrier_once(self, within_s: float) -> FailReason | None:
        """One barrier: pysyncobj's answer by name, or None if none came within `within_s`."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[FailReason] = loop.create_future()

        def settle(reason: FailReason) -> None:
            if not fut.done():  # wait_for cancels it at its timeout
                fut.set_result(reason)

        def done(result: Any, error: Any) -> None:
            loop.call_soon_threadsafe(settle, outcome(error))
        self.journal.barrier(done)
        try:
            return await asyncio.wait_for(fut, max(0.01, within_s))
        except TimeoutError:
            return None

    async def promote(self) -> PromotionReport:
        """Barrier, jump and restore every SA, activate charon; returns the timings."""
        self.promoting = True
        try:
            promo = Promotion(self.reserve, started=self.wall(), now=self.clock())
            self.tracker.master_since = promo.report.started  # earlier terms' marks
            self.tracker.restart()
            self.last_promotion = promo.report
            promo.barrier_done(await self.barrier(), self.clock())
            if not promo.report.quorum:
                log.warning("promotion without a Raft majority: outbound counters jump by %d "
                            "more than the journal asks", promo.report.extra_reserve)
            async with self._kernel_lock:  # a tick using the kernel finishes first
                await self._promote_xfrm(promo)
            self.activate()
            return self._promoted(promo.activated(self.clock()))
        finally:
            self.promoting = False

    async def _promote_xfrm(self, promo: Promotion) -> None:
        """Read and write until the promotion leaves its XFRM phase."""
        again = True
        while again:
            try:
                writes = promo.plan(await self.kernel.snapshot(), self._records(),
                                    self.costs.takeover_stretch_s())
                res = await self.kernel.write(writes)
            except KERNEL_FAILURES as e:
                again = promo.read_failed(str(e), self.clock())
                continue
            promo.written(res, self.clock())
            again = False

    @staticmethod
    def _promoted(rep: PromotionReport) -> PromotionReport:
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
            self.tracker.stats), "loop": asdict(self.stats), "in_flight": self.flight.open,
            "last_promotion": asdict(self.last_promotion) if self.last_promotion else None}


__all__ = ["BARRIER_RETRY_S", "Guard", "GuardStats", "JournalPort", "MarkFlight"]
