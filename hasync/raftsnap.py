"""The cluster journal's snapshots: their plaintext format, and the serializer, checker and
deserializer pysyncobj saves and loads them with, sealed (no secret reaches disk in clear).

Rules:
- Format: a pickle of (SNAPSHOT_FORMAT, JournalState.to_dict(), SeqLog.to_dict(), raft_data,
  streams) at a pinned protocol (same state, same bytes); format 3 (before numbered batches,
  no streams) is still read. A snapshot is unpickled only after `open_chunks` authenticated
  it. Members' reports are not in snapshots.
- Threads: `save` and `check` run on pysyncobj's tick thread. `save` only takes the journal's
  copy of its state (`copy`, under the journal's lock) and hands packing, sealing and writing
  to a worker (snapwriter.py), which `check` puts in place, so neither the lock nor Raft's
  thread waits for pickle, seal or fsync. `load` runs where pysyncobj loads a snapshot (this
  node's own in SyncObj's constructor, the leader's on the tick thread): it decodes outside
  the journal's lock and hands the machine to the journal's `install`, which swaps it under it.
- No silent failure: a save or load error is counted through the journal (`count`:
  `snapshot_save_error`, `snapshot_load_error`) and raised to pysyncobj; a failed resume of the
  compaction is counted (`snapshot_resume_error`) and pysyncobj clears the log.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .guard.entries import SeqLog
from .journal import durable
from .journal.machine import ApplyMachine
from .journal.seal import Sealer, open_chunks, seal_chunks
from .journal.snapshot import FrozenState
from .snapwriter import SnapshotWriter, paused_gc

# pickle of (format, JournalState.to_dict(), SeqLog.to_dict(), raft_data); 3: the sender
SNAPSHOT_FORMAT = 4  # 4: the origins' batch streams (pipeline.py); 3 is still read
SNAPSHOT_PICKLE_PROTOCOL = 4  # what main wrote (3.11 default), pinned: same state, same bytes
Count = Callable[[str, BaseException], None]
# what a snapshot holds, copied under the journal's lock: state, replay records, streams
Copy = tuple[FrozenState, SeqLog, dict[str, list[int]]]


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


class SnapshotFiles:
    """Raft's files in the state directory, and the sealed snapshots pysyncobj keeps there."""

    def __init__(self, state_dir: Path, sealer: Sealer, copy: Callable[[], Copy],
                 install: Callable[[ApplyMachine], None], count: Count) -> None:
        self._sealer = sealer
        self._copy = copy
        self._install = install
        self._count = count
        self.journal_file = str(state_dir / "raft.journal")  # durable.resume_compaction
        self.snapshot_file = str(state_dir / "raft.snapshot")
        self.writer = SnapshotWriter(count)  # snapshots off Raft's thread

    def save(self, filename: str, raft_data: Any) -> None:
        """pysyncobj serializer (tick thread): copy the state under the lock (a structural copy,
        JournalState.freeze), then pack, seal and write it on a worker (snapwriter.py); the
        checker `check` puts it in place. `filename` is pysyncobj's `<file>.tmp`
        (pysyncobj/serializer.py, Serializer.serialize)."""
        try:
            with paused_gc():
                state, seqs, streams = self._copy()
            self.writer.start(filename.removesuffix(".tmp"), lambda: seal_chunks(
                self._sealer, pack_snapshot(state.to_dict(), seqs.to_dict(), raft_data,
                                            streams)))
        except Exception as exc:  # pysyncobj's Serializer drops it without a word
            self._count("snapshot_save_error", exc)
            raise

    def check(self) -> int:
        """pysyncobj serializeChecker (tick thread): the snapshot job's state, as an int."""
        return int(self.writer.check())

    def load(self, filename: str) -> Any:
        """pysyncobj deserializer: open the sealed snapshot, build the state, swap it in."""
        with paused_gc():  # a few objects per SA: full collections halved the load's speed
            try:
                with open(filename, "rb") as f:
                    state, seqs, raft_data, streams = unpack_snapshot(
                        open_chunks(self._sealer, f.read()))
                machine = ApplyMachine.restore(state, seqs, streams)
            except Exception as exc:
                self._count("snapshot_load_error", exc)
                raise
            self._install(machine)
        self.writer.installed()  # a local snapshot still being written is now stale
        try:  # before pysyncobj compares the log with the snapshot (journal/durable.py)
            durable.resume_compaction(self.journal_file, raft_data)
        except Exception as exc:  # pysyncobj then clears the log, as it always did
            self._count("snapshot_resume_error", exc)
        return raft_data

    def disk_bytes(self) -> dict[str, int]:
        """The sizes of Raft's files on disk (0: absent): the journal (log) and the snapshot."""
        out = {}
        for name, path in (("journal_bytes", self.journal_file),
                           ("snapshot_bytes", self.snapshot_file)):
            try:
                out[name] = os.stat(path).st_size
            except OSError:
                out[name] = 0
        return out
