"""A Raft journal that survives a power loss: pysyncobj's FileJournal, synced before it returns.

pysyncobj 0.3.17 (pysyncobj/journal.py, FileJournal and ResizableFile) writes log entries into
an mmap and never msyncs them, and stores currentTerm/votedFor (MetaStorer.storeMeta) by a
write and a rename with no fsync of the file or of its directory. A site-wide power loss can
then drop entries this node acknowledged and the vote it gave: the next master reuses ESP
(SPI, seq) numbers, i.e. AES-GCM nonces, and a node may vote twice in one term.

Rules:
- The log file keeps pysyncobj's layout but is written with pwrite, not through an mmap
  (D254). Every call that changes the log (`add`, `clear`, `deleteEntriesFrom`,
  `deleteEntriesTo`) fdatasyncs the file before it returns. pysyncobj calls them on its
  tick thread before it answers: a follower appends, then sends `next_node_idx`; a leader
  appends, then counts itself in the commit (pysyncobj/syncobj.py, SyncObj.__onMessageReceived
  'append_entries', SyncObj._checkCommandsToApply, SyncObj._onTick), so the sync precedes the
  acknowledgement and the commit.
- currentTerm and votedFor are written to a temporary file, fsynced, renamed over the meta file
  and the directory fsynced, before `setCurrentTerm` returns (pysyncobj sends `request_vote` and
  `response_vote` after SyncObj.__setCurrentTerm). The commit index (volatile in Raft) is stored
  the same way once a second, as pysyncobj does. The meta file keeps pysyncobj's format
  (pysyncobj.pickle of a dict), so a node upgraded in place keeps its term and vote; a meta
  file that does not load stops the node with an error naming it (never term 0, no vote).
- pysyncobj renames a snapshot into place without an fsync of the directory
  (pysyncobj/serializer.py, Serializer.serialize and setTransmissionData, atomicReplace =
  os.rename), then compacts the journal (SyncObj.__tryLogCompaction -> deleteEntriesTo) or
  clears it (SyncObj.__loadDumpFile -> clear). Both fsync the directory first here, so the
  journal never drops entries that only a snapshot still lost to a power loss would hold.
- A crash between a snapshot's rename and the compaction that follows it (next tick) leaves
  a log that does not start with the snapshot's last two entries; pysyncobj then clears the
  whole log at start (SyncObj.__loadDumpFile), dropping the entries after the snapshot that
  this node acknowledged. `resume_compaction` (called by the snapshot deserializer, before
  that check) finishes the compaction instead, so those entries stay.
- On open, a torn tail (a record whose length fields disagree, that runs past the file, or whose
  index does not follow its predecessor) is cut off before pysyncobj parses the file: only an
  entry that was never synced, hence never acknowledged, can be torn. The cut is logged.
- `install()` makes pysyncobj build this journal for every SyncObj with a `journalFile`
  (it calls the module global pysyncobj.syncobj.createJournal in SyncObj.__init__).
- pysyncobj is imported after hasync.syncobj_compat, which must see it first.
"""

from __future__ import annotations

import logging
import os
import struct
import weakref
from collections.abc import Sequence
from typing import Any

from .. import syncobj_compat  # noqa: F401 (first: it guards socket.inet_ntop from pysyncobj)

# isort: split
import pysyncobj.journal as pj
import pysyncobj.syncobj as ps
from pysyncobj.pickle import dumps, loads

log = logging.getLogger(__name__)
_OPEN: weakref.WeakValueDictionary[str, DurableFileJournal] = weakref.WeakValueDictionary()

_ORIGINAL_FACTORY = pj.createJournal
_RECORD_HEAD = 4 + 16  # length prefix, then idx and term (<QQ) before the command
RESIDENT = 64  # the newest entries kept in memory; older ones are read from the file (D254)
PINNED = 2  # and the first two, which pysyncobj and rewind.py read at every message and tick


