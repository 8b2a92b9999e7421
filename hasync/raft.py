"""The cluster journal: sealed batches of HA datagrams replicated by Raft (pysyncobj over TCP),
applied in commit order to a `JournalState` on every node.

Rules: only sealed bytes enter Raft (pysyncobj's journal is plaintext pickle); snapshots are
sealed too, through pysyncobj's custom serializer, so no secret reaches disk in clear; the
Raft port always carries pysyncobj's password (derived from the cluster key), so it is always
authenticated and encrypted. The `@replicated` apply method never raises: an entry that does
not open, unpack or decode is counted and skipped, since a raising apply wedges every node
(FACTS.md). Apply runs on pysyncobj's thread; readers take `lock`.
"""

from __future__ import annotations

import os
import pickle
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .guard.entries import SeqEntry, SeqLog, pack_seq, unpack_seq
from .ha import HaMessage, MalformedMessage, decode
from .journal.seal import Batch, EntryError, Keys, Sealer, SealError, pack_batch, unpack_batch
from .journal.state import JournalState
from .syncobj_compat import SyncObj, SyncObjConf, replicated

SNAPSHOT_FORMAT = 2
AUTO_TICK_MIN_S = 0.05  # pysyncobj's default poll timeout; a slow heartbeat polls less often
Applied = Callable[[Batch, list[tuple[bytes, HaMessage]]], None]


@dataclass(frozen=True)
class RaftTiming:
    """pysyncobj timing; defaults suit a LAN (election after 0.4 to 1.4 s of silence)."""

    election_min_s: float = 0.4
    election_max_s: float = 1.4
    heartbeat_s: float = 0.1
    connection_timeout_s: float = 3.5
    compaction_min_entries: int = 5000
    compaction_min_s: float = 60.0


