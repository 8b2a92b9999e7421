"""The hasync daemon: the thin asyncio adapter around the node core (node.py).

Rules: only this module (and the CLI) reads configuration; it does the IO the core decides:
charon's HA socket (endpoint.py), the FIFOs (fifos.py), Raft (raft.py; its thread reaches the
loop only through call_soon_threadsafe), the control socket and the health file. The clock is
read where an event enters and passed on as `now`. Every task runs in one asyncio.TaskGroup:
a task or event that fails stops the daemon with its error, and the health file is removed,
so keepalived sees it: never a silent half-daemon. Failures of outside parties (charon's FIFO,
a report) are logged and counted under the names `hasync status` shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Coroutine
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from . import vicicheck
from .charonwatch import CharonWatch, Holdings
from .config import Config
from .control import ControlServer
from .effects import Effects, Event
from .endpoint import open_endpoint
from .feed import CharonFeed
from .fifos import LineBuffer, open_notify_fifo, read_available
from .guard import Guard, Reserve
from .ha import HaMessage, Host, MessageType
from .healthfile import HealthWriter
from .ikesniff import open_sniffer, read_all
from .journal.seal import Batch, derive_keys, load_cluster_key
from .memguard import protect
from .midsync import key_of, request_key
from .mirror import READ_ON_HA
from .node import Command, NodeCore, RaftView, Settings, SyncState
from .quorum import QuorumProbe
from .raft import ClusterJournal, RaftTiming
from .role import Role, RoleState
from .status import Answers
from .syncobj_compat import FailReason, outcome

log = logging.getLogger("hasync")
TICK_S = 0.25  # the loop's idle tick (heartbeats, reports); a queued batch wakes it earlier
CHARON_CHECK_S = 1.0  # charon's incarnation and readiness are asked this often (vici stats)
VICI_TIMEOUT_S = 2.0
MID_TYPES = (MessageType.IKE_MID_RESPONDER, MessageType.CHILD_ADD)  # what midsync.py follows


class _Stopped(Exception):
    """SIGTERM or SIGINT: the TaskGroup ends without an error."""


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
        self.journal: ClusterJournal | None = None
        self.seq: Guard | None = None
        self.fx: Effects | None = None
        self.answers: Answers | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop, self._wake = asyncio.Event(), asyncio.Event()
        self._failure: Exception | None = None
        self.quorum = QuorumProbe(cfg.cluster.quorum_timeout_ms / 1000, self.started)

    # ---- wiring ----
    async def run(self) -> None:
        """Run until SIGTERM or SIGINT (returns) or until a task or event fails (raises an
        ExceptionGroup holding its error). What was opened is closed in reverse order."""
        self._loop = loop = asyncio.get_running_loop()
        async with contextlib.AsyncExitStack() as opened:
            opened.callback(log.info, "hasync %s stopped", self.cfg.node.name)
            fx, answers = await self._open(opened)
            control = ControlServer(self.cfg.node.control_socket, answers.handlers())
            await control.start()
            answers.control = lambda: control.counters
            opened.push_async_callback(control.close)
            await self._open_metrics(opened, answers)
            fifo = open_notify_fifo(self.cfg.keepalived.notify_fifo)
            opened.callback(os.close, fifo)
            sniffer = open_sniffer()
            opened.callback(sniffer.close)
            opened.callback(self.healthfile.remove)  # keepalived's check fails from now on
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stop.set)
            log.info("hasync %s up: raft %s, peers %s, HA %s <- %s", self.cfg.node.name,
                     self.cfg.cluster.bind, ", ".join(map(str, self.cfg.cluster.peers)),
                     self.cfg.charon.ha_remote, self.cfg.charon.ha_local)
            try:
                async with asyncio.TaskGroup() as self._tg:
                    for coro in (self._tick_loop(), self._guard_loop(), self.healthfile.run(),
                                 fx.feed.run(), quorum_loop(self.journal, self.quorum),
                                 self._charon_loop(), self._until_stopped()):
                        self._spawn(coro)
                    loop.add_reader(fifo, self._on_fifo, fifo, LineBuffer())
                    opened.callback(loop.remove_reader, fifo)
                    loop.add_reader(sniffer, self._on_ike, sniffer)
                    opened.callback(loop.remove_reader, sniffer)
            except* _Stopped:
                pass

    async def _open(self, opened: contextlib.AsyncExitStack) -> tuple[Effects, Answers]:
        """The journal, the guard and charon's HA link, each closed by `opened`."""
        cfg, c = self.cfg, self.cfg.cluster
        timing = RaftTiming(election_min_s=c.election_timeout_ms / 1000,
                            election_max_s=c.election_timeout_ms * 2.5 / 1000,
                            heartbeat_s=c.heartbeat_ms / 1000,
                            connection_timeout_s=c.connection_timeout_ms / 1000)
        self.journal = journal = ClusterJournal(
            cfg.node.name, str(c.bind), [str(p) for p in c.peers], cfg.node.state_dir,
            derive_keys(load_cluster_key(c.key_file), c.name), self._applied_threadsafe, timing)
        opened.callback(journal.destroy)
        self.seq = guard = self._guard(journal)
        journal.on_seq = guard.wake_threadsafe
        opened.callback(guard.close)
        endpoint = open_endpoint(cfg.charon.ha_remote.sockaddr, cfg.charon.ha_local.sockaddr,
                                 self._on_ha, wanted=READ_ON_HA)
        opened.callback(endpoint.close)
        self.fx = Effects(self.core, journal, endpoint,
                          CharonFeed(endpoint.send, cfg.charon.ha_local.sockaddr), guard,
                          cfg.charon.control_fifo, post=self._threadsafe, wake=self._wake.set,
                          spawn=self._spawn)
        self.answers = Answers(cfg, self.core, journal, self.fx, self.healthfile,
                               lambda: {**guard.status(), "charon": self.charon.status()},
                               self.started, problems=self._problems, quorum=self.quorum.status)
        return self.fx, self.answers

    def _problems(self, now: float) -> list[str]:
        """The daemon's own failed conditions for `hasync health`: quorum, then the guard's."""
        reasons = [r for r in (self.quorum.reason(now), self.charon.problem(now)) if r]
        reasons.extend(self.core.problems())
        guard_health = getattr(self.seq, "health", None)
        if guard_health is not None:
            reasons.extend(guard_health(now))
        return reasons

    def _guard(self, journal: ClusterJournal) -> Guard:
        """The sequence guard with its kernel fence (imported here: hasync.fence.nft)."""
        from .fence.nft import NftFence
        t = self.cfg.takeover
        return Guard(self.cfg.node.name, journal, Reserve(
            floor=t.reserve_floor, horizon_s=t.reserve_horizon_ms / 1000,
            takeover_floor=t.takeover_floor), self._activate,
            NftFence(nft="/usr/sbin/nft", natt_port=self.cfg.fence.natt_port),
            tick_s=t.tick_ms / 1000, is_master=lambda: self.core.role.role is Role.MASTER,
            stall_s=self.cfg.cluster.quorum_timeout_ms / 1000)

    async def _open_metrics(self, opened: contextlib.AsyncExitStack, answers: Answers) -> None:
        """The Prometheus endpoint, if [metrics] listen is set (imported here: the package is
        needed only then)."""
        listen = self.cfg.metrics.listen
        if listen is None:
            return
        from .metrics import MetricsServer, registry_for
        limit = self.cfg.metrics.sas  # per-SA series: the first page of that many IKE_SAs
        server = MetricsServer(*listen.sockaddr, registry_for(
            lambda: answers.status({"digest": False}),
            (lambda: answers.sas({"limit": limit})) if limit else None))
        try:
            await server.start()
        except OSError as e:
            raise OSError(e.errno, f"{self.cfg.source}: metrics.listen: cannot listen on "
                          f"{listen}: {e.strerror}") from None
        answers.metrics = lambda: server.counters
        opened.push_async_callback(server.close)
        log.info("metrics: GET http://%s/metrics", listen)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """A task in the daemon's TaskGroup: if it fails, the daemon stops."""
        if self._tg is None:
            coro.close()
            raise RuntimeError("the daemon's TaskGroup is not running")
        return self._tg.create_task(self._logged(coro))

    async def _logged(self, coro: Coroutine[Any, Any, Any]) -> Any:
        try:
            return await coro
        except Exception:
            log.exception("a task of hasync %s failed: the daemon stops", self.cfg.node.name)
            raise

    async def _until_stopped(self) -> None:
        await self._stop.wait()
        raise self._failure or _Stopped()

    # ---- events in ----
    def _event(self, event: Event) -> None:
        """Run one event on the loop with `now` read here; a failure stops the daemon."""
        assert self.fx is not None
        try:
            self.fx.do(event(time.monotonic()))
        except Exception as e:
            log.exception("an event failed: hasync %s stops", self.cfg.node.name)
            self._failure = self._failure or e
            self._stop.set()

    def _threadsafe(self, event: Event) -> None:
        """Run an event from another thread (Raft's) on the loop."""
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: the daemon has stopped
            self._loop.call_soon_threadsafe(self._event, event)

    def _on_ha(self, raw: bytes, msg: HaMessage, now: float) -> None:
        """charon's datagram (endpoint.py logs and counts what raises here)."""
        assert self.fx is not None
        if msg.type == MessageType.CHILD_ADD and self.seq is not None:
            self.seq.wake()  # a new SA is fenced on the master until its first mark commits
        self.fx.do(self.core.on_ha(raw, msg, now))

    def _on_fifo(self, fd: int, lines: LineBuffer) -> None:
        for line in lines.feed(read_available(fd)):
            self._event(lambda now, line=line: self.core.on_vrrp(line, now))

    def _applied_threadsafe(self, batch: Batch | None, applied: list[tuple[bytes, HaMessage]],
                            refeed: list[bytes], number: int) -> None:
        """Raft's thread: a batch applied (None: a snapshot's jump, all in `refeed`). Before
        the loop runs (a snapshot loaded as Raft starts) charon was fed nothing: dropped."""
        if self._loop is None:
            return
        datagrams = [raw for raw, _ in applied] + refeed  # refeed: peers that moved (rehome.py)
        mids = [(key, raw if msg.type == MessageType.IKE_MID_RESPONDER else spi)
                for raw, msg in applied if msg.type in MID_TYPES
                and (key := key_of(msg.get("ike_id")))
                and isinstance(spi := msg.get("inbound_spi", 0), int)]
        ts = batch.ts if batch is not None else None  # the sender's clock (a catch-up replays
        # old entries with their times)
        self._threadsafe(lambda now: self.core.on_applied(datagrams, mids, ts, number))

    def _on_ike(self, sock: socket.socket) -> None:
        """Clients' IKE packets (ikesniff.py), read as one event."""
        self._event(lambda now: self._ike_requests(sock, now))

    def _ike_requests(self, sock: socket.socket, now: float) -> list[Command]:
        """On the master, clients' requests set charon's responder message IDs where the old
        master may have left an exchange in flight (midsync.py)."""
        assert self.journal is not None
        seen = read_all(sock, self.core.counters)
        out: list[Command] = []
        master = self.core.role.role is Role.MASTER
        for s in seen:
            if not s.header.is_request or not (master or self.core.mids.active):
                continue
            key = request_key(s.header.spi_i, s.header.spi_r, s.header.from_initiator)
            with self.journal.lock:
                state = self.journal.state
                raw = state.responder_mid(key) if self.core.mids.active else None
                host = state.remote_host(key) if master else None
                spis = state.outbound_spis(key) if host is not None and \
                    (host.address, host.port) != (ip_address(s.src), s.sport) else ()
            if host is not None:  # roam.py: a request from elsewhere may be a move
                self.core.roams.seen(key, Host(ip_address(s.src), s.sport), host, spis, now)
            if self.core.mids.active:
                out += self.core.on_ike_request(key, s.header.mid, raw, now)
        return out

    def _roams(self, now: float) -> list[Command]:
        """Journal the moves the kernel confirms (roam.py, rehome.py)."""
        assert self.journal is not None and self.seq is not None
        confirmed = self.core.roams.confirm(self.seq.kernel_keys, now)
        if not confirmed:
            return []
        with self.journal.lock:
            raws = [(key, host, self.journal.state.roam_update(key, host))
                    for key, host in confirmed]
        for key, host, raw in raws:
            log.info("the peer of IKE_SA %016x_i %016x_r moved to %s:%d%s", key[1], key[2],
                     host.address, host.port, "" if raw else " (the journal has it already)")
        return self.core.on_roamed([raw for _, _, raw in raws if raw], now)

    def _activate(self) -> None:
        """The promotion's last step (the guard calls it on the loop)."""
        self._event(lambda now: self.core.on_activate())

    async def _tick_loop(self) -> None:
        assert self.journal is not None
        journal = self.journal
        while True:
            self._wake.clear()  # a batch queued from here on wakes the wait below
            self._event(lambda now: self.core.tick(now, time.time(),
                                                   RaftView.of(journal.status())))
            if self.core.roams.pending:
                self._event(self._roams)
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


    async def _charon_loop(self) -> None:
        """Ask charon who it is (a restart) and what it has loaded; compare its holdings."""
        assert self.journal is not None and self.fx is not None and self.seq is not None
        loop, path, watch = asyncio.get_running_loop(), self.cfg.charon.vici_socket, self.charon
        quiet: tuple[int, float] | None = None  # journal entries applied, time of the check
        while True:
            stats = await loop.run_in_executor(None, vicicheck.incarnation, path,
                                               VICI_TIMEOUT_S)
            since, ikes = stats.value if stats.ok else (None, None)
            seen = watch.on_stats(since)
            if seen == "restart" or (seen == "first" and self.core.sync.state is not
                                     SyncState.UNSYNCED):  # it replayed into no charon
                self._event(self.core.on_charon_restart)
            if stats.ok and not watch.ready:
                needed = await loop.run_in_executor(None, self._needed_conns)
                conns = await loop.run_in_executor(None, vicicheck.ask, path, VICI_TIMEOUT_S,
                                                   vicicheck.conn_names)
                if conns.ok:
                    watch.on_conns(conns.value, needed)
            if watch.ready != self.core.charon_ready:
                self._event(lambda now, ready=watch.ready: self.core.on_charon_ready(ready))
            quiet = self._compare_holdings(ikes, quiet)
            await asyncio.sleep(CHARON_CHECK_S)

    def _needed_conns(self) -> set[str]:
        assert self.journal is not None
        with self.journal.lock:
            return self.journal.state.config_names()

    def _compare_holdings(self, ikes: int | None,
                          quiet: tuple[int, float] | None) -> tuple[int, float] | None:
        """Compare charon and the kernel with the journal on a mirroring node, when the
        journal applied nothing since the last check and the kernel was read since then
        (charonwatch.py); returns what the next check compares against."""
        assert self.journal is not None and self.fx is not None and self.seq is not None
        now, j = time.monotonic(), self.journal
        if ikes is None or not self.core.role.mirrors or not self.core.sync.synced:
            self.charon.compare(None, now)
            return None
        if self.fx.feed.queued:
            return None
        with j.lock:
            applied = j.state.applied
        read = self.seq.last_read
        if quiet is not None and quiet[0] == applied and read is not None and read > quiet[1]:
            with j.lock:
                n_ikes, n_children = j.state.counts()
                missing = len(j.state.inbound_spis() - self.seq.kernel_spis)
            self.charon.compare(Holdings(ikes, n_ikes, n_children, missing), now)
        return applied, now


