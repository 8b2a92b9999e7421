"""Keep the Raft leader off the VRRP master: one fault should not cost both.

Rules: pure (time is an argument). When the node that holds the VIP also leads Raft, killing
it costs a Raft election on top of VRRP's detection before the new master's claim can
commit (bench/results: 5.1 s of a 9.2 s promotion). So a master that has led Raft for
SETTLE_S since it became master (its promotion and the clients' recovery come first) asks
pysyncobj to hand leadership to the most caught-up connected follower (Raft's TimeoutNow,
pysyncobj `transferLeadership`), and asks again at most every RETRY_S while it still
leads (the lab saw a master win back the election it handed off, once). A cluster with no
other voter connected has nowhere to hand it. The commit pause of a handoff is one election
among live nodes, which the guard's reserve horizon covers.
"""

from __future__ import annotations

from dataclasses import dataclass

SETTLE_S = 10.0  # after becoming master: the promotion and the clients' recovery first
# a denied request (the target not caught up) or an election the master won back is asked
# again this much later: each handoff that goes through costs an election
RETRY_S = 15.0


@dataclass
class LeaderHandoff:
    """When a master that leads Raft asks for the leadership to move."""

    settle_s: float = SETTLE_S
    retry_s: float = RETRY_S
    asked_at: float | None = None  # the last request
    asked: int = 0

    def due(self, master_since: float | None, leads: bool, peers_up: int, now: float) -> bool:
        """Whether to ask now: master for `settle_s` (`master_since` None: not master),
        leading Raft, another voter connected, and no request within `retry_s`."""
        if master_since is None or not leads or peers_up < 1 or now - master_since < self.settle_s:
            return False
        if self.asked_at is not None and now - self.asked_at < self.retry_s:
            return False
        self.asked_at, self.asked = now, self.asked + 1
        return True
