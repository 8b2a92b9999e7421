"""The sequence guard's rules: journaled outbound marks and inbound replay state per ESP SA, the
send permits they become, and the replay-state writes that keep a new master from ever reusing
an outbound (SPI, seq).

Rules: pure (no IO, no clocks: `now` is monotonic seconds passed in); docs/takeover.md is the
argument. In short:
- only the sender (journal `SeqLog.sender`, made by a CLAIM) journals marks, and the kernel's
  fence (hasync/fence) lets an SA's packets out only in (lo, mark] of a mark Raft committed and
  the journal accepted from this node in its current epoch: nothing above an accepted mark ever
  reaches the wire, whatever the rate or the network. Safety needs no bound on traffic;
- the master's first mark of a term for an SA (no record accepted in its epoch) starts past
  the target: it writes the kernel counter up to `target_oseq` (journaled mark + 1 +
  `takeover_floor`, or 0 without a record) if below, and asks for (base, base + ahead] with
  base = max(read oseq, target). A write that lands behind the counter is harmless: numbers
  above this node's permits were dropped by the fence, never sent;
- it renews a mark, through Raft, once fewer than half of `Reserve.ahead(rate)` is left (rate:
  the SA's peak outbound rate over the last RATE_WINDOW_S, a rekeyed SA starting from its
  predecessor's). The reserve only sizes how rarely the fence drops, never safety. The growth
  it assumes: a renewal is asked at the first read that finds less than ahead / 2 left and
  lands one commit later, so nothing is fenced while an SA sends at most ahead / 2 packets in
  (read interval + commit latency), i.e. while its rate stays within
  max(floor, peak x horizon_s) / (2 x (tick + commit)): x2 the peak over RATE_WINDOW_S at the
  defaults (0.8 s horizon, 0.1 s tick, commits within 0.1 s), and from idle up to 1,920
  packets/s (768 / 0.4 s). Slower reads stretch the reserve (`stretch()`). A faster step is
  fenced until the next renewal commits (counted per SA, `hasync status` takeover.fence);
- every other node keeps each SA's kernel oseq at its target (a backup's pre-jump), so a
  promotion writes little;
- inbound replay state (seq, bitmap) is journaled at least every `inbound_interval_s` while it
  moves and restored forward only, so packets the old master accepted stay rejected;
- counters only move forward; a non-ESN target past 2^32 - 1 is clamped there, which stops the
  SA (the kernel refuses to wrap) instead of reusing a number;
- an outbound target follows the SA across destinations: it is taken from the highest mark
  journaled for the SA's (SPI, protocol) under ANY destination (`spi_peaks`), since a peer that
  moves (MOBIKE, a NAT rebinding) takes its SA, keys and counter with it to a new XFRM key
  (kernel_netlink_ipsec.c update_sa() copies the replay state). Two peers that picked the same
  SPI only make each other's targets larger: never a reuse, a longer jump at worst.
The kernel semantics are torvalds/linux net/xfrm/xfrm_replay.c (xfrm_replay_overflow*: the
next packet carries oseq + 1).
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from .records import U32_MAX, U64_MAX, KernelSa, SaKey, SeqRecord, Write

RATE_WINDOW_S = 3.0  # peak rate over this window sizes the reserve
RATE_BUCKET_S = 0.5  # RateMeter keeps one peak per bucket of this long
RATE_BUCKETS = int(RATE_WINDOW_S / RATE_BUCKET_S) + 2  # the window, its partial edges
RACE_MARGIN = 64  # a backup's write lands at least this far past the oseq just read
RACE_S = 0.1  # and this long at the journaled rate (NEWAE is not compare-and-set; the fence
#               makes a write behind the counter harmless, the margin only makes it rare)
PRUNE_AFTER_S = 60.0  # a record whose SA left the master's kernel this long ago is dropped
READS_KEPT = 8  # reserves stretch for the longest of this many recent intervals between reads


@dataclass(frozen=True, slots=True)
class Reserve:
    """How far ahead marks lie, and the gap past a journaled mark a new term starts at."""

    floor: int = 768  # packets: mark ahead of oseq at least this much
    horizon_s: float = 0.8  # and at least this long at the SA's peak rate
    takeover_floor: int = 576  # a new term's first number lies this far past the mark + 1:
    #                            defence in depth, the fence's argument does not need it
    inbound_interval_s: float = 5.0  # journal moving inbound state at least this often

    def ahead(self, rate: float, stretch_s: float = 0.0) -> int:
        """How far ahead of the kernel's oseq the master puts its mark; `stretch_s` more time
        at `rate` when its reads come slower than the nominal tick (`stretch()`)."""
        return max(self.floor, math.ceil(rate * (self.horizon_s + stretch_s)))

    def bound(self, rate: float, ahead_stretch_s: float = 0.0) -> int:
        """The most a failover can skip on an SA at `rate`: ahead + 1 + takeover_floor."""
        return self.ahead(rate, ahead_stretch_s) + 1 + self.takeover_floor


def stretch(interval_s: float, tick_s: float) -> float:
    """How much longer a reserve must last when reads come every `interval_s` instead of every
    `tick_s`: twice the excess, since a renewal is due once half the reserve is used
    (docs/takeover.md, Slow reads)."""
    return 2.0 * max(0.0, round(interval_s - tick_s, 3))  # whole ms: no float noise


class RateMeter:
    """Peak rate of one counter over at least the last RATE_WINDOW_S, in fixed memory (issue 17
    finding 7: a deque of samples cost ~4.4 KB per SA at a 0.1 s tick). Each step between
    successive samples goes into the bucket of RATE_BUCKET_S its end falls in, which keeps the
    largest step rate; the peak is the largest of the buckets that touch the window. Buckets
    cover [now - RATE_WINDOW_S - RATE_BUCKET_S, now] at most: never less than the window, so
    the peak is never below the exact one (a reserve sized from it is never smaller)."""

    __slots__ = ("cells", "last_t", "last_v")

    def __init__(self) -> None:
        self.last_t = math.nan  # no sample yet
        self.last_v = 0
        # RATE_BUCKETS (bucket number, peak) pairs, flat: one small array per SA
        self.cells = array("d", (-1.0, 0.0) * RATE_BUCKETS)

    def update(self, now: float, value: int) -> float:
        """Add a sample; return the peak rate between successive samples in the window."""
        cells, last_t = self.cells, self.last_t
        if value < self.last_v:
            cells[:] = array("d", (-1.0, 0.0) * RATE_BUCKETS)  # a new SA under the same key
            last_t = math.nan
        if now > last_t:
            n = math.floor(now / RATE_BUCKET_S)
            i = 2 * (n % RATE_BUCKETS)
            rate = (value - self.last_v) / (now - last_t)
            if cells[i] != n:
                cells[i], cells[i + 1] = n, rate
            elif rate > cells[i + 1]:
                cells[i + 1] = rate
        if not now < last_t:  # a sample from the past keeps the later one (nan: none yet)
            self.last_t, self.last_v = now, value
        first = math.floor((now - RATE_WINDOW_S) / RATE_BUCKET_S)
        return max((cells[i + 1] for i in range(0, len(cells), 2) if cells[i] >= first),
                   default=0.0)

    def rebase(self, value: int) -> None:
        """The guard wrote the counter up to `value`: the next step counts from there (a
        jump is not traffic, and must not size the reserve)."""
        self.last_v = max(self.last_v, value)


@dataclass
class TrackerStats:
    """What the master's tracker has done since it started (shown by `hasync status`)."""

    renewals: int = 0
    first_marks: int = 0  # marks that opened a term for an SA (after a jump to its target)
    recreated: int = 0  # SAs found below their permit: re-created under the same key
    inbound_updates: int = 0
    violations: int = 0  # reads that found a counter past this node's accepted mark: the
    #                      fence dropped what it sent above it (takeover.fence.fenced)
    max_overrun: int = 0  # the largest oseq - own accepted mark seen (0 if never)
    tracked: int = 0
    read_interval_ms: float = 0.0  # the longest of the last READS_KEPT intervals between reads
    stretch_ms: float = 0.0  # how much longer marks reach for it (`stretch()`)


