"""One node's hasync decisions, without IO (the sans-IO shape of h11 and aioquic): events in
(charon's HA datagrams, keepalived's notify lines, batch commits, journal applies, replay done,
ticks), commands out (frozen dataclasses the adapter in daemon.py carries out).

Rules: no sockets, no threads, no clock: every event that needs time carries `now` (monotonic
seconds) and the adapter reads the clock at the event boundary. The core decides what to log
and counts every failure it is told of under a name `hasync status` shows. Roles follow
keepalived through role.py's table; the sync state (charon given the whole journal?) is
`SyncState` with its own table: an illegal move raises `IllegalSyncMove` naming the state and
the event (a local bug). A keepalived line the role table refuses is outside input: logged
and counted (`vrrp_illegal`), never raised. Up to `batch_window` batches are in flight at
once, numbered so that every node applies them once and in charon's order (pipeline.py).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from .commands import (
    CancelPromotion,
    CharonFifo,
    ClearFeed,
    Command,
    FeedCharon,
    HandOffLeadership,
    Report,
    SendToCharon,
    StartPromotion,
    StartReplay,
    SubmitBatch,
    Wake,
)
from .ha import HaMessage, MessageType
from .handoff import LeaderHandoff
from .journal.machine import APPLIED, DUPLICATE
from .midsync import COUNTED as MID_COUNTED
from .midsync import Applied, Key, MidSync, key_of
from .mirror import (
    JOURNALED,
    Heartbeat,
    claimed_segments,
    resync_message,
    status_message,
)
from .pipeline import Pipeline
from .roam import COUNTED as ROAM_COUNTED
from .roam import Roams
from .role import IllegalTransition, Role, RoleState, parse_vrrp_line
from .syncobj_compat import FailReason

if TYPE_CHECKING:
    from .config import Config

log = logging.getLogger("hasync")
REPORT_S = 5.0  # how often a node tells the cluster its VRRP role and applied index
VRRP_UNKNOWN = "vrrp_unknown: keepalived has not said this node's VRRP state since hasync started"
RESYNC_MIN_S = 60.0  # a RESYNC rekeys every CHILD_SA (mirror.resync_message): not in a loop
COUNTED = ("mirrored", "replays", "replay_covered", "leader_handoffs", "batches",
           "batch_messages", "commit_retries", "batches_dropped", "messages_dropped",
           "messages_dropped:backlog_full", "resyncs_requested", "vrrp_illegal",
           "vrrp_assumed_fault", *MID_COUNTED,
           *ROAM_COUNTED)  # shown from the start


# ---- sync state -----------------------------------------------------------------------------

class SyncState(Enum):
    """Whether the local charon holds the journal's whole state."""

    UNSYNCED = "unsynced"  # not given it yet (start, or charon asked for a resync)
    REPLAYING = "replaying"  # the whole state is queued for charon, not all of it sent yet
    SYNCED = "synced"  # all of it was sent; what is applied now follows it


class SyncEvent(Enum):
    """What moves the sync state."""

    REPLAY = "replay"  # the journal caught up on a mirroring node: the replay starts
    REPLAYED = "replayed"  # the replay's last datagram went to charon
    RESYNC = "resync"  # charon sent RESYNC (it restarted and holds nothing)
    RESTART = "restart"  # hasync saw charon restart (charonwatch.py): it holds nothing
    OVERFLOW = "overflow"  # the feed dropped what charon had not read (feed.py): start over


class IllegalSyncMove(RuntimeError):
    """A sync-state move the table does not allow (a local bug, not remote input)."""


SYNC_MOVES: dict[tuple[SyncState, SyncEvent], SyncState] = {
    (SyncState.UNSYNCED, SyncEvent.REPLAY): SyncState.REPLAYING,
    (SyncState.UNSYNCED, SyncEvent.RESYNC): SyncState.UNSYNCED,
    (SyncState.REPLAYING, SyncEvent.REPLAYED): SyncState.SYNCED,
    # a RESYNC during a replay leaves it running, as before issue 15 (see the report)
    (SyncState.REPLAYING, SyncEvent.RESYNC): SyncState.REPLAYING,
    (SyncState.SYNCED, SyncEvent.RESYNC): SyncState.UNSYNCED,
    # a restarted charon lost whatever it was given: start over, the replay under way too
    (SyncState.UNSYNCED, SyncEvent.RESTART): SyncState.UNSYNCED,
    (SyncState.REPLAYING, SyncEvent.RESTART): SyncState.UNSYNCED,
    (SyncState.SYNCED, SyncEvent.RESTART): SyncState.UNSYNCED,
    # charon missed datagrams the feed dropped at its bound: a full replay follows
    (SyncState.UNSYNCED, SyncEvent.OVERFLOW): SyncState.UNSYNCED,
    (SyncState.REPLAYING, SyncEvent.OVERFLOW): SyncState.UNSYNCED,
    (SyncState.SYNCED, SyncEvent.OVERFLOW): SyncState.UNSYNCED,
}