def fsync_dir(path: str) -> None:
    """fsync a directory, so that a create or rename in it survives a power loss."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: str, data: bytes) -> None:
    """Replace `path` with `data`: temp file, fsync, rename, fsync of the directory."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def valid_end(data: bytes) -> tuple[int, int]:
    """(end of the last whole record, end the header claims) of a FileJournal image; the
    layout is pysyncobj/journal.py's (header, then per record: size, idx, term, command, size).
    """
    claimed = struct.unpack_from("<I", data, pj.LAST_RECORD_OFFSET_OFFSET)[0]
    offset, prev_idx = pj.FIRST_RECORD_OFFSET, None
    while offset < claimed:
        if offset + _RECORD_HEAD > len(data):
            break
        size = struct.unpack_from("<I", data, offset)[0]
        end = offset + 4 + size + 4
        if size < 16 or end > min(claimed, len(data)):
            break
        if struct.unpack_from("<I", data, end - 4)[0] != size:
            break
        idx = struct.unpack_from("<Q", data, offset + 4)[0]
        if prev_idx is not None and idx != prev_idx + 1:
            break
        prev_idx, offset = idx, end
    return offset, claimed


def repair_tail(path: str) -> int:
    """Cut a torn tail off the journal at `path` (see the module rules); the bytes cut."""
    if not os.path.exists(path) or os.path.getsize(path) < pj.FIRST_RECORD_OFFSET:
        return 0
    with open(path, "r+b") as f:
        data = f.read()
        end, claimed = valid_end(data)
        if end == claimed:
            return 0
        f.seek(pj.LAST_RECORD_OFFSET_OFFSET)
        f.write(struct.pack("<I", end))
        f.flush()
        os.fsync(f.fileno())
    log.warning("raft journal %s: torn tail cut at byte %d (header said %d): entries that "
                "were never synced are dropped", path, end, claimed)
    return claimed - end


def load_meta(path: str) -> dict[str, Any]:
    """currentTerm, votedFor and the commit index; {} if never stored. A meta file that does
    not load raises (pysyncobj's MetaStorer.getMeta would start at term 0 with no vote, free to
    vote twice in a term): the error names the file."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return {}
    try:
        meta = loads(raw)
        if not isinstance(meta, dict):
            raise ValueError(f"a {type(meta).__name__}, not a dict")
    except Exception as exc:
        raise RuntimeError(f"raft meta file {path} does not load ({exc}): this node's Raft "
                           "term and vote are unknown; remove the node's state directory to "
                           "rejoin with an empty journal") from exc
    return meta


def _header() -> bytes:
    """A new journal file's header, as pysyncobj writes it (journal.py, FileJournal)."""
    return (pj.APP_NAME.ljust(pj.NAME_SIZE, b"\0") + pj.APP_VERSION.ljust(pj.VERSION_SIZE, b"\0")
            + struct.pack("<II", pj.JOURNAL_FORMAT_VERSION, pj.FIRST_RECORD_OFFSET))


def _record(command: Any, idx: int, term: int) -> bytes:
    """One entry in pysyncobj's record layout: size, idx, term, command, size."""
    data = struct.pack("<QQ", idx, term) + pj.to_bytes(command)
    size = struct.pack("<I", len(data))
    return size + data + size


def _parse(data: bytes, offset: int) -> tuple[bytes, int, int]:
    """The entry whose record starts at `offset` of `data`."""
    size = struct.unpack_from("<I", data, offset)[0]
    idx, term = struct.unpack_from("<QQ", data, offset + 4)
    return data[offset + _RECORD_HEAD:offset + 4 + size], idx, term


