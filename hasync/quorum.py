"""Has this node heard a Raft majority lately? Measured, not guessed: a periodic probe.

Rules: sans-IO (time is `now`, monotonic seconds, passed in). Every node commits a probe (an
empty Raft entry: `ClusterJournal.barrier`) every `limit_s / 4`, one at a time; its success
means a majority stored an entry this node asked for, through whoever leads. A probe without an
answer for `limit_s` is given up and the next one goes out (a leader cut off from its majority
never answers: pysyncobj keeps the entry pending until it loses leadership). Answers carry the
probe's number, so a late answer to an older probe counts only as what it is: proof of contact
when it was sent. The age since the last success, past `limit_s`, is a health reason
(docs/takeover.md, The faults: a node that cannot commit must give up the VIP).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class QuorumProbe:
    """The probe's state; `started` is when the node started (the first age counts from it)."""

    limit_s: float
    started: float
    last_ok: float | None = None  # send time of the latest probe that committed
    number: int = 0
    outstanding: tuple[int, float] | None = None  # (number, sent at)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def interval_s(self) -> float:
        """How often a probe goes out."""
        return self.limit_s / 4

    def due(self, now: float) -> bool:
        """Whether to send a probe now (none outstanding, or the outstanding one given up)."""
        if self.outstanding is not None:
            _, sent = self.outstanding
            if now - sent < self.limit_s:
                return False
            self._count("probes_given_up")
            self.outstanding = None
        last = self.last_ok if self.last_ok is not None else -float("inf")
        return now - last >= self.interval_s

    def sent(self, now: float) -> int:
        """A probe went out at `now`; its number."""
        self.number += 1
        self.outstanding = (self.number, now)
        self._count("probes_sent")
        return self.number

    def answered(self, number: int, ok: bool, sent_at: float) -> None:
        """Raft answered probe `number`, sent at `sent_at`."""
        if self.outstanding is not None and self.outstanding[0] == number:
            self.outstanding = None
        self._count("probes_ok" if ok else "probes_failed")
        if ok and (self.last_ok is None or sent_at > self.last_ok):
            self.last_ok = sent_at

    def age(self, now: float) -> float:
        """Seconds since the last probe that committed was sent (or since start)."""
        return now - (self.last_ok if self.last_ok is not None else self.started)

    def reason(self, now: float) -> str | None:
        """The health reason, or None while a majority was heard within the limit."""
        age = self.age(now)
        if age <= self.limit_s:
            return None
        return f"no Raft majority for {age:.1f} s (limit {self.limit_s:.1f} s)"

    def status(self, now: float) -> dict[str, object]:
        """The "quorum" part of `hasync status`."""
        return {"age_s": round(self.age(now), 2), "limit_s": self.limit_s,
                "ok": self.reason(now) is None, **self.counts}

    def _count(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1