async def quorum_loop(journal: ClusterJournal | None, probe: QuorumProbe) -> None:
    """Commit a probe entry every `probe.interval_s`, one at a time (quorum.py)."""
    assert journal is not None
    loop = asyncio.get_running_loop()

    def answer(number: int, sent: float, result: Any, error: Any) -> None:
        ok = outcome(error) is FailReason.SUCCESS
        with contextlib.suppress(RuntimeError):  # the loop is closed: the daemon has stopped
            loop.call_soon_threadsafe(probe.answered, number, ok, sent)
    while True:
        now = time.monotonic()
        if probe.due(now):
            number = probe.sent(now)
            journal.barrier(lambda result, error, n=number, t=now: answer(n, t, result, error))
        await asyncio.sleep(min(0.1, probe.interval_s / 4))


def run_daemon(cfg: Config) -> None:
    """Run the daemon (or the witness, by `node.role`) in this process until it is stopped.
    Core dumps go off and memory is locked before the cluster key is read (memguard.py)."""
    protection = protect()
    Path(cfg.node.state_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    if cfg.node.role == "witness":
        from .witness import Witness
        asyncio.run(Witness(cfg).run())
        return
    daemon = Daemon(cfg)
    daemon.core.counters.update(protection.counters)  # `hasync status` counters
    asyncio.run(daemon.run())
