"""The sender's marks: what the master journals after each read of its kernel, and what it does
with Raft's answers.

Rules: the decisions are `rules.SeqTracker`'s (which marks are due, which SAs jump) and
`permits.SenderTerm`'s (what a committed, accepted mark permits); this module submits them to
the journal (a `JournalPort`) one submission at a time (`MarkFlight`), and a sender with nothing
due beacons every BEACON_S (D207). Answers come on Raft's thread and are taken on the loop.
Handled failures are only named ones: a commit that fails (`syncobj_compat.FailReason`,
counted by name), a submission Raft never answers within the stall bound (counted, submitted
again), an entry that cannot be sealed (`EntryError`, `SealError`: logged with its traceback,
counted).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

from ..journal.seal import EntryError, SealError
from ..syncobj_compat import FailReason, outcome
from .entries import ACCEPTED, MAX_RECORDS, SeqEntry
from .permits import SenderTerm
from .ports import GuardStats, JournalPort, MarkFlight, committed_records, count, sa_name
from .records import KernelSa, SaKey, SeqRecord, Write, WriteResult
from .rules import SeqTracker

log = logging.getLogger("hasync.guard")
BEACON_S = 1.0  # a sender with nothing due commits an empty entry this often (D207)
Writer = Callable[[list[Write]], Awaitable[tuple[WriteResult, float]]]


class MarkSender:
    """As the sender: journal the marks due after a read, and take the answers."""

    def __init__(self, node: str, journal: JournalPort, term: SenderTerm, tracker: SeqTracker,
                 flight: MarkFlight, stats: GuardStats, write: Writer,
                 wake: Callable[[], None], wall: Callable[[], float]) -> None:
        self.node, self.journal, self.term, self.tracker = node, journal, term, tracker
        self.flight, self.stats, self.write, self.wake, self.wall = (
            flight, stats, write, wake, wall)
        self._submitted_at = -math.inf  # the sender's last entry (records or a beacon)

    async def journal_due(self, sas: list[KernelSa], now: float, lost_s: float) -> float:
        """As the sender: jump SAs new to the term, submit the records due; the writes' time."""
        epoch = self.term.epoch
        if epoch is None:
            return 0.0  # not the sender (yet): no marks, nothing permitted
        before = self.tracker.stats.violations
        plan = self.tracker.observe(sas, committed_records(self.journal), self.term.held,
                                    epoch, now, self.wall())
        if self.tracker.stats.violations > before and before == 0:
            log.warning("an SA's counter passed its committed mark (by up to %d): the fence "
                        "drops its packets above the mark until the renewal commits "
                        "(`hasync status`: takeover.fence.fenced, takeover.tracker.violations)",
                        self.tracker.stats.max_overrun)
        self._stop_wrapping(sas)
        beacon = now - self._submitted_at >= BEACON_S  # an empty entry: the sender lives
        if self.flight.expire(now, lost_s):  # pysyncobj lost the command (ports.py)
            self.stats.answers_lost += 1
            log.warning("Raft never answered marks submitted %.1f s ago; submitting again "
                        "(takeover.loop.answers_lost)", now - self.flight.since)
        if (not plan.records and not plan.gone and not beacon) or self.flight.open:
            return 0.0  # overruns are still counted; renewals wait for the commit
        res, write_s = await self.write(plan.writes)  # one behind the counter is harmless:
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


__all__ = ["BEACON_S", "MarkSender", "Writer"]
