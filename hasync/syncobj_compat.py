"""pysyncobj, imported so that it leaves the socket module alone, and whose followers never
truncate entries they share with the leader.

Rules: every hasync import of pysyncobj goes through here. pysyncobj 0.3.17
(pysyncobj/win_inet_pton.py, imported by tcp_connection.py) assigns its ctypes Windows
`inet_ntop` to `socket.inet_ntop` on every OS, which breaks `socket.inet_ntop` for the whole
process on Linux ("not_windows() takes 0 positional arguments"); the original is put back.
"""

from __future__ import annotations

import pickle
import socket
from collections.abc import Callable
from enum import IntEnum
from typing import Any

_inet_ntop, _inet_pton = socket.inet_ntop, socket.inet_pton

from pysyncobj import SyncObj as _PySyncObj  # noqa: E402
from pysyncobj import SyncObjConf, SyncObjConsumer, replicated  # noqa: E402
from pysyncobj.syncobj import _COMMAND_TYPE  # noqa: E402

socket.inet_ntop, socket.inet_pton = _inet_ntop, _inet_pton

from .journal.rewind import rewrite  # noqa: E402


class SyncObj(_PySyncObj):  # type: ignore[misc]
    """pysyncobj's SyncObj; a leader no longer moves nextIndex back when a success arrives for
    an older append_entries, and an append_entries re-sent after it did (or after a reset)
    no longer deletes entries the follower shares with the leader (hasync/journal/rewind.py).
    nextIndex is only where the leader sends from: Raft's safety never depends on it.

    It overrides the private handler pysyncobj registers with its transport in
    SyncObj.__init__ (`setOnMessageReceivedCallback(self.__onMessageReceived)`, looked up on
    the instance, so the override is what the transport calls, with any transport class); it
    runs on pysyncobj's tick thread, where the log and the commit index are read safely.
    """

    def _SyncObj__onMessageReceived(self, node: Any, message: Any) -> None:
        """Rewrite a re-sent append_entries (journal/rewind.py), keep a leader's nextIndex from
        moving back on a late success, then let pysyncobj handle the message."""
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "append_entries":
            # applied implies committed; after a restart the snapshot's index (lastApplied,
            # SyncObj.__loadDumpFile) can be above the commit index stored once a second
            committed = max(self.raftCommitIndex, self.raftLastApplied)
            message = rewrite(self._SyncObj__raftLog, committed, message)
        ahead = None
        if kind == "next_node_idx" and message.get("success") and not message.get("reset"):
            ahead = self._SyncObj__raftNextIndex.get(node)
        _PySyncObj._SyncObj__onMessageReceived(self, node, message)
        if ahead is not None and self._SyncObj__raftNextIndex.get(node, ahead) < ahead:
            # pysyncobj sets nextIndex to the acknowledged position even when later entries
            # are already in flight (SyncObj.__onMessageReceived, 'next_node_idx'): it would
            # re-send them, or send a snapshot to a follower that is ahead of it
            self._SyncObj__raftNextIndex[node] = ahead

    def proposer(self, consumer: Any, name: str) -> Callable[[tuple[Any, ...], Any], None]:
        """Propose calls of `consumer`'s @replicated method `name` (code version 0) from any
        thread. pysyncobj's wrapper looks the method up in a table that every snapshot load
        empties and refills on the tick thread (SyncObj.__loadDumpFile -> __onSetCodeVersion),
        so a proposal in that window raised KeyError; the method's id is fixed at construction
        (SyncObj.__init__ `_methodToID`), so it is read once here. The command is the one the
        wrapper builds, `(funcID, args)` pickled, put on the thread-safe command queue."""
        func_id = self._methodToID[(id(consumer), f"{name}_v0")]

        def propose(args: tuple[Any, ...], callback: Any) -> None:
            self._applyCommand(pickle.dumps((func_id, args)), callback, _COMMAND_TYPE.REGULAR)
        return propose


class FailReason(IntEnum):
    """What a pysyncobj callback's `error` means (pysyncobj/syncobj.py FAIL_REASON, in order)."""

    SUCCESS = 0  # the command was committed and applied
    QUEUE_FULL = 1  # the leader's command queue is full
    MISSING_LEADER = 2  # no leader (election in progress, or no connection to it)
    DISCARDED = 3  # a new leader applied another command in its place
    NOT_LEADER = 4  # the leader changed before it committed the command
    LEADER_CHANGED = 5  # likewise, seen from the follower that forwarded it
    REQUEST_DENIED = 6  # the leader refused the command
    UNKNOWN_OUTCOME = 7  # an older command was applied: the outcome cannot be known


def outcome(error: Any) -> FailReason:
    """A callback's `error` by name; pysyncobj passes None or 0 on success."""
    if error is None:
        return FailReason.SUCCESS
    try:
        return FailReason(error)
    except ValueError:
        return FailReason.UNKNOWN_OUTCOME


__all__ = ["FailReason", "SyncObj", "SyncObjConf", "SyncObjConsumer", "outcome", "replicated"]
