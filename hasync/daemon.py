"""The hasync daemon: the thin asyncio adapter around the node core (node.py).

Rules: only this module (and the CLI) reads configuration; it does the IO the core decides:
charon's HA socket (endpoint.py), the FIFOs (fifos.py), Raft (raft.py, opened and fed by
journalio.py; its thread reaches the loop only through call_soon_threadsafe), the control
socket and metrics (serving.py), charon's vici (charonpoll.py), clients' IKE requests
(clientreqs.py) and the health file. The clock is read where an event enters and passed on as
`now`. Every task runs in one asyncio.TaskGroup (supervisor.py): a task or event that fails
stops the daemon with its error, and the health file is removed, so keepalived sees it: never a
silent half-daemon. Failures of outside parties (charon's FIFO, a report) are logged and
counted under the names `hasync status` shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from pathlib import Path

from .charonpoll import CharonPoll
from .charonwatch import CharonWatch
from .clientreqs import ClientRequests
from .config import Config
from .effects import Effects
from .endpoint import open_endpoint
from .feed import CharonFeed
from .fifos import LineBuffer, open_notify_fifo, read_available
from .gcwatch import GcWatch, tune
from .guard import Guard, Reserve
from .ha import HaMessage, MessageType
from .healthfile import HealthWriter
from .ikesniff import open_sniffer
from .journal.seal import Batch
from .journal.state import NAMED, NEEDED
from .journalio import applied_event, open_journal, quorum_loop
from .memguard import protect
from .node import Command, NodeCore, RaftView, Settings
from .quorum import QuorumProbe
from .raft import ClusterJournal
from .role import Role, RoleState
from .serving import Problems, open_control, open_metrics
from .status import Answers
from .supervisor import Supervisor

log = logging.getLogger("hasync")
TICK_S = 0.25  # the loop's idle tick (heartbeats, reports); a queued batch wakes it earlier


class Daemon:
    """One node's hasync: feeds events to its NodeCore, carries out its commands (Effects)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg, self.started = cfg, time.monotonic()
        # a restarted daemon's batch stream is newer than its predecessor's (pipeline.py)
        self.core = NodeCore(Settings.of(cfg, stream=time.time_ns()),
                             RoleState(since=self.started))
        self.core.charon_ready = False  # the first replay waits for charon's connections
        self.charon = CharonWatch()
        self.healthfile = HealthWriter(cfg.node.health_file, cfg.charon.vici_socket,
                                       lambda: self.answers.health({}))
        self.tasks = Supervisor(cfg.node.name, self._do)
        self.journal: ClusterJournal | None = None
        self.seq: Guard | None = None
        self.fx: Effects | None = None
        self.answers: Answers | None = None
        self.clients: ClientRequests | None = None
        self._wake = asyncio.Event()
        self.quorum = QuorumProbe(cfg.cluster.quorum_timeout_ms / 1000, self.started)
        self.gc = GcWatch()

    # ---- wiring ----
    async def run(self) -> None:
        """Run until SIGTERM or SIGINT (returns) or until a task or event fails (raises an
        ExceptionGroup holding its error). What was opened is closed in reverse order."""
        loop = self.tasks.attach()
        async with contextlib.AsyncExitStack() as opened:
            opened.callback(log.info, "hasync %s stopped", self.cfg.node.name)
            self.gc.install()
            opened.callback(self.gc.remove)
            fx, answers, poll = await self._open(opened)
            await open_control(self.cfg, answers, opened)
            await open_metrics(self.cfg, answers, opened)
            fifo = open_notify_fifo(self.cfg.keepalived.notify_fifo)
            opened.callback(os.close, fifo)
            sniffer = open_sniffer()
            opened.callback(sniffer.close)
            opened.callback(self.healthfile.remove)  # keepalived's check fails from now on
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.tasks.stop)
            log.info("hasync %s up: raft %s, peers %s, HA %s <- %s", self.cfg.node.name,
                     self.cfg.cluster.bind, ", ".join(map(str, self.cfg.cluster.peers)),
                     self.cfg.charon.ha_remote, self.cfg.charon.ha_local)
            async with self.tasks.group():
                for coro in (self._tick_loop(), self._guard_loop(), self.healthfile.run(),
                             fx.feed.run(), quorum_loop(self.journal, self.quorum),
                             poll.run(), self.tasks.until_stopped()):
                    self.tasks.spawn(coro)
                loop.add_reader(fifo, self._on_fifo, fifo, LineBuffer())
                opened.callback(loop.remove_reader, fifo)
                loop.add_reader(sniffer, self._on_ike, sniffer)
                opened.callback(loop.remove_reader, sniffer)

    async def _open(self, opened: contextlib.AsyncExitStack
                    ) -> tuple[Effects, Answers, CharonPoll]:
        """The journal, the guard and charon's HA link, each closed by `opened`."""
        cfg = self.cfg
        self.journal = journal = open_journal(cfg, self._applied_threadsafe)
        opened.callback(journal.destroy)
        self.seq = guard = self._guard(journal)
        journal.on_seq = guard.wake_threadsafe
        opened.callback(guard.close)
        # the endpoint decodes what the journal reads (NEEDED holds all READ_ON_HA does, with
        # NAMED's names), so the apply of this node's own batches takes that decode
        # (journal/decoded.py, D272)
        endpoint = open_endpoint(cfg.charon.ha_remote.sockaddr, cfg.charon.ha_local.sockaddr,
                                 self._on_ha, wanted=NEEDED, named=NAMED)
        opened.callback(endpoint.close)
        self.fx = fx = Effects(self.core, journal, endpoint,
                               CharonFeed(endpoint.send, cfg.charon.ha_local.sockaddr), guard,
                               cfg.charon.control_fifo, post=self.tasks.threadsafe,
                               wake=self._wake.set, spawn=self.tasks.spawn)
        self.answers = Answers(cfg, self.core, journal, fx, self.healthfile,
                               lambda: {**guard.status(), "charon": self.charon.status()},
                               self.started, problems=Problems(self.core, self.quorum,
                                                               self.charon, guard),
                               quorum=self.quorum.status, gc=self.gc.as_dict)
        self.clients = ClientRequests(self.core, journal, guard)
        poll = CharonPoll(cfg.charon.vici_socket, self.charon, self.core, journal, fx.feed,
                          guard, self.tasks.event)
        return fx, self.answers, poll

    def _guard(self, journal: ClusterJournal) -> Guard:
        """The sequence guard with its kernel fence (imported here: hasync.fence.nft)."""
        from .fence.nft import NftFence
        t = self.cfg.takeover
        return Guard(self.cfg.node.name, journal, Reserve(
            floor=t.reserve_floor, horizon_s=t.reserve_horizon_ms / 1000,
            takeover_floor=t.takeover_floor), self._activate,
            NftFence(nft="/usr/sbin/nft", natt_port=self.cfg.fence.natt_port, library=True),
            tick_s=t.tick_ms / 1000, is_master=lambda: self.core.role.role is Role.MASTER,
            stall_s=self.cfg.cluster.quorum_timeout_ms / 1000)

    # ---- events in ----
    def _do(self, commands: list[Command]) -> None:
        """Carry out an event's commands (the supervisor runs the event)."""
        assert self.fx is not None
        self.fx.do(commands)

    def _on_ha(self, raw: bytes, msg: HaMessage, now: float) -> None:
        """charon's datagram (endpoint.py logs and counts what raises here)."""
        assert self.fx is not None and self.journal is not None
        if msg.type in NEEDED:  # a journaled type, decoded as the apply would (D272)
            self.journal.decoded.put(raw, msg)
        if msg.type == MessageType.CHILD_ADD and self.seq is not None:
            self.seq.wake()  # a new SA is fenced on the master until its first mark commits
        self.fx.do(self.core.on_ha(raw, msg, now))

    def _on_fifo(self, fd: int, lines: LineBuffer) -> None:
        for line in lines.feed(read_available(fd)):
            self.tasks.event(lambda now, line=line: self.core.on_vrrp(line, now))

    def _applied_threadsafe(self, batch: Batch | None, applied: list[tuple[bytes, HaMessage]],
                            refeed: list[bytes], number: int) -> None:
        """Raft's thread: a batch applied (journalio.py). Before the loop runs (a snapshot
        loaded as Raft starts) charon was fed nothing: dropped."""
        if self.tasks.attached:
            self.tasks.threadsafe(applied_event(self.core, batch, applied, refeed, number))

    def _on_ike(self, sock: socket.socket) -> None:
        """Clients' IKE packets (ikesniff.py), read as one event (clientreqs.py)."""
        assert self.clients is not None
        clients = self.clients
        self.tasks.event(lambda now: clients.requests(sock, now))

    def _activate(self) -> None:
        """The promotion's last step (the guard calls it on the loop)."""
        self.tasks.event(lambda now: self.core.on_activate())

    async def _tick_loop(self) -> None:
        assert self.journal is not None and self.clients is not None
        journal, clients = self.journal, self.clients
        while True:
            self._wake.clear()  # a batch queued from here on wakes the wait below
            self.tasks.event(lambda now: self.core.tick(now, time.time(),
                                                        RaftView.of(journal.status())))
            if self.core.roams.pending:
                self.tasks.event(clients.roams)
            wake = self.core.wake_at()
            delay = TICK_S if wake is None else min(TICK_S, max(0.0, wake - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _guard_loop(self) -> None:
        """The sequence guard (guard/driver.py): marks on the master, targets elsewhere."""
        assert self.seq is not None and self.journal is not None
        journal = self.journal
        await self.seq.run(lambda: self.core.role.role is Role.MASTER,
                           lambda: journal.child_adds)


def run_daemon(cfg: Config) -> None:
    """Run the daemon (or the witness, by `node.role`) in this process until it is stopped.
    Core dumps go off and memory is locked before the cluster key is read (memguard.py)."""
    protection = protect()
    Path(cfg.node.state_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    if cfg.node.role == "witness":
        from .witness import Witness
        asyncio.run(Witness(cfg).run())
        return
    tune()  # the collector for a heap of 100k tunnels (gcwatch.py, D284)
    daemon = Daemon(cfg)
    daemon.core.counters.update(protection.counters)  # `hasync status` counters
    asyncio.run(daemon.run())