class Held(NamedTuple):
    """What this node may send on an SA in its current epoch: (lo, hi], hi its accepted mark;
    `claimed`: granted by the claim itself (`claim_marks`), before any read of the term. A
    named tuple: a promotion makes one per SA (D278)."""

    lo: int
    hi: int
    claimed: bool = False


@dataclass
class MasterPlan:
    """One master read's decisions: records to journal (with each one's permit lo), kernel
    writes that jump an SA to its target before its first mark, and keys to forget."""

    records: list[SeqRecord] = field(default_factory=list)
    lows: dict[SaKey, int] = field(default_factory=dict)
    writes: list[Write] = field(default_factory=list)
    gone: list[SaKey] = field(default_factory=list)


@dataclass
class SeqTracker:
    """The master's side: decides which SA records to journal next (one tick at a time)."""

    node: str
    reserve: Reserve = field(default_factory=Reserve)
    tick_s: float = 0.1  # the nominal interval between reads (config: takeover.tick_ms)
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
                held: Mapping[SaKey, Held], epoch: int, now: float,
                wall: float) -> MasterPlan:
        """What to journal and write now, as the sender of `epoch` holding `held`."""
        plan = MasterPlan()
        seen: set[SaKey] = set()
        extra = self._stretch(now)
        peaks = spi_peaks(committed)
        for sa in sas:
            seen.add(sa.key)
            rate = self._rate(sa, now)
            self._one(plan, sa, (committed.get(sa.key), peaks.get(sa.key[1:])),
                      held.get(sa.key), rate, now, (wall, epoch, extra))
        for key in [k for k in self.meters if k not in seen]:
            del self.meters[key]
            self.inbound_at.pop(key, None)
        for lin in [k for k, (t, _) in self.lineage.items() if now - t > 2 * RATE_WINDOW_S]:
            del self.lineage[lin]
        plan.gone = [k for k, r in committed.items()
                     if k not in seen and wall - r.ts > PRUNE_AFTER_S]
        self.stats.tracked = len(seen)
        return plan

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

    def _one(self, plan: MasterPlan, sa: KernelSa, recs: tuple[SeqRecord | None, SeqRecord | None],
             held: Held | None, rate: float, now: float, at: tuple[float, int, float]) -> None:
        """Add one SA's record (and its first jump) to `plan` if due; `recs`: its own record
        and the highest-mark one of its (SPI, protocol) (`spi_peaks`)."""
        wall, epoch, extra = at
        rec, peak = recs
        ahead = self.reserve.ahead(rate, extra)
        if held is not None and held.claimed and not held.lo <= sa.oseq <= held.hi:
            held = None  # the claim's permit missed this kernel's counter: a first mark, as
            #              if the claim had granted nothing (it only ever lies past targets)
        if held is not None and sa.oseq > held.hi:
            self.stats.violations += 1
            self.stats.max_overrun = max(self.stats.max_overrun, sa.oseq - held.hi)
        in_due = sa.seq > 0 and (rec is None or (sa.seq > rec.seq and (
            sa.seq - rec.seq >= ahead // 2
            or now - self.inbound_at.get(sa.key, -math.inf) >= self.reserve.inbound_interval_s)))
        top = U64_MAX if sa.esn else U32_MAX
        if held is not None and sa.oseq < held.lo:  # a counter never goes down: another SA
            held = None  # under this key (an orphan's CHILD_SA re-created with the client's
            # SPI, D229): a new term, jumped past every mark of the key like any first mark
            self.stats.recreated += 1
        if held is None:  # the term's first mark: past the target, after a jump to it
            target = target_oseq(sa, peak, self.reserve)
            if sa.oseq < target:
                plan.writes.append(Write(sa, target, sa.seq, sa.bitmap))
                if (meter := self.meters.get(sa.key)) is not None:
                    meter.rebase(target)  # a moved SA's jump (spi_peaks) is not its rate
            base = max(sa.oseq, target)
            lo, mark = base, min(base + ahead, top)
            self.stats.first_marks += 1
        elif held.hi - sa.oseq < ahead // 2:
            lo, mark = held.lo, min(max(held.hi, sa.oseq + ahead), top)
        elif in_due:
            lo, mark = held.lo, held.hi
        else:
            return
        seq, bitmap = (sa.seq, sa.bitmap) if rec is None or sa.seq >= rec.seq else (
            rec.seq, rec.bitmap)
        plan.lows[sa.key] = lo
        plan.records.append(SeqRecord(sa.key, mark, seq, bitmap, round(rate, 1), self.node,
                                      wall, epoch))


