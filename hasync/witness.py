"""The witness: a Raft voter holding the sealed journal, for sites with two gateways.

Rules: a witness runs the cluster journal, the quorum probe and the control socket (`hasync
status` and `hasync health`), nothing else: no charon, HA endpoint, sequence guard, fence or
VRRP FIFO (config.py refuses those sections for it); its health problems are logged once when
they start and once when they end (as healthfile.py logs a gateway's verdict). A two-node Raft
cannot lose a node and keep a majority; with a witness as the third voter the surviving gateway
can still claim and commit (docs/operations.md, Two gateways and a witness). Like the daemon,
every task runs in one TaskGroup: a failed task stops the witness.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import Any

from .config import Config
from .control import ControlServer
from .healthfile import shape
from .journal.seal import Batch, derive_keys, load_cluster_key
from .journalio import quorum_loop
from .quorum import QuorumProbe
from .raft import ClusterJournal, RaftTiming
from .status import JournalView, members_answer

log = logging.getLogger("hasync")


class _Stopped(Exception):
    """SIGTERM or SIGINT."""


class Witness:
    """One witness node."""

    def __init__(self, cfg: Config) -> None:
        self.cfg, self.started = cfg, time.monotonic()
        self.quorum = QuorumProbe(cfg.cluster.quorum_timeout_ms / 1000, self.started)
        self.journal: ClusterJournal | None = None
        self.joined = False
        self._stop = asyncio.Event()

    async def run(self) -> None:
        """Run until SIGTERM or SIGINT; a failed task raises out of here."""
        c = self.cfg.cluster
        timing = RaftTiming(election_min_s=c.election_timeout_ms / 1000,
                            election_max_s=c.election_timeout_ms * 2.5 / 1000,
                            heartbeat_s=c.heartbeat_ms / 1000,
                            connection_timeout_s=c.connection_timeout_ms / 1000)
        loop = asyncio.get_running_loop()
        async with contextlib.AsyncExitStack() as opened:
            opened.callback(log.info, "hasync witness %s stopped", self.cfg.node.name)
            self.journal = ClusterJournal(
                self.cfg.node.name, str(c.bind), [str(p) for p in c.peers],
                self.cfg.node.state_dir, derive_keys(load_cluster_key(c.key_file), c.name),
                self._applied, timing)
            opened.callback(self.journal.destroy)
            control = ControlServer(self.cfg.node.control_socket,
                                    {"status": self.status, "health": self.health})
            await control.start()
            opened.push_async_callback(control.close)
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stop.set)
            log.info("hasync witness %s up: raft %s, peers %s", self.cfg.node.name, c.bind,
                     ", ".join(map(str, c.peers)))
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(quorum_loop(self.journal, self.quorum))
                    tg.create_task(self._watch())
                    tg.create_task(self._until_stopped())
            except* _Stopped:
                pass

    async def _until_stopped(self) -> None:
        await self._stop.wait()
        raise _Stopped()

    async def _watch(self) -> None:
        """Log the health problems when they change (numbers aside): onset and recovery."""
        last = shape(True, [])
        while True:
            problems = self.health({})["problems"]
            now = shape(not problems, problems)
            if now != last:
                if problems:
                    log.warning("health: %s", "; ".join(problems))
                else:
                    log.info("health: ok")
                last = now
            await asyncio.sleep(1.0)

    def _applied(self, batch: Batch, applied: list[Any]) -> None:
        """A witness feeds no charon: applied HA batches only stay in the journal."""

    def _raft(self) -> dict[str, Any]:
        assert self.journal is not None
        raft = self.journal.status()
        if raft.get("leader") is not None and (raft.get("applied_index") or 0) >= (
                raft.get("commit_index") or 0):
            self.joined = True
        return raft

    def status(self, args: dict[str, Any]) -> dict[str, Any]:
        """`hasync status` of a witness: Raft, members, the journal's digest, the probe."""
        assert self.journal is not None
        now, j = time.monotonic(), self.journal
        raft = self._raft()
        with j.lock:
            journal = JournalView(*j.state.counts(), dict(j.state.anomalies), j.state.digest())
        commit = raft.get("commit_index") or 0
        return {"node": self.cfg.node.name, "cluster": self.cfg.cluster.name,
                "role": "witness", "raft": raft,
                "members": members_answer(j.members_view(), commit, time.time()),
                "lag": max(0, commit - (raft.get("applied_index") or 0)),
                "journal": journal.as_dict(), "quorum": self.quorum.status(now),
                "raft_apply": dict(j.counters),
                "raft_port": j.raft_port.snapshot(), "uptime_s": round(now - self.started, 1)}

    def health(self, args: dict[str, Any]) -> dict[str, Any]:
        """`hasync health` of a witness: caught up and hearing a majority."""
        raft = self._raft()
        reason = self.quorum.reason(time.monotonic())
        return {"node": self.cfg.node.name, "role": "witness", "raft_joined": self.joined,
                "raft_leader": raft.get("leader"), "problems": [reason] if reason else []}
