"""What the guard's driver talks to and counts: the journal port, its loop counters and the
one-submission-at-a-time rule for marks (no IO here).

Rules: plain data and protocols; `MarkFlight` is pure; `committed_records` only copies the
journal's records under its lock; `prepare_claim` and `claimed_held` read the journal only
under it (D281).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from .entries import SeqEntry, SeqLog
from .records import SaKey, SeqRecord
from .rules import Held, Reserve, claim_marks, claim_terms

Callback = Callable[[Any, Any], None]  # pysyncobj's callback(result, error)


class JournalPort(Protocol):
    """What the guard uses of the cluster journal (`raft.ClusterJournal`)."""

    lock: threading.RLock
    seqs: SeqLog

    def submit_seq(self, entry: SeqEntry, callback: Callback) -> None:
        """Seal and replicate `entry`; `callback(result, error)` runs once it is applied here
        (result: `entries.ACCEPTED` or `entries.REJECTED`) or failed."""
        ...

    def claim(self, callback: Callback, grant: Reserve | None = None) -> None:
        """Replicate a CLAIM for this node (with `grant`, the reserve of its term's first
        marks, made by the claim itself); `callback(result, error)` gets the new epoch."""
        ...


@dataclass
class GuardStats:
    """Counters of the guard's loop (shown by `hasync status` under takeover.loop)."""

    ticks: int = 0
    submitted: int = 0
    committed: int = 0
    accepted: int = 0  # committed entries the journal accepted from this node as the sender
    rejected: int = 0  # committed but not accepted: another node's claim came first
    failed: int = 0
    commit_failed: dict[str, int] = field(default_factory=dict)  # FailReason name -> count
    submit_errors: int = 0  # entries that could not be sealed (logged with a traceback)
    answers_lost: int = 0  # submissions Raft never answered within the stall bound
    claim_failed: dict[str, int] = field(default_factory=dict)  # reason name or TIMEOUT
    deposed: int = 0  # times another node's claim ended this node's term
    revocations: int = 0  # revoke_all() done by the fence
    fence_preempted: int = 0  # a backup's fence chore cut short by a promotion (D263)
    prejumps: int = 0
    prejump_errors: int = 0
    jumps: int = 0  # a term's first-mark writes (master)
    fresh_reads: int = 0  # a master's first marks planned from its promotion's read
    kernel_errors: int = 0
    fence_errors: int = 0
    esn_stops: int = 0  # ESN permits emptied: the counter ran 2^30 past them (permits.py)
    last_error: str = ""
    read_ms: float = 0.0  # the last read's cost: dump, plan or journal (writes apart)
    write_ms: float = 0.0  # the last tick's writes
    read_max_ms: float = 0.0  # the largest of the last READS_KEPT
    master_gap_max_ms: float = 0.0  # the longest a master went between two reads (a stall)


def committed_records(journal: JournalPort) -> dict[SaKey, SeqRecord]:
    """The journal's SA records as committed and applied here (a copy, taken under its lock;
    `copy()`, not `dict()`: a read-only view copies through the mapping protocol, 19 times
    slower at 20,000 records)."""
    with journal.lock:
        return journal.seqs.records.copy()


class Prepared(NamedTuple):
    """A backup's claim made before the fault (D281): the permits its claim would hold
    (`rules.claim_marks` at `reserve`) of the records at `version` (`SeqLog.version`)."""

    version: int
    reserve: Reserve
    held: dict[SaKey, Held]


def prepare_claim(journal: JournalPort, reserve: Reserve) -> Prepared:
    """The permits a claim at `reserve` would hold now, with the records' version."""
    with journal.lock:
        records = journal.seqs.records.copy()  # first: a pending claim's marks change it
        version = journal.seqs.version
    marks = claim_marks(records, reserve)
    return Prepared(version, reserve, {k: Held(lo, hi, True) for k, (lo, hi) in marks.items()})


def claimed_held(journal: JournalPort, prepared: Prepared | None, node: str,
                 epoch: int) -> dict[SaKey, Held] | None:
    """The permits this node's claim at `epoch` holds, from `prepared` if that claim found
    the records at `prepared.version` and granted with the same terms (then its marks are the
    prepared ones: `claim_marks` is a pure function of both); None otherwise."""
    if prepared is None:
        return None
    with journal.lock:
        claimed = journal.seqs.claimed
    if claimed is None or (claimed.node, claimed.epoch, claimed.version) != (
            node, epoch, prepared.version):
        return None
    if claim_terms(claimed.grant) != claim_terms(prepared.reserve):
        return None
    return prepared.held


def count(counts: dict[str, int], name: str) -> None:
    counts[name] = counts.get(name, 0) + 1


def sa_name(key: SaKey) -> str:
    """An SA as `hasync status` names it: SPI in hex, then the destination."""
    return f"{key[1]:08x}@{key[0]}"


@dataclass
class MarkFlight:
    """Marks go one submission at a time: the records one read finds due go as entries of up
    to MAX_RECORDS; until the last of them commits or any of them fails, later reads still
    count overruns but submit nothing, so a renewal never races an older one. Answers carry
    the submission's number: a late answer to an earlier submission changes nothing. pysyncobj
    may never answer a command a follower forwarded if the message is lost and the leader does
    not change (pysyncobj/syncobj.py: `__commandsWaitingReply` is answered only by the leader
    or on a leader change), so a submission unanswered for `limit` seconds is given up
    (`expire`): the next read submits again (safe: marks only move forward, and a late accepted
    answer still grants only what its committed entry holds)."""

    open: bool = False
    number: int = 0
    since: float = 0.0  # when the open submission started

    def start(self, now: float = 0.0) -> int | None:
        """Open a submission; its number, or None while one is open."""
        if self.open:
            return None
        self.open, self.number, self.since = True, self.number + 1, now
        return self.number

    def expire(self, now: float, limit: float) -> bool:
        """Give up the open submission if unanswered for `limit` seconds; True if it was."""
        if self.open and now - self.since > limit:
            self.open = False
            return True
        return False

    def answered(self, number: int, ok: bool, last: bool) -> None:
        """Raft answered one entry of submission `number`."""
        if number == self.number and (last or not ok):
            self.open = False


@dataclass
class FenceTally:
    """The fence's drop counters as last read, and which SAs were dropping at that read."""

    fenced: dict[SaKey, int] = field(default_factory=dict)
    unknown: int = 0
    dropping: set[SaKey] = field(default_factory=set)

    def note(self, per_sa: dict[SaKey, int], unknown: int) -> tuple[list[SaKey], int]:
        """A new read: the SAs that started dropping since the last, and their new drops."""
        dropping, started, packets = set(), [], 0
        for key, n in per_sa.items():
            before = self.fenced.get(key, 0)
            if n > before:
                dropping.add(key)
                if key not in self.dropping:
                    started.append(key)
                    packets += n - before
            self.fenced[key] = n
        self.dropping, self.unknown = dropping, unknown
        return started, packets

    def forget(self, keys: set[SaKey]) -> None:
        """SAs gone from the kernel."""
        for key in keys:
            self.fenced.pop(key, None)
            self.dropping.discard(key)


__all__ = [
    "Callback",
    "FenceTally",
    "GuardStats",
    "JournalPort",
    "MarkFlight",
    "Prepared",
    "claimed_held",
    "committed_records",
    "count",
    "prepare_claim",
    "sa_name",
]
