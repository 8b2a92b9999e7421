"""The sequence guard's rules: journaled outbound marks and inbound replay state per ESP SA, and
the replay-state writes that keep a new master from ever reusing an outbound (SPI, seq).

Rules: pure (no IO, no clocks: `now` is monotonic seconds passed in); the argument that makes
the writes safe is docs/takeover.md, and every constant here is named there. In short:
- the master journals, per SA, a mark M ahead of its kernel's oseq by `Reserve.ahead(rate)`
  (rate: the SA's peak outbound rate over the last RATE_WINDOW_S) and renews it, through Raft,
  once fewer than half of that reserve is left; a kernel oseq past the node's own committed
  mark is counted as a violation (the assumption behind the bound failed);
- every other node keeps each SA's kernel oseq at M + `Reserve.takeover(rate)`, so whatever it
  sends once it holds the VIP, before its own first mark commits, lies above anything the old
  master can have sent, and M + takeover covers what a new master sends before it journals;
- inbound replay state (seq, bitmap) is journaled at least every `inbound_interval_s` while it
  moves and restored forward only, so packets the old master accepted stay rejected;
- a promotion without a Raft majority adds `no_quorum` to every target;
- counters only move forward; a non-ESN target past 2^32 - 1 is clamped there, which stops the
  SA (the kernel refuses to wrap) instead of reusing a number.
The kernel semantics are torvalds/linux net/xfrm/xfrm_replay.c (xfrm_replay_overflow*: the
next packet carries oseq + 1).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import pairwise

from .records import U32_MAX, U64_MAX, KernelSa, SaKey, SeqRecord, Write

RATE_WINDOW_S = 3.0  # peak rate over this window sizes the reserve
RACE_MARGIN = 64  # an outbound write lands at least this far past the oseq just read
RACE_S = 0.1  # and at least this long at the journaled rate (NEWAE is not compare-and-set)
PRUNE_AFTER_S = 60.0  # a record whose SA left the master's kernel this long ago is dropped
READS_KEPT = 8  # reserves stretch for the longest of this many recent intervals between reads


@dataclass(frozen=True, slots=True)
class Reserve:
    """How far ahead marks and takeover targets lie (docs/takeover.md derives each value)."""

    floor: int = 768  # packets: mark ahead of oseq at least this much
    horizon_s: float = 0.8  # and at least this long at the SA's peak rate
    takeover_floor: int = 576  # a backup's target lies this far past the mark at least
    takeover_horizon_s: float = 1.0  # and at least this long at the journaled rate
    no_quorum: int = 1 << 22  # added to every target of a promotion without a majority
    inbound_interval_s: float = 5.0  # journal moving inbound state at least this often

    def ahead(self, rate: float, stretch_s: float = 0.0) -> int:
        """How far ahead of the kernel's oseq the master puts its mark; `stretch_s` more time
        at `rate` when its reads come slower than the nominal tick (`stretch()`)."""
        return max(self.floor, math.ceil(rate * (self.horizon_s + stretch_s)))

    def takeover(self, rate: float, stretch_s: float = 0.0) -> int:
        """How far past the journaled mark a new master starts; `stretch_s` more time at `rate`
        when this node's reads lag (`stretch()`)."""
        return max(self.takeover_floor, math.ceil(rate * (self.takeover_horizon_s + stretch_s)))

    def bound(self, rate: float, ahead_stretch_s: float = 0.0,
              takeover_stretch_s: float = 0.0) -> int:
        """The most a failover can skip on an SA at `rate`: ahead + takeover."""
        return self.ahead(rate, ahead_stretch_s) + self.takeover(rate, takeover_stretch_s)


def stretch(interval_s: float, tick_s: float) -> float:
    """How much longer a reserve must last when reads come every `interval_s` instead of every
    `tick_s`: twice the excess, since a renewal is due once half the reserve is used
    (docs/takeover.md, Slow reads)."""
    return 2.0 * max(0.0, round(interval_s - tick_s, 3))  # whole ms: no float noise


