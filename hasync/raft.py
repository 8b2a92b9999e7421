"""The cluster journal: sealed entries replicated by Raft (pysyncobj over TCP), applied in
commit order to the apply machine (hasync/journal/machine.py) on every node.

Rules:
- `ClusterJournal` holds a plain pysyncobj `SyncObj`; the one replicated entry point is
  `_Replica.apply(kind, sealed)` on a `SyncObjConsumer` (pysyncobj's composition hook:
  pysyncobj/syncobj.py, SyncObj.__init__ `consumers`). Every entry is sealed, barriers and
  member reports included (pysyncobj's journal is plaintext pickle: pysyncobj/journal.py);
  snapshots are sealed chunks through pysyncobj's custom serializer, so no secret reaches disk
  in clear; the Raft port always carries pysyncobj's password (derived from the cluster key).
- Apply never raises: in pysyncobj 0.3.17 (pysyncobj/syncobj.py, SyncObj.__applyLogEntries)
  only SyncObjExceptionWrongVer is caught, so a raising apply leaves the entry unapplied and
  the tick thread retries it forever, on every node. An entry that does not open or unpack is
  counted and skipped.
- No silent failure: every counted error is logged once per counter name, the first time that
  name is hit (with its traceback for unexpected errors; named rejections, SealError and
  EntryError, without one), then only counted; `hasync status` shows the counters under
  "raft_apply".
- Threads: apply, snapshot copies and the status copy run on pysyncobj's tick thread; a
  snapshot is packed, sealed and written on a worker and put in place on the tick thread
  (snapwriter.py), so neither the lock nor Raft's thread waits for pickle, seal or fsync.
  Replicated state and counters change only under `lock`; readers take `lock` (or use
  `members_view`, `counters`, which copy under it). `raft_status()` returns a copy of
  `getStatus()` taken on the tick thread (getStatus iterates pysyncobj's dicts, unsafe from
  another thread). A snapshot load decodes outside the lock and swaps the machine under it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .guard.entries import SeqEntry, SeqLog, pack_seq
from .ha import HaMessage
from .journal import durable
from .journal.machine import ApplyMachine, Change, Kind, open_entry, pack_claim, pack_member
from .journal.seal import (
    Batch,
    EntryError,
    Keys,
    Sealer,
    SealError,
    open_chunks,
    pack_batch,
    seal_chunks,
)
from .journal.state import JournalState
from .raftnet import guarded_transport
from .raftport import PortCounters
from .snapwriter import SnapshotWriter, paused_gc
from .syncobj_compat import FailReason, SyncObj, SyncObjConf, SyncObjConsumer, outcome, replicated

log = logging.getLogger(__name__)
durable.install()  # every SyncObj journal syncs before it answers (issue 17 finding 5)

# pickle of (format, JournalState.to_dict(), SeqLog.to_dict(), raft_data); 3: the sender
SNAPSHOT_FORMAT = 4  # 4: the origins' batch streams (pipeline.py); 3 is still read
SNAPSHOT_PICKLE_PROTOCOL = 4  # what main wrote (3.11 default), pinned: same state, same bytes
# A leadership handoff runs this long at most, this node's proposals held meanwhile
# (_try_hand_off): about an election's length (RaftTiming.election_max_s), which the handoff
# costs anyway and the guard's reserve covers; one that goes through takes milliseconds
HANDOFF_TRY_S = 1.5
AUTO_TICK_MIN_S = 0.05  # pysyncobj's default poll timeout; a slow heartbeat polls less often
# batch, its datagrams, the refeed, and its number (`ClusterJournal.applied_batches`)
Applied = Callable[[Batch | None, list[tuple[bytes, HaMessage]], list[bytes], int], None]
Callback = Callable[[Any, Any], None]
# Counter prefix of a rejected entry, by kind (the names `hasync status` has always shown).
_REJECTED: dict[int, str] = {Kind.BATCH: "entry_rejected", Kind.SEQ: "seq_rejected",
             Kind.MEMBER: "member_report_rejected", Kind.BARRIER: "barrier_rejected",
             Kind.CLAIM: "claim_rejected"}


@dataclass(frozen=True)
class RaftTiming:
    """pysyncobj timing; defaults suit a LAN (election after 0.4 to 1.4 s of silence)."""

    election_min_s: float = 0.4
    election_max_s: float = 1.4
    heartbeat_s: float = 0.1
    connection_timeout_s: float = 3.5
    compaction_min_entries: int = 5000
    compaction_min_s: float = 60.0


class _Replica(SyncObjConsumer):  # type: ignore[misc]
    """What pysyncobj replicates: one entry point, handed to the journal."""

    def __init__(self, handler: Callable[[int, bytes], Any]) -> None:
        super().__init__()
        self._handler = handler

    @replicated  # type: ignore[misc]
    def apply(self, kind: int, sealed: bytes) -> Any:
        """Apply one committed entry on Raft's thread; the handler never raises. What it
        returns reaches the submitter's callback as `result` (pysyncobj/syncobj.py,
        __applyLogEntries passes the method's return value to the callback)."""
        return self._handler(kind, sealed)