@dataclass
class Sync:
    """The sync state and its table."""

    state: SyncState = SyncState.UNSYNCED
    generation: int = 0  # counts replays started: a replay's answer names its own
    covered: int = 0  # the last batch number the latest replay's plan holds (raft.py)
    emptied: bool = False  # charon restarted since the last replay began: it holds nothing
    clean: bool = True  # the latest replay deletes each IKE_SA first: charon may hold it

    def move(self, event: SyncEvent) -> SyncState:
        """Apply `event`; raises IllegalSyncMove naming the state and the event."""
        to = SYNC_MOVES.get((self.state, event))
        if to is None:
            raise IllegalSyncMove(f"sync state {self.state.value} cannot take {event.value}")
        if event is SyncEvent.REPLAY:  # into a charon this process has not seen empty, the
            #                           replay may meet what an earlier hasync fed it
            self.generation, self.clean, self.emptied = self.generation + 1, not self.emptied, False
        elif event is SyncEvent.RESTART:  # a new incarnation (charonwatch.py)
            self.emptied = True
        self.state = to
        return to

    @property
    def synced(self) -> bool:
        """charon was given the whole journal and follows it."""
        return self.state is SyncState.SYNCED

    @property
    def feeding(self) -> bool:
        """Whether applied datagrams go to charon (behind the replay, or after it)."""
        return self.state is not SyncState.UNSYNCED


# ---- inputs -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    """What the core needs of the configuration."""

    instance: str = "VI_1"  # keepalived's VRRP instance
    protocol_version: int = 3  # charon's ha wire version
    segments: int = 1
    batch_max_messages: int = 256
    batch_max_delay_s: float = 0.005
    batch_window: int = 4  # batches in flight at once (pipeline.py)
    stream: int = 0  # the first batch stream: the adapter seeds it from the wall clock
    fault_within_s: float = 10.0  # keepalived faults a failing node within this (role.py)

    @classmethod
    def of(cls, cfg: Config, stream: int = 0) -> Settings:
        """From the daemon's configuration."""
        return cls(cfg.keepalived.instance, cfg.charon.protocol_version, cfg.charon.segments,
                   cfg.cluster.batch_max_messages, cfg.cluster.batch_max_delay_ms / 1000,
                   cfg.cluster.batch_window, stream, cfg.keepalived.fault_within_ms / 1000)


@dataclass(frozen=True)
class RaftView:
    """What one tick needs of Raft (ClusterJournal.status(), read at the event boundary)."""

    role: str = "follower"
    leader: str | None = None
    commit_index: int = 0
    applied_index: int = 0
    peers_up: int = 0  # other voters this node's Raft is connected to

    @classmethod
    def of(cls, status: dict[str, Any]) -> RaftView:
        """From ClusterJournal.status()."""
        peers = status.get("peers") or {}
        return cls(str(status.get("role")), status.get("leader"),
                   status.get("commit_index") or 0, status.get("applied_index") or 0,
                   sum(state == "connected" for state in peers.values()))

    @property
    def caught_up(self) -> bool:
        """A leader is known and this node applied all it knows committed (something)."""
        return self.leader is not None and self.applied_index >= self.commit_index > 0


# ---- the core ---------------------------------------------------------------------------------