class RateMeter:
    """Peak rate of one counter over the last RATE_WINDOW_S (samples from successive ticks)."""

    __slots__ = ("samples",)

    def __init__(self) -> None:
        self.samples: deque[tuple[float, int]] = deque()

    def update(self, now: float, value: int) -> float:
        """Add a sample; return the peak rate between successive samples in the window."""
        samples = self.samples
        if samples and value < samples[-1][1]:
            samples.clear()  # the counter was reset (a new SA under the same key)
        samples.append((now, value))
        while len(samples) > 2 and now - samples[1][0] > RATE_WINDOW_S:
            samples.popleft()
        if samples[0][1] == value:
            return 0.0  # the counter did not move over the window: every step is 0
        peak = 0.0
        for (t0, v0), (t1, v1) in pairwise(samples):
            if t1 > t0:
                peak = max(peak, (v1 - v0) / (t1 - t0))
        return peak


@dataclass
class TrackerStats:
    """What the master's tracker has done since it started (shown by `hasync status`)."""

    renewals: int = 0
    inbound_updates: int = 0
    violations: int = 0
    max_overrun: int = 0  # the largest oseq - own committed mark seen (0 if never)
    tracked: int = 0
    read_interval_ms: float = 0.0  # the longest of the last READS_KEPT intervals between reads
    stretch_ms: float = 0.0  # how much longer marks reach for it (`stretch()`)


