"""A follower never truncates a log entry it shares with the leader.

pysyncobj 0.3.17 deviates from Raft §5.3 in two places that meet on every busy follower:
- the leader sends one append_entries per command (appendEntriesUseBatch=False) and moves
  nextIndex past them at once (pysyncobj/syncobj.py, SyncObj.__sendAppendEntries), but a later
  `next_node_idx` success for an older message sets nextIndex back to that older position
  (SyncObj.__onMessageReceived, 'next_node_idx': `self.__raftNextIndex[node] = nextNodeIdx`),
  so the leader re-sends entries the follower already holds, with an older prevLogIdx;
- the follower then deletes every entry after prevLogIdx (SyncObj.__onMessageReceived,
  'append_entries': `if len(prevEntries) > 1: ... self.__deleteEntriesFrom(prevLogIdx + 1)`)
  although Raft deletes only from the first entry that conflicts, and re-appends the message's.
  When the follower has applied those entries meanwhile (their commit index came in a later
  message) pysyncobj logs CRITICAL "truncating already-applied log entries"; worse, an entry
  the follower has acknowledged is gone from its log until it is re-sent: if the message
  carried fewer entries than were deleted, or power fails in between, an acknowledged (maybe
  committed) entry is lost from a member the leader counted in its majority.

Rules (pure; `rewrite` takes the log, the commit index and the message, returns a message):
- an entry after prevLogIdx is known to be the leader's if it is committed here (index <=
  `commit`: the caller passes max(commit index, last applied), applied implies committed),
  or was written in the message's term (only that term's leader writes it), or equals the
  message's entry at that index (same term). By Raft's Log Matching property
  every entry up to the last known one is the leader's too;
- the message is rewritten to start after the last known entry (prevLogIdx/prevLogTerm moved
  there, the entries up to it dropped). pysyncobj then deletes only entries that may conflict,
  none of them committed here, so none applied; its answer (next index) stays true, and its
  commit rule (min(leader commit, log end)) covers only entries known to be the leader's;
- a message pysyncobj would refuse (prevLogIdx missing or of another term), one that leaves
  nothing to delete, and one whose entries contradict an entry known to be the leader's
  (impossible unless the logs already diverged) pass unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Entry = tuple[Any, int, int]  # (command, index, term), as pysyncobj's journal holds them


def last_known(log: Sequence[Entry], commit: int, message: dict[str, Any]) -> int | None:
    """Index of the last entry after prevLogIdx known to be the leader's; None if the message
    passes unchanged (see the module rules)."""
    prev = message.get("prevLogIdx")
    if message.get("type") != "append_entries" or prev is None or not len(log):
        return None
    first, end = log[0][1], log[-1][1]
    if not first <= prev < end or log[prev - first][2] != message.get("prevLogTerm"):
        return None
    incoming = {} if message.get("transmission") else {
        e[1]: e[2] for e in message.get("entries", ())}
    known = prev
    for idx in range(prev + 1, end + 1):
        term = log[idx - first][2]
        if idx <= commit or term == message.get("term") or incoming.get(idx) == term:
            known = idx
    if known == prev:
        return None
    if any(idx <= known and term != log[idx - first][2] for idx, term in incoming.items()):
        return None  # the logs already diverged: leave it to pysyncobj, which logs it
    return known


def rewrite(log: Sequence[Entry], commit: int, message: dict[str, Any]) -> dict[str, Any]:
    """The append_entries to hand to pysyncobj instead of `message` (or `message` itself)."""
    known = last_known(log, commit, message)
    if known is None:
        return message
    first = log[0][1]
    out = {k: v for k, v in message.items() if k not in ("transmission", "data")}
    out["prevLogIdx"], out["prevLogTerm"] = known, log[known - first][2]
    # a chunked entry (transmission) is one entry at prevLogIdx + 1 <= known: already here
    out["entries"] = [] if message.get("transmission") else [
        e for e in message.get("entries", ()) if e[1] > known]
    return out
