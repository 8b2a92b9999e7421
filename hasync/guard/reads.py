"""The guard's side of the kernel: reads and writes of the XFRM replay state through the
injected `KernelPort`, what they cost and what the last good read found.

Rules: one `asyncio.Lock` (`lock`) keeps a tick and a promotion from using the kernel at once
(D182); whoever reads or writes holds it. With a `watch` (watch.py), each read of every SA
begins and ends an account of the SA notices since, so `view` can give the SAs as they stand
now without a read, when the notices say what changed (D273). Only the kernel's named failures
(`kernel.KERNEL_FAILURES`) are handled, by the caller, through `failed`: counted, logged once
per run of failures. The injected clock is read once per read and handed back as `now`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace

from .kernel import KernelPort, row_sa
from .pacing import ReadCosts
from .ports import GuardStats
from .records import KernelSa, SaKey, Write, WriteResult
from .rules import Held
from .watch import Changes, SaWatch

log = logging.getLogger("hasync.guard")
FRESH_S = 1.0  # a promotion's read serves the new term's first marks if at most this old


class KernelReads:
    """The kernel port behind its lock, the reads' costs and the last good read."""

    def __init__(self, kernel: KernelPort, costs: ReadCosts, stats: GuardStats,
                 clock: Callable[[], float], watch: SaWatch | None = None) -> None:
        self.kernel, self.costs, self.stats, self.clock = kernel, costs, stats, clock
        self.watch = watch  # the SA notices since the last read began (None: not watched)
        self.lock = asyncio.Lock()  # a tick and a promotion never use the kernel at once
        self.failing = 0  # reads that failed in a row
        self.last_read: float | None = None  # the last successful kernel read (clock)
        self.spis: frozenset[int] = frozenset()  # the SPIs of that read (charonwatch)
        self.keys: frozenset[SaKey] = frozenset()  # its SAs (roam.py)
        self.fresh: tuple[list[KernelSa], float] | None = None  # a promotion's read (clock)
        # the last read's SAs, each raised by a backup tick's writes after it if all of them
        # landed: kept as ticks go, so a promotion plans from it without a pass over every SA
        self.standing: dict[SaKey, KernelSa] = {}

    def keep(self, sas: list[KernelSa], writes: list[Write]) -> None:
        """A promotion read `sas` and wrote `writes`: the new term's first marks may start
        from it (`read`), its planned counters taken as written. A write that failed leaves
        the kernel below the mark's lo, where the fence drops it (rules.py)."""
        planned = {w.sa.key: w for w in writes}
        self.fresh = ([replace(sa, oseq=max(sa.oseq, w.oseq)) if (w := planned.get(sa.key))
                       else sa for sa in sas], self.clock())

    async def read(self, master: bool) -> tuple[list[KernelSa], float]:
        """Every SA's replay state, and the clock at the read (a master's gaps are counted);
        a master's first read after its promotion is the promotion's, if at most FRESH_S old."""
        fresh = self.fresh
        if master:  # a backup's tick queued behind the promotion's (the lock) leaves it
            self.fresh = None
        if master and fresh is not None and self.clock() - fresh[1] <= FRESH_S:
            sas = fresh[0]
            self.stats.fresh_reads += 1
        else:
            sas = await self._snapshot()
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
        self.keys, self.standing = seen, {sa.key: sa for sa in sas}
        self.spis = frozenset(key[1] for key in seen)
        return sas, now

    async def _snapshot(self) -> list[KernelSa]:
        """Every SA, the watch's account starting with the read."""
        if self.watch is None:
            return await self.kernel.snapshot()
        self.watch.begin()
        ok = False
        try:
            sas = await self.kernel.snapshot()
            ok = True
        finally:
            self.watch.end(ok)
        return sas

    def changes(self) -> Changes | None:
        """The SAs changed since the last read began, by the kernel's notices (None:
        unknown, or no read yet)."""
        if self.watch is None or self.last_read is None:
            return None
        return self.watch.changes()

    def view(self, changes: Changes) -> list[KernelSa]:
        """The SAs as they stand now, if `changes` is all that changed since the last read
        began: that read's SAs with a backup tick's landed writes after it (`standing`), less
        the changed ones, and each new instance as its notice showed it. Counters only rise
        within an instance (torvalds/linux net/xfrm/xfrm_replay.c), so each is at least what
        it says."""
        out = [sa for key, sa in self.standing.items() if key not in changes] if changes \
            else list(self.standing.values())
        out.extend(row_sa(row) for row in changes.values() if row is not None)
        return out

    async def write(self, writes: list[Write]) -> tuple[WriteResult, float]:
        """Write to the kernel (nothing if no writes); what it did and the time it took."""
        if not writes:
            return WriteResult(), 0.0
        wrote = self.clock()
        res = await self.kernel.write(writes)
        if res.errors:
            self.stats.last_error = res.errors[-1]
        return res, self.clock() - wrote

    def prejumped(self, writes: list[Write], res: WriteResult) -> None:
        """A backup tick's `writes` after the last read did `res`: taken into `standing` if
        all landed (a refusal does not name its SA, so then none is)."""
        if res.errors:
            return
        standing = self.standing
        for w in writes:
            sa = standing.get(w.sa.key)
            if sa is not None:  # the constructor: dataclasses.replace costs 5 us an SA
                standing[sa.key] = KernelSa(sa.key, sa.esn, max(sa.oseq, w.oseq), w.seq,
                                            w.bitmap, sa.window, sa.reqid, sa.xfrm_mark)

    def floors(self, changed: Changes | None = None) -> dict[SaKey, int]:
        """Each SA of the last read not `changed` since: the least its outbound counter can
        be now, the read's or a landed write's. Only output and such writes move it, and
        only up (torvalds/linux net/xfrm/xfrm_replay.c); an SA created again since, unseen,
        is not this one to the promotion's write (`rules.plan_writes`, `live`)."""
        changed = changed or {}
        return {key: sa.oseq for key, sa in self.standing.items() if key not in changed}

    def at_lo(self, held: dict[SaKey, Held], changed: Changes | None) -> dict[SaKey, Held]:
        """The permits in `held` whose SA's floor (`floors`) is at or past the permit's lo:
        one pass over `held`, none over the other SAs."""
        changed = changed or {}
        standing = self.standing
        return {key: h for key, h in held.items()
                if (sa := standing.get(key)) is not None and sa.oseq >= h.lo
                and key not in changed}

    def failed(self, e: Exception) -> None:
        """A read or write failed with one of `kernel.KERNEL_FAILURES`."""
        self.stats.kernel_errors += 1
        self.stats.last_error = str(e)
        if not self.failing:  # once per run of failures: the guard stands still meanwhile
            log.warning("the sequence guard cannot read or write the kernel's SAs: %s "
                        "(retried every tick; `hasync status`: takeover.loop.kernel_errors)", e)
        self.failing += 1

    def done(self, read_s: float, write_s: float) -> None:
        """A tick ended: keep what its read and its writes cost (pacing.ReadCosts)."""
        self.costs.note(read_s, write_s)
        self.stats.read_ms = round(read_s * 1000, 1)
        self.stats.write_ms = round(write_s * 1000, 1)
        self.stats.read_max_ms = round(max(self.costs.reads) * 1000, 1)


__all__ = ["KernelReads"]
