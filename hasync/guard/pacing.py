"""When the sequence guard reads the kernel, and how long it rests (docs/takeover.md, Slow
reads).

Rules: pure (time is the `now` passed in). A master reads every tick; a non-master reads when a
mark moved or an SA came since its last read, and at least every `BackupPace.full_s`. After a
read that cost d (its writes apart) the loop rests REST_K x d, so reads take at most
1 / (1 + REST_K) of a CPU.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .rules import READS_KEPT

REST_K = 3.0  # after a read that took d, the guard rests REST_K x d: at most a quarter CPU
BACKUP_SEQ_TICK_S = 1.0  # a backup's guard tick when no mark arrives (marks wake it at once)


@dataclass
class BackupPace:
    """When a non-master's guard reads the kernel without being woken by a moved mark: when
    a mark moved or an SA came (journal or charon) since its last read, and at least every
    `full_s`, which catches what a missed wake-up left behind. A read costs a dump of every
    SA; only outbound moves are written (inbound state waits for the promotion)."""

    full_s: float = 10.0
    stamp: tuple[int, int] | None = None
    last: float | None = None

    def due(self, stamp: tuple[int, int], now: float) -> bool:
        """Whether to read now; (entries that moved a mark, CHILD_SAs mirrored) is `stamp`."""
        if stamp != self.stamp or self.last is None or now - self.last >= self.full_s:
            self.stamp, self.last = stamp, now
            return True
        return False


class ReadCosts:
    """The cost of the last READS_KEPT reads (without their writes) and of their writes."""

    def __init__(self, tick_s: float) -> None:
        self.tick_s = tick_s
        self.reads: deque[float] = deque(maxlen=READS_KEPT)
        self.writes: deque[float] = deque(maxlen=READS_KEPT)

    def note(self, read_s: float, write_s: float) -> None:
        """One tick: its read (dump, plan or journal) took `read_s`, its writes `write_s`."""
        self.reads.append(read_s)
        self.writes.append(write_s)

    def rest_s(self) -> float:
        """How long the loop rests after the last read, so reads take at most 1 / (1 + REST_K)
        of a CPU. Writes do not count: they are what the journal asks, not a repeated cost,
        and a rest after them would hold back the next marks."""
        return REST_K * self.reads[-1] if self.reads else 0.0