@dataclass
class NodeCore:
    """One node's decisions: call an `on_*` method or `tick` per event, carry out the result."""

    settings: Settings
    role: RoleState = field(default_factory=RoleState)
    sync: Sync = field(default_factory=Sync)
    counters: Counter[str] = field(default_factory=Counter)
    charon_segments: set[int] = field(default_factory=set)
    ha_rx: float | None = None  # when the local charon last sent a datagram
    raft_joined: bool = False  # caught up with the journal at least once since start
    commit_ms: float = 0.0  # moving average of batch commit latency
    last_report: float | None = None  # None: report at the next tick
    submitted_at: dict[int, float] = field(default_factory=dict)  # by batch number
    replay_started: float = 0.0
    charon_ready: bool = True  # charon has the journal's connections (the daemon's watch)
    journal_gap: int = 0  # datagrams dropped at the backlog bound since the last resync
    resync_at: float | None = None  # when this node last asked charon for a RESYNC
    master_lost_charon: bool = False  # charon restarted while this node was master

    def __post_init__(self) -> None:
        s = self.settings
        self.batcher = Pipeline(s.batch_max_messages, s.batch_max_delay_s, s.batch_window,
                                s.stream)
        self.heartbeat = Heartbeat()
        self.counters.update(dict.fromkeys(COUNTED, 0))
        self.mids = MidSync(counters=self.counters)  # responder MIDs on a new master
        self.roams = Roams(counters=self.counters)  # peers that moved (roam.py)
        self.handoff = LeaderHandoff()  # the Raft leader off the VRRP master (handoff.py)

    # charon -> journal
    def on_ha(self, raw: bytes, msg: HaMessage, now: float) -> list[Command]:
        """A datagram from the local charon."""
        self.ha_rx = now
        if msg.type == MessageType.IKE_MID_RESPONDER and (key := key_of(msg.get("ike_id"))):
            self.mids.charon_moved(key)  # this charon answered: it holds the response
        if msg.type in JOURNALED:
            return self._journal(raw, now)
        if msg.type in (MessageType.STATUS, MessageType.SEGMENT_TAKE):
            taken = claimed_segments(msg)
            self.charon_segments = taken if msg.type == MessageType.STATUS else \
                self.charon_segments | taken
            if self.role.mirrors and taken:
                return [CharonFifo(f"-{min(taken)}")]  # a backup's charon must stay passive
        elif msg.type == MessageType.SEGMENT_DROP:
            self.charon_segments -= claimed_segments(msg)
        elif msg.type == MessageType.RESYNC and self.role.mirrors:
            log.info("charon asked for a resync: replaying the journal")
            self.sync.move(SyncEvent.RESYNC)
        return []

    def _journal(self, raw: bytes, now: float) -> list[Command]:
        """Queue one datagram for the journal."""
        first = not self.batcher.pending
        if not self.batcher.add(raw, now):
            return self._dropped(now)
        out: list[Command] = [Wake()] if first else []
        if len(self.batcher.pending) >= self.batcher.max_messages:
            out += self._submit(now)  # a full batch goes at once, not at the next tick
        return out

    def _dropped(self, now: float) -> list[Command]:
        """The backlog is at its bound (Raft commits nothing): drop, count, fail health."""
        if not self.journal_gap:
            log.error("%d datagrams wait for Raft: dropping charon's datagrams until it "
                      "commits again, then asking charon for a RESYNC (health fails meanwhile)",
                      self.batcher.backlog)
        self.journal_gap += 1
        self.counters["messages_dropped:backlog_full"] += 1
        return []

    def _resync(self, now: float) -> list[Command]:
        """Once a gap's backlog has drained, ask the active charon to send its SAs again
        (mirror.resync_message), at most every RESYNC_MIN_S."""
        if (not self.journal_gap or self.batcher.backlog or self.role.role is not Role.MASTER
                or (self.resync_at is not None and now - self.resync_at < RESYNC_MIN_S)):
            return []
        log.warning("asking charon for a RESYNC: %d datagrams were dropped", self.journal_gap)
        self.journal_gap, self.resync_at = 0, now
        self.counters["resyncs_requested"] += 1
        return [SendToCharon(resync_message(self.settings.protocol_version,
                                            self.settings.segments))]

    def _submit(self, now: float) -> list[Command]:
        """Every batch due, while the window has room."""
        out: list[Command] = []
        while (flight := self.batcher.next_batch(now)) is not None:
            self.submitted_at.setdefault(flight.seq, now)
            out.append(SubmitBatch(tuple(flight.items), self.batcher.stream, flight.seq))
        return out

    def on_committed(self, seq: int, reason: FailReason, result: Any,
                     now: float) -> list[Command]:
        """Batch `seq` committed with the machine's answer `result`, or failed (pipeline.py
        resends what is not applied)."""
        sent = self.submitted_at.pop(seq, now)
        if reason is not FailReason.SUCCESS:
            self.counters["commit_retries"] += 1
            log.warning("batch %d not committed (%s); resending", seq, reason.name)
            result = None
        elif isinstance(result, tuple) and result and result[0] not in (APPLIED, DUPLICATE):
            self.counters[f"batches_resent:{result[0]}"] += 1
        done = self.batcher.answered(seq, result, now)
        if done:
            self.counters["batches"] += len(done)
            self.counters["batch_messages"] += sum(len(f.items) for f in done)
            self.commit_ms += 0.1 * ((now - sent) * 1000 - self.commit_ms)
        return self._submit(now) + self._resync(now)  # what queued meanwhile goes at once

    def on_submit_failed(self, seq: int, now: float) -> list[Command]:
        """Sealing batch `seq` raised (the adapter logged the traceback): drop it."""
        self.counters["batches_dropped"] += 1
        self.counters["messages_dropped"] += len(self.batcher.dropped(seq))
        self.submitted_at.pop(seq, None)
        return []

    def on_reported(self, reason: FailReason) -> list[Command]:
        """A report's outcome; a lost one is counted (the next goes REPORT_S later)."""
        if reason is not FailReason.SUCCESS:
            self.counters[f"reports_failed:{reason.name}"] += 1
        return []

    # journal -> charon
    def on_applied(self, datagrams: list[bytes], mids: list[Applied] | None = None,
                   ts: float | None = None, number: int | None = None) -> list[Command]:
        """Committed datagrams: a mirroring node feeds them to charon behind the replay;
        `mids` (the IKE_MID_RESPONDERs and CHILD_ADDs among them) go to midsync.py with `ts`,
        the batch's time on its sender's clock. A batch numbered at or below what the replay's
        plan covers is in that plan already: fed twice, an IKE_ADD would make charon hold two
        IKE_SAs with one ID (ha_dispatcher.c process_ike_add, checkout_new), and the IKE_DELETE
        that follows destroys only one of them."""
        if ts is not None:
            self.mids.applied(mids or [], ts)
        if not datagrams or not (self.sync.feeding and self.role.mirrors):
            return []
        if number is not None and number <= self.sync.covered:
            self.counters["replay_covered"] += len(datagrams)
            return []
        self.counters["mirrored"] += len(datagrams)
        return [FeedCharon(tuple(datagrams))]

    def on_replay_planned(self, covered: int) -> None:
        """The replay's plan was taken from the state holding batches up to `covered`."""
        self.sync.covered = covered

    def on_replayed(self, count: int, now: float, generation: int | None = None) -> list[Command]:
        """The replay's `count` datagrams were all sent to charon (or dropped: see below)."""
        if generation is not None and (generation != self.sync.generation
                                       or self.sync.state is not SyncState.REPLAYING):
            self.counters["replays_abandoned"] += 1  # charon restarted under it
            return []
        self.sync.move(SyncEvent.REPLAYED)
        self.counters["replays"] += 1
        self.counters["mirrored"] += count
        log.info("replayed %d datagrams into charon in %.1f s", count, now - self.replay_started)
        return []

    def on_feed_overflow(self, now: float) -> list[Command]:
        """The feed dropped its queue at its bound (feed.py): charon misses datagrams, so the
        journal is replayed into it again once this node is caught up."""
        log.error("charon reads slower than the journal applies: the feed dropped its queue "
                  "at its bound; replaying the whole journal into charon")
        self.counters["feed_overflows"] += 1
        self.sync.move(SyncEvent.OVERFLOW)
        return []

    # charon's lifecycle (charonwatch.py)
    def on_charon_restart(self, now: float) -> list[Command]:
        """charon restarted and holds nothing: replay once its connections are loaded."""
        log.warning("charon restarted: it holds nothing; the journal is replayed into it "
                    "once its connections are loaded")
        self.sync.move(SyncEvent.RESTART)
        self.charon_ready = False
        if self.role.role is Role.MASTER:  # its SAs are gone: a backup's passive ones are not
            self.master_lost_charon = True
        self.charon_segments = set()
        return [ClearFeed()]

    def on_charon_ready(self, ready: bool) -> list[Command]:
        """charon has (True) or lacks (False) the connections the journal's IKE_SAs name."""
        if ready and not self.charon_ready:
            log.info("charon has its connections loaded: the replay may start")
        self.charon_ready = ready
        return []

    # keepalived
    def on_vrrp(self, line: str, now: float) -> list[Command]:
        """One line from keepalived's notify FIFO."""
        ev = parse_vrrp_line(line)
        if ev is None:
            return []
        before = self.role.role
        try:
            changed = self.role.on_vrrp(ev, self.settings.instance, now)
        except IllegalTransition as e:
            self.counters["vrrp_illegal"] += 1
            log.error("keepalived line %r ignored: %s", line.strip(), e)
            return []
        if not changed:
            return []
        log.info("VRRP %s: %s -> %s", ev.state, before.value, self.role.role.value)
        self.master_lost_charon = False
        if self.journal_gap and before is Role.MASTER:  # that charon's stream ended here
            self.counters["journal_gaps_abandoned"] += 1
            self.journal_gap = 0
        self.last_report = None  # tell the cluster at the next tick
        if self.role.role is Role.MASTER:  # the rewinds queue behind what charon is fed
            rewinds = self.mids.promoted()
            if rewinds:
                log.info("%d IKE_SAs had a request applied just before the promotion: their "
                         "responder message IDs go back by one (midsync.py)", len(rewinds))
            return [StartPromotion(), *([FeedCharon(tuple(rewinds))] if rewinds else [])]
        self.mids.demoted()
        self.roams.clear()
        if before is Role.MASTER:  # charon keeps its SAs, passive again; no replay
            return [CancelPromotion(), *self._segments("-")]
        return []

    def on_ike_request(self, key: Key, mid: int, journal_raw: bytes | None,
                       now: float) -> list[Command]:
        """A client's IKE request seen on the wire (ikesniff.py), with the journal's
        IKE_MID_RESPONDER datagram of its IKE_SA: delete orphaned CHILD_SAs (in charon and
        the journal) and set charon's responder MID, if needed (midsync.py)."""
        deletes, rewind = self.mids.request(key, mid, journal_raw)
        out: list[Command] = [FeedCharon(tuple(deletes))] if deletes else []
        for datagram in deletes:
            out += self._journal(datagram, now)
        return out + ([FeedCharon((rewind,))] if rewind else [])

    def on_roamed(self, datagrams: list[bytes], now: float) -> list[Command]:
        """IKE_UPDATEs for peers the master's charon moved (roam.py): journaled like
        charon's own datagrams, so that every mirroring node moves them too (rehome.py)."""
        if self.role.role is not Role.MASTER:
            return []
        out: list[Command] = []
        for datagram in datagrams:
            out += self._journal(datagram, now)
        return out

    def on_activate(self) -> list[Command]:
        """The promotion's last step: activate every segment in charon, if still master."""
        return self._segments("+") if self.role.role is Role.MASTER else []

    def _segments(self, sign: str) -> list[Command]:
        return [CharonFifo(f"{sign}{n}") for n in range(1, self.settings.segments + 1)]

    # time
    def tick(self, now: float, wall: float, raft: RaftView) -> list[Command]:
        """The periodic event: due batch, heartbeat, report, replay start, resync."""
        out = self._submit(now) + self._resync(now)
        if self.role.settle_silence(now, self.settings.fault_within_s):
            self.counters["vrrp_assumed_fault"] += 1
            self.last_report = None
            log.warning("keepalived silent for %.0f s while health failed (vrrp_unknown): it "
                        "was in FAULT already; going on as FAULT", self.settings.fault_within_s)
        if self.heartbeat.due(self.role.mirrors, now):
            out.append(SendToCharon(status_message(self.settings.protocol_version,
                                                   self.settings.segments)))
        if self.last_report is None or now - self.last_report >= REPORT_S:
            self.last_report = now
            out.append(Report({"vrrp": self.role.role.value, "raft": raft.role,
                               "applied": raft.applied_index, "ts": wall}))
        master_since = self.role.since if self.role.role is Role.MASTER else None
        if self.handoff.due(master_since, raft.role == "leader", raft.peers_up, now):
            self.counters["leader_handoffs"] += 1
            out.append(HandOffLeadership())
        if raft.caught_up:
            self.raft_joined = True
            if self.role.mirrors and self.sync.state is SyncState.UNSYNCED and self.charon_ready:
                self.sync.move(SyncEvent.REPLAY)
                self.replay_started = now
                out.append(StartReplay(self.sync.generation, self.sync.clean))
        return out

    def wake_at(self) -> float | None:
        """When `tick` must next run for a batch, if known."""
        return self.batcher.wake_at()

    # views
    def snapshot(self, now: float) -> dict[str, Any]:
        """This core's part of `hasync status`."""
        return {"role": self.role.role.value, "role_since_s": round(now - self.role.since, 1),
                "synced": self.sync.state is SyncState.SYNCED, "sync": self.sync.state.value,
                "charon_ready": self.charon_ready, "charon_segments": sorted(self.charon_segments),
                "backlog": self.batcher.backlog, "commit_ms": round(self.commit_ms, 2)}

    def problems(self) -> list[str]:
        """The core's health problems (the daemon adds them to `hasync health`)."""
        out = []
        if self.role.role is Role.JOINING:  # e.g. restarted on the master: it must not stay so
            out.append(VRRP_UNKNOWN)
        if self.master_lost_charon:
            out.append("charon_restarted_on_master: its SAs are gone; a backup holds them")
        if self.journal_gap:
            out.append(f"journal_gap: {self.journal_gap} datagrams from charon dropped at the "
                       f"backlog bound; a RESYNC follows once Raft commits")
        return out

    def ha_rx_age(self, now: float) -> float | None:
        """Seconds since charon's last datagram (None: none yet)."""
        return None if self.ha_rx is None else round(now - self.ha_rx, 2)