class _Frames:
    """A pickle sink written in Python: the C pickler calls `write` once per frame (~64 KiB,
    protocol 4 framing), and each call lets other threads take the GIL, which one
    `pickle.dumps` call would hold for the whole snapshot (issue 17 finding 6)."""

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: Any) -> int:
        """Keep one frame."""
        self.parts.append(bytes(data))
        return len(data)


def pack_snapshot(state: dict[str, Any], seqs: dict[str, Any], raft_data: Any,
                  streams: dict[str, list[int]] | None = None) -> bytes:
    """The snapshot's plaintext (sealed by `seal_chunks` before it reaches disk); the same
    bytes as `pickle.dumps`, written frame by frame."""
    sink = _Frames()
    pickle.Pickler(sink, protocol=SNAPSHOT_PICKLE_PROTOCOL).dump(
        (SNAPSHOT_FORMAT, state, seqs, raft_data, streams or {}))
    return b"".join(sink.parts)


def unpack_snapshot(blob: bytes) -> tuple[dict[str, Any], dict[str, Any], Any, Any]:
    """(state, seqs, raft_data, streams) from an opened snapshot (format 3, from before
    numbered batches, has no streams); raise ValueError on another format."""
    loaded = pickle.loads(blob)  # authenticated by open_chunks: only the cluster wrote it
    if isinstance(loaded, tuple) and len(loaded) == 4 and loaded[0] == 3:
        return loaded[1], loaded[2], loaded[3], {}
    if not isinstance(loaded, tuple) or len(loaded) != 5 or loaded[0] != SNAPSHOT_FORMAT:
        found = loaded[0] if isinstance(loaded, tuple) and loaded else type(loaded).__name__
        raise ValueError(f"snapshot format {found!r}, expected {SNAPSHOT_FORMAT}")
    return loaded[1], loaded[2], loaded[3], loaded[4]