class _Entries(Sequence[Any]):
    """A slice of the journal, read entry by entry as it is used; a slice of it, or its
    pickle, is a plain list."""

    def __init__(self, journal: DurableFileJournal, positions: range) -> None:
        self._journal, self._positions = journal, positions

    def __len__(self) -> int:
        return len(self._positions)

    def __getitem__(self, item: Any) -> Any:
        if isinstance(item, slice):
            return [self._journal[i] for i in self._positions[item]]
        return self._journal[self._positions[item]]

    def __reduce__(self) -> tuple[Any, ...]:
        return (list, (list(self),))


class DurableFileJournal(pj.Journal):  # type: ignore[misc]
    """pysyncobj's FileJournal, its file written with pwrite and synced before each change
    returns. The file layout is pysyncobj's, so either reads the other's file; there is no
    mmap: its pages counted in the daemon's resident memory (about 420 B per tunnel at 50k,
    the log's second copy) and each change needed an msync before the fdatasync (D254)."""

    def __init__(self, path: str) -> None:
        repair_tail(path)
        self._meta_path = path + ".meta"
        self._meta = load_meta(self._meta_path)
        self._meta_dirty = False
        self._path = path
        self._fd = -1
        self._open()
        fsync_dir(os.path.dirname(os.path.abspath(path)))

    def _open(self) -> None:
        """Open (or create) the file and read its entries (pysyncobj FileJournal.__init__)."""
        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if os.fstat(self._fd).st_size < pj.FIRST_RECORD_OFFSET:
            os.pwrite(self._fd, _header(), 0)
        data = os.pread(self._fd, os.fstat(self._fd).st_size, 0)
        last = struct.unpack_from("<I", data, pj.LAST_RECORD_OFFSET_OFFSET)[0]
        self._entries: list[tuple[Any, int, int] | None] = []  # None: on disk only
        self._starts: list[int] = []  # each entry's record offset
        offset = pj.FIRST_RECORD_OFFSET
        while offset < last:
            size = struct.unpack_from("<I", data, offset)[0]
            self._entries.append(None)
            self._starts.append(offset)
            offset += size + 8
        self._end = offset
        for i in range(len(self._entries)):
            if i < PINNED or i >= len(self._entries) - RESIDENT:
                self._entries[i] = _parse(data, self._starts[i])
        self._sync()

    def _set_end(self, end: int) -> None:
        """Move the header's end of the records to `end`, then sync."""
        self._end = end
        os.pwrite(self._fd, struct.pack("<I", end), pj.LAST_RECORD_OFFSET_OFFSET)
        self._sync()

    def _sync(self) -> None:
        """fdatasync the file (data and the size needed to read it)."""
        os.fdatasync(self._fd)

    def add(self, command: Any, idx: int, term: int) -> None:
        """Append one entry, on disk before returning."""
        record = _record(command, idx, term)
        os.pwrite(self._fd, record, self._end)
        self._entries.append((command, idx, term))
        self._starts.append(self._end)
        if len(self._entries) > RESIDENT + PINNED:
            self._entries[-RESIDENT - 1] = None  # read back from the file if ever needed
        self._set_end(self._end + len(record))

    def __getitem__(self, item: Any) -> Any:
        """An entry (command, idx, term), read from the file if not resident; a slice is a
        lazy `_Entries` view (pysyncobj slices the log from a follower's next index to its end
        and reads only as far as one message holds, syncobj.py __getEntries)."""
        if isinstance(item, slice):
            return _Entries(self, range(len(self._entries))[item])
        entry = self._entries[item]
        if entry is not None:
            return entry
        start = self._starts[item]
        size = struct.unpack("<I", os.pread(self._fd, 4, start))[0]
        return _parse(os.pread(self._fd, size + 4, start), 0)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Empty the log, on disk before returning; the directory too (see the rules)."""
        self._entries, self._starts = [], []
        self._set_end(pj.FIRST_RECORD_OFFSET)
        fsync_dir(os.path.dirname(os.path.abspath(self._path)))

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        """Drop the entries from position `entryFrom` on, on disk before returning."""
        if entryFrom >= len(self._entries):
            return
        end = self._starts[max(entryFrom, 0)]
        del self._entries[entryFrom:], self._starts[entryFrom:]
        self._set_end(end)

    def deleteEntriesTo(self, entryTo: int) -> None:
        """Drop the entries before position `entryTo` (log compaction). Rewriting the file in
        place (pysyncobj: clear, then add) could lose the entries after the snapshot to a power
        loss in between: the kept entries go to a new file, synced and renamed over."""
        directory = os.path.dirname(os.path.abspath(self._path))
        fsync_dir(directory)  # the snapshot's rename first (see the rules)
        tmp = self._path + ".compact"
        body = b"".join(_record(*self[i]) for i in range(entryTo, len(self._entries)))
        head = bytearray(_header())
        struct.pack_into("<I", head, pj.LAST_RECORD_OFFSET_OFFSET,
                         pj.FIRST_RECORD_OFFSET + len(body))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, bytes(head) + body)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.close(self._fd)
        os.replace(tmp, self._path)
        fsync_dir(directory)
        self._open()  # re-read the new file (meta stays ours)

    def resume_compaction(self, before: Any, last: Any) -> bool:
        """Compact up to the snapshot whose last two entries are `before`, `last` if the log
        holds them past its start (see the module rules); True if it compacted."""
        if len(self) < 3 or not isinstance(before, tuple) or len(before) != 3:
            return False
        pos = before[1] - self[0][1]
        if not 0 < pos < len(self) - 1 or self[pos] != before or self[pos + 1] != last:
            return False
        log.warning("raft journal %s: compacting up to the snapshot's index %d, which a "
                    "crash interrupted", self._path, before[1] + 1)
        self.deleteEntriesTo(pos)
        return True

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:
        """Remember the commit index; stored at the next one-second timer."""
        self._meta["raftCommitIndex"] = raftCommitIndex
        self._meta_dirty = True

    def getRaftCommitIndex(self) -> int:
        """The stored commit index (pysyncobj's default 1)."""
        return int(self._meta.get("raftCommitIndex", 1))

    def setCurrentTerm(self, term: int, votedForNodeId: Any) -> None:
        """Store term and vote durably before pysyncobj sends a message reflecting them."""
        self._meta["currentTerm"] = term
        self._meta["votedForNodeId"] = votedForNodeId
        self._store_meta()

    def getCurrentTerm(self) -> int:
        """The stored term (0 on a new node)."""
        return int(self._meta.get("currentTerm", 0))

    def getVotedForNodeId(self) -> Any:
        """The stored vote (None: none in this term)."""
        return self._meta.get("votedForNodeId")

    def onOneSecondTimer(self) -> None:
        """Store a changed commit index."""
        if self._meta_dirty:
            self._store_meta()

    def _store_meta(self) -> None:
        write_durably(self._meta_path, dumps(self._meta))
        self._meta_dirty = False

    def _destroy(self) -> None:
        if self._meta_dirty:
            self._store_meta()
        os.close(self._fd)


def create_journal(path: str | None = None) -> Any:
    """pysyncobj's createJournal, durable for a file journal."""
    if path is None:
        return pj.MemoryJournal()
    journal = DurableFileJournal(path)
    _OPEN[os.path.abspath(path)] = journal
    return journal


def resume_compaction(path: str, raft_data: Any) -> bool:
    """Called with a snapshot's pysyncobj data (its last entry, the one before, the cluster)
    as it loads: finish the compaction a crash interrupted (see the rules). True if done."""
    journal = _OPEN.get(os.path.abspath(path))
    if journal is None or not isinstance(raft_data, tuple) or len(raft_data) < 2:
        return False
    return journal.resume_compaction(raft_data[1], raft_data[0])


def install(durable: bool = True) -> None:
    """Make SyncObj build durable journals (`durable=False` restores pysyncobj's, for the
    bench's baseline)."""
    ps.createJournal = create_journal if durable else _ORIGINAL_FACTORY
