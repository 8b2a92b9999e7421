"""pysyncobj, imported so that it leaves the socket module alone, whose followers never
truncate entries they share with the leader, and whose elections start with a pre-vote.

Rules: every hasync import of pysyncobj goes through here. pysyncobj 0.3.17
(pysyncobj/win_inet_pton.py, imported by tcp_connection.py) assigns its ctypes Windows
`inet_ntop` to `socket.inet_ntop` on every OS, which breaks `socket.inet_ntop` for the whole
process on Linux ("not_windows() takes 0 positional arguments"); the original is put back.
"""

from __future__ import annotations

import pickle
import socket
import time
from collections.abc import Callable
from enum import IntEnum
from typing import Any

_inet_ntop, _inet_pton = socket.inet_ntop, socket.inet_pton

from pysyncobj import SyncObj as _PySyncObj  # noqa: E402
from pysyncobj import SyncObjConf, SyncObjConsumer, replicated  # noqa: E402
from pysyncobj.syncobj import _COMMAND_TYPE, _RAFT_STATE  # noqa: E402

socket.inet_ntop, socket.inet_pton = _inet_ntop, _inet_pton

from .journal.rewind import rewrite  # noqa: E402
from .prevote import PreVote  # noqa: E402

PRE_VOTE, PRE_VOTE_ANSWER = "hasync_pre_vote", "hasync_pre_vote_answer"  # pysyncobj ignores them


class SyncObj(_PySyncObj):  # type: ignore[misc]
    """pysyncobj's SyncObj; a leader no longer moves nextIndex back when a success arrives for
    an older append_entries, and an append_entries re-sent after it did (or after a reset)
    no longer deletes entries the follower shares with the leader (hasync/journal/rewind.py).
    nextIndex is only where the leader sends from: Raft's safety never depends on it.

    It overrides the private handler pysyncobj registers with its transport in
    SyncObj.__init__ (`setOnMessageReceivedCallback(self.__onMessageReceived)`, looked up on
    the instance, so the override is what the transport calls, with any transport class); it
    runs on pysyncobj's tick thread, where the log and the commit index are read safely.
    Elections start with a pre-vote (prevote.py): `_onTick` (the tick pysyncobj's thread runs)
    holds back pysyncobj's election until a majority granted one.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        conf = kwargs.get("conf", args[2] if len(args) > 2 else None) or SyncObjConf()
        self._pre_vote = PreVote(conf.raftMinTimeout)  # before the transport can deliver
        super().__init__(*args, **kwargs)

    def _onTick(self, timeToWait: float = 0.0) -> None:
        """Run a pre-vote round where pysyncobj would start an election, then tick."""
        self._pre_vote_due(time.monotonic())
        super()._onTick(timeToWait)

    def _pre_vote_due(self, now: float) -> None:
        """Where pysyncobj's tick would raise the term (SyncObj._onTick: a follower or
        candidate whose election deadline passed, connected to anyone), ask first instead,
        unless a majority already granted or the leader asked for this election
        (TimeoutNow sets __transferInProgress)."""
        if (self._SyncObj__raftState == _RAFT_STATE.LEADER or self._SyncObj__selfNode is None
                or not self._SyncObj__otherNodes or self._SyncObj__raftElectionDeadline >= now
                or not self._SyncObj__connectedToAnyone()):
            return
        if self._pre_vote.cleared or self._SyncObj__transferInProgress:
            self._pre_vote.cleared = False
            return  # pysyncobj's tick starts the election
        self._SyncObj__raftElectionDeadline = now + self._SyncObj__generateRaftTimeout()
        ask = {"type": PRE_VOTE, "round": self._pre_vote.start(),
               "term": self._SyncObj__raftCurrentTerm + 1,
               "last_log_term": self._SyncObj__getCurrentLogTerm(),
               "last_log_index": self._SyncObj__getCurrentLogIndex()}
        for node in self._SyncObj__otherNodes:
            self._SyncObj__transport.send(node, ask)

    def _on_pre_vote(self, node: Any, kind: str, message: dict[str, Any]) -> None:
        """Answer a pre-vote, or count an answer to ours (prevote.py)."""
        now = time.monotonic()
        if kind == PRE_VOTE:
            term, last_term, last_index = (message.get(k) for k in (
                "term", "last_log_term", "last_log_index"))
            if not all(type(v) is int for v in (term, last_term, last_index)):
                return  # not a pre-vote this code sent: no answer, as for a lost message
            granted = self._pre_vote.grant(
                now, self._SyncObj__raftState == _RAFT_STATE.LEADER,
                self._SyncObj__raftCurrentTerm,
                (self._SyncObj__getCurrentLogTerm(), self._SyncObj__getCurrentLogIndex()),
                term, (last_term, last_index))
            self._SyncObj__transport.send(node, {"type": PRE_VOTE_ANSWER, "granted": granted,
                                                 "round": message.get("round")})
        elif message.get("granted") is True and self._SyncObj__raftState != _RAFT_STATE.LEADER:
            voters = len(self._SyncObj__otherNodes) + 1
            if self._pre_vote.granted(message.get("round"), node, voters):
                self._SyncObj__raftElectionDeadline = 0  # the next tick starts the election

    def _SyncObj__onMessageReceived(self, node: Any, message: Any) -> None:
        """Rewrite a re-sent append_entries (journal/rewind.py), keep a leader's nextIndex from
        moving back on a late success, then let pysyncobj handle the message."""
        kind = message.get("type") if isinstance(message, dict) else None
        if kind in (PRE_VOTE, PRE_VOTE_ANSWER):
            self._on_pre_vote(node, kind, message)
            return
        term = message.get("term") if kind == "append_entries" else None
        if type(term) is int and term >= self.raftCurrentTerm:
            self._pre_vote.leader_heard(time.monotonic())
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
