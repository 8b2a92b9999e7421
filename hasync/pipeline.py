"""The master's submit pipeline: charon's journaled datagrams into numbered batches, several
in flight at once, each applied exactly once and in charon's order.

Rules: pure (time is an argument, no IO). Batches are numbered 1, 2, ... within a stream (a
u64 the adapter seeds from the wall clock, so a restarted daemon's stream is newer); every
node's apply machine applies a batch only if it is the next of its origin's stream and
answers the submitter with the next number it expects (journal/machine.py `order`). So a
leader change that loses batch k while k+1 commits cannot reorder charon's stream: k+1 is
refused (a gap), and the pipeline rewinds. Rewinding waits until every batch in flight is
answered, then resends the unapplied ones oldest first, one at a time, and opens the window
again once they are in; a batch applied twice (its first copy committed after all) is a
duplicate the machines skip. A stream the machines no longer follow (another process of
this node started a newer one, or a batch was dropped) is renumbered into a newer stream.
At most `window` batches are in flight; `max_backlog` datagrams wait at most (mirror.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .journal.machine import APPLIED, DUPLICATE, GAP, OTHER_STREAM
from .journal.seal import U64_MAX
from .mirror import MAX_BACKLOG


@dataclass
class Flight:
    """One numbered batch: its datagrams, and whether an answer for it is awaited."""

    seq: int
    items: list[bytes]
    awaited: bool = True


@dataclass
class Pipeline:
    """Batches due: full, or `max_delay` after their first datagram; up to `window` at once."""

    max_messages: int = 256
    max_delay: float = 0.005
    window: int = 4
    stream: int = 0
    max_backlog: int = MAX_BACKLOG
    pending: list[bytes] = field(default_factory=list)
    first_at: float | None = None
    flights: list[Flight] = field(default_factory=list)  # sent, not known applied; by seq
    next_seq: int = 1
    rewinding: bool = False  # a batch was not applied: resend the rest one at a time
    renumber_past: int | None = None  # move to a stream newer than this before resending
    retry_at: float | None = None

    def add(self, raw: bytes, now: float) -> bool:
        """Queue one datagram; False (not queued) once `max_backlog` are waiting."""
        # a flight holds at most max_messages: the exact count only near the bound
        if (len(self.pending) + len(self.flights) * self.max_messages >= self.max_backlog
                and self.backlog >= self.max_backlog):
            return False
        if not self.pending:
            self.first_at = now
        self.pending.append(raw)
        return True

    def next_batch(self, now: float) -> Flight | None:
        """The batch to submit now, if one is due and the window has room."""
        if self.rewinding:
            return self._resend(now)
        if not self.pending or self.first_at is None or self.awaited >= self.window:
            return None
        if len(self.pending) < self.max_messages and now - self.first_at < self.max_delay:
            return None
        items = self.pending[:self.max_messages]
        self.pending = self.pending[self.max_messages:]
        self.first_at = now if self.pending else None
        flight = Flight(self.next_seq, items)
        self.next_seq += 1
        self.flights.append(flight)
        return flight

    def _resend(self, now: float) -> Flight | None:
        """While rewinding: once all is answered, the oldest unapplied batch, alone."""
        if self.awaited or (self.retry_at is not None and now < self.retry_at):
            return None
        self.retry_at = None
        if self.renumber_past is not None:
            self._renumber(self.renumber_past)
        if not self.flights:
            self.rewinding = False
            return self.next_batch(now)
        self.flights[0].awaited = True
        return self.flights[0]

    def _renumber(self, past: int) -> None:
        """Move the unapplied batches to a stream newer than `past` and ours, from 1."""
        self.stream = (max(self.stream, past) + 1) & U64_MAX
        for seq, flight in enumerate(self.flights, start=1):
            flight.seq = seq
        self.next_seq = len(self.flights) + 1
        self.renumber_past = None

    def answered(self, seq: int, result: object, now: float,
                 backoff: float = 0.2) -> list[Flight]:
        """A batch's outcome: its machine's answer (code, number) or None if Raft failed it;
        returns the batches this answer shows applied (dropped from the flights)."""
        flight = next((f for f in self.flights if f.seq == seq and f.awaited), None)
        if flight is None:
            return []  # answered before, or renumbered since
        flight.awaited = False
        code, number = result if isinstance(result, tuple) and len(result) == 2 else (None, 0)
        if code in (APPLIED, DUPLICATE, GAP) and isinstance(number, int):
            done = [f for f in self.flights if f.seq < number]
            self.flights = [f for f in self.flights if f.seq >= number]
            if code == GAP:
                self.rewinding = True
            return done
        self.rewinding = True
        if code == OTHER_STREAM and isinstance(number, int):
            self.renumber_past = max(number, self.renumber_past or 0)
        else:  # Raft did not commit it (no leader, leader changed): back off a little
            self.retry_at = now + backoff
        return []

    def dropped(self, seq: int) -> list[bytes]:
        """Forget a batch that could not be sealed; the rest move to a newer stream (the
        machines would wait for it forever). Returns its datagrams."""
        flight = next((f for f in self.flights if f.seq == seq), None)
        if flight is None:
            return []
        self.flights.remove(flight)
        self.rewinding = True
        self.renumber_past = max(self.stream, self.renumber_past or 0)
        return flight.items

    def wake_at(self) -> float | None:
        """When next_batch may next return something, if known."""
        if self.rewinding:
            return self.retry_at if not self.awaited else None
        if self.pending and self.first_at is not None and self.awaited < self.window:
            return self.first_at + self.max_delay
        return None

    @property
    def awaited(self) -> int:
        """Batches in flight whose answer has not come."""
        return sum(f.awaited for f in self.flights)

    @property
    def backlog(self) -> int:
        """Datagrams not yet known applied."""
        return len(self.pending) + sum(len(f.items) for f in self.flights)
