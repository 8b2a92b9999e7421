"""The guard's side of the send fence: the injected `FencePort` kept in line with this node's
sender term (`permits.SenderTerm`): revoke, grant, forget (`sync`), and count (`count`).

Rules: one `asyncio.Lock` orders the fence's commands. The fence holds a permit only for a mark
committed and accepted in this node's current epoch; every permit is revoked at start, when the
node is no longer VRRP master, when another node's claim deposed it, and before it claims
(`new_term`); a revoke is skipped when the fence surely holds nothing (set up or revoked since
the last grant was tried). The only failure handled is the fence's own (`FenceError`: counted,
logged once per run, retried every step; earlier permits stay in force). The fence's drop
counters are read at most every COUNTS_S on the VRRP master, COUNTS_BACKUP_S elsewhere, and
never sooner than COUNTS_DUTY times the last read's own duration after it (D279: the read
grows with the SAs, 0.34 s at 20,000, and holds the fence and the guard's loop meanwhile); the
counts and a backup's standby permits are chores that a promotion preempts (D263).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable

from ..fence import port as fenceport  # a module: hasync.fence.port imports guard.records
from .permits import SenderTerm
from .ports import FenceTally, GuardStats, JournalPort, MarkFlight, sa_name
from .records import SaKey

log = logging.getLogger("hasync.guard")
COUNTS_S = 1.0  # the fence's drop counters are read at most this often on the VRRP master
COUNTS_BACKUP_S = 10.0  # and this often elsewhere (no permits: every ESP packet is dropped)
COUNTS_DUTY = 10.0  # and a read is followed by 10 times its duration without one (D279)


class FenceSync:
    """The send fence brought in line with the term, one command at a time."""

    def __init__(self, node: str, journal: JournalPort, fence: fenceport.FencePort,
                 term: SenderTerm, stats: GuardStats, clock: Callable[[], float]) -> None:
        self.node, self.journal, self.fence = node, journal, fence
        self.term, self.stats, self.clock = term, stats, clock
        self.failing = 0  # fence commands that failed in a row
        self.deposed_by: tuple[str, int] | None = None  # the claim that ended this node's term
        self.tally = FenceTally()
        self._set_up = False
        self._empty = False  # the fence holds no permit for sure: set up or revoked since the
        #                      last grant was tried (a grant that failed may have landed)
        self._counts_at = -math.inf
        self._count_s = 0.0  # how long the last read of the drop counters took
        self._forget: set[SaKey] = set()
        self._prepared: set[SaKey] = set()  # SAs whose chains hold a standby permit (D262)
        self._chore_task: asyncio.Future[None] | None = None  # counts or standby (D263)
        self._lock = asyncio.Lock()

    async def sync(self, master: bool, counters: bool = True) -> None:
        """Bring the fence in line with this node's term: revoke, grant (without `counters`:
        no drop counters yet, D266), forget."""
        async with self._lock:
            self._check_sender(master)
            term = self.term
            try:
                if not self._set_up:
                    await self.fence.setup()  # revokes everything: a start grants nothing
                    self._set_up, term.revoke, self._empty = True, False, True
                if term.revoke:
                    await self._revoke()
                if term.pending:
                    permits = list(term.pending.values())
                    self._empty = False
                    await self.fence.grant(permits, counters)
                    term.granted(permits)
                if self._forget:
                    keys = sorted(self._forget)
                    await self.fence.forget(keys)
                    self._forget.difference_update(keys)
            except fenceport.FenceError as e:
                self._failed(e)
                return
            self._works()

    async def _revoke(self) -> None:
        """Unlink every permit (skipped when the fence holds none for sure)."""
        if not self._empty:
            await self.fence.revoke_all()
            self._empty = True
            self.stats.revocations += 1
        self.term.revoke = False

    async def _chore(self, work: Callable[[], Awaitable[None]]) -> None:
        """Run a chore (counts, a backup's standby permits) that a promotion may preempt
        (`preempt`, D263): it then ends here, and its nft run is killed (fence/nft.py)."""
        task = asyncio.ensure_future(work())
        self._chore_task = task
        try:
            await asyncio.wait({task})
        finally:
            self._chore_task = None
            task.cancel()  # only if this step itself was cancelled: the task ended otherwise
        if not task.cancelled():
            task.result()

    def preempt(self) -> None:
        """A promotion starts: a running chore ends now instead of holding the fence."""
        if self._chore_task is not None and not self._chore_task.done():
            self._chore_task.cancel()
            self.stats.fence_preempted += 1

    async def count(self, master: bool) -> None:
        """Read the fence's drop counters, at most every COUNTS_S on the master and every
        COUNTS_BACKUP_S elsewhere (the guard does it after a tick's marks: three nft runs that
        a new master's first permits should not wait for)."""
        now = self.clock()
        every = max(COUNTS_S if master else COUNTS_BACKUP_S, COUNTS_DUTY * self._count_s)
        if now - self._counts_at < every or self.failing or not self._set_up:
            return  # a failing fence is retried by `sync`, every step
        self._counts_at = now
        await self._chore(self._count)

    async def _count(self) -> None:
        async with self._lock:
            t0 = self.clock()
            try:
                self._note_counts(await self.fence.counts())
            except fenceport.FenceError as e:
                self._failed(e)
                return
            finally:
                self._count_s = self.clock() - t0
            self._works()

    def _works(self) -> None:
        if self.failing:
            log.info("the send fence works again, after %d failures", self.failing)
            self.failing = 0

    async def prepare(self, permits: list[fenceport.Permit]) -> None:
        """Not the sender: make ready the permits this node's claim would grant now (D262),
        permitting nothing, so a promotion's grant only links them."""
        if self.failing or not self._set_up or self.term.epoch is not None:
            return  # a failing fence is retried by `sync`; a sender's grants own its chains
        await self._chore(lambda: self._prepare(permits))

    async def _prepare(self, permits: list[fenceport.Permit]) -> None:
        async with self._lock:
            if self.term.epoch is not None:
                return
            self._prepared.update(p.key for p in permits)  # forgotten when gone, even if
            try:  #                                           this run is cut short
                await self.fence.prepare(permits)
            except fenceport.FenceError as e:
                self._failed(e)
                return
            self._works()

    async def new_term(self, flight: MarkFlight) -> None:
        """Before a claim: end the term and revoke every permit the fence holds (without
        waiting for the fence's lock when it surely holds none: a backup's common case)."""
        self.preempt()
        if self._empty:
            self.term.drop()
            flight.expire(math.inf, 0.0)
            self.term.revoke = False
            return
        async with self._lock:  # a fresh term: nothing from before stays permitted
            self.term.drop()
            flight.expire(math.inf, 0.0)  # an old term's submission: its answer is moot
            try:
                await self._revoke()  # a backup's fence is empty already: no nft run
            except fenceport.FenceError as e:  # what stays lies below every new target
                self._failed(e)

    def forget_gone(self, seen: frozenset[SaKey]) -> None:
        """Forget the SAs a read no longer found: permits, counts, then (next sync) the fence's."""
        gone = (set(self.tally.fenced) | set(self.term.held) | set(self.term.pending)
                | self._prepared) - seen
        if gone:
            self._prepared -= gone
            self.term.forget(gone)
            self.tally.forget(gone)
            self._forget |= gone

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

    def _failed(self, e: fenceport.FenceError) -> None:
        self.stats.fence_errors += 1
        self.stats.last_error = str(e)
        if not self.failing:
            log.warning("the send fence failed: %s (retried every step; earlier permits stay "
                        "in force; `hasync status`: takeover.loop.fence_errors)", e)
        self.failing += 1

    def _note_counts(self, counts: fenceport.FenceCounts) -> None:
        """Keep the drop counters; one log line per read that finds SAs starting to drop."""
        started, packets = self.tally.note(counts.per_sa, counts.unknown)
        if started:
            log.warning("%d SAs fenced: %d outbound packets dropped above this node's "
                        "committed marks, or without a permit (first: %s; `hasync status` "
                        "takeover.fence.fenced)", len(started), packets, sa_name(started[0]))


__all__ = ["COUNTS_BACKUP_S", "COUNTS_DUTY", "COUNTS_S", "FenceSync"]
