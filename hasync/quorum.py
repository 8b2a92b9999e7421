"""Has this node heard a Raft majority lately? Measured, not guessed: a periodic probe.

Rules: sans-IO (time is `now`, monotonic seconds, passed in). Every node commits a probe (an
empty Raft entry: `ClusterJournal.barrier`) every `limit_s / 8`, whether or not earlier ones
were answered: a probe forwarded to a leader that has just died stays pending until pysyncobj
gives it up, and waiting for it would turn every election into a lost majority. Its success
means a majority stored an entry this node asked for, through whoever leads. A probe without an
answer for `limit_s` is given up (a leader cut off from its majority never answers: pysyncobj
keeps the entry pending until it loses leadership). Answers carry the probe's number, so a late
answer to an older probe counts only as what it is: proof of contact when it was sent. The age
since the last success, past `limit_s`, is a health reason (docs/takeover.md, The faults: a node
that cannot commit must give up the VIP). After an election of E seconds the age peaks near
E + limit/4 + two commits, hence config.py's bound on `limit_s` (D206).
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
    last_sent: float | None = None
    outstanding: dict[int, float] = field(default_factory=dict)  # number -> sent at
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def interval_s(self) -> float:
        """How often a probe goes out."""
        return self.limit_s / 8

    def due(self, now: float) -> bool:
        """Whether to send a probe now: `interval_s` after the last one, answered or not (the
        unanswered ones older than `limit_s` are given up)."""
        for number, sent in list(self.outstanding.items()):
            if now - sent >= self.limit_s:
                self._count("probes_given_up")
                del self.outstanding[number]
        return self.last_sent is None or now - self.last_sent >= self.interval_s

    def sent(self, now: float) -> int:
        """A probe went out at `now`; its number."""
        self.number += 1
        self.outstanding[self.number] = self.last_sent = now
        self._count("probes_sent")
        return self.number

    def answered(self, number: int, ok: bool, sent_at: float) -> None:
        """Raft answered probe `number`, sent at `sent_at`."""
        self.outstanding.pop(number, None)
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
