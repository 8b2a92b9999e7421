"""The Raft side of a leadership handoff: hold this node's proposals while the leadership
moves (D248; the policy of when to ask is handoff.py).

Rules:
- pysyncobj's `transferLeadership` is denied while the best follower lacks the leader's last
  entry (pysyncobj/syncobj.py, SyncObj.transferLeadership), which under a steady stream is every
  tick, and a target that got TimeoutNow loses its election if the leader appended meanwhile.
  So while a handoff runs this node's proposals are held, in order; a denied try is tried again
  at the next tick; after TimeoutNow the hold lasts until this node no longer leads, at most
  HANDOFF_TRY_S. Then the held proposals go, oldest first, before any newer one.
- Threads: `ask`, `propose` and `drop` run on any thread; `tick` runs on pysyncobj's tick
  thread only (transferLeadership touches Raft's state). `_lock` guards the held proposals and
  the deadline; a release enqueues under it, so a newer proposal cannot overtake.
- A step that raises ends the handoff and releases what it held, then re-raises (the journal
  counts it): proposals are never held for good.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from .syncobj_compat import FailReason, outcome

# A handoff runs this long at most: about an election's length (RaftTiming.election_max_s),
# which the handoff costs anyway and the guard's reserve covers; one that goes through takes
# milliseconds
HANDOFF_TRY_S = 1.5
LEADER = 2  # pysyncobj _RAFT_STATE.LEADER, as getStatus() reports it under "state"
Callback = Callable[[Any, Any], None]
Enqueue = Callable[[tuple[Any, ...], Callback], None]


class LeadershipTransfer:
    """Hands the Raft leadership off and holds this node's proposals while it does."""

    def __init__(self, raft: Any, enqueue: Enqueue, bump: Callable[[str], None]) -> None:
        self._raft = raft  # the SyncObj: transferLeadership
        self._enqueue = enqueue  # syncobj_compat.SyncObj.proposer
        self._bump = bump  # counts a name in the journal's counters (under its lock)
        self._asked = False  # set by the loop, taken by the tick thread
        self._until: float | None = None  # a handoff runs until then
        self._sent = False  # TimeoutNow went: wait to step down
        self._held: list[tuple[int, bytes, Callback]] = []
        self._lock = threading.Lock()  # _held and _until

    def ask(self) -> None:
        """Start a handoff at the next tick (any thread)."""
        self._asked = True

    def propose(self, kind: int, sealed: bytes, callback: Callback) -> None:
        """Enqueue a sealed entry, or hold it while a handoff runs (any thread)."""
        with self._lock:
            if self._until is not None:
                self._held.append((kind, sealed, callback))
                return
            self._enqueue((kind, sealed), callback)

    def drop(self) -> list[Callback]:
        """Forget what is held (the journal is being destroyed); their callbacks, to fail."""
        with self._lock:
            held, self._held = self._held, []
        return [callback for _, _, callback in held]

    def tick(self, now: float, status: dict[str, Any]) -> None:
        """Start an asked handoff and take its next step (Raft's thread)."""
        if self._asked:
            self._asked = False
            with self._lock:
                self._until = now + HANDOFF_TRY_S
        if self._until is None:
            return
        try:
            self._step(now, status)
        except Exception:
            self._end("ERROR")  # never hold this node's proposals for good
            raise

    def _step(self, now: float, status: dict[str, Any]) -> None:
        """One try. Counted once as `leader_handoff:<reason>` (SUCCESS: it stepped down; KEPT:
        it still leads), the denied tries as `leader_handoff_tries`."""
        until = self._until or now
        if self._sent:
            stepped_down = status.get("state") != LEADER
            if stepped_down or now >= until:
                self._end("SUCCESS" if stepped_down else "KEPT")
            return
        answer: list[Any] = []
        self._raft.transferLeadership(callback=lambda result, error: answer.append(error))
        reason = outcome(answer[0]) if answer else FailReason.UNKNOWN_OUTCOME
        if reason is FailReason.SUCCESS:
            self._sent = True  # TimeoutNow is on its way: hold until we step down
        elif reason is FailReason.REQUEST_DENIED and now < until:
            self._bump("leader_handoff_tries")
        else:
            self._end(reason.name)

    def _end(self, result: str) -> None:
        """Release the held proposals, in order, and count the handoff's outcome."""
        with self._lock:
            self._until, self._sent = None, False
            held, self._held = self._held, []
            for kind, sealed, callback in held:  # under the lock: before any newer one
                self._enqueue((kind, sealed), callback)
        self._bump(f"leader_handoff:{result}")
