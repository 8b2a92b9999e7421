"""Fakes for the sequence guard's driver: a clock, a journal, a kernel, a send fence and a
sleep, all on the test's event loop (no sockets, threads or sleeps). The cluster simulation
(kernels that send traffic through their fence onto "the wire", a Raft whose commits can
stall, fail or come late) is in guardsim.py."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from hasync.fence.port import FenceCounts, FenceError, Permit
from hasync.fence.rules import intervals
from hasync.guard import Guard, KernelSa, Reserve, SaKey, SeqEntry, SeqLog, Write, WriteResult
from hasync.guard.entries import ACCEPTED, REJECTED
from hasync.syncobj_compat import FailReason

KEY = ("192.0.2.101", 0xC0FFEE01, 50)


class Clock:
    """A monotonic clock that moves only when told."""

    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class FakeJournal:
    """Commits at once with `answer` (FailReason.SUCCESS applies the entry, which the SeqLog
    accepts only from its sender); `hold` keeps the seq callbacks for the test to answer;
    a claim answers `claim_answer` (None: never) after `claim_s`."""

    def __init__(self, clock: Clock | None = None, majority: bool = True) -> None:
        self.lock = threading.RLock()
        self.seqs = SeqLog()
        self.clock = clock or Clock()
        self.answer = FailReason.SUCCESS if majority else FailReason.MISSING_LEADER
        self.claim_answer: FailReason | None = self.answer  # None: never answers
        self.claim_s = 0.0
        self.claims = 0
        self.hold = False
        self.held: list[tuple[SeqEntry, Callable[[Any, Any], None]]] = []
        self.entries: list[SeqEntry] = []

    def submit_seq(self, entry: SeqEntry, callback: Callable[[Any, Any], None]) -> None:
        if self.hold:
            self.held.append((entry, callback))
            return
        result = None
        if self.answer is FailReason.SUCCESS:
            self.entries.append(entry)
            result = ACCEPTED if self.seqs.apply(entry).accepted else REJECTED
        callback(result, int(self.answer) or None)

    def answer_held(self) -> None:
        """Commit every held entry now, in order."""
        held, self.held = self.held, []
        for entry, callback in held:
            self.entries.append(entry)
            callback(ACCEPTED if self.seqs.apply(entry).accepted else REJECTED, None)

    def claim(self, callback: Callable[[Any, Any], None], grant: Any = None,
              node: str = "gw2") -> None:
        self.claims += 1
        self.clock.t += self.claim_s
        if self.claim_answer is FailReason.SUCCESS:
            callback(self.seqs.claim(node, self.seqs.view(), grant), None)
        elif self.claim_answer is not None:
            callback(None, int(self.claim_answer))


class FakeFence:
    """The send fence as a dict of permits; `fail` makes every command raise FenceError."""

    def __init__(self) -> None:
        self.permits: dict[SaKey, Permit] = {}
        self.dropped: dict[SaKey, int] = {}
        self.unknown = 0
        self.calls: list[str] = []
        self.prepared: dict[SaKey, Permit] = {}  # standby permits (D262): in force never
        self.fail = False
        self.closed = False
        self.before_change: Callable[[], None] = lambda: None  # a kernel flushes its traffic

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.fail:
            raise FenceError(f"nft {name}: refused (test)")

    def allowed(self, key: SaKey, lo: int, hi: int) -> list[tuple[int, int]]:
        """The parts (a, b] of (lo, hi] the fence lets out for `key`, matching as the kernel's
        rules do: the low 32 bits against the permit's intervals (`fence.rules.intervals`), so
        an ESN counter far enough past its permit wraps back into it."""
        p = self.permits.get(key)
        if p is None:
            return []
        out = []
        for first, last in intervals(p):
            for wrap in range(lo >> 32, (hi >> 32) + 1):
                a, b = max(lo, (wrap << 32) + first - 1), min(hi, (wrap << 32) + last)
                if b > a:
                    out.append((a, b))
        return sorted(out)

    def _apply(self, name: str, permits: dict[SaKey, Permit]) -> None:
        """One command, as NftFence._apply runs its plan: recorded (or refused), the kernel's
        traffic flushed up to now, then `permits` are the ones in force."""
        self._call(name)
        self.before_change()
        self.permits = permits

    async def setup(self) -> None:
        self._apply("setup", {})

    async def grant(self, permits: Any, counters: bool = True) -> None:
        self._apply("grant" if counters else "grant_uncounted",
                    {**self.permits, **{p.key: p for p in permits}})

    async def prepare(self, permits: Any) -> None:
        self._call("prepare")  # permits nothing: only `grant` changes what is in force
        self.prepared.update({p.key: p for p in permits if p.key not in self.permits})

    async def revoke_all(self) -> None:
        self._apply("revoke_all", {})

    async def forget(self, keys: Any) -> None:
        gone = set(keys)
        self._apply("forget", {k: p for k, p in self.permits.items() if k not in gone})
        for key in gone:
            self.dropped.pop(key, None)

    async def counts(self) -> FenceCounts:
        self._call("counts")
        return FenceCounts(dict(self.dropped), self.unknown)

    def close(self) -> None:
        self.closed = True


class FakeKernel:
    """A kernel whose reads and writes take `read_s` and `write_s` on the clock; `fail_reads`
    raises that many exceptions (built by `error`) before reading works."""

    def __init__(self, sas: list[KernelSa], clock: Clock | None = None, read_s: float = 0.0,
                 write_s: float = 0.0) -> None:
        self.sas, self.clock = sas, clock or Clock()
        self.read_s, self.write_s = read_s, write_s
        self.reads = 0
        self.fail_reads = 0
        self.error: Callable[[], Exception] = lambda: RuntimeError("no error set")
        self.writes: list[Write] = []
        self.calls: list[str] = []
        self.gate: asyncio.Event | None = None  # a read waits for it when set
        self.closed = False

    async def snapshot(self) -> list[KernelSa]:
        self.calls.append("read")
        if self.gate is not None:
            await self.gate.wait()
        self.reads += 1
        self.clock.t += self.read_s
        if self.fail_reads:
            self.fail_reads -= 1
            raise self.error()
        return list(self.sas)

    async def write(self, writes: list[Write]) -> WriteResult:
        self.calls.append("write")
        self.clock.t += self.write_s
        self.writes += writes
        return WriteResult(done=len(writes))

    def close(self) -> None:
        self.closed = True


class FakeWatch:
    """The kernel's SA notices as a test sets them: `now` is what changed since the last read
    began (None: unknown); a read that begins clears it, as `SaWatch` does."""

    def __init__(self, now: dict[SaKey, Any] | None = None) -> None:
        self.now = now
        self.then: list[dict[SaKey, Any]] = []  # each `changes` call after the first adds one
        self.calls = 0
        self.begun = 0
        self.closed = False

    def begin(self) -> None:
        self.begun += 1
        self.now, self.calls = {}, 0

    def end(self, ok: bool) -> None:
        pass

    def changes(self) -> dict[SaKey, Any] | None:
        self.calls += 1
        if self.calls > 1 and self.then and self.now is not None:
            self.now.update(self.then.pop(0))
        return None if self.now is None else dict(self.now)

    def close(self) -> None:
        self.closed = True


class Stop(Exception):
    """Ends a fake sleep's script (and so the guard's loop)."""


class FakeSleep:
    """A sleep that moves the clock at once; a script of actions for successive calls:
    "pass" (return), "wake" (call `guard.wake_threadsafe()`, then wait until cancelled), "stop"
    (raise Stop). Past the script every call passes."""

    def __init__(self, clock: Clock, script: list[str] | None = None) -> None:
        self.clock, self.script = clock, list(script or [])
        self.calls: list[float] = []
        self.guard: Guard | None = None

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        action = self.script.pop(0) if self.script else "pass"
        if action == "stop":
            raise Stop
        if action == "wake":
            assert self.guard is not None
            self.guard.wake_threadsafe()
            await asyncio.Event().wait()  # the wake ends the guard's wait, which cancels this
        self.clock.t += seconds
        await asyncio.sleep(0)


def guard(journal: FakeJournal, kernel: FakeKernel, activated: list[int] | None = None,
          sleep: FakeSleep | None = None, tick_s: float = 0.1, fence: FakeFence | None = None,
          master: list[bool] | None = None, watch: FakeWatch | None = None) -> Guard:
    """A guard on gw2 with the fakes, sharing the journal's clock; VRRP master while
    `master[0]` (default: always)."""
    clock = journal.clock
    kernel.clock = clock
    acts = activated if activated is not None else []
    role = master if master is not None else [True]
    g = Guard("gw2", journal, Reserve(), lambda: acts.append(1), fence or FakeFence(), tick_s,
              kernel=kernel, clock=clock, wall=lambda: 1_000_000.0 + clock.t,
              sleep=sleep or FakeSleep(clock), is_master=lambda: role[0],
              watch=watch)  # type: ignore[arg-type]
    if sleep is not None:
        sleep.guard = g
    return g
