"""A simulated cluster for the sequence guard: real `Guard`s, fake kernels that SEND traffic
through each node's fake fence onto "the wire", and one fake Raft, all on one simulated clock
(no sockets, threads or real sleeps).

Rules: a kernel SA sends at a piecewise-constant rate (packets/s from given times); its packets
are computed lazily and exactly: whenever a read, a write or a fence change needs the present,
the SA's packets since its last flush are numbered oseq + 1, ... and split into what the fence's
permit lets out (appended to that node's wire as ranges (a, b]; matched on the low 32 bits as
the kernel's rules are, so an ESN SA can wrap) and what it drops (counted per SA). A kernel
write may take `write_s_per_sa` each, traffic flowing meanwhile, so a write can land behind the
counter. The Raft applies entries to one shared `SeqLog` in submission order, `commit_s` after
submission, unless stalled (held forever, or until `resume()`), failing, or cut off from a node.
`check_wire()` asserts the invariant: no (SA, seq) on the wire twice, neither across nodes nor
within one.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from hasync.guard import Guard, KernelSa, Reserve, SaKey, SeqLog, Write, WriteResult
from hasync.guard.entries import ACCEPTED, REJECTED, SeqEntry
from hasync.syncobj_compat import FailReason

from guardfakes import Clock, FakeFence

Callback = Callable[[Any, Any], None]
WRITE_CHUNK = 256


@dataclass
class SimSa:
    """One SA in one node's kernel: its counter and its sending schedule."""

    key: SaKey
    reqid: int = 7
    oseq: int = 0
    esn: bool = False
    last_t: float = 0.0
    schedule: list[tuple[float, float]] = field(default_factory=list)  # (from t, pps)

    def sent_between(self, t0: float, t1: float) -> float:
        """Packets (fractional) the schedule sends in [t0, t1)."""
        total = 0.0
        for i, (start, pps) in enumerate(self.schedule):
            end = self.schedule[i + 1][0] if i + 1 < len(self.schedule) else math.inf
            a, b = max(t0, start), min(t1, end)
            if b > a:
                total += (b - a) * pps
        return total


class TrafficKernel:
    """One node's XFRM: SAs that send through its fence onto its wire."""

    def __init__(self, node: str, clock: Clock, fence: FakeFence, sleep: SimSleep,
                 write_s_per_sa: float = 0.0) -> None:
        self.node, self.clock, self.fence, self.sleep = node, clock, fence, sleep
        self.sas: dict[SaKey, SimSa] = {}
        self.cum: dict[SaKey, float] = {}  # fractional packets carried
        self.wire: dict[SaKey, list[tuple[int, int]]] = {}
        self.attempted: dict[SaKey, int] = {}
        self.write_s_per_sa = write_s_per_sa
        self.writes = 0
        self.behind = 0  # writes that landed behind the counter (it had moved past the target)
        fence.before_change = self.flush_all

    def add(self, key: SaKey, reqid: int = 7, oseq: int = 0, esn: bool = False) -> SimSa:
        sa = SimSa(key, reqid, oseq, esn, self.clock.t, [(0.0, 0.0)])
        self.sas[key] = sa
        self.cum[key] = 0.0
        return sa

    def rate(self, key: SaKey, pps: float, at: float | None = None) -> None:
        """From `at` (default now) on, SA `key` sends `pps` packets a second."""
        self.flush(key)
        self.sas[key].schedule.append((self.clock.t if at is None else at, pps))

    def remove(self, key: SaKey) -> None:
        self.flush(key)
        del self.sas[key]

    def flush(self, key: SaKey, t: float | None = None) -> None:
        """Send SA `key`'s packets up to `t` (default now) through the fence."""
        sa = self.sas[key]
        t = self.clock.t if t is None else t
        if t <= sa.last_t:
            return
        self.cum[key] += sa.sent_between(sa.last_t, t)
        sa.last_t = t
        n = int(self.cum[key])
        if n <= 0:
            return
        self.cum[key] -= n
        lo, hi = sa.oseq, sa.oseq + n
        sa.oseq = hi
        self.attempted[key] = self.attempted.get(key, 0) + n
        through = 0
        for passed in self.fence.allowed(key, lo, hi):
            self.wire.setdefault(key, []).append(passed)
            through += passed[1] - passed[0]
        if n > through:
            self.fence.dropped[key] = self.fence.dropped.get(key, 0) + n - through

    def flush_all(self) -> None:
        for key in list(self.sas):
            self.flush(key)

    async def snapshot(self) -> list[KernelSa]:
        self.flush_all()
        return [KernelSa(sa.key, sa.esn, sa.oseq, 0, (0,) * (4 if sa.esn else 1),
                         128 if sa.esn else 32, sa.reqid) for sa in self.sas.values()]

    async def write(self, writes: list[Write]) -> WriteResult:
        """NEWAE sets the counter (not compare-and-set): writes land WRITE_CHUNK at a time,
        `write_s_per_sa` each, traffic flowing meanwhile (so a write can land behind)."""
        done = 0
        for i in range(0, len(writes), WRITE_CHUNK):
            chunk = writes[i:i + WRITE_CHUNK]
            if self.write_s_per_sa:
                await self.sleep(len(chunk) * self.write_s_per_sa)
            for w in chunk:
                if w.sa.key in self.sas:
                    self.flush(w.sa.key)
                    self.behind += self.sas[w.sa.key].oseq > w.oseq
                    self.sas[w.sa.key].oseq = w.oseq
                    done += 1
        self.writes += done
        return WriteResult(done=done)

    def close(self) -> None:
        pass

    def top(self, key: SaKey) -> int:
        """The highest seq of `key` this node put on the wire (0: none)."""
        return max((b for _, b in self.wire.get(key, [])), default=0)


