"""A promotion as a state machine: what a node does with ESP replay state on VRRP MASTER.

Rules: pure (no IO; time is the `now` each event brings, wall time only the `started` stamp).
The phases follow issues 4 and 16, in this order only (`TRANSITIONS`; any other move raises
`IllegalPhase` naming the phase and the move):
CLAIM: a CLAIM entry, retried by the driver until Raft commits it or the node stops being VRRP
  master; once applied here this node is the sender (every entry committed before it is
  applied too). Without it the promotion ends there: no writes, no activation, no marks, so
  no permits (a minority never sends);
XFRM: read every SA and write the targets (outbound jump, inbound replay state restored,
  `rules.plan_writes`); a failed read leaves counters behind, so it is tried again, up to
  PROMOTION_READS times;
ACTIVATE: charon's segments are activated (strongSwan ha_ctl.c `+N`), last, and then DONE.
The timing of each phase is kept in the `PromotionReport` for `hasync status`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum

from .records import KernelSa, SaKey, SeqRecord, Write, WriteResult
from .rules import Held, Reserve, plan_writes

PROMOTION_READS = 3  # a promotion reads the kernel again after an error, this many times
REPORTED_WRITE_ERRORS = 20  # a report keeps this many of the kernel's write refusals


@dataclass
class PromotionReport:
    """The last promotion, for `hasync status` (milliseconds, wall-clock start)."""

    started: float
    claimed: bool = False  # the claim committed: this node is the sender
    quorum: bool = False  # the same (the name the lab reads)
    epoch: int = 0  # the sender epoch the claim made
    claim_attempts: int = 0
    wait_ms: float = 0.0  # the claim: submitted until committed and applied here
    xfrm_ms: float = 0.0  # read replay state and write the targets
    read: str = ""  # how: "dump" (every SA) or "notices" (the last read and the SA notices
    #                 since, D273)
    changed: int = 0  # SAs the notices named since the last read ("notices" only)
    held_from: str = ""  # the claim's permits: "prepared" at the backup's tick, or "records"
    activate_ms: float = 0.0  # charon's segments activated
    inbound_ms: float = 0.0  # inbound replay state restored, after activation (D263)
    total_ms: float = 0.0
    sas: int = 0
    writes: int = 0
    max_jump: int = 0
    errors: list[str] = field(default_factory=list)
    done: bool = False
    # after the promotion, from its start: the new term's first marks submitted, accepted,
    # and granted by the fence (outbound traffic flows from then on; driver.py notes them)
    marks_ms: float | None = None
    accepted_ms: float | None = None
    granted_ms: float | None = None

    def note_term(self, ms: float, submitted: bool, accepted: bool, granted: bool) -> None:
        """What the new term has reached `ms` after the promotion started (first time only)."""
        if self.marks_ms is None and (submitted or accepted):
            self.marks_ms = ms
        if self.accepted_ms is None and accepted:
            self.accepted_ms = ms
        if self.granted_ms is None and granted:
            self.granted_ms = ms


class Phase(Enum):
    """Where a promotion stands."""

    CLAIM = "claim"  # waiting until this node's claim is committed and applied here
    XFRM = "xfrm"  # reading the kernel's SAs and writing their targets
    ACTIVATE = "activate"  # charon's segments are being activated
    DONE = "done"


TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.CLAIM: frozenset({Phase.XFRM, Phase.DONE}),
    Phase.XFRM: frozenset({Phase.ACTIVATE}),
    Phase.ACTIVATE: frozenset({Phase.DONE}),
    Phase.DONE: frozenset(),
}


class IllegalPhase(RuntimeError):
    """A promotion step out of order (a local bug)."""


class Promotion:
    """One promotion: events in (claimed, read, written, activated, each with `now`),
    decisions out (the writes, whether to read again), timings kept."""

    def __init__(self, reserve: Reserve, started: float, now: float,
                 reads: int = PROMOTION_READS) -> None:
        self.reserve, self.reads = reserve, reads
        self.report = PromotionReport(started=started)
        self.phase = Phase.CLAIM
        self.t0 = self.t_phase = now
        self.failed_reads = 0
        self._planned: tuple[int, list[Write]] | None = None

    def _move(self, to: Phase, now: float) -> float:
        """Enter `to`; the milliseconds spent in the phase left."""
        if to not in TRANSITIONS[self.phase]:
            raise IllegalPhase(f"promotion in phase {self.phase.value} cannot move to "
                               f"{to.value}")
        spent = round((now - self.t_phase) * 1000, 1)
        self.phase, self.t_phase = to, now
        return spent

    def _expect(self, phase: Phase, step: str) -> None:
        if self.phase is not phase:
            raise IllegalPhase(f"promotion in phase {self.phase.value} cannot {step}")

    def claim_done(self, epoch: int | None, attempts: int, now: float) -> None:
        """The claim was applied here at `epoch`, or given up (None: the role changed)."""
        rep = self.report
        rep.claim_attempts = attempts
        if epoch is None:
            rep.wait_ms = self._move(Phase.DONE, now)
            rep.total_ms = round((now - self.t0) * 1000, 1)
            rep.errors.append(f"claim not committed after {attempts} attempts: no "
                              "activation, nothing sent")
            return
        rep.wait_ms = self._move(Phase.XFRM, now)
        rep.claimed = rep.quorum = True
        rep.epoch = epoch

    def plan(self, sas: Iterable[KernelSa], records: Mapping[SaKey, SeqRecord],
             held: Mapping[SaKey, Held] | None = None,
             live: frozenset[SaKey] = frozenset(), vouched: int = 0) -> list[Write]:
        """The kernel was read: the writes that move every SA to its target (an SA the claim
        granted, `held`: to its permit's lo; one whose permit is in force, `live`, found
        below lo: past its hi); `vouched` more SAs are known to need none."""
        self._expect(Phase.XFRM, "plan writes")
        sas = list(sas)
        writes = plan_writes(sas, records, self.reserve, held=held, live=live)
        self._planned = (len(sas) + vouched, writes)
        return writes

    def written(self, result: WriteResult, now: float) -> None:
        """The planned writes went to the kernel (refusals are in `result`)."""
        self._expect(Phase.XFRM, "take a write result")
        if self._planned is None:
            raise IllegalPhase("promotion in phase xfrm cannot take a write result unplanned")
        n_sas, writes = self._planned
        rep = self.report
        rep.sas, rep.writes = n_sas, result.done
        rep.errors += result.errors[:REPORTED_WRITE_ERRORS]
        rep.max_jump = max((w.jump for w in writes), default=0)
        rep.xfrm_ms = self._move(Phase.ACTIVATE, now)

    def read_failed(self, error: str, now: float) -> bool:
        """A read (or its writes) failed; True to read again, False when out of reads."""
        self._expect(Phase.XFRM, "fail a read")
        self.failed_reads += 1
        self._planned = None
        self.report.errors.append(f"read {self.failed_reads} of {self.reads}: {error}")
        if self.failed_reads < self.reads:
            return True
        self.report.xfrm_ms = self._move(Phase.ACTIVATE, now)
        return False

    def activated(self, now: float) -> PromotionReport:
        """charon's segments were activated: the promotion is done."""
        self._expect(Phase.ACTIVATE, "activate charon")
        rep = self.report
        rep.activate_ms = self._move(Phase.DONE, now)
        rep.total_ms = round((now - self.t0) * 1000, 1)
        rep.done = True
        return rep
