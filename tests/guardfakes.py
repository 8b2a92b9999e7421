"""Fakes for the sequence guard's driver: a clock, a journal, a kernel and a sleep, all on the
test's event loop (no sockets, threads or sleeps)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from hasync.guard import Guard, KernelSa, Reserve, SeqEntry, SeqLog, Write, WriteResult
from hasync.syncobj_compat import FailReason

KEY = ("192.0.2.101", 0xC0FFEE01, 50)


class Clock:
    """A monotonic clock that moves only when told."""

    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class FakeJournal:
    """Commits at once with `answer` (FailReason.SUCCESS applies the entry); `hold` keeps the
    callbacks for the test to answer; the barrier answers `barrier_answer` after `barrier_s`."""

    def __init__(self, clock: Clock | None = None, majority: bool = True) -> None:
        self.lock = threading.RLock()
        self.seqs = SeqLog()
        self.clock = clock or Clock()
        self.answer = FailReason.SUCCESS if majority else FailReason.MISSING_LEADER
        self.barrier_answer: FailReason | None = self.answer  # None: never answers
        self.barrier_s = 0.0
        self.barriers = 0
        self.hold = False
        self.held: list[tuple[SeqEntry, Callable[[Any, Any], None]]] = []
        self.entries: list[SeqEntry] = []

    def submit_seq(self, entry: SeqEntry, callback: Callable[[Any, Any], None]) -> None:
        if self.hold:
            self.held.append((entry, callback))
            return
        if self.answer is FailReason.SUCCESS:
            self.entries.append(entry)
            self.seqs.apply(entry)
        callback(None, int(self.answer) or None)

    def barrier(self, callback: Callable[[Any, Any], None]) -> None:
        self.barriers += 1
        self.clock.t += self.barrier_s
        if self.barrier_answer is not None:
            callback(None, int(self.barrier_answer))


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
          sleep: FakeSleep | None = None, barrier_timeout_s: float = 0.3,
          tick_s: float = 0.1) -> Guard:
    """A guard on gw2 with the fakes, sharing the journal's clock."""
    clock = journal.clock
    kernel.clock = clock
    acts = activated if activated is not None else []
    g = Guard("gw2", journal, Reserve(), lambda: acts.append(1), barrier_timeout_s, tick_s,
              kernel=kernel, clock=clock, wall=lambda: 1_000_000.0 + clock.t,
              sleep=sleep or FakeSleep(clock))
    if sleep is not None:
        sleep.guard = g
    return g
