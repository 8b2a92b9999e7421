"""Raft's PreVote (Ongaro's thesis, section 9.6), which pysyncobj 0.3.17 lacks: a node asks
whether it could win before it raises its term, so a node that rejoins after a partition does
not depose a leader the others still follow.

Rules: pure (time is an argument); the SyncObj subclass (syncobj_compat.py) sends and receives
the two messages on pysyncobj's tick thread. Without it, a gateway cut off while its TCP
connections still looked up campaigned with ever higher terms, and on the heal its
request_vote made the leader step down (pysyncobj/syncobj.py, __onMessageReceived
'request_vote'); the majority then needed one or more elections, longer than the quorum bound,
and the VRRP master went to FAULT (CI, `test_a_partitioned_backup_does_not_promote`).
- A voter grants a pre-vote only when it is not the leader, has not heard a leader for the
  minimum election timeout, and the asker's log is at least as up to date as its own (Raft
  5.4.1) at a higher term. Granting changes nothing on the voter: no term, no vote.
- An election the leader asked for (TimeoutNow: a leadership handoff) skips the pre-vote: the
  others still hear that leader, so they would deny it.
- A real election starts only after a majority (this node included) granted the same round.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Log = tuple[int, int]  # (last log term, last log index): Raft's "up to date" order


@dataclass
class PreVote:
    """One node's pre-vote state: when it last heard a leader, and its current round."""

    min_timeout_s: float  # pysyncobj raftMinTimeout
    heard_leader: float = float("-inf")
    round: int = 0
    grants: set[Any] = field(default_factory=set)
    cleared: bool = False  # a majority granted: the next expired timer starts the election

    def leader_heard(self, now: float) -> None:
        """An append_entries from the current leader arrived."""
        self.heard_leader = now
        self.cleared = False

    def start(self) -> int:
        """A new round (the election timer expired); its number goes in each request."""
        self.round += 1
        self.grants = set()
        self.cleared = False
        return self.round

    def grant(self, now: float, leading: bool, term: int, log: Log, asked_term: int,
              asked_log: Log) -> bool:
        """Whether this node would vote for the asker in its next term (thesis 9.6)."""
        if leading or now - self.heard_leader < self.min_timeout_s:
            return False
        return asked_term > term and asked_log >= log

    def granted(self, number: int, voter: Any, voters: int) -> bool:
        """Count a grant of round `number`; True once a majority (with this node) granted."""
        if number != self.round or self.cleared:
            return False
        self.grants.add(voter)
        self.cleared = len(self.grants) + 1 > voters / 2
        return self.cleared