def _fit(bitmap: tuple[int, ...], sa: KernelSa) -> tuple[int, ...]:
    """A journaled bitmap shaped like the kernel SA's (zeros if the shapes differ)."""
    if len(bitmap) == len(sa.bitmap):
        return bitmap
    return (0,) * len(sa.bitmap)


def spi_peaks(records: Mapping[SaKey, SeqRecord]) -> dict[tuple[int, int], SeqRecord]:
    """Per (SPI, protocol), the record with the highest mark under any destination."""
    peaks: dict[tuple[int, int], SeqRecord] = {}
    for (_, spi, proto), rec in records.items():
        best = peaks.get((spi, proto))
        if best is None or rec.mark > best.mark:
            peaks[spi, proto] = rec
    return peaks


def claim_terms(reserve: Reserve) -> tuple[int, float, int]:
    """What `claim_marks` reads of a reserve: equal terms, equal marks (D281)."""
    return reserve.floor, reserve.horizon_s, reserve.takeover_floor


def claim_marks(records: Mapping[SaKey, SeqRecord],
                reserve: Reserve) -> dict[SaKey, tuple[int, int]]:
    """The first permits a claim grants, per journaled SA: (lo, hi] with lo its target (past
    every mark of its (SPI, protocol): `spi_peaks`, plus the takeover floor) and hi = lo +
    ahead(its journaled rate); none where hi would pass 2^32 - 1 (a record does not say if
    its SA has ESN: such SAs wait for the term's first read, as before claims granted)."""
    peaks = spi_peaks(records)
    aheads: dict[float, int] = {}  # one `ahead` per rate: a claim's apply passes every SA
    floor, horizon = 1 + reserve.takeover_floor, reserve.horizon_s
    out = {}
    for key, rec in records.items():
        rate = rec.rate
        if rate * horizon > U32_MAX:
            continue  # a rate no counter can hold for long (and no float overflow)
        ahead = aheads.get(rate)
        if ahead is None:
            ahead = aheads[rate] = reserve.ahead(rate)
        lo = peaks[key[1:]].mark + floor
        hi = lo + ahead
        if hi <= U32_MAX:
            out[key] = (lo, hi)
    return out


