"""The daemon's questions to charon over vici: who it is (a restart), what it has loaded, and
whether its holdings match the journal (charonwatch.py judges; this module asks).

Rules: vici is asked off the loop (run_in_executor), once every CHARON_CHECK_S, each question
bounded by VICI_TIMEOUT_S; what the answers change reaches the core as events (`event`, the
supervisor's: a failure stops the daemon). The journal is read under its lock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from . import vicicheck
from .charonwatch import CharonWatch, Holdings
from .effects import Event
from .feed import CharonFeed
from .guard import Guard
from .node import NodeCore, SyncState
from .raft import ClusterJournal

CHARON_CHECK_S = 1.0  # charon's incarnation and readiness are asked this often (vici stats)
VICI_TIMEOUT_S = 2.0


class CharonPoll:
    """Asks charon through vici every CHARON_CHECK_S; its answers go to the watch and the core."""

    def __init__(self, path: Path, watch: CharonWatch, core: NodeCore, journal: ClusterJournal,
                 feed: CharonFeed, guard: Guard, event: Callable[[Event], None]) -> None:
        self.path, self.watch, self.core, self.journal = path, watch, core, journal
        self.feed, self.guard, self.event = feed, guard, event

    async def run(self) -> None:
        """Ask charon who it is (a restart) and what it has loaded; compare its holdings."""
        loop, path, watch = asyncio.get_running_loop(), self.path, self.watch
        quiet: tuple[int, float] | None = None  # journal entries applied, time of the check
        while True:
            stats = await loop.run_in_executor(None, vicicheck.incarnation, path,
                                               VICI_TIMEOUT_S)
            since, ikes = stats.value if stats.ok else (None, None)
            seen = watch.on_stats(since)
            if seen == "restart" or (seen == "first" and self.core.sync.state is not
                                     SyncState.UNSYNCED):  # it replayed into no charon
                self.event(self.core.on_charon_restart)
            if stats.ok and not watch.ready:
                needed = await loop.run_in_executor(None, self._needed_conns)
                conns = await loop.run_in_executor(None, vicicheck.ask, path, VICI_TIMEOUT_S,
                                                   vicicheck.conn_names)
                if conns.ok:
                    watch.on_conns(conns.value, needed)
            if watch.ready != self.core.charon_ready:
                self.event(lambda now, ready=watch.ready: self.core.on_charon_ready(ready))
            quiet = self._compare_holdings(ikes, quiet)
            await asyncio.sleep(CHARON_CHECK_S)

    def _needed_conns(self) -> set[str]:
        with self.journal.lock:
            return self.journal.state.config_names()

    def _compare_holdings(self, ikes: int | None,
                          quiet: tuple[int, float] | None) -> tuple[int, float] | None:
        """Compare charon and the kernel with the journal on a mirroring node, when the
        journal applied nothing since the last check and the kernel was read since then
        (charonwatch.py); returns what the next check compares against."""
        now, j = time.monotonic(), self.journal
        if ikes is None or not self.core.role.mirrors or not self.core.sync.synced:
            self.watch.compare(None, now)
            return None
        if self.feed.queued:
            return None
        with j.lock:
            applied = j.state.applied
        read = self.guard.last_read
        if quiet is not None and quiet[0] == applied and read is not None and read > quiet[1]:
            with j.lock:
                n_ikes, n_children = j.state.counts()
                missing = len(j.state.inbound_spis() - self.guard.kernel_spis)
            self.watch.compare(Holdings(ikes, n_ikes, n_children, missing), now)
        return applied, now
