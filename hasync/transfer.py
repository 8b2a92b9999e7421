"""The Raft side of a leadership handoff: pysyncobj's transfer, tried at each tick, with this
node's own proposals held meanwhile (D248).

Rules:
- When to ask is the node core's choice (handoff.py, pure); `LeaderTransfer` carries a request
  out. pysyncobj's `transferLeadership` touches Raft's state, so only `tick` calls it, and the
  journal calls `tick` from its on-tick callback, on pysyncobj's tick thread.
- While a handoff runs, this node's own proposals are held and then released in order: at
  HANDOFF_TRY_S at most, and never for good (a try that raises ends the handoff as ERROR and
  releases them before the error reaches the journal, which counts it as `status_error`).
- Threads: `ask`, `propose` and `drop` run on any thread (the loop, the guard), `tick` on the
  tick thread. `_held` and `_hand_off_until` change only under `_held_lock`; a proposal is
  enqueued under it too, so the released ones go before any newer one.
- Counted through the journal's `bump` (under its lock, `hasync status` "raft_apply"):
  `leader_handoff:<reason>` once per handoff, `leader_handoff_tries` per denied try.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from .syncobj_compat import FailReason, SyncObj, outcome

# A leadership handoff runs this long at most, this node's proposals held meanwhile
# (_try_hand_off): about an election's length (RaftTiming.election_max_s), which the handoff
# costs anyway and the guard's reserve covers; one that goes through takes milliseconds
HANDOFF_TRY_S = 1.5
Callback = Callable[[Any, Any], None]
# the journal's proposer (syncobj_compat.SyncObj.proposer): ((kind, sealed), callback)
Enqueue = Callable[[tuple[int, bytes], Callback], None]


class LeaderTransfer:
    """Hands the Raft leadership to another voter from the tick thread, holding proposals."""

    def __init__(self, raft: SyncObj, enqueue: Enqueue, bump: Callable[[str], None]) -> None:
        self._raft = raft  # transferLeadership: tick thread only
        self._enqueue = enqueue
        self._bump = bump  # adds one to a journal counter, under the journal's lock
        self._hand_off = False  # asked by the loop, done on Raft's thread (handoff.py)
        self._hand_off_until: float | None = None  # tried at each tick until then
        self._held: list[tuple[int, bytes, Callback]] = []  # proposals held meanwhile
        self._held_lock = threading.Lock()  # _held and _hand_off_until
        self._hand_off_sent = False  # TimeoutNow went: wait to step down

    def ask(self) -> None:
        """Start a handoff at the next tick (any thread)."""
        self._hand_off = True

    def propose(self, kind: int, sealed: bytes, callback: Callback) -> None:
        """Replicate sealed bytes, or hold them while a handoff is being tried (any thread)."""
        with self._held_lock:
            if self._hand_off_until is not None:  # a handoff is being tried: hold (in order)
                self._held.append((kind, sealed, callback))
                return
            self._enqueue((kind, sealed), callback)

    def drop(self) -> None:
        """Fail every held proposal with MISSING_LEADER (the journal is being destroyed)."""
        with self._held_lock:
            held, self._held = self._held, []
        for _, _, callback in held:
            callback(None, int(FailReason.MISSING_LEADER))

    def tick(self, status: dict[str, Any]) -> None:
        """Start an asked handoff, or take a step of a running one (tick thread)."""
        if self._hand_off:
            self._hand_off = False
            with self._held_lock:
                self._hand_off_until = time.monotonic() + HANDOFF_TRY_S
        if self._hand_off_until is not None:
            try:
                self._try_hand_off(status, time.monotonic())
            except Exception:
                self._end_hand_off("ERROR")  # never hold this node's proposals for good
                raise

    def _try_hand_off(self, status: dict[str, Any], now: float) -> None:
        """One step of a handoff (Raft's thread). pysyncobj denies a transfer while the best
        follower lacks the leader's last entry (transferLeadership), which under a steady
        stream is every tick, and the target then loses its election if the leader appended
        more meanwhile. So while a handoff runs, this node holds its own proposals (the
        master's batches and marks: most of the stream); a denied try is tried again at the
        next tick; after TimeoutNow went, the hold lasts until this node is no longer the
        leader. At HANDOFF_TRY_S at most, the held proposals go, in order. Counted once as
        `leader_handoff:<reason>` (SUCCESS: it stepped down; KEPT: it still leads), the
        denied tries as `leader_handoff_tries`."""
        until = self._hand_off_until or now
        if self._hand_off_sent:
            stepped_down = status.get("state") != 2  # pysyncobj _RAFT_STATE.LEADER
            if stepped_down or now >= until:
                self._end_hand_off("SUCCESS" if stepped_down else "KEPT")
            return
        answer: list[Any] = []
        self._raft.transferLeadership(callback=lambda result, error: answer.append(error))
        reason = outcome(answer[0]) if answer else FailReason.UNKNOWN_OUTCOME
        if reason is FailReason.SUCCESS:
            self._hand_off_sent = True  # TimeoutNow is on its way: hold until we step down
        elif reason is FailReason.REQUEST_DENIED and now < until:
            self._bump("leader_handoff_tries")
        else:
            self._end_hand_off(reason.name)

    def _end_hand_off(self, result: str) -> None:
        """Release the held proposals, in order, and count the handoff's outcome."""
        with self._held_lock:
            self._hand_off_until, self._hand_off_sent = None, False
            held, self._held = self._held, []
            for kind, sealed, callback in held:  # under the lock: before any newer one
                self._enqueue((kind, sealed), callback)
        self._bump(f"leader_handoff:{result}")