class ClusterJournal(SyncObj):  # type: ignore[misc]
    """This node's Raft member: submits batches, applies committed ones to `state`."""

    def __init__(self, node: str, bind: str, peers: list[str], state_dir: Path, keys: Keys,
                 on_applied: Applied | None = None, timing: RaftTiming | None = None) -> None:
        t = timing or RaftTiming()
        self.node = node
        self.lock = threading.RLock()
        self.state = JournalState()
        self.seqs = SeqLog()
        self.counters: Counter[str] = Counter()
        self.on_applied = on_applied
        self.on_seq: Callable[[], None] | None = None  # an applied entry moved a mark
        self.members: dict[str, dict[str, Any]] = {}  # node -> its last report (no secrets)
        self._sealer = Sealer(keys)
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        conf = SyncObjConf(
            password=keys.raft_password, appendEntriesUseBatch=False,
            journalFile=str(state_dir / "raft.journal"),
            fullDumpFile=str(state_dir / "raft.snapshot"),
            serializer=self._save_snapshot, deserializer=self._load_snapshot,
            raftMinTimeout=t.election_min_s, raftMaxTimeout=t.election_max_s,
            appendEntriesPeriod=t.heartbeat_s, connectionTimeout=t.connection_timeout_s,
            logCompactionMinEntries=t.compaction_min_entries,
            logCompactionMinTime=t.compaction_min_s, dynamicMembershipChange=False,
            autoTickPeriod=max(AUTO_TICK_MIN_S, t.heartbeat_s / 4))
        super().__init__(bind, peers, conf)

    def submit(self, datagrams: list[bytes], callback: Callable[[Any, Any], None]) -> None:
        """Seal a batch and hand it to Raft; `callback(result, error)` runs on commit or failure."""
        sealed = self._sealer.seal(pack_batch(datagrams, self.node, time.time()))
        self._apply_batch(sealed, callback=callback)

    @replicated  # type: ignore[misc]
    def _apply_batch(self, sealed: bytes) -> None:
        """Apply one committed entry; never raises."""
        try:
            batch = unpack_batch(self._sealer.open(sealed))
        except (SealError, EntryError) as e:
            self.counters[f"entry_rejected:{type(e).__name__}"] += 1
            return
        except Exception:
            self.counters["entry_rejected:other"] += 1
            return
        applied: list[tuple[bytes, HaMessage]] = []
        with self.lock:
            for raw in batch.items:
                try:
                    msg = decode(raw)
                    self.state.apply(raw, msg, batch.ts)
                except MalformedMessage:
                    self.counters["datagram_rejected"] += 1
                    continue
                except Exception:
                    self.counters["apply_error"] += 1
                    continue
                applied.append((raw, msg))
            self.counters["batches_applied"] += 1
            self.counters["messages_applied"] += len(applied)
        if self.on_applied is not None:
            try:
                self.on_applied(batch, applied)
            except Exception:
                self.counters["on_applied_error"] += 1

    def submit_seq(self, entry: SeqEntry, callback: Callable[[Any, Any], None]) -> None:
        """Seal replay-state records and hand them to Raft (like `submit`)."""
        self._apply_seq(self._sealer.seal(pack_seq(entry)), callback=callback)

    @replicated  # type: ignore[misc]
    def _apply_seq(self, sealed: bytes) -> None:
        """Apply one committed replay-state entry; never raises."""
        try:
            entry = unpack_seq(self._sealer.open(sealed))
        except (SealError, EntryError) as e:
            self.counters[f"seq_rejected:{type(e).__name__}"] += 1
            return
        except Exception:
            self.counters["seq_rejected:other"] += 1
            return
        try:
            with self.lock:
                moved = self.seqs.apply(entry)
            self.counters["seq_entries_applied"] += 1
            if moved and self.on_seq is not None:
                self.on_seq()
        except Exception:
            self.counters["seq_apply_error"] += 1

    def barrier(self, callback: Callable[[Any, Any], None]) -> None:
        """Commit an empty entry; when `callback` runs without error, this node has applied
        everything committed before it (Raft log order)."""
        self._barrier(callback=callback)

    @replicated  # type: ignore[misc]
    def _barrier(self) -> None:
        """Nothing to apply: the entry only orders the log."""
        self.counters["barriers_applied"] += 1

    def report(self, info: dict[str, Any], callback: Callable[[Any, Any], None]) -> None:
        """Tell every node how this one is doing (VRRP role, applied index); no secrets."""
        self._member_report(self.node, info, callback=callback)

    @replicated  # type: ignore[misc]
    def _member_report(self, node: str, info: dict[str, Any]) -> None:
        """Keep a member's latest report; never raises."""
        try:
            if isinstance(node, str) and isinstance(info, dict) and len(info) <= 16:
                self.members[node[:64]] = dict(info)
            else:
                self.counters["member_report_rejected"] += 1
        except Exception:
            self.counters["member_report_rejected"] += 1

    def _save_snapshot(self, filename: str, raft_data: Any) -> None:
        """pysyncobj serializer: our state and pysyncobj's, pickled, then sealed."""
        with self.lock:
            blob = pickle.dumps((SNAPSHOT_FORMAT, self.state.to_dict(), self.seqs.to_dict(),
                                 raft_data))
        sealed = _seal_large(self._sealer, blob)
        fd = os.open(filename, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(sealed)
            f.flush()
            os.fsync(f.fileno())

    def _load_snapshot(self, filename: str) -> Any:
        """pysyncobj deserializer: open the sealed snapshot, restore our state."""
        with open(filename, "rb") as f:
            blob = _open_large(self._sealer, f.read())
        loaded = pickle.loads(blob)  # authenticated: only the cluster wrote it
        if loaded[0] != SNAPSHOT_FORMAT:
            raise ValueError(f"{filename}: snapshot format {loaded[0]}, expected "
                             f"{SNAPSHOT_FORMAT}")
        _, state, seqs, raft_data = loaded
        with self.lock:
            self.state = JournalState.from_dict(state)
            self.seqs = SeqLog.from_dict(seqs)
        return raft_data

    def status(self) -> dict[str, Any]:
        """Raft role, term, indexes and peers as pysyncobj reports them."""
        st = self.getStatus()
        role = {0: "follower", 1: "candidate", 2: "leader"}.get(st.get("state"), "?")
        peers = {k[len("partner_node_status_server_"):]: ("connected" if v == 2 else "down")
                 for k, v in st.items() if k.startswith("partner_node_status_server_")}
        leader = st.get("leader")
        return {"role": role, "term": st.get("raft_term"),
                "leader": str(leader) if leader else None,
                "commit_index": st.get("commit_idx"), "applied_index": st.get("last_applied"),
                "log_len": st.get("log_len"), "peers": peers}


# Snapshots can exceed one entry's size limit: seal them in chunks of at most CHUNK bytes,
# each chunk a sealed entry whose first 8 bytes give its index and the chunk count.
CHUNK = 192 * 1024


def _seal_large(sealer: Sealer, blob: bytes) -> bytes:
    """Seal `blob` as length-prefixed sealed chunks."""
    chunks = [blob[i:i + CHUNK] for i in range(0, len(blob), CHUNK)] or [b""]
    out = bytearray()
    for i, c in enumerate(chunks):
        sealed = sealer.seal(i.to_bytes(4, "big") + len(chunks).to_bytes(4, "big") + c)
        out += len(sealed).to_bytes(4, "big") + sealed
    return bytes(out)


def _open_large(sealer: Sealer, data: bytes) -> bytes:
    """Open what `_seal_large` made; raise SealError if anything is missing or altered."""
    pos, parts, total = 0, [], None
    while pos < len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        plain = sealer.open(data[pos + 4:pos + 4 + n])
        pos += 4 + n
        idx, count = int.from_bytes(plain[:4], "big"), int.from_bytes(plain[4:8], "big")
        if idx != len(parts) or (total is not None and count != total):
            raise SealError("snapshot chunks out of order")
        total = count
        parts.append(plain[8:])
    if total is None or len(parts) != total:
        raise SealError("snapshot truncated")
    return b"".join(parts)