class ClusterJournal:
    """This node's Raft member: seals and submits entries, applies committed ones."""

    def __init__(self, node: str, bind: str, peers: list[str], state_dir: Path, keys: Keys,
                 on_applied: Applied | None = None, timing: RaftTiming | None = None) -> None:
        t = timing or RaftTiming()
        self.node = node
        self.lock = threading.RLock()
        self.on_applied = on_applied
        self.on_seq: Callable[[], None] | None = None  # an applied entry moved a mark
        self._machine = ApplyMachine()
        self._counters: Counter[str] = Counter()
        self._logged: set[str] = set()
        self._child_adds = 0
        self._batches = 0  # batches applied; stamped on each under `lock` (applied_batches)
        self._running = False  # SyncObj's constructor loads this node's own snapshot
        self._hand_off = False  # asked by the loop, done on Raft's thread (handoff.py)
        self._hand_off_until: float | None = None  # tried at each tick until then
        self._held: list[tuple[int, bytes, Callback]] = []  # proposals held meanwhile
        self._held_lock = threading.Lock()  # _held and _hand_off_until
        self._hand_off_sent = False  # TimeoutNow went: wait to step down
        self._status: dict[str, Any] = {}  # replaced whole on Raft's thread, never mutated
        self._sealer = Sealer(keys, node)  # per-node subkeys (seal.py)
        self._destroyed = False
        self._snap = SnapshotWriter(self._count)  # snapshots off Raft's thread
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._journal_file = str(state_dir / "raft.journal")  # durable.resume_compaction
        self._snapshot_file = str(state_dir / "raft.snapshot")
        conf = SyncObjConf(
            password=keys.raft_password, appendEntriesUseBatch=False,
            journalFile=str(state_dir / "raft.journal"),
            fullDumpFile=self._snapshot_file,
            serializer=self._save_snapshot, deserializer=self._load_snapshot,
            serializeChecker=self._snapshot_state,  # snapwriter.py
            raftMinTimeout=t.election_min_s, raftMaxTimeout=t.election_max_s,
            appendEntriesPeriod=t.heartbeat_s, connectionTimeout=t.connection_timeout_s,
            logCompactionMinEntries=t.compaction_min_entries,
            logCompactionMinTime=t.compaction_min_s, dynamicMembershipChange=False,
            autoTickPeriod=max(AUTO_TICK_MIN_S, t.heartbeat_s / 4))
        self._replica = _Replica(self._on_commit)
        self.raft_port = PortCounters()  # the Raft port's limits (raftport.py): "raft_port"
        self._raft = SyncObj(bind, peers, conf, consumers=[self._replica],
                             transportClass=guarded_transport(self.raft_port))
        self._raft.addOnTickCallback(self._copy_status)
        self._enqueue = self._raft.proposer(self._replica, "apply")  # syncobj_compat.py
        self._running = True  # a snapshot loaded from here on may replace a fed state

    # ---- what other code reads ----
    @property
    def state(self) -> JournalState:
        """The HA model; read it under `lock` (a snapshot load replaces it)."""
        return self._machine.state

    @property
    def seqs(self) -> SeqLog:
        """The ESP replay-state log; read it under `lock`."""
        return self._machine.seqs

    @property
    def counters(self) -> Counter[str]:
        """A copy of the apply counters (`hasync status` "raft_apply")."""
        with self.lock:
            return Counter(self._counters)

    @property
    def applied_batches(self) -> int:
        """HA batches applied so far; read under `lock` with `state`, it names the last batch
        that state holds (a replay planned from it covers every batch up to this number)."""
        return self._batches

    @property
    def child_adds(self) -> int:
        """CHILD_ADDs applied since this process started (grows as backups mirror)."""
        return self._child_adds

    def members_view(self) -> dict[str, dict[str, Any]]:
        """A copy of every member's latest report, taken under the lock."""
        with self.lock:
            return {name: dict(info) for name, info in self._machine.members.items()}

    def raft_status(self) -> dict[str, Any]:
        """A copy of pysyncobj's getStatus(), as taken on Raft's thread at its last tick."""
        return dict(self._status)

    def status(self) -> dict[str, Any]:
        """Raft role, term, indexes and peers as pysyncobj reports them."""
        st = self.raft_status()
        role = {0: "follower", 1: "candidate", 2: "leader"}.get(st.get("state"), "?")
        peers = {k[len("partner_node_status_server_"):]: ("connected" if v == 2 else "down")
                 for k, v in st.items() if k.startswith("partner_node_status_server_")}
        leader = st.get("leader")
        return {"role": role, "term": st.get("raft_term"),
                "leader": str(leader) if leader else None,
                "commit_index": st.get("commit_idx"), "applied_index": st.get("last_applied"),
                "log_len": st.get("log_len"), "peers": peers}

    def disk_bytes(self) -> dict[str, int]:
        """The sizes of Raft's files on disk (0: absent): the journal (log) and the snapshot."""
        out = {}
        for name, path in (("journal_bytes", self._journal_file),
                           ("snapshot_bytes", self._snapshot_file)):
            try:
                out[name] = os.stat(path).st_size
            except OSError:
                out[name] = 0
        return out

    # ---- proposals (any thread); callback(result, error) as pysyncobj calls it ----
    def submit(self, datagrams: list[bytes], callback: Callback, stream: int = 0,
               seq: int = 0) -> None:
        """Seal a batch of ha datagrams (number `seq` of `stream`, if seq) and hand it to
        Raft; the callback's result is the machine's answer (journal/machine.py order)."""
        self._propose(Kind.BATCH, pack_batch(datagrams, self.node, time.time(), stream, seq),
                      callback)

    def submit_seq(self, entry: SeqEntry, callback: Callback) -> None:
        """Seal replay-state records and hand them to Raft."""
        self._propose(Kind.SEQ, pack_seq(entry), callback)

    def claim(self, callback: Callback) -> None:
        """Make this node the sender of ESP marks; `callback(result, error)` gets the new
        epoch once the claim is applied here, or REJECTED if the sender moved or committed since
        this node's view of it (journal/machine.py, Kind.CLAIM)."""
        with self.lock:
            seen = self.seqs.view()
        self._propose(Kind.CLAIM, pack_claim(self.node, seen), callback)

    def barrier(self, callback: Callback) -> None:
        """Commit an empty entry; when `callback` runs without error, this node has applied
        everything committed before it (Raft log order)."""
        self._propose(Kind.BARRIER, b"", callback)

    def report(self, info: dict[str, Any], callback: Callback) -> None:
        """Tell every node how this one is doing (VRRP role, applied index); no secrets."""
        self._propose(Kind.MEMBER, pack_member(self.node, info), callback)

    def _propose(self, kind: Kind, payload: bytes, callback: Callback) -> None:
        """Seal `payload` and replicate it (the kind goes as a plain int into pysyncobj's log)."""
        self._propose_sealed(kind, self._sealer.seal(payload, kind), callback)

    def _propose_sealed(self, kind: int, sealed: bytes, callback: Callback) -> None:
        """Replicate already sealed bytes (tests use it to send hostile entries). Once the
        journal is destroyed, the callback gets MISSING_LEADER at once (pysyncobj would
        drop the command without a callback, or fail on its detached consumer)."""
        if self._destroyed:
            callback(None, int(FailReason.MISSING_LEADER))
            return
        with self._held_lock:
            if self._hand_off_until is not None:  # a handoff is being tried: hold (in order)
                self._held.append((int(kind), sealed, callback))
                return
            self._enqueue((int(kind), sealed), callback)

    def compact(self) -> None:
        """Snapshot at the next tick (pysyncobj forceLogCompaction)."""
        self._raft.forceLogCompaction()

    def destroy(self) -> None:
        """Stop Raft's thread and close its sockets (pysyncobj destroy: asynchronous)."""
        self._destroyed = True
        with self._held_lock:
            held, self._held = self._held, []
        for _, _, callback in held:
            callback(None, int(FailReason.MISSING_LEADER))
        self._raft.destroy()

    # ---- Raft's thread ----
    def _on_commit(self, kind: int, sealed: bytes) -> Any:
        """Open, apply, count and announce one committed entry; never raises. Returns the
        entry's result for the submitter's callback (None if it did not open)."""
        prefix = _REJECTED.get(kind, "entry_rejected") if isinstance(kind, int) else (
            "entry_rejected")  # a hostile log could hold any picklable kind, even unhashable
        try:
            entry = open_entry(kind, self._sealer.open(sealed, kind))
            with self.lock:
                change = self._machine.apply(entry)
                self._counters.update(change.counts)
                self._child_adds += change.child_adds
                if change.kind is Kind.BATCH:
                    self._batches += 1
                number = self._batches
        except (SealError, EntryError) as exc:
            self._count(f"{prefix}:{type(exc).__name__}", exc, trace=False)
            return None
        except Exception as exc:
            self._count(f"{prefix}:other", exc)
            return None
        for name, error in change.errors:
            self._count(name, error)
        self._announce(change, number)
        return change.result

    def _announce_jump(self, before: JournalState, after: JournalState, number: int) -> None:
        """A snapshot replaced the state: a charon already fed from the old one gets the
        datagrams that take it to the new one (JournalState.jump_plan), as batch `number`.
        Both states are this thread's alone now (the old one is gone, applies wait for this
        load), so the plan is built outside the lock."""
        if self.on_applied is None or not self._running:
            return
        try:
            jump = after.jump_plan(before)
            if jump:
                with self.lock:
                    self._counters["snapshot_jumps"] += 1
                log.info("a snapshot replaced the journal's state: %d datagrams take charon "
                         "from the old state to it", len(jump))
                self.on_applied(None, [], jump, number)
        except Exception as exc:
            self._count("snapshot_jump_error", exc)

    def _announce(self, change: Change, number: int) -> None:
        """Tell the daemon and the guard what changed; their errors are counted."""
        if change.kind is Kind.BATCH and self.on_applied is not None and change.batch:
            try:
                self.on_applied(change.batch, list(change.applied), list(change.refeed),
                                number)
            except Exception as exc:
                self._count("on_applied_error", exc)
        if change.moved and self.on_seq is not None:
            try:
                self.on_seq()
            except Exception as exc:
                self._count("on_seq_error", exc)

    def _count(self, name: str, exc: BaseException, trace: bool = True) -> None:
        """Count an error under `name`; log it the first time that name is hit.

        The log line comes before the count, so whoever sees the count also finds the line.
        """
        with self.lock:
            first = name not in self._logged
            self._logged.add(name)
        if first:
            log.log(logging.ERROR if trace else logging.WARNING,
                    "raft journal: %s: %s (logged once; counted under raft_apply.%s)",
                    name, exc, name, exc_info=exc if trace else None)
        with self.lock:
            self._counters[name] += 1

    def _copy_status(self) -> None:
        """pysyncobj on-tick callback: publish a fresh copy of getStatus(); hand the
        leadership off if asked (transferLeadership touches Raft's state: this thread only)."""
        try:
            self._status = self._raft.getStatus()
            if self._hand_off:
                self._hand_off = False
                with self._held_lock:
                    self._hand_off_until = time.monotonic() + HANDOFF_TRY_S
            if self._hand_off_until is not None:
                try:
                    self._try_hand_off(time.monotonic())
                except Exception:
                    self._end_hand_off("ERROR")  # never hold this node's proposals for good
                    raise
        except Exception as exc:  # an exception here would abort pysyncobj's tick
            self._count("status_error", exc)

    def hand_off(self) -> None:
        """Ask Raft to move the leadership to the most caught-up connected follower (Raft's
        TimeoutNow), at its next tick; the outcome is counted (`leader_handoff:<reason>`)."""
        self._hand_off = True

    def _try_hand_off(self, now: float) -> None:
        """One step of a handoff (Raft's thread). pysyncobj denies a transfer while the best
        follower lacks the leader's last entry (transferLeadership), which under a steady
        stream is every tick, and the target then loses its election if the leader appended
        more meanwhile. So while a handoff runs, this node holds its own proposals (the
        master's batches and marks: most of the stream); a denied try is tried again at the
        next tick; after TimeoutNow went, the hold lasts until this node is no longer the
        leader. At HANDOFF_TRY_S at most, the held proposals go, in order. Counted once as
        `leader_handoff:<reason>` (SUCCESS: it stepped down; KEPT: it still leads), the
        denied tries as `leader_handoff_tries`."""
        until = self._hand_off_until or now
        if self._hand_off_sent:
            stepped_down = self._status.get("state") != 2  # pysyncobj _RAFT_STATE.LEADER
            if stepped_down or now >= until:
                self._end_hand_off("SUCCESS" if stepped_down else "KEPT")
            return
        answer: list[Any] = []
        self._raft.transferLeadership(callback=lambda result, error: answer.append(error))
        reason = outcome(answer[0]) if answer else FailReason.UNKNOWN_OUTCOME
        if reason is FailReason.SUCCESS:
            self._hand_off_sent = True  # TimeoutNow is on its way: hold until we step down
        elif reason is FailReason.REQUEST_DENIED and now < until:
            with self.lock:
                self._counters["leader_handoff_tries"] += 1
        else:
            self._end_hand_off(reason.name)

    def _end_hand_off(self, result: str) -> None:
        """Release the held proposals, in order, and count the handoff's outcome."""
        with self._held_lock:
            self._hand_off_until, self._hand_off_sent = None, False
            held, self._held = self._held, []
            for kind, sealed, callback in held:  # under the lock: before any newer one
                self._enqueue((kind, sealed), callback)
        with self.lock:
            self._counters[f"leader_handoff:{result}"] += 1

    def _save_snapshot(self, filename: str, raft_data: Any) -> None:
        """pysyncobj serializer (tick thread): copy the state under the lock (a structural copy,
        JournalState.freeze), then pack, seal and write it on a worker (snapwriter.py); the
        checker `_snapshot_state` puts it in place. `filename` is pysyncobj's `<file>.tmp`
        (pysyncobj/serializer.py, Serializer.serialize)."""
        try:
            with paused_gc(), self.lock:
                state = self._machine.state.freeze()
                seqs = dataclasses.replace(self._machine.seqs,
                                           records=dict(self._machine.seqs.records))
                streams = self._machine.streams_data()
            self._snap.start(filename.removesuffix(".tmp"), lambda: seal_chunks(
                self._sealer, pack_snapshot(state.to_dict(), seqs.to_dict(), raft_data,
                                            streams)))
        except Exception as exc:  # pysyncobj's Serializer drops it without a word
            self._count("snapshot_save_error", exc)
            raise

    def _snapshot_state(self) -> int:
        """pysyncobj serializeChecker (tick thread): the snapshot job's state, as an int."""
        return int(self._snap.check())

    def _load_snapshot(self, filename: str) -> Any:
        """pysyncobj deserializer: open the sealed snapshot, build the state, swap it in."""
        try:
            with open(filename, "rb") as f:
                state, seqs, raft_data, streams = unpack_snapshot(
                    open_chunks(self._sealer, f.read()))
            machine = ApplyMachine.restore(state, seqs, streams)
        except Exception as exc:
            self._count("snapshot_load_error", exc)
            raise
        with self.lock:
            machine.members = self._machine.members  # reports are not in snapshots
            before, self._machine = self._machine, machine
            self._batches += 1  # the state holds every batch announced before it
            number = self._batches
        self._announce_jump(before.state, machine.state, number)
        self._snap.installed()  # a local snapshot still being written is now stale
        try:  # before pysyncobj compares the log with the snapshot (journal/durable.py)
            durable.resume_compaction(self._journal_file, raft_data)
        except Exception as exc:  # pysyncobj then clears the log, as it always did
            self._count("snapshot_resume_error", exc)
        return raft_data
