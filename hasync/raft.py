"""The cluster journal: sealed entries replicated by Raft (pysyncobj over TCP), applied in
commit order to the apply machine (hasync/journal/machine.py) on every node.

Rules:
- `ClusterJournal` holds a plain pysyncobj `SyncObj`; the one replicated entry point is
  `_Replica.apply(kind, sealed)` on a `SyncObjConsumer` (pysyncobj's composition hook:
  pysyncobj/syncobj.py, SyncObj.__init__ `consumers`). Every entry is sealed, barriers and
  member reports included (pysyncobj's journal is plaintext pickle: pysyncobj/journal.py);
  snapshots are sealed chunks through pysyncobj's custom serializer (raftsnap.py), so no
  secret reaches disk in clear; the Raft port always carries pysyncobj's password (derived
  from the cluster key).
- Apply never raises: in pysyncobj 0.3.17 (pysyncobj/syncobj.py, SyncObj.__applyLogEntries)
  only SyncObjExceptionWrongVer is caught, so a raising apply leaves the entry unapplied and
  the tick thread retries it forever, on every node. An entry that does not open or unpack is
  counted and skipped.
- No silent failure: every counted error is logged once per counter name, the first time that
  name is hit (with its traceback for unexpected errors; named rejections, SealError and
  EntryError, without one), then only counted; `hasync status` shows the counters under
  "raft_apply".
- Threads: apply, snapshot copies, the status copy and the leadership handoff's steps run on
  pysyncobj's tick thread; a snapshot is packed, sealed and written on a worker and put in
  place on the tick thread (raftsnap.py, snapwriter.py), so neither the lock nor Raft's thread
  waits for pickle, seal or fsync. Replicated state and counters change only under `lock`;
  readers take `lock` (or use `members_view`, `counters`, which copy under it).
  `raft_status()` returns a copy of `getStatus()` taken on the tick thread (getStatus iterates
  pysyncobj's dicts, unsafe from another thread). A snapshot load (raftsnap.py) decodes outside
  the lock and swaps the machine under it (`_install`). Proposals go through the handoff
  (transfer.py), which holds this node's own while a handoff is tried (D248).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .guard.entries import SeqEntry, SeqLog, pack_seq
from .guard.rules import Reserve
from .ha import HaMessage
from .journal import durable
from .journal.decoded import DecodedCache
from .journal.machine import ApplyMachine, Change, Kind, open_entry, pack_claim, pack_member
from .journal.seal import Batch, EntryError, Keys, Sealer, SealError, pack_batch
from .journal.state import JournalState
from .raftnet import guarded_transport
from .raftport import PortCounters
from .raftsnap import Copy, SnapshotFiles
from .syncobj_compat import FailReason, SyncObj, SyncObjConf, SyncObjConsumer, replicated
from .transfer import Callback, LeaderTransfer

log = logging.getLogger(__name__)
durable.install()  # every SyncObj journal syncs before it answers (issue 17 finding 5)

AUTO_TICK_MIN_S = 0.05  # pysyncobj's default poll timeout; a slow heartbeat polls less often
# batch, its datagrams, the refeed, and its number (`ClusterJournal.applied_batches`)
Applied = Callable[[Batch | None, list[tuple[bytes, HaMessage]], list[bytes], int], None]
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
    reconnect_s: float = 0.5  # pysyncobj's 5 s default left a restarted member unheard (D252)
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
        self.decoded = DecodedCache()  # the master's own decodes of charon's datagrams (D272)
        self._counters: Counter[str] = Counter()
        self._logged: set[str] = set()
        self._child_adds = 0
        self._batches = 0  # batches applied; stamped on each under `lock` (applied_batches)
        self._running = False  # SyncObj's constructor loads this node's own snapshot
        self._status: dict[str, Any] = {}  # replaced whole on Raft's thread, never mutated
        self._sealer = Sealer(keys, node)  # per-node subkeys (seal.py)
        self._destroyed = False
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._snapshots = SnapshotFiles(state_dir, self._sealer, self._copy_machine,
                                        self._install, self._count)  # raftsnap.py
        conf = SyncObjConf(
            password=keys.raft_password, appendEntriesUseBatch=False,
            journalFile=self._snapshots.journal_file,
            fullDumpFile=self._snapshots.snapshot_file,
            serializer=self._snapshots.save, deserializer=self._snapshots.load,
            serializeChecker=self._snapshots.check,  # snapwriter.py
            raftMinTimeout=t.election_min_s, raftMaxTimeout=t.election_max_s,
            appendEntriesPeriod=t.heartbeat_s, connectionTimeout=t.connection_timeout_s,
            connectionRetryTime=t.reconnect_s,
            logCompactionMinEntries=t.compaction_min_entries,
            logCompactionMinTime=t.compaction_min_s, dynamicMembershipChange=False,
            autoTickPeriod=max(AUTO_TICK_MIN_S, t.heartbeat_s / 4))
        self._replica = _Replica(self._on_commit)
        self.raft_port = PortCounters()  # the Raft port's limits (raftport.py): "raft_port"
        self._raft = SyncObj(bind, peers, conf, consumers=[self._replica],
                             transportClass=guarded_transport(self.raft_port))
        self._enqueue = self._raft.proposer(self._replica, "apply")  # syncobj_compat.py
        self._handoff = LeaderTransfer(self._raft, self._enqueue, self._bump)  # transfer.py
        self._raft.addOnTickCallback(self._copy_status)  # after _handoff: the tick uses it
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
        return self._snapshots.disk_bytes()

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

    def claim(self, callback: Callback, grant: Reserve | None = None) -> None:
        """Make this node the sender of ESP marks (with `grant`, its term's first marks too,
        D261); `callback(result, error)` gets the new epoch once the claim is applied here, or
        REJECTED if the sender moved or committed since this node's view of it
        (journal/machine.py, Kind.CLAIM)."""
        with self.lock:
            seen = self.seqs.view()
        self._propose(Kind.CLAIM, pack_claim(self.node, seen, grant), callback)

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
        self._handoff.propose(int(kind), sealed, callback)  # held while a handoff is tried

    def compact(self) -> None:
        """Snapshot at the next tick (pysyncobj forceLogCompaction)."""
        self._raft.forceLogCompaction()

    def destroy(self) -> None:
        """Stop Raft's thread and close its sockets (pysyncobj destroy: asynchronous)."""
        self._destroyed = True
        self._handoff.drop()  # held proposals get MISSING_LEADER
        self._raft.destroy()

    # ---- Raft's thread ----
    def _on_commit(self, kind: int, sealed: bytes) -> Any:
        """Open, apply, count and announce one committed entry; never raises. Returns the
        entry's result for the submitter's callback (None if it did not open)."""
        prefix = _REJECTED.get(kind, "entry_rejected") if isinstance(kind, int) else (
            "entry_rejected")  # a hostile log could hold any picklable kind, even unhashable
        try:
            entry = open_entry(kind, self._sealer.open(sealed, kind), self.decoded)
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
                self._bump("snapshot_jumps")
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
        self._bump(name)

    def _bump(self, name: str) -> None:
        """Add one to the counter `name`, under the lock."""
        with self.lock:
            self._counters[name] += 1

    def _copy_status(self) -> None:
        """pysyncobj on-tick callback: publish a fresh copy of getStatus(); hand the
        leadership off if asked (transferLeadership touches Raft's state: this thread only)."""
        try:
            self._status = self._raft.getStatus()
            self._handoff.tick(self._status)  # transfer.py
        except Exception as exc:  # an exception here would abort pysyncobj's tick
            self._count("status_error", exc)

    def hand_off(self) -> None:
        """Ask Raft to move the leadership to the most caught-up connected follower (Raft's
        TimeoutNow), at its next tick; the outcome is counted (`leader_handoff:<reason>`)."""
        self._handoff.ask()

    def _copy_machine(self) -> Copy:
        """What a snapshot holds (raftsnap.py), copied under the lock (JournalState.freeze)."""
        with self.lock:
            state = self._machine.state.freeze()
            seqs = self._machine.seqs.copy()
            return state, seqs, self._machine.streams_data()

    def _install(self, machine: ApplyMachine) -> None:
        """Swap in a machine a snapshot load built (raftsnap.py) and announce the jump."""
        with self.lock:
            machine.members = self._machine.members  # reports are not in snapshots
            before, self._machine = self._machine, machine
            self._batches += 1  # the state holds every batch announced before it
            number = self._batches
        self._announce_jump(before.state, machine.state, number)