@dataclass
class SeqTracker:
    """The master's side: decides which SA records to journal next (one tick at a time)."""

    node: str
    reserve: Reserve = field(default_factory=Reserve)
    tick_s: float = 0.1  # the nominal interval between reads (config: takeover.tick_ms)
    # wall time this node last became master: its own marks from before (an earlier term,
    # left behind by the guard's pre-jump while it was backup) are no promise it broke
    master_since: float = 0.0
    meters: dict[SaKey, RateMeter] = field(default_factory=dict)
    inbound_at: dict[SaKey, float] = field(default_factory=dict)
    lineage: dict[tuple[int, str], tuple[float, float]] = field(default_factory=dict)
    stats: TrackerStats = field(default_factory=TrackerStats)
    intervals: deque[float] = field(default_factory=lambda: deque(maxlen=READS_KEPT))
    last_read: float | None = None

    def restart(self) -> None:
        """Forget the read intervals: a node becoming master reads afresh (the gap since its
        last term is no interval between reads)."""
        self.intervals.clear()
        self.last_read = None

    def _stretch(self, now: float) -> float:
        """Note a read at `now`; the stretch its marks need for the recent intervals."""
        if self.last_read is not None and now > self.last_read:
            self.intervals.append(now - self.last_read)
        self.last_read = now
        longest = max(self.intervals, default=0.0)
        self.stats.read_interval_ms = round(longest * 1000, 1)
        extra = stretch(longest, self.tick_s)
        self.stats.stretch_ms = round(extra * 1000, 1)
        return extra

    def observe(self, sas: Iterable[KernelSa], committed: Mapping[SaKey, SeqRecord],
                now: float, wall: float) -> tuple[list[SeqRecord], list[SaKey]]:
        """Records to journal now, and keys to forget (SAs long gone from the kernel)."""
        out: list[SeqRecord] = []
        seen: set[SaKey] = set()
        extra = self._stretch(now)
        for sa in sas:
            seen.add(sa.key)
            rate = self._rate(sa, now)
            rec = self._one(sa, committed.get(sa.key), rate, now, wall, extra)
            if rec is not None:
                out.append(rec)
        for key in [k for k in self.meters if k not in seen]:
            del self.meters[key]
            self.inbound_at.pop(key, None)
        for lin in [k for k, (t, _) in self.lineage.items() if now - t > 2 * RATE_WINDOW_S]:
            del self.lineage[lin]
        gone = [k for k, r in committed.items() if k not in seen and wall - r.ts > PRUNE_AFTER_S]
        self.stats.tracked = len(seen)
        return out, gone

    def submitted(self, records: Iterable[SeqRecord], now: float) -> None:
        """Note records handed to the journal (observe() returned them)."""
        for rec in records:
            self.stats.renewals += 1
            if rec.seq:
                self.stats.inbound_updates += 1
                self.inbound_at[rec.key] = now

    def _rate(self, sa: KernelSa, now: float) -> float:
        """The SA's peak rate; a new SA starts from its predecessor's (same reqid and peer),
        since a rekeyed CHILD_SA carries the old one's traffic from its first packet."""
        rate = self.meters.setdefault(sa.key, RateMeter()).update(now, sa.oseq)
        lineage = (sa.reqid, sa.key[0])
        t, inherited = self.lineage.get(lineage, (now, 0.0))
        if now - t > RATE_WINDOW_S:
            inherited = 0.0
        if sa.reqid:
            self.lineage[lineage] = (now, rate) if rate >= inherited else (t, inherited)
        return max(rate, inherited)

    def _one(self, sa: KernelSa, rec: SeqRecord | None, rate: float, now: float,
             wall: float, extra: float = 0.0) -> SeqRecord | None:
        """The record to journal for one SA, or None if the committed one still holds."""
        ahead = self.reserve.ahead(rate, extra)
        own = rec is not None and rec.node == self.node
        if own and rec is not None and sa.oseq > rec.mark and rec.ts >= self.master_since:
            self.stats.violations += 1
            self.stats.max_overrun = max(self.stats.max_overrun, sa.oseq - rec.mark)
        out_due = sa.oseq > 0 and (not own or rec is None or rec.mark - sa.oseq < ahead // 2)
        in_due = sa.seq > 0 and (rec is None or (sa.seq > rec.seq and (
            sa.seq - rec.seq >= ahead // 2
            or now - self.inbound_at.get(sa.key, -math.inf) >= self.reserve.inbound_interval_s)))
        if rec is None and sa.oseq == 0 and sa.seq == 0:
            out_due = True  # journal every SA at once: its rate and its existence
        if not (out_due or in_due):
            return None
        mark = rec.mark if own and rec is not None else 0
        if out_due:
            mark = max(mark, sa.oseq + ahead)
        seq, bitmap = (sa.seq, sa.bitmap) if rec is None or sa.seq >= rec.seq else (
            rec.seq, rec.bitmap)
        return SeqRecord(sa.key, mark, seq, bitmap, round(rate, 1), self.node, wall)


def _fit(bitmap: tuple[int, ...], sa: KernelSa) -> tuple[int, ...]:
    """A journaled bitmap shaped like the kernel SA's (zeros if the shapes differ)."""
    if len(bitmap) == len(sa.bitmap):
        return bitmap
    return (0,) * len(sa.bitmap)


def target_oseq(sa: KernelSa, rec: SeqRecord | None, reserve: Reserve, extra: int = 0,
                stretch_s: float = 0.0) -> int:
    """The outbound counter a non-master keeps (and a new master starts from) for `sa`."""
    mark, rate = (rec.mark, rec.rate) if rec is not None else (0, 0.0)
    target = mark + reserve.takeover(rate, stretch_s) + extra
    return min(target, U64_MAX if sa.esn else U32_MAX)


def plan_writes(sas: Iterable[KernelSa], records: Mapping[SaKey, SeqRecord],
                reserve: Reserve, extra: int = 0, stretch_s: float = 0.0,
                inbound: bool = True) -> list[Write]:
    """Writes that move every SA's counters up to the journal's targets; never down. Those
    that move an outbound counter come first; without `inbound`, only those (a write still
    carries the journaled inbound state of its SA: a backup's steady state)."""
    writes = []
    for sa in sas:
        rec = records.get(sa.key)
        oseq = max(sa.oseq, target_oseq(sa, rec, reserve, extra, stretch_s))
        if oseq > sa.oseq:  # the kernel may send between our read and this write
            margin = max(RACE_MARGIN, math.ceil((rec.rate if rec else 0.0) * RACE_S))
            oseq = min(max(oseq, sa.oseq + margin), U64_MAX if sa.esn else U32_MAX)
        seq, bitmap = sa.seq, sa.bitmap
        if rec is not None and rec.seq > sa.seq:
            seq, bitmap = rec.seq, _fit(rec.bitmap, sa)
        if oseq != sa.oseq or (inbound and seq != sa.seq):
            writes.append(Write(sa, oseq, seq, bitmap))
    writes.sort(key=lambda w: w.oseq == w.sa.oseq)  # stable: outbound moves first
    return writes