class SimRaft:
    """One Raft log for the cluster: entries apply to a shared SeqLog in submission order."""

    def __init__(self, clock: Clock, commit_s: float = 0.01) -> None:
        self.clock, self.commit_s = clock, commit_s
        self.slow: dict[str, float] = {}  # a node's entries take this long instead
        self.lock = threading.RLock()
        self.seqs = SeqLog()
        self.queue: list[tuple[float, str, str, Any, Callback]] = []
        self.stalled = False  # commits held until resume() (forever if never)
        self.fail: FailReason | None = None  # every submission fails at once with this
        self.cut: set[str] = set()  # nodes cut off from the majority: theirs never commit
        self.held: list[tuple[float, str, str, Any, Callback]] = []

    def submit(self, node: str, kind: str, payload: Any, callback: Callback) -> None:
        if self.fail is not None:
            callback(None, int(self.fail))
            return
        item = (self.clock.t + self.slow.get(node, self.commit_s), node, kind, payload, callback)
        if node in self.cut or self.stalled:
            self.held.append(item)
        else:
            self.queue.append(item)

    def resume(self) -> None:
        """The stall ends: what was held commits now (cut-off nodes' entries stay held)."""
        self.stalled = False
        keep = []
        for item in self.held:
            if item[1] in self.cut:
                keep.append(item)
            else:
                self.queue.append((self.clock.t + self.commit_s, *item[1:]))
        self.held = keep

    def deliver(self) -> None:
        """Apply the entries due, in order; each callback gets the apply's result."""
        self.queue.sort(key=lambda item: item[0])  # stable: submission order at equal times
        while self.queue and self.queue[0][0] <= self.clock.t and not self.stalled:
            _, node, kind, payload, callback = self.queue.pop(0)
            with self.lock:
                if kind == "claim":
                    epoch = self.seqs.claim(node, *payload)
                    result: Any = REJECTED if epoch is None else epoch
                else:
                    result = ACCEPTED if self.seqs.apply(payload).accepted else REJECTED
            callback(result, None)


class SimJournal:
    """One node's view of the SimRaft (the guard's JournalPort)."""

    def __init__(self, raft: SimRaft, node: str) -> None:
        self.raft, self.node, self.lock = raft, node, raft.lock

    @property
    def seqs(self) -> SeqLog:
        return self.raft.seqs

    def submit_seq(self, entry: SeqEntry, callback: Callback) -> None:
        self.raft.submit(self.node, "seq", entry, callback)

    def claim(self, callback: Callback, grant: Reserve | None = None) -> None:
        with self.lock:  # as raft.py: the claim carries this node's view of the sender
            seen = self.raft.seqs.view()
        self.raft.submit(self.node, "claim", (seen, grant), callback)


