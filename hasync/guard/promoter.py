"""A promotion's IO, once the guard has started a fresh term: claim the sender epoch through
Raft (the claim also commits the term's first marks, D261), grant the claim's permits of the
SAs the last read left at or past their lo (D265, D269), then write every SA's target, hold
the claim's other permits and activate charon (`promotion.Promotion` decides).

Rules: every decision is `Promotion`'s; this module sequences the claim (a `JournalPort`), the
kernel (through `reads.KernelReads`, under its one lock: a tick using the kernel finishes
first, D182) and charon (`activate`). A claim is retried while the node is VRRP master: one
not answered within CLAIM_WAIT_S is submitted again, a failed one after CLAIM_RETRY_S, doubling
up to CLAIM_RETRY_MAX_S. Handled failures are only named ones: a claim that fails
(`syncobj_compat.FailReason`, counted by name, STALE when the journal rejected it) or times out
(TIMEOUT), a kernel read or write (`kernel.KERNEL_FAILURES`: the promotion's report keeps it).
The early grant needs no read: a permit's numbers lie past every mark accepted before the
claim, and while it is in force the promotion writes an SA only past its hi or, restoring
inbound state, back the outbound counter it read (`rules.plan_writes`, `live`). From the
claim to charon's activation the cyclic garbage collector is paused (snapwriter.paused_gc,
D275): the promotion allocates per SA, and a collection walks every object the daemon holds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..snapwriter import paused_gc
from ..syncobj_compat import FailReason, outcome
from .entries import REJECTED
from .kernel import KERNEL_FAILURES
from .permits import SenderTerm
from .ports import GuardStats, JournalPort, Prepared, claimed_held, committed_records, count
from .promotion import REPORTED_WRITE_ERRORS, Promotion, PromotionReport
from .reads import KernelReads
from .records import KernelSa, SaKey, Write
from .rules import Held, Reserve, claim_lows, plan_writes

log = logging.getLogger("hasync.guard")
CLAIM_WAIT_S = 1.0  # a claim not answered this long is submitted again
CLAIM_RETRY_S = 0.05  # a failed claim is retried after this, doubling up to CLAIM_RETRY_MAX_S
CLAIM_RETRY_MAX_S = 1.0


class PromotionDriver:
    """Claim, write the targets, activate: a promotion's steps after the term is fresh."""

    def __init__(self, node: str, journal: JournalPort, term: SenderTerm, reads: KernelReads,
                 stats: GuardStats, activate: Callable[[], None],
                 is_master: Callable[[], bool], clock: Callable[[], float],
                 sleep: Callable[[float], Awaitable[None]],
                 granting: Callable[[], None] = lambda: None,
                 grant: Callable[[], Awaitable[None]] | None = None,
                 prepared: Callable[[], Prepared | None] = lambda: None) -> None:
        self.node, self.journal, self.term, self.reads, self.stats = (
            node, journal, term, reads, stats)
        self.activate, self.is_master, self.clock, self.sleep = activate, is_master, clock, sleep
        self.granting = granting  # permits held: the guard's loop grants them now
        self.grant = grant  # the fence grants what is held, now (the guard's fence sync)
        self.prepared = prepared  # the claim this backup made at its last tick (D281)

    async def run(self, promo: Promotion) -> PromotionReport:
        """Claim the sender epoch; once it is applied here, write every SA's target and
        activate charon. Without a committed claim: no writes, no activation, no marks."""
        try:
            epoch = await self._claim(promo.report, promo.reserve)
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
        async with self.reads.lock:  # a tick using the kernel finishes first: a backup's
            #                         write planned before the claim lands before any permit
            with paused_gc():  # no collection walks the daemon's heap before activation
                held = self._held(promo, epoch)  # the claim's marks: this term's first permits
                # below lo, an SA's write would go past hi (D269); one the kernel's notices
                # name is left for the XFRM phase, which sees its new instance (D273)
                early = self.reads.at_lo(held, self.reads.changes())
                await self._early(promo, early, epoch)
                rest = {k: h for k, h in held.items() if k not in early}
                later, vouched = await self._xfrm(promo, held, frozenset(early))
                self._hold({k: h for k, h in rest.items() if k not in later}, epoch)
                self.activate()
                rep = promo.activated(self.clock())
            # inbound replay state, after the grant starts
            await self._restore(promo, later, vouched, held, frozenset(early))
        self._hold({k: h for k, h in rest.items() if k in later}, epoch)
        return self._promoted(rep)

    def _held(self, promo: Promotion, epoch: int) -> dict[SaKey, Held]:
        """The permits the claim holds: as this backup prepared them if the claim found the
        records unchanged since (D281: nothing per SA here), else from the records."""
        held = claimed_held(self.journal, self.prepared(), self.node, epoch)
        promo.report.held_from = "prepared" if held is not None else "records"
        if held is None:
            held = claim_lows(committed_records(self.journal), self.node, epoch, promo.reserve)
        return held

    async def _early(self, promo: Promotion, early: dict[SaKey, Held], epoch: int) -> None:
        """Hold and grant the claim's permits of the SAs the last read (or the backup's writes
        after it) left at or past lo, before reading the kernel (D265, D269)."""
        if not early or self.grant is None:
            return
        self.term.hold(early, epoch)
        await self.grant()
        term = self.term
        if term.epoch == epoch and not any(k in term.pending for k in early):
            promo.report.granted_ms = round((self.clock() - promo.t0) * 1000, 1)

    def _hold(self, held: dict[SaKey, Held], epoch: int) -> None:
        """Hold the claim's permits of SAs no write is planned for: no NEWAE lands while a
        permit is in force (a write is not compare-and-set); the loop grants them now."""
        if held:
            self.term.hold(held, epoch)
            self.granting()

    async def _restore(self, promo: Promotion, later: dict[SaKey, Write],
                       vouched: frozenset[SaKey], held: dict[SaKey, Held],
                       live: frozenset[SaKey]) -> None:
        """Write the inbound replay state the XFRM phase left for after the outbound writes
        (D263), `later`, or passed over, `vouched`: restored before any permit of `later` is
        held. Restored forward only: if the XFRM phase planned from an older read (D273),
        the kernel is read first, and an SA that received past the journal since is left
        alone."""
        if not later and not vouched:
            return
        t0 = self.clock()
        try:
            writes = list(later.values())
            if promo.report.read == "notices":
                fresh = await self.reads.kernel.snapshot()
                writes = [w for w in plan_writes(fresh, committed_records(self.journal),
                                                 promo.reserve, held=held, live=live)
                          if w.oseq == w.sa.oseq and (w.sa.key in later or w.sa.key in vouched)]
            res, _ = await self.reads.write(writes)  # none: no kernel call
        except KERNEL_FAILURES as e:
            promo.report.errors.append(f"inbound restore: {e}")
            return
        finally:
            promo.report.inbound_ms = round((self.clock() - t0) * 1000, 1)
        promo.report.writes += res.done
        promo.report.errors += res.errors[:REPORTED_WRITE_ERRORS]

    async def _claim(self, report: PromotionReport, reserve: Reserve) -> int | None:
        """Claims until one is applied here (its epoch) or VRRP leaves MASTER (None); each
        asks for the term's first marks at `reserve` (D261)."""
        backoff = CLAIM_RETRY_S
        while self.is_master():
            report.claim_attempts += 1
            epoch = await self._claim_once(CLAIM_WAIT_S, reserve)
            if epoch is not None:
                return epoch
            await self.sleep(backoff)
            backoff = min(2 * backoff, CLAIM_RETRY_MAX_S)
        return None

    async def _claim_once(self, within_s: float, grant: Reserve) -> int | None:
        """One claim: its epoch once applied here, None if it failed or took `within_s`."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[FailReason, Any]] = loop.create_future()

        def settle(answer: tuple[FailReason, Any]) -> None:
            if not fut.done():
                fut.set_result(answer)

        def done(result: Any, error: Any) -> None:
            loop.call_soon_threadsafe(settle, (outcome(error), result))
        self.journal.claim(done, grant)
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

    async def _xfrm(self, promo: Promotion, held: dict[SaKey, Held], live: frozenset[SaKey]
                    ) -> tuple[dict[SaKey, Write], frozenset[SaKey]]:
        """Read and write until the promotion leaves its XFRM phase (an SA the claim granted
        goes to its permit's lo, the target the claim's marks were made from; one whose
        permit is in force, `live`, below it goes past its hi); the writes that move no
        outbound counter (inbound replay state), and the SAs passed over (`_read`), are
        left for `_restore`."""
        first = True
        while True:
            try:
                sas, vouched = await self._read(promo.report, first, live)
                first = False
                self.reads.last_read = self.clock()  # a master's staleness counts from this read
                plan = [sa for sa in sas if sa.key not in vouched] if vouched else sas
                records = committed_records(self.journal) if plan else {}  # D281: lazily
                writes = promo.plan(plan, records, held, live, vouched=len(sas) - len(plan))
                later = {w.sa.key: w for w in writes if w.oseq == w.sa.oseq}
                res = await self.reads.kernel.write([w for w in writes if w.oseq != w.sa.oseq])
            except KERNEL_FAILURES as e:
                if promo.read_failed(str(e), self.clock()):
                    continue
                return {}, frozenset()  # out of reads: no permit waits for a write
            self.reads.keep(sas, writes)  # the first marks start from it: no second dump
            promo.written(res, self.clock())
            return later, vouched

    async def _read(self, report: PromotionReport, first: bool, live: frozenset[SaKey]
                    ) -> tuple[list[KernelSa], frozenset[SaKey]]:
        """The SAs as they stand, and those of them the plan may pass over: from the last read
        as the kernel's SA notices since leave it, if they account for every change (D273:
        nothing read per SA), the `live` SAs not changed since the early grant (at or past
        lo then, and each counter only rises: nothing to write; their inbound state waits
        for `_restore`'s fresh read); otherwise, and after a failure, every SA read, none
        passed over."""
        changes = self.reads.changes() if first else None
        if changes is not None:
            report.read, report.changed = "notices", len(changes)
            return self.reads.view(changes), live - changes.keys()
        report.read = "dump"
        return await self.reads.kernel.snapshot(), frozenset()

    @staticmethod
    def _promoted(rep: PromotionReport) -> PromotionReport:
        log.info("promoted: sender epoch %d claimed in %.0f ms (%d attempts), %d of %d SAs "
                 "written in %.0f ms (largest jump %d; read: %s, %d changed), charon "
                 "activated in %.0f ms", rep.epoch, rep.wait_ms, rep.claim_attempts,
                 rep.writes, rep.sas, rep.xfrm_ms, rep.max_jump, rep.read, rep.changed,
                 rep.activate_ms)
        for err in rep.errors:
            log.warning("promotion: %s", err)
        return rep


__all__ = ["CLAIM_RETRY_MAX_S", "CLAIM_RETRY_S", "CLAIM_WAIT_S", "PromotionDriver"]