def claim_lows(records: Mapping[SaKey, SeqRecord], node: str, epoch: int,
               reserve: Reserve) -> dict[SaKey, Held]:
    """What the claimant holds once its claim is applied: the records the claim made for
    (`node`, `epoch`), each (hi - ahead(rate), hi] (`claim_marks` inverted: hi = lo + ahead)."""
    aheads: dict[float, int] = {}  # one `ahead` per rate: a promotion's pass over every SA
    out = {}
    for key, rec in records.items():
        if rec.epoch == epoch and rec.node == node:
            rate, mark = rec.rate, rec.mark
            ahead = aheads.get(rate)
            if ahead is None:
                ahead = aheads[rate] = reserve.ahead(rate)
            out[key] = Held(mark - ahead, mark, True)  # claimed
    return out


def target_oseq(sa: KernelSa, rec: SeqRecord | None, reserve: Reserve) -> int:
    """The outbound counter a non-master keeps (and a new term starts from) for `sa`: past
    every number any node can have been permitted (journaled mark + 1, plus the constant
    `takeover_floor`); 0 without a record, since nobody was permitted anything on it."""
    if rec is None:
        return 0
    return min(rec.mark + 1 + reserve.takeover_floor, U64_MAX if sa.esn else U32_MAX)


def plan_writes(sas: Iterable[KernelSa], records: Mapping[SaKey, SeqRecord],
                reserve: Reserve, inbound: bool = True,
                held: Mapping[SaKey, Held] | None = None,
                live: frozenset[SaKey] = frozenset()) -> list[Write]:
    """Writes that move every SA's counters up to the journal's targets (outbound: its
    (SPI, protocol)'s highest mark, `spi_peaks`; for an SA in `held`, a claimant's, its
    permit's lo: the target the claim's own marks were made from); never down. An SA in
    `live` has its held permit in force already (D265): found below lo, it goes past the
    permit's hi, so the write re-exposes nothing the permit let out. Those that move an
    outbound counter come first; without `inbound`, only those (a write still carries the
    journaled inbound state of its SA: a backup's steady state). A write that moves only
    inbound state writes back the outbound counter read, which only output moves
    (torvalds/linux net/xfrm/xfrm_replay.c): an SA that receives does not send."""
    sas = list(sas)
    if not sas:  # nothing to plan: no pass over the records (`spi_peaks`)
        return []
    writes = []
    peaks = spi_peaks(records)
    held = held or {}
    for sa in sas:
        rec, peak = records.get(sa.key), peaks.get(sa.key[1:])
        hold = held.get(sa.key)
        target = hold.lo if hold is not None else target_oseq(sa, peak, reserve)
        if hold is not None and sa.key in live and sa.oseq < hold.lo:
            target = max(target_oseq(sa, peak, reserve), hold.hi + 1)
        oseq = max(sa.oseq, target)
        if oseq > sa.oseq:  # the kernel may send between our read and this write
            margin = max(RACE_MARGIN, math.ceil((peak.rate if peak else 0.0) * RACE_S))
            oseq = min(max(oseq, sa.oseq + margin), U64_MAX if sa.esn else U32_MAX)
        seq, bitmap = sa.seq, sa.bitmap
        if rec is not None and rec.seq > sa.seq:
            seq, bitmap = rec.seq, _fit(rec.bitmap, sa)
        if oseq != sa.oseq or (inbound and seq != sa.seq):
            writes.append(Write(sa, oseq, seq, bitmap))
    writes.sort(key=lambda w: w.oseq == w.sa.oseq)  # stable: outbound moves first
    return writes
