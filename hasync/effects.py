"""Carrying out the node core's commands (node.py): the IO half of the daemon's adapter.

Rules: one method per command, run on the loop in the order the core gave them; answers come
back as events through `post` (from Raft's thread: `post` is thread-safe and reads `now` on the
loop); tasks (promotion, replay) start in the daemon's TaskGroup through `spawn`, so their
failure stops the daemon. A failure that is not a bug (a batch that does not seal, a report not
handed over, charon's FIFO not written) is logged with its traceback or errno and counted under
a name `hasync status` shows (`batches_dropped` in the core, `report_errors`, `fifo_errors`).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Protocol

from . import node
from .endpoint import HaEndpoint
from .feed import CharonFeed
from .fifos import write_command
from .raft import ClusterJournal
from .syncobj_compat import outcome

log = logging.getLogger("hasync")
Event = Callable[[float], list[node.Command]]


class Promoter(Protocol):
    """The sequence guard's promotion (guard.Guard)."""

    def promote(self) -> Coroutine[Any, Any, Any]:
        """Run one promotion."""

    def wake(self) -> None:
        """Run the guard's next step now (it revokes the send permits of a non-master)."""


class Effects:
    """Does what the core decided: Raft, charon's socket and FIFO, the feed, the guard."""

    def __init__(self, core: node.NodeCore, journal: ClusterJournal, endpoint: HaEndpoint,
                 feed: CharonFeed, guard: Promoter, charon_fifo: Path, *,
                 post: Callable[[Event], None], wake: Callable[[], None],
                 spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]]) -> None:
        self.core, self.journal, self.endpoint, self.feed = core, journal, endpoint, feed
        self.guard, self.charon_fifo, self.post, self.spawn = guard, charon_fifo, post, spawn
        self.wake = wake
        self.counters: Counter[str] = Counter({"fifo_errors": 0, "report_errors": 0})
        self.promotion: asyncio.Task[Any] | None = None

    def do(self, commands: list[node.Command]) -> None:
        """Carry out the core's commands in order."""
        for cmd in commands:
            match cmd:
                case node.SubmitBatch(datagrams=datagrams, stream=stream, seq=seq):
                    self.submit(list(datagrams), stream, seq)
                case node.SendToCharon(datagram=datagram):
                    self.endpoint.send(datagram)
                case node.FeedCharon(datagrams=datagrams):
                    if not self.feed.put(datagrams):  # dropped at the bound: start over
                        self.do(self.core.on_feed_overflow(time.monotonic()))
                case node.CharonFifo(command=command):
                    self.fifo(command)
                case node.StartPromotion():
                    self.promotion = self.spawn(self.guard.promote())
                case node.CancelPromotion():  # VRRP BACKUP or FAULT
                    if self.promotion is not None:
                        self.promotion.cancel()
                    self.guard.wake()  # its step sees the role and revokes every permit
                case node.StartReplay(generation=generation, clean=clean):
                    self.replay(generation, clean)
                case node.ClearFeed():
                    self.feed.clear()
                case node.Report(info=info):
                    self.report(info)
                case node.Wake():
                    self.wake()
                case node.HandOffLeadership():
                    self.journal.hand_off()
                case _:
                    raise TypeError(f"unknown command {cmd!r}")

    @property
    def promoting(self) -> bool:
        """A promotion is under way."""
        return self.promotion is not None and not self.promotion.done()

    def submit(self, datagrams: list[bytes], stream: int = 0, seq: int = 0) -> None:
        """Seal a batch into Raft; a batch that cannot be sealed is logged and dropped."""
        try:
            self.journal.submit(datagrams, lambda result, error: self.post(
                lambda now: self.core.on_committed(seq, outcome(error), result, now)),
                stream, seq)
        except Exception:
            log.exception("sealing a batch of %d datagrams failed; dropping it",
                          len(datagrams))
            self.do(self.core.on_submit_failed(seq, time.monotonic()))

    def report(self, info: dict[str, Any]) -> None:
        """Replicate this node's report; a failed hand-over is logged and counted."""
        try:
            self.journal.report(info, lambda result, error: self.post(
                lambda now: self.core.on_reported(outcome(error))))
        except Exception:
            self.counters["report_errors"] += 1
            log.exception("replicating this node's report failed")

    def replay(self, generation: int = 0, clean: bool = True) -> None:
        """Queue the journal's whole state for charon, in dependency order (feed.py's pace);
        `clean`: each IKE_SA deleted first, charon may hold it (plans.py)."""
        with self.journal.lock:
            plan = self.journal.state.replay_plan(clean)
            self.feed.put(plan, replay=True)  # under the lock: later applies queue behind it
            # applies announced to the loop but not yet handled are in the plan: not again
            self.core.on_replay_planned(self.journal.applied_batches)
        self.spawn(self._replayed(len(plan), generation))

    async def _replayed(self, count: int, generation: int) -> None:
        await self.feed.drained()
        self.post(lambda now: self.core.on_replayed(count, now, generation))

    def fifo(self, command: str) -> None:
        """Write a command to charon's HA control FIFO; charon down (ENXIO, ENOENT) is only
        counted, any other failure logged too."""
        try:
            write_command(self.charon_fifo, command)
        except OSError as e:
            self.counters["fifo_errors"] += 1
            if e.errno not in (errno.ENXIO, errno.ENOENT):
                log.warning("charon control FIFO %s: %r not written: %s", self.charon_fifo,
                            command, e)
