"""The sequence guard's driver: what a node does with ESP replay state as master (journal marks,
grant send permits), as backup (keep the kernel at the targets) and when it becomes master
(`promote` = claim the sender epoch, then write the targets, then activate charon).

Rules: every decision comes from the pure parts (`rules`, `pacing`, `promotion`, `permits`);
`Guard` only sequences IO between Raft (a `JournalPort`, the daemon's `ClusterJournal`), the
kernel (an injected `KernelPort`), the send fence (an injected `FencePort`) and charon
(`activate`), through the collaborators it owns: `reads.KernelReads` (the kernel, its one
`asyncio.Lock`, so a tick and a promotion never use it at once, D182), `fencing.FenceSync` (the
fence, its own lock ordering its commands), `marks.MarkSender` (the sender's marks, one
submission at a time: `MarkFlight`) and `promoter.PromotionDriver` (claim, targets,
activation). The injected clock is read once per step and passed in as `now`; wall time
(`wall`) only stamps entries and reports; the loop starts no tick while a promotion runs. The
fence holds a permit only for a mark committed and accepted in this node's current epoch
(`permits.SenderTerm`); every permit is revoked at start, when the node is no longer VRRP
master, when another node's claim deposed it, and before it claims; an ESN SA's permit is
emptied once its counter runs 2^30 past it (`permits.ESN_STOP`: the fence sees only the low 32
bits). Handled failures are only named ones (D183): a kernel read or write
(`kernel.KERNEL_FAILURES`: counted, logged once per run of failures), a fence command
(`FenceError`: counted, logged once per run, retried every step, `health()` says so), a Raft
commit or claim that fails (`syncobj_compat.FailReason`, counted by name) or times out, an
entry that cannot be sealed (logged with its traceback, counted). Anything else propagates:
`run()` then raises, the daemon stops and keepalived moves the VIP.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from ..fence import port as fenceport  # a module: hasync.fence.port imports guard.records
from .fencing import FenceSync
from .kernel import KERNEL_FAILURES, KernelPort, KernelSas
from .marks import MarkSender
from .pacing import BACKUP_SEQ_TICK_S, REST_K, BackupPace, ReadCosts
from .permits import SenderTerm
from .ports import (
    GuardStats,
    JournalPort,
    MarkFlight,
    Prepared,
    committed_records,
    prepare_claim,
    sa_name,
)
from .promoter import PromotionDriver
from .promotion import Promotion, PromotionReport
from .reads import KernelReads
from .records import SaKey
from .rules import Reserve, SeqTracker, plan_writes
from .watch import SaWatch

log = logging.getLogger("hasync.guard")
STALL_S = 4.0  # default stall bound: VRRP master this long without being the sender, or a
#               master this long without reading its kernel, and `health()` fails


class Guard:
    """The guard on one node: `run()` as its loop, `promote()` on VRRP MASTER."""

    def __init__(self, node: str, journal: JournalPort, reserve: Reserve,
                 activate: Callable[[], None], fence: fenceport.FencePort, tick_s: float = 0.1,
                 kernel: KernelPort | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 is_master: Callable[[], bool] = lambda: False,
                 stall_s: float = STALL_S, watch: SaWatch | None = None) -> None:
        self.node, self.journal, self.reserve = node, journal, reserve
        self.stall_s = stall_s  # the daemon passes [cluster] quorum_timeout_ms (D206)
        self.activate, self.fence, self.tick_s = activate, fence, tick_s
        self.kernel: KernelPort = kernel if kernel is not None else KernelSas()
        # the kernel's SA notices, for the kernel's own SAs (a test's fake kernel has none)
        self.watch = watch if watch is not None or kernel is not None else SaWatch()
        self.clock, self.wall, self.sleep = clock, wall, sleep
        self.is_master = is_master
        self.tracker = SeqTracker(node, reserve, tick_s=tick_s)
        self.costs = ReadCosts(tick_s)
        self.pace = BackupPace()
        self.flight = MarkFlight()
        self.term = SenderTerm()
        self.stats = GuardStats()
        self.last_promotion: PromotionReport | None = None
        self.promoting = False
        self.started = clock()
        self.master_since: float | None = None
        self.reads = KernelReads(self.kernel, self.costs, self.stats, clock, self.watch)
        self.fencing = FenceSync(node, journal, fence, self.term, self.stats, clock)
        self.marks = MarkSender(node, journal, self.term, self.tracker, self.flight, self.stats,
                                self.reads.write, self.wake_grant, wall)
        self.promotion = PromotionDriver(  # asks self.is_master, which run() may replace
            node, journal, self.term, self.reads, self.stats, activate, lambda: self.is_master(),
            clock, sleep, self.wake_grant,
            lambda: self.fence_sync(self.is_master(), counters=False),  # D265, D266
            lambda: self.prepared)  # D281
        self.prepared: Prepared | None = None  # this backup's claim, made at its last tick
        self._wake = asyncio.Event()
        self._grant = asyncio.Event()  # a mark accepted: the fence grants it even mid-rest
        self._promoted_at: float | None = None  # the last promotion's start (clock)
        self._promoted = False  # a promotion ended since the last step began: no rest
        self._loop: asyncio.AbstractEventLoop | None = None

    def close(self) -> None:
        """Release the kernel port and the fence's process resources (the rules stay)."""
        self.kernel.close()
        self.fence.close()
        if self.watch is not None:
            self.watch.close()

    # ---- the loop ----
    async def run(self, is_master: Callable[[], bool], mirrored: Callable[[], int]) -> None:
        """The guard's loop: marks on the master, targets everywhere else. Never returns."""
        self._loop, self.is_master = asyncio.get_running_loop(), is_master
        while True:
            master = is_master()
            rest = await self.step(master, mirrored())
            if rest is not None:
                await self._rest(rest)  # reads take at most a quarter CPU (pacing.REST_K)
            # a master reads its counters every tick; a backup moves its kernel when a mark
            # moves, within BACKUP_SEQ_TICK_S of a new SA, and every 10 s (BackupPace)
            await self._wait_wake(self.tick_s if master else max(self.tick_s,
                                                                 BACKUP_SEQ_TICK_S))

    async def step(self, master: bool, mirrored: int) -> float | None:
        """One pass: fence first, then tick if due; the rest to take after it (None: no tick)."""
        woken = self._wake.is_set()
        self._wake.clear()  # a mark applied from here on wakes the next wait
        self._grant.clear()  # this step's fence sync grants what is accepted
        self._promoted = False  # this step's tick makes the first marks
        now = self.clock()
        if master and self.master_since is None:
            self.master_since = now
        elif not master:
            self.master_since, self.fencing.deposed_by = None, None
        await self.fence_sync(master)
        with self.journal.lock:
            moves = self.journal.seqs.moves
        due = master or self.pace.due((moves, mirrored), now) or woken
        if not self.promoting and due:
            await self.tick(master)
            self._note_term()  # marks submitted
            if not master and not self.promoting:
                await self.fencing.prepare(self._standby())
        term = self.term
        if not self.promoting and not (master and (
                term.pending or (term.epoch is not None and not term.held))):
            await self.fencing.count(master)  # the drop counters (three nft runs), but not
            #                   while a new term's permits wait for the fence (D260, D261)
        return None if self.promoting or not due else self.costs.rest_s()

    def _note_term(self) -> None:
        """After a promotion: when its term's first marks went out, were accepted, granted."""
        rep, t0 = self.last_promotion, self._promoted_at
        if rep is None or t0 is None or not rep.done or rep.granted_ms is not None:
            return
        term = self.term
        rep.note_term(round((self.clock() - t0) * 1000, 1), self.flight.open,
                      bool(term.held), bool(term.held) and not term.pending)

    async def _rest(self, rest_s: float) -> None:
        """Rest after a read; a mark accepted meanwhile is granted at once, since the fence is
        what holds a new master's traffic (the next read still waits for the rest's end), and
        a promotion that ended meanwhile ends the rest (its term's first marks are due)."""
        end = self.clock() + rest_s
        while await self._wait_wake(max(0.0, end - self.clock()), self._grant):
            self._grant.clear()
            if self._promoted:
                return
            await self.fence_sync(self.is_master())

    async def _wait_wake(self, timeout_s: float, event: asyncio.Event | None = None) -> bool:
        """Until `wake()`, `wake_threadsafe()` (or `event`, if given) or `timeout_s` (on the
        injected sleep); True if woken before the timeout."""
        waiter = asyncio.ensure_future((event or self._wake).wait())
        sleeper = asyncio.ensure_future(self.sleep(timeout_s))
        try:
            await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            sleeper.cancel()
        if sleeper.done() and not sleeper.cancelled():
            sleeper.result()  # a failing sleep is a bug: raise it
            return False
        return True

    def wake(self) -> None:
        """Run the next step now: a commit to grant, a role change, charon's CHILD_ADD."""
        self._wake.set()

    def wake_grant(self) -> None:
        """A mark was accepted (or a permit emptied): sync the fence now, rest or not."""
        self._note_term()  # accepted
        self._grant.set()
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

    async def fence_sync(self, master: bool, counters: bool = True) -> None:
        """Bring the fence in line with this node's term: revoke, grant, forget."""
        await self.fencing.sync(master, counters)
        self._note_term()  # granted

    def _standby(self) -> list[fenceport.Permit]:
        """The permits this node's claim would grant now (`rules.claim_marks`), for the SAs
        of its last read: the fence makes them ready on a backup (D262); the whole claim is
        kept for a promotion to take if the records do not change before it (D281)."""
        self.prepared = prepare_claim(self.journal, self.reserve)
        keys = self.reads.keys
        return [fenceport.Permit(k, h.lo, h.hi, False) for k, h in self.prepared.held.items()
                if k in keys]

    # ---- every tick ----
    async def tick(self, master: bool) -> None:
        """Master: journal the marks due. Others: move the kernel up to the targets."""
        reads = self.reads
        async with reads.lock:
            started, write_s = self.clock(), 0.0
            try:
                write_s = await self._read_and_act(master)
            except KERNEL_FAILURES as e:
                reads.failed(e)
            reads.done(self.clock() - started - write_s, write_s)

    async def _read_and_act(self, master: bool) -> float:
        """Read the kernel, then journal (master) or pre-jump (others); the writes' time."""
        sas, now = await self.reads.read(master)
        self.fencing.forget_gone(self.reads.keys)
        if master:
            return await self.marks.journal_due(sas, now, self.stall_s)
        writes = plan_writes(sas, committed_records(self.journal), self.reserve, inbound=False)
        res, write_s = await self.reads.write(writes)
        self.reads.prejumped(writes, res)
        self.stats.prejumps += res.done
        self.stats.prejump_errors += len(res.errors)
        return write_s

    # ---- promotion ----
    async def promote(self) -> PromotionReport:
        """Claim the sender epoch; once it is applied here, write every SA's target and
        activate charon. Without a committed claim: no writes, no activation, no marks."""
        self.promoting = True
        try:
            promo = Promotion(self.reserve, started=self.wall(), now=self.clock())
            self._promoted_at = promo.t0
            self.tracker.restart()
            self.last_promotion = promo.report
            self.fencing.deposed_by = None  # a new claim: whatever deposed the last term is past
            if self.master_since is None:
                self.master_since = self.clock()
            await self.fencing.new_term(self.flight)
            return await self.promotion.run(promo)
        finally:
            self.promoting = False
            self._promoted = True  # the new term's first marks: now, not after a rest
            self.wake_grant()

    # ---- what others read ----
    @property
    def failing(self) -> int:
        """Kernel reads or writes that failed in a row."""
        return self.reads.failing

    @property
    def last_read(self) -> float | None:
        """The last successful kernel read (clock)."""
        return self.reads.last_read

    @property
    def kernel_spis(self) -> frozenset[int]:
        """The SPIs of that read (charonwatch)."""
        return self.reads.spis

    @property
    def kernel_keys(self) -> frozenset[SaKey]:
        """The SAs of that read (roam.py)."""
        return self.reads.keys

    @property
    def deposed_by(self) -> tuple[str, int] | None:
        """The claim (node, epoch) that ended this node's term while it is VRRP master."""
        return self.fencing.deposed_by

    def health(self, now: float) -> list[str]:
        """Why this node should not hold the VIPs, by name (empty: nothing against it)."""
        reasons = []
        master = self.is_master()
        # a guard reading as paced is not stale: past the bound, allow its own cycle (a read of
        # the recent largest cost, the rest after it, a tick), which grows with the SAs (D258)
        cycle = (1 + REST_K) * max(self.costs.reads, default=0.0) + self.tick_s
        limit = cycle + (self.stall_s if master else self.pace.full_s + self.stall_s)
        since = self.last_read if self.last_read is not None else self.started
        if now - since > limit and not self.promoting:
            reasons.append("guard_kernel_stale")
        if self.failing:
            reasons.append("guard_kernel_failing")
        if self.fencing.failing:
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
        tally = self.fencing.tally
        return {"records": n, "reserve": asdict(self.reserve), "tracker": asdict(
            self.tracker.stats), "loop": asdict(self.stats), "in_flight": self.flight.open,
            "sender": {"node": sender[0] or None, "epoch": sender[1]},
            "epoch": self.term.epoch, "fence": {
                "permits": len(self.term.held), "pending": len(self.term.pending),
                "fenced": {sa_name(k): n for k, n in sorted(tally.fenced.items()) if n},
                "unknown": tally.unknown, "errors": self.stats.fence_errors,
                "failing": self.fencing.failing},
            "notices": dict(self.watch.counters) if self.watch is not None else None,
            "last_promotion": asdict(self.last_promotion) if self.last_promotion else None}


__all__ = ["STALL_S", "Guard"]
