"""The hasync daemon: the one place that wires configuration, charon's HA link, the Raft
journal, keepalived's FIFO and the control socket together.

Rules: only this module (and the CLI) reads configuration; every IO source is a thin asyncio
adapter around a pure part (codec, Batcher, Heartbeat, RoleState, JournalState); callbacks
from pysyncobj's thread reach the loop only through call_soon_threadsafe; nothing an outside
party sends can stop the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import re
import signal
import stat
import time
from pathlib import Path
from typing import Any

from . import vicicheck
from .config import Config
from .control import ControlServer
from .endpoint import HaEndpoint, open_endpoint
from .feed import CharonFeed
from .guard import Guard, Reserve
from .ha import HaMessage, MessageType
from .health import verdict
from .journal.seal import Batch, derive_keys, load_cluster_key
from .mirror import JOURNALED, Batcher, Heartbeat, claimed_segments, status_message
from .raft import ClusterJournal, RaftTiming
from .role import Role, RoleState, parse_vrrp_line

log = logging.getLogger("hasync")
TICK_S = 0.25  # the loop's idle tick (heartbeats, reports); a queued batch wakes it earlier
REPORT_S = 5.0  # how often a node tells the cluster its VRRP role and applied index
HEALTH_LATE_S = 3.0  # a verdict judged slower than this is logged (deploy/'s check: 3 s old)


def _shape(healthy: bool, reasons: list[str]) -> tuple[bool, tuple[str, ...]]:
    """A verdict without its numbers (ages, counts), to log changes rather than every tick."""
    return healthy, tuple(re.sub(r"\d+(\.\d+)?", "#", r) for r in reasons)


class Daemon:
    """One node's hasync."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.role = RoleState(since=time.monotonic())
        self.batcher = Batcher(cfg.cluster.batch_max_messages,
                               cfg.cluster.batch_max_delay_ms / 1000)
        self.heartbeat = Heartbeat()
        self.endpoint: HaEndpoint | None = None
        self.journal: ClusterJournal | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.synced = False  # the journal caught up and charon was given the whole state
        self.replaying = False  # the whole state is queued for charon, not all of it sent yet
        self.feed: CharonFeed | None = None
        self.charon_segments: set[int] = set()
        self.counters: dict[str, int] = {"mirrored": 0, "replays": 0, "fifo_errors": 0,
                                         "batches": 0, "batch_messages": 0, "vici_busy": 0,
                                         "health_late": 0}
        self.submitted_at = 0.0
        self.commit_ms = 0.0  # moving average of batch commit latency
        self.started = time.monotonic()
        self.last_report = 0.0
        self.ha_rx: float | None = None  # when the local charon last sent a datagram
        self.raft_joined = False  # caught up with the journal at least once since start
        self.seq: Guard | None = None
        self.healthy: tuple[bool, list[str]] = (False, ["not checked yet"])
        self.vici_busy = False  # the last vici check found charon slow, not dead
        self.child_adds = 0  # CHILD_ADDs applied from the journal (Raft's thread counts)
        self.promotion: asyncio.Task[Any] | None = None
        self._replay_task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()  # a batch has become due: the tick loop should run

    # ---- wiring ----
    async def run(self) -> None:
        """Run until SIGTERM or SIGINT."""
        cfg, self.loop = self.cfg, asyncio.get_running_loop()
        keys = derive_keys(load_cluster_key(cfg.cluster.key_file), cfg.cluster.name)
        timing = RaftTiming(election_min_s=cfg.cluster.election_timeout_ms / 1000,
                            election_max_s=cfg.cluster.election_timeout_ms * 2.5 / 1000,
                            heartbeat_s=cfg.cluster.heartbeat_ms / 1000,
                            connection_timeout_s=cfg.cluster.connection_timeout_ms / 1000)
        self.journal = ClusterJournal(cfg.node.name, str(cfg.cluster.bind),
                                      [str(p) for p in cfg.cluster.peers], cfg.node.state_dir,
                                      keys, self._applied_threadsafe, timing)
        t = cfg.takeover
        self.seq = Guard(cfg.node.name, self.journal, Reserve(
            floor=t.reserve_floor, horizon_s=t.reserve_horizon_ms / 1000,
            takeover_floor=t.takeover_floor, takeover_horizon_s=t.takeover_horizon_ms / 1000,
            no_quorum=t.no_quorum_reserve), self._activate, t.barrier_timeout_ms / 1000,
            tick_s=t.tick_ms / 1000)
        self.journal.on_seq = self.seq.wake_threadsafe
        self.endpoint = await open_endpoint(cfg.charon.ha_remote.sockaddr,
                                            cfg.charon.ha_local.sockaddr, self._on_ha)
        self.feed = CharonFeed(self.endpoint.send, cfg.charon.ha_local.sockaddr)
        control = ControlServer(cfg.node.control_socket, {"status": self.status,
                                                          "sas": self.sas,
                                                          "health": self.health})
        await control.start()
        fifo = self._open_vrrp_fifo()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self._stop.set)
        log.info("hasync %s up: raft %s, peers %s, HA %s <- %s", cfg.node.name, cfg.cluster.bind,
                 ", ".join(map(str, cfg.cluster.peers)), cfg.charon.ha_remote,
                 cfg.charon.ha_local)
        ticker = asyncio.create_task(self._tick_loop())
        guard = asyncio.create_task(self.seq.run(lambda: self.role.role == Role.MASTER,
                                                 lambda: self.child_adds))
        guard.add_done_callback(self._guard_failed)
        health = asyncio.create_task(self._health_loop())
        feeder = asyncio.create_task(self.feed.run())
        try:
            await self._stop.wait()
        finally:
            feeder.cancel()
            ticker.cancel()
            guard.cancel()
            health.cancel()
            self.seq.close()
            with contextlib.suppress(OSError):
                cfg.node.health_file.unlink()
            await control.close()
            if fifo is not None:
                self.loop.remove_reader(fifo)
                os.close(fifo)
            self.endpoint.transport.close() if self.endpoint.transport else None
            self.journal.destroy()
            log.info("hasync %s stopped", cfg.node.name)

    # ---- charon -> journal ----
    def _on_ha(self, raw: bytes, msg: HaMessage, now: float) -> None:
        """A datagram from the local charon."""
        self.ha_rx = now
        if msg.type in JOURNALED:
            if not self.batcher.pending:
                self._wake.set()  # the loop sleeps until the batch's delay has passed
            self.batcher.add(raw, now)
            if len(self.batcher.pending) >= self.batcher.max_messages:
                self._submit(now)  # a full batch goes at once, not at the next tick
        elif msg.type in (MessageType.STATUS, MessageType.SEGMENT_TAKE):
            taken = claimed_segments(msg)
            self.charon_segments = taken if msg.type == MessageType.STATUS else \
                self.charon_segments | taken
            if self.role.mirrors and taken:
                self._charon_fifo(f"-{min(taken)}")  # a backup's charon must stay passive
        elif msg.type == MessageType.SEGMENT_DROP:
            self.charon_segments -= claimed_segments(msg)
        elif msg.type == MessageType.RESYNC and self.role.mirrors:
            log.info("charon asked for a resync: replaying the journal")
            self.synced = False

    def _submit(self, now: float) -> None:
        batch = self.batcher.next_batch(now)
        if batch is None or self.journal is None:
            return
        loop = self.loop
        assert loop is not None

        def done(result: Any, error: Any) -> None:
            loop.call_soon_threadsafe(self._committed, error == 0 or error is None,
                                      str(error))
        self.submitted_at = now
        try:
            self.journal.submit(batch, done)
        except Exception:
            log.exception("sealing a batch failed; dropping it")
            self.batcher.done(True, now)

    def _committed(self, ok: bool, error: str) -> None:
        now = time.monotonic()
        if not ok:
            log.warning("batch not committed (%s); retrying", error)
        else:
            self.counters["batches"] += 1
            self.counters["batch_messages"] += len(self.batcher.in_flight or ())
            self.commit_ms += 0.1 * ((now - self.submitted_at) * 1000 - self.commit_ms)
        self.batcher.done(ok, now)
        self._submit(now)  # what queued meanwhile goes at once

    # ---- journal -> charon ----
    def _applied_threadsafe(self, batch: Batch, applied: list[tuple[bytes, HaMessage]]) -> None:
        self.child_adds += sum(msg.type == MessageType.CHILD_ADD for _, msg in applied)
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._on_applied, [raw for raw, _ in applied])

    def _on_applied(self, datagrams: list[bytes]) -> None:
        """Committed datagrams: a synced backup queues them for its charon (after the replay)."""
        if (self.synced or self.replaying) and self.role.mirrors and self.feed is not None:
            self.feed.put(datagrams)
            self.counters["mirrored"] += len(datagrams)

    async def _replay(self) -> None:
        """Give charon the whole committed state, in dependency order, at its pace (feed.py);
        synced once all of it was sent."""
        assert self.journal is not None and self.feed is not None
        t0 = time.monotonic()
        with self.journal.lock:
            plan = self.journal.state.replay_plan()
            self.feed.put(plan)  # under the lock: what is applied next queues behind it
            self.replaying = True
        await self.feed.drained()
        self.replaying, self.synced = False, True
        self.counters["replays"] += 1
        self.counters["mirrored"] += len(plan)
        log.info("replayed %d datagrams into charon in %.1f s", len(plan),
                 time.monotonic() - t0)

    def _caught_up(self) -> bool:
        assert self.journal is not None
        st = self.journal.raft_status()
        return st.get("leader") is not None and st.get("last_applied", 0) >= st.get(
            "commit_idx", 0) > 0

    # ---- the loop ----
    async def _tick_loop(self) -> None:
        while True:
            now = time.monotonic()
            self._submit(now)
            if self.heartbeat.due(self.role.mirrors, now) and self.endpoint is not None:
                self.endpoint.send(status_message(self.cfg.charon.protocol_version,
                                                  self.cfg.charon.segments))
            if now - self.last_report >= REPORT_S:
                self._report(now)
            if not self.raft_joined and self._caught_up():
                self.raft_joined = True
            if self.role.mirrors and not (self.synced or self.replaying) and self._caught_up():
                self.replaying = True
                self._replay_task = asyncio.create_task(self._replay())
            await self._sleep()

    async def _sleep(self) -> None:
        """Until the next tick, or until the pending batch is due (_on_ha wakes the loop)."""
        wake = self.batcher.wake_at()
        delay = TICK_S if wake is None else min(TICK_S, max(0.0, wake - time.monotonic()))
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), delay)

    def _guard_failed(self, task: asyncio.Future[Any]) -> None:
        """The guard raises only on a bug: stop the daemon, so keepalived moves the VIP."""
        if not task.cancelled() and task.exception() is not None:
            log.error("the sequence guard failed; stopping", exc_info=task.exception())
            self._stop.set()

    async def _health_loop(self) -> None:
        """Every second: the `hasync health` verdict, written where keepalived's check reads it.

        keepalived runs its track_script every second; a Python start per run costs 0.15 s on
        hardware and seconds under emulation, so the daemon judges (same `verdict()` as the
        command) and deploy/hasync-health-check only reads the file and its age: a dead or hung
        daemon stops refreshing it (docs/decisions.md, Health).
        """
        loop = asyncio.get_running_loop()
        path = self.cfg.node.health_file
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        while True:
            started = time.monotonic()
            vici = await loop.run_in_executor(
                None, vicicheck.check, self.cfg.charon.vici_socket, 2.0)
            healthy, reasons = verdict(self.health({}), vici.ok, vici.error, vici_busy=vici.busy)
            self._note_vici_busy(vici, healthy)
            if _shape(healthy, reasons) != _shape(*self.healthy):  # not every second's age
                log.log(logging.INFO if healthy else logging.WARNING, "health: %s",
                        "ok" if healthy else "; ".join(reasons))
            self.healthy = (healthy, reasons)
            # seconds since boot, as /proc/uptime gives them to the check without a `date`
            # fork (that fork and exec, every second, cost each gateway 15% of an emulated CPU)
            stamp = int(time.clock_gettime(time.CLOCK_BOOTTIME))
            line = f"{'ok' if healthy else 'fail'} {stamp} {'; '.join(reasons)}"
            try:
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_text(line.strip() + "\n")
                os.replace(tmp, path)
            except OSError as e:
                log.warning("cannot write %s: %s", path, e)
            self._note_late_verdict(time.monotonic() - started)
            await asyncio.sleep(1.0)

    def _note_late_verdict(self, took_s: float) -> None:
        """Count and log a verdict that took longer than HEALTH_LATE_S to judge: the check ages
        it from the last one, so a starved loop or CPU looks like a dead daemon."""
        if took_s > HEALTH_LATE_S:
            self.counters["health_late"] += 1
            log.warning("the health verdict took %.1f s to judge (vici at most 2.1 s): this "
                        "daemon's loop or CPU is starved; keepalived's check fails a verdict "
                        "older than its limit", took_s)

    def _note_vici_busy(self, vici: vicicheck.ViciAnswer, healthy: bool) -> None:
        """Count and log (on change) a charon slow over vici that the verdict let pass."""
        busy = vici.busy and not vici.ok
        if busy:
            self.counters["vici_busy"] += 1
        if busy != self.vici_busy:
            self.vici_busy = busy
            if busy and healthy:
                log.info("charon is slow to answer over vici (%s); its HA stream is alive, so "
                         "the node stays healthy", vici.error)
            elif not busy:
                log.info("charon answers over vici again")

    def _report(self, now: float) -> None:
        """Replicate this node's VRRP role, Raft role and applied index (a tiny entry)."""
        assert self.journal is not None
        self.last_report = now
        raft = self.journal.status()
        info = {"vrrp": self.role.role.value, "raft": raft["role"],
                "applied": raft["applied_index"], "ts": time.time()}
        with contextlib.suppress(Exception):
            self.journal.report(info, lambda result, error: None)

    # ---- keepalived ----
    def _open_vrrp_fifo(self) -> int | None:
        path = self.cfg.keepalived.notify_fifo
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not path.exists():
            os.mkfifo(path, 0o600)
        if not stat.S_ISFIFO(path.stat().st_mode):
            raise RuntimeError(f"{path} exists and is not a FIFO")
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        buf = bytearray()

        def readable() -> None:
            with contextlib.suppress(BlockingIOError):
                buf.extend(os.read(fd, 65536))
            while b"\n" in buf:
                line, _, rest = bytes(buf).partition(b"\n")
                buf[:] = rest
                self._on_vrrp(line.decode(errors="replace"))
            del buf[:-4096]

        assert self.loop is not None
        self.loop.add_reader(fd, readable)
        return fd

    def _on_vrrp(self, line: str) -> None:
        ev = parse_vrrp_line(line)
        if ev is None:
            return
        before = self.role.role
        if self.role.on_vrrp(ev, self.cfg.keepalived.instance, time.monotonic()):
            log.info("VRRP %s: %s -> %s", ev.state, before.value, self.role.role.value)
            self.last_report = 0.0  # tell the cluster at once
            if self.role.role == Role.MASTER and self.seq is not None:
                self.promotion = asyncio.ensure_future(self.seq.promote())
                self.promotion.add_done_callback(self._guard_failed)
            elif before == Role.MASTER:  # charon keeps its SAs, passive again; no replay
                if self.promotion is not None:
                    self.promotion.cancel()
                for n in range(1, self.cfg.charon.segments + 1):
                    self._charon_fifo(f"-{n}")

    def _activate(self) -> None:
        """Activate every segment in charon (the last step of a promotion)."""
        if self.role.role == Role.MASTER:
            for n in range(1, self.cfg.charon.segments + 1):
                self._charon_fifo(f"+{n}")

    def _charon_fifo(self, command: str) -> None:
        """Write a command to charon's HA control FIFO (ha_ctl.c: +N, -N, *N)."""
        try:
            fd = os.open(self.cfg.charon.control_fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as e:
            self.counters["fifo_errors"] += 1
            if e.errno not in (errno.ENXIO, errno.ENOENT):
                log.warning("charon control FIFO %s: %s", self.cfg.charon.control_fifo, e)
            return
        with contextlib.suppress(OSError), os.fdopen(fd, "w") as f:
            f.write(command + "\n")

    # ---- control socket ----
    def status(self, args: dict[str, Any]) -> dict[str, Any]:
        """`hasync status`: this node, its Raft view, the journal and the counters."""
        assert self.journal is not None and self.endpoint is not None
        raft = self.journal.status()
        with self.journal.lock:
            ike_sas, child_sas = self.journal.state.counts()
            anomalies = dict(self.journal.state.anomalies)
            digest = self.journal.state.digest()
        st = self.journal.raft_status()
        commit, wall = st.get("commit_idx") or 0, time.time()
        members = {name: {**m, "lag": max(0, commit - (m.get("applied") or 0)),
                          "report_age_s": round(wall - m.get("ts", 0), 1)}
                   for name, m in sorted(self.journal.members_view().items())}
        return {"node": self.cfg.node.name, "members": members, "cluster": self.cfg.cluster.name,
                "role": self.role.role.value, "role_since_s": round(time.monotonic()
                                                                    - self.role.since, 1),
                "raft": raft, "lag": max(0, (st.get("commit_idx") or 0)
                                         - (st.get("last_applied") or 0)),
                "synced": self.synced, "feed": self._feed_status(),
                "charon_segments": sorted(self.charon_segments),
                "journal": {"ike_sas": ike_sas, "child_sas": child_sas,
                            "anomalies": anomalies, "digest": digest},
                "backlog": self.batcher.backlog, "commit_ms": round(self.commit_ms, 2),
                "ha": dict(self.endpoint.counters), "raft_apply": dict(self.journal.counters),
                "counters": dict(self.counters),
                "takeover": self.seq.status() if self.seq is not None else None,
                "health": {"healthy": self.healthy[0], "reasons": self.healthy[1],
                           "vici_busy": self.vici_busy,
                           "vici_busy_checks": self.counters["vici_busy"],
                           "late_verdicts": self.counters["health_late"]},
                "uptime_s": round(time.monotonic() - self.started, 1)}

    def _feed_status(self) -> dict[str, int]:
        """The charon feed's counters and what it still holds."""
        if self.feed is None:
            return {}
        return {**self.feed.counters, "queued": self.feed.queued}

    def health(self, args: dict[str, Any]) -> dict[str, Any]:
        """`hasync health`: what this daemon knows (charon's vici is checked by the CLI)."""
        assert self.journal is not None
        now = time.monotonic()
        leader = self.journal.status()["leader"]
        return {"node": self.cfg.node.name, "role": self.role.role.value,
                "ha_rx_age_s": None if self.ha_rx is None else round(now - self.ha_rx, 2),
                "ha_timeout_s": self.cfg.takeover.ha_timeout_ms / 1000,
                "raft_joined": self.raft_joined, "raft_leader": leader}

    def sas(self, args: dict[str, Any]) -> dict[str, Any]:
        """`hasync sas`: the journaled SAs, without any secret."""
        assert self.journal is not None
        with self.journal.lock:
            summaries = self.journal.state.summaries(time.time())
        return {"ike_sas": [dataclasses.asdict(s) for s in summaries]}


def run_daemon(cfg: Config) -> None:
    """Run the daemon in this process until it is stopped."""
    Path(cfg.node.state_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    asyncio.run(Daemon(cfg).run())
