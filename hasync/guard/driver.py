"""The sequence guard's driver: what a node does with ESP replay state as master (journal marks,
grant send permits), as backup (keep the kernel at the targets) and when it becomes master
(`promote` = claim the sender epoch, then write the targets, then activate charon).

Rules: every decision comes from the pure parts (`rules`, `pacing`, `promotion`, `permits`);
this module only sequences IO between Raft (a `JournalPort`, the daemon's `ClusterJournal`), the
kernel (an injected `KernelPort`), the send fence (an injected `FencePort`) and charon
(`activate`). The injected clock is read once per step and passed in as `now`; wall time
(`wall`) only stamps entries and reports. One `asyncio.Lock` keeps a tick and a promotion from
using the kernel at once, another orders fence commands; the loop starts no tick while a
promotion runs. Marks go one submission at a time (`MarkFlight`). The fence holds a permit only
for a mark committed and accepted in this node's current epoch (`permits.SenderTerm`); every
permit is revoked at start, when the node is no longer VRRP master, when another node's claim
deposed it, and before it claims; an ESN SA's permit is emptied once its counter runs 2^30 past
it (`permits.ESN_STOP`: the fence sees only the low 32 bits). Handled failures are only named
ones: a kernel read or write (`kernel.KERNEL_FAILURES`: counted, logged once per run of
failures), a fence command (`FenceError`: counted, logged once per run, retried every step,
`health()` says so), a Raft commit or claim that fails (`syncobj_compat.FailReason`, counted by
name) or times out, an entry that cannot be sealed (logged with its traceback, counted).
Anything else propagates: `run()` then raises, the daemon stops and keepalived moves the VIP.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from ..fence import port as fenceport  # a module: hasync.fence.port imports guard.records
from ..journal.seal import EntryError, SealError
from ..syncobj_compat import FailReason, outcome
from .entries import ACCEPTED, MAX_RECORDS, REJECTED, SeqEntry
from .kernel import KERNEL_FAILURES, KernelPort, KernelSas
from .pacing import BACKUP_SEQ_TICK_S, BackupPace, ReadCosts
from .permits import SenderTerm
from .ports import FenceTally, GuardStats, JournalPort, MarkFlight, count, sa_name
from .promotion import Promotion, PromotionReport
from .records import KernelSa, SaKey, SeqRecord, Write, WriteResult
from .rules import Reserve, SeqTracker, plan_writes

log = logging.getLogger("hasync.guard")
CLAIM_WAIT_S = 1.0  # a claim not answered this long is submitted again
CLAIM_RETRY_S = 0.05  # a failed claim is retried after this, doubling up to CLAIM_RETRY_MAX_S
CLAIM_RETRY_MAX_S = 1.0
BEACON_S = 1.0  # a sender with nothing due commits an empty entry this often (D207)
STALL_S = 4.0  # default stall bound: VRRP master this long without being the sender, or a
#               master this long without reading its kernel, and `health()` fails
COUNTS_S = 1.0  # the fence's drop counters are read at most this often


class Guard:
    """The guard on one node: `run()` as its loop, `promote()` on VRRP MASTER."""

    def __init__(self, node: str, journal: JournalPort, reserve: Reserve,
                 activate: Callable[[], None], fence: fenceport.FencePort, tick_s: float = 0.1,
                 kernel: KernelPort | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 is_master: Callable[[], bool] = lambda: False,
                 stall_s: float = STALL_S) -> None:
        self.node, self.journal, self.reserve = node, journal, reserve
        self.stall_s = stall_s  # the daemon passes [cluster] quorum_timeout_ms (D206)
        self.activate, self.fence, self.tick_s = activate, fence, tick_s
        self.kernel: KernelPort = kernel if kernel is not None else KernelSas()
        self.clock, self.wall, self.sleep = clock, wall, sleep
        self.is_master = is_master
        self.tracker = SeqTracker(node, reserve, tick_s=tick_s)
        self.costs = ReadCosts(tick_s)
        self.pace = BackupPace()
        self.flight = MarkFlight()
        self.term = SenderTerm()
        self.failing = 0  # reads that failed in a row
        self.fence_failing = 0  # fence commands that failed in a row
        self.stats = GuardStats()
        self.last_promotion: PromotionReport | None = None
        self.promoting = False
        self.started = clock()
        self.last_read: float | None = None  # the last successful kernel read (clock)
        self.kernel_spis: frozenset[int] = frozenset()  # the SPIs of that read (charonwatch)
        self.kernel_keys: frozenset[SaKey] = frozenset()  # its SAs (roam.py)
        self.master_since: float | None = None
        self.deposed_by: tuple[str, int] | None = None
        self.tally = FenceTally()
        self._fence_set_up = False
        self._counts_at = -math.inf
        self._forget: set[SaKey] = set()
        self._submitted_at = -math.inf  # the sender's last entry (records or a beacon)
        self._kernel_lock, self._fence_lock = asyncio.Lock(), asyncio.Lock()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def close(self) -> None:
        """Release the kernel port and the fence's process resources (the rules stay)."""
        self.kernel.close()
        self.fence.close()

    def _records(self) -> dict[SaKey, SeqRecord]:
        with self.journal.lock:
            return dict(self.journal.seqs.records)

    # ---- the loop ----
    async def run(self, is_master: Callable[[], bool], mirrored: Callable[[], int]) -> None:
        """The guard's loop: marks on the master, targets everywhere else. Never returns."""
        self._loop, self.is_master = asyncio.get_running_loop(), is_master
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
        """One pass: fence first, then tick if due; the rest to take after it (None: no tick)."""
        woken = self._wake.is_set()
        self._wake.clear()  # a mark applied from here on wakes the next wait
        now = self.clock()
        if master and self.master_since is None:
            self.master_since = now
        elif not master:
            self.master_since, self.deposed_by = None, None
        await self.fence_sync(master)
        with self.journal.lock:
            moves = self.journal.seqs.moves
        due = master or self.pace.due((moves, mirrored), now) or woken
        if self.promoting or not due:
            return None
        await self.tick(master)
        return self.costs.rest_s()

    async def _wait_wake(self, timeout_s: float) -> None:
        """Until `wake()`, `wake_threadsafe()` or `timeout_s` (on the injected sleep)."""
        waiter = asyncio.ensure_future(self._wake.wait())
        sleeper = asyncio.ensure_future(self.sleep(timeout_s))
        try:
            await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            sleeper.cancel()
        if sleeper.done() and not sleeper.cancelled():
            sleeper.result()  # a failing sleep is a bug: raise it

    def wake(self) -> None:
        """Run the next step now: a commit to grant, a role change, charon's CHILD_ADD."""
        self._wake.set()

    def wake_threadsafe(self) -> None:
        """Raft's thread applied an entry that moved a mark or the sender: wake the loop."""
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._wake.set)
        except RuntimeError:
            if not loop.is_closed():
                raise
            log.debug("a mark moved while the daemon stops: nothing to wake")

    # ---- the fence ----
    async def fence_sync(self, master: bool) -> None:
        """Bring the fence in line with this node's term: revoke, grant, forget, count."""
        async with self._fence_lock:
            self._check_sender(master)
            term = self.term
            try:
                if not self._fence_set_up:
                    await self.fence.setup()  # revokes everything: a start grants nothing
                    self._fence_set_up, term.revoke = True, False
                if term.revoke:
                    await self.fence.revoke_all()
                    term.revoke = False
                    self.stats.revocations += 1
                if term.pending:
                    permits = list(term.pending.values())
                    await self.fence.grant(permits)
                    term.granted(permits)
                if self._forget:
                    keys = sorted(self._forget)
                    await self.fence.forget(keys)
                    self._forget.difference_update(keys)
                now = self.clock()
                if now - self._counts_at >= COUNTS_S:
                    self._counts_at = now
                    self._note_counts(await self.fence.counts())
            except fenceport.FenceError as e:
                self._fence_failed(e)
                return
            if self.fence_failing:
                log.info("the send fence works again, after %d failures", self.fence_failing)
                self.fence_failing = 0

    def _check_sender(self, master: bool) -> None:
        """End the term when this node is no longer VRRP master or another claim came."""
        term = self.term
        if not master:
            if term.epoch is not None or term.held or term.pending:
                log.info("no longer VRRP master: every send permit is revoked")
                term.drop()
            return
        if term.epoch is None:
            return
        with self.journal.lock:
            sender = self.journal.seqs.sender
        if sender == (self.node, term.epoch):
            return
        if sender[0] == self.node and sender[1] > term.epoch:
            term.start(sender[1])  # a retried claim of ours committed after an earlier one
            return
        self.stats.deposed += 1
        self.deposed_by = sender
        term.drop()
        log.warning("deposed: %s claimed sender epoch %d while this node is VRRP master; "
                    "every send permit is revoked (`hasync health`: not_sender)", *sender)

    def _fence_failed(self, e: fenceport.FenceError) -> None:
        self.stats.fence_errors += 1
        self.stats.last_error = str(e)
        if not self.fence_failing:
            log.warning("the send fence failed: %s (retried every step; earlier permits stay "
                        "in force; `hasync status`: takeover.loop.fence_errors)", e)
        self.fence_failing += 1

    def _note_counts(self, counts: fenceport.FenceCounts) -> None:
        """Keep the drop counters; one log line per read that finds SAs starting to drop."""
        started, packets = self.tally.note(counts.per_sa, counts.unknown)
        if started:
            log.warning("%d SAs fenced: %d outbound packets dropped above this node's "
                        "committed marks, or without a permit (first: %s; `hasync status` "
                        "takeover.fence.fenced)", len(started), packets, sa_name(started[0]))

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
        now, before = self.clock(), self.last_read
        self.last_read = now
        if master and before is not None:
            gap_ms = round((now - before) * 1000, 1)
            self.stats.master_gap_max_ms = max(self.stats.master_gap_max_ms, gap_ms)
        self.stats.ticks += 1
        if self.failing:
            log.info("reading the kernel's SAs works again, after %d failures", self.failing)
            self.failing = 0
        seen = frozenset(sa.key for sa in sas)
        self.kernel_keys = seen
        self.kernel_spis = frozenset(key[1] for key in seen)
        gone = (set(self.tally.fenced) | set(self.term.held) | set(self.term.pending)) - seen
        if gone:
            self.term.forget(gone)
            self.tally.forget(gone)
            self._forget |= gone
        if master:
            return await self._journal_due(sas, now)
        res, write_s = await self._write(plan_writes(sas, self._records(), self.reserve,
                                                     inbound=False))
        self.stats.prejumps += res.done
        self.stats.prejump_errors += len(res.errors)
        return write_s

    async def _write(self, writes: list[Write]) -> tuple[WriteResult, float]:
        """Write to the kernel (nothing if no writes); what it did and the time it took."""
        if not writes:
            return WriteResult(), 0.0
        wrote = self.clock()
        res = await self.kernel.write(writes)
        if res.errors:
            self.stats.last_error = res.errors[-1]
        return res, self.clock() - wrote

    def _kernel_failed(self, e: Exception) -> None:
        self.stats.kernel_errors += 1
        self.stats.last_error = str(e)
        if not self.failing:  # once per run of failures: the guard stands still meanwhile
            log.warning("the sequence guard cannot read or write the kernel's SAs: %s "
                        "(retried every tick; `hasync status`: takeover.loop.kernel_errors)", e)
        self.failing += 1

    def _read_done(self, read_s: float, write_s: float) -> None:
        self.costs.note(read_s, write_s)
        self.stats.read_ms = round(read_s * 1000, 1)
        self.stats.write_ms = round(write_s * 1000, 1)
        self.stats.read_max_ms = round(max(self.costs.reads) * 1000, 1)

    async def _journal_due(self, sas: list[KernelSa], now: float) -> float:
        """As the sender: jump SAs new to the term, submit the records due; the writes' time."""
        epoch = self.term.epoch
        if epoch is None:
            return 0.0  # not the sender (yet): no marks, nothing permitted
        before = self.tracker.stats.violations
        plan = self.tracker.observe(sas, self._records(), self.term.held, epoch, now,
                                    self.wall())
        if self.tracker.stats.violations > before and before == 0:
            log.warning("an SA's counter passed its committed mark (by up to %d): the fence "
                        "drops its packets above the mark until the renewal commits "
                        "(`hasync status`: takeover.fence.fenced, takeover.tracker.violations)",
                        self.tracker.stats.max_overrun)
        self._stop_wrapping(sas)
        beacon = now - self._submitted_at >= BEACON_S  # an empty entry: the sender lives
        if self.flight.expire(now, self.stall_s):  # pysyncobj lost the command (ports.py)
            self.stats.answers_lost += 1
            log.warning("Raft never answered marks submitted %.1f s ago; submitting again "
                        "(takeover.loop.answers_lost)", now - self.flight.since)
        if (not plan.records and not plan.gone and not beacon) or self.flight.open:
            return 0.0  # overruns are still counted; renewals wait for the commit
        res, write_s = await self._write(plan.writes)  # one behind the counter is harmless:
        self.stats.jumps += res.done  # what it re-exposes lies above the permits
        number = self.flight.start(now)
        assert number is not None
        self.term.plan(plan.lows, {sa.key: sa.esn for sa in sas if sa.key in plan.lows})
        self.tracker.submitted(plan.records, now)
        self._submitted_at = now
        self._submit(number, plan.records, plan.gone, epoch)
        return write_s

    def _stop_wrapping(self, sas: list[KernelSa]) -> None:
        """Empty the permits of ESN SAs 2^30 past them, before the low 32 bits wrap in."""
        if stopped := self.term.stop_wrapping(sas):
            self.stats.esn_stops += len(stopped)
            log.warning("%d ESN SAs ran 2^30 past their committed marks (first: %s): their "
                        "permits are emptied before the low 32 bits wrap into them (`hasync "
                        "status`: takeover.loop.esn_stops)", len(stopped), sa_name(stopped[0]))
            self.wake()

    def _submit(self, number: int, recs: list[SeqRecord], gone: list[SaKey],
                epoch: int) -> None:
        loop, wall = asyncio.get_running_loop(), self.wall()
        n = max(len(recs), len(gone), 1)  # nothing due: one empty entry (a beacon)
        for i in range(0, n, MAX_RECORDS):
            entry = SeqEntry(self.node, wall, tuple(recs[i:i + MAX_RECORDS]),
                             tuple(gone[i:i + MAX_RECORDS]), epoch)
            last = i + MAX_RECORDS >= n
            self.stats.submitted += 1

            def done(result: Any, error: Any, entry: SeqEntry = entry,
                     last: bool = last) -> None:
                loop.call_soon_threadsafe(self._committed, number, entry, outcome(error),
                                          result, last)
            try:
                self.journal.submit_seq(entry, done)
            except (EntryError, SealError):  # a local bug: say it loudly, keep the loop
                self.flight.answered(number, ok=False, last=True)
                self.stats.failed += 1
                self.stats.submit_errors += 1
                log.exception("journaling replay state failed (`hasync status`: "
                              "takeover.loop.submit_errors)")
                return

    def _committed(self, number: int, entry: SeqEntry, reason: FailReason, result: Any,
                   last: bool) -> None:
        ok = reason is FailReason.SUCCESS
        if ok:
            self.stats.committed += 1
            if result == ACCEPTED:
                self.stats.accepted += 1
                if self.term.accepted(entry):
                    self.wake()  # grant at once: the SA may be fenced right now
            else:
                self.stats.rejected += 1
        else:
            self.stats.failed += 1
            count(self.stats.commit_failed, reason.name)
        self.flight.answered(number, ok, last)

    # ---- promotion ----
    async def promote(self) -> PromotionReport:
        """Claim the sender epoch; once it is applied here, write every SA's target and
        activate charon. Without a committed claim: no writes, no activation, no marks."""
        self.promoting = True
        try:
            promo = Promotion(self.reserve, started=self.wall(), now=self.clock())
            self.tracker.restart()
            self.last_promotion = promo.report
            self.deposed_by = None  # a new claim: whatever deposed the last term is past
            if self.master_since is None:
                self.master_since = self.clock()
            async with self._fence_lock:  # a fresh term: nothing from before stays permitted
                self.term.drop()
                self.flight.expire(math.inf, 0.0)  # an old term's submission: its answer is moot
                try:
                    await self.fence.revoke_all()
                    self.term.revoke = False
                    self.stats.revocations += 1
                except fenceport.FenceError as e:  # what stays lies below every new target
                    self._fence_failed(e)
            try:
                epoch = await self._claim(promo.report)
            except asyncio.CancelledError:  # VRRP BACKUP or FAULT (Effects cancels it)
                promo.claim_done(None, promo.report.claim_attempts, self.clock())
                raise
            promo.claim_done(epoch, promo.report.claim_attempts, self.clock())
            if epoch is None:
                log.warning("promotion given up: the claim did not commit in %d attempts "
                            "before the role changed; charon not activated, nothing sent",
                            promo.report.claim_attempts)
                return promo.report
            self.term.start(epoch)
            async with self._kernel_lock:  # a tick using the kernel finishes first
                await self._promote_xfrm(promo)
            self.activate()
            return self._promoted(promo.activated(self.clock()))
        finally:
            self.promoting = False

    async def _claim(self, report: PromotionReport) -> int | None:
        """Claims until one is applied here (its epoch) or VRRP leaves MASTER (None)."""
        backoff = CLAIM_RETRY_S
        while self.is_master():
            report.claim_attempts += 1
            epoch = await self._claim_once(CLAIM_WAIT_S)
            if epoch is not None:
                return epoch
            await self.sleep(backoff)
            backoff = min(2 * backoff, CLAIM_RETRY_MAX_S)
        return None

    async def _claim_once(self, within_s: float) -> int | None:
        """One claim: its epoch once applied here, None if it failed or took `within_s`."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[FailReason, Any]] = loop.create_future()

        def settle(answer: tuple[FailReason, Any]) -> None:
            if not fut.done():
                fut.set_result(answer)

        def done(result: Any, error: Any) -> None:
            loop.call_soon_threadsafe(settle, (outcome(error), result))
        self.journal.claim(done)
        await asyncio.sleep(0)  # an answer given at once is taken before the timer starts
        if not fut.done():
            timer = asyncio.ensure_future(self.sleep(within_s))
            try:
                await asyncio.wait({fut, timer}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                timer.cancel()
        if not fut.done():
            fut.cancel()
            count(self.stats.claim_failed, "TIMEOUT")
            return None
        reason, result = fut.result()
        if reason is FailReason.SUCCESS and type(result) is int:
            return result
        count(self.stats.claim_failed, "STALE" if result == REJECTED else reason.name)
        return None

    async def _promote_xfrm(self, promo: Promotion) -> None:
        """Read and write until the promotion leaves its XFRM phase."""
        again = True
        while again:
            try:
                sas = await self.kernel.snapshot()
                self.last_read = self.clock()  # a master's staleness counts from this read
                writes = promo.plan(sas, self._records())
                res = await self.kernel.write(writes)
            except KERNEL_FAILURES as e:
                again = promo.read_failed(str(e), self.clock())
                continue
            promo.written(res, self.clock())
            again = False

    @staticmethod
    def _promoted(rep: PromotionReport) -> PromotionReport:
        log.info("promoted: sender epoch %d claimed in %.0f ms (%d attempts), %d of %d SAs "
                 "written in %.0f ms (largest jump %d), charon activated in %.0f ms",
                 rep.epoch, rep.wait_ms, rep.claim_attempts, rep.writes, rep.sas, rep.xfrm_ms,
                 rep.max_jump, rep.activate_ms)
        for err in rep.errors:
            log.warning("promotion: %s", err)
        return rep

    # ---- what others read ----
    def health(self, now: float) -> list[str]:
        """Why this node should not hold the VIPs, by name (empty: nothing against it)."""
        reasons = []
        master = self.is_master()
        limit = self.stall_s if master else self.pace.full_s + self.stall_s
        since = self.last_read if self.last_read is not None else self.started
        if now - since > limit and not self.promoting:
            reasons.append("guard_kernel_stale")
        if self.failing:
            reasons.append("guard_kernel_failing")
        if self.fence_failing:
            reasons.append("fence_failing")
        if master and self.term.epoch is None and (self.deposed_by is not None or (
                self.master_since is not None and now - self.master_since > self.stall_s)):
            reasons.append("not_sender")
        return reasons

    def status(self) -> dict[str, Any]:
        """The guard's view for `hasync status` (no key material)."""
        with self.journal.lock:
            n = len(self.journal.seqs.records)
            sender = self.journal.seqs.sender
        return {"records": n, "reserve": asdict(self.reserve), "tracker": asdict(
            self.tracker.stats), "loop": asdict(self.stats), "in_flight": self.flight.open,
            "sender": {"node": sender[0] or None, "epoch": sender[1]},
            "epoch": self.term.epoch, "fence": {
                "permits": len(self.term.held), "pending": len(self.term.pending),
                "fenced": {sa_name(k): n for k, n in sorted(self.tally.fenced.items()) if n},
                "unknown": self.tally.unknown, "errors": self.stats.fence_errors,
                "failing": self.fence_failing},
            "last_promotion": asdict(self.last_promotion) if self.last_promotion else None}


__all__ = ["COUNTS_S", "STALL_S", "Guard"]