class SimSleep:
    """A sleep on the simulated clock: it ends once the simulation passed its time."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.waiting: list[tuple[float, asyncio.Future[None]]] = []

    async def __call__(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting.append((self.clock.t + seconds, fut))
        await fut

    def wake_due(self) -> None:
        keep = []
        for due, fut in self.waiting:
            if fut.done():
                continue
            if due <= self.clock.t:
                fut.set_result(None)
            else:
                keep.append((due, fut))
        self.waiting = keep


class Sim:
    """Nodes with real Guards over TrafficKernels and FakeFences, one SimRaft, one clock."""

    def __init__(self, nodes: tuple[str, ...] = ("gw1", "gw2"), commit_s: float = 0.01,
                 dt: float = 0.01, tick_s: float = 0.1, write_s_per_sa: float = 0.0) -> None:
        self.clock = Clock(0.0)
        self.dt, self.tick_s = dt, tick_s
        self.raft = SimRaft(self.clock, commit_s)
        self.sleep = SimSleep(self.clock)
        self.master = dict.fromkeys(nodes, False)
        self.alive = dict.fromkeys(nodes, True)  # a dead hasync: its kernel and fence stay
        self.activated: dict[str, int] = dict.fromkeys(nodes, 0)
        self.fences = {n: FakeFence() for n in nodes}
        self.kernels = {n: TrafficKernel(n, self.clock, self.fences[n], self.sleep,
                                         write_s_per_sa) for n in nodes}
        self.guards = {n: self._guard(n) for n in nodes}
        self.promotions: dict[str, asyncio.Task[Any]] = {}
        self.steps: dict[str, asyncio.Task[Any] | None] = dict.fromkeys(nodes)
        self.next_step = dict.fromkeys(nodes, 0.0)

    def _guard(self, n: str) -> Guard:
        def activate() -> None:
            self.activated[n] += 1
        return Guard(n, SimJournal(self.raft, n), Reserve(), activate, self.fences[n],
                     self.tick_s, kernel=self.kernels[n], clock=self.clock,
                     wall=lambda: 1_000_000.0 + self.clock.t, sleep=self.sleep,
                     is_master=lambda: self.master[n])

    def add_sa(self, key: SaKey, reqid: int = 7, esn: bool = False) -> None:
        """charon installs the SA on every node (HA sync), counters at 0."""
        for k in self.kernels.values():
            k.add(key, reqid, esn=esn)

    def become_master(self, n: str) -> None:
        """VRRP MASTER on `n`: the promotion starts (as Effects spawns it)."""
        self.master[n] = True
        self.promotions[n] = asyncio.ensure_future(self.guards[n].promote())

    def become_backup(self, n: str) -> None:
        self.master[n] = False
        task = self.promotions.get(n)
        if task is not None and not task.done():
            task.cancel()

    def kill(self, n: str) -> None:
        """kill -9 of `n`'s hasync: its guard stops; its kernel sends on, through its fence."""
        self.alive[n] = False
        for task in (self.promotions.get(n), self.steps[n]):
            if task is not None and not task.done():
                task.cancel()

    async def run(self, seconds: float) -> None:
        """Advance the simulation by `seconds`."""
        end = self.clock.t + seconds
        while self.clock.t < end - 1e-9:
            self.clock.t = round(self.clock.t + self.dt, 9)
            self.raft.deliver()
            self.sleep.wake_due()
            for _ in range(3):
                await asyncio.sleep(0)
            for n, g in self.guards.items():
                task = self.steps[n]
                if task is not None and task.done():
                    task.result()  # a guard's bug fails the test
                    self.steps[n] = task = None
                if self.alive[n] and task is None and self.clock.t >= self.next_step[n]:
                    self.next_step[n] = self.clock.t + self.tick_s
                    self.steps[n] = asyncio.ensure_future(g.step(self.master[n], 0))
            for _ in range(3):
                await asyncio.sleep(0)
            for task in self.promotions.values():
                if task.done() and not task.cancelled() and task.exception() is not None:
                    task.result()
        for k in self.kernels.values():
            k.flush_all()

    def check_wire(self) -> dict[SaKey, dict[str, list[tuple[int, int]]]]:
        """Assert: no (SA, seq) twice on the wire, within a node or across nodes."""
        per_key: dict[SaKey, dict[str, list[tuple[int, int]]]] = {}
        for n, k in self.kernels.items():
            for key, ranges in k.wire.items():
                per_key.setdefault(key, {})[n] = ranges
        for key, by_node in per_key.items():
            everything = sorted((a, b, n) for n, ranges in by_node.items() for a, b in ranges)
            for (a0, b0, n0), (a1, b1, n1) in pairwise(everything):
                assert b0 <= a1, f"SA {key}: ({a0}, {b0}] from {n0} overlaps ({a1}, {b1}] " \
                                 f"from {n1}"
        return per_key

    def first(self, n: str, key: SaKey) -> int:
        """The first seq `n` put on the wire for `key` (0: none)."""
        return min((a + 1 for a, _ in self.kernels[n].wire.get(key, [])), default=0)
