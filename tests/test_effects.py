"""Tests of hasync.effects: the core's commands carried out against fakes; each failure that
used to be silent (a batch that does not seal, a report not handed over, charon's FIFO not
written) is now logged and counted.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from hasync import node
from hasync.effects import Effects
from hasync.ha import MessageType, decode
from hasync.journal.machine import APPLIED
from hasync.journal.seal import SealError, derive_keys
from hasync.journal.state import JournalState
from hasync.pipeline import Flight
from hasync.raft import ClusterJournal
from hasync.role import Role, RoleState
from hasync.syncobj_compat import FailReason, outcome

from hastream import tunnels
from netutil import free_ports, wait_until


class FakeJournal:
    """submit/report record or raise; callbacks are kept for the test to run."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.fail, self.lock, self.state = fail, threading.RLock(), JournalState()
        self.applied_batches = 0
        self.submitted: list[list[bytes]] = []
        self.callbacks: list[Callable[[Any, Any], None]] = []

    def submit(self, datagrams: list[bytes], callback: Callable[[Any, Any], None],
               stream: int = 0, seq: int = 0) -> None:
        if self.fail is not None:
            raise self.fail
        self.submitted.append(datagrams)
        self.callbacks.append(callback)

    def report(self, info: dict[str, Any], callback: Callable[[Any, Any], None]) -> None:
        self.submit([repr(info).encode()], callback)


class FakeFeed:
    def __init__(self) -> None:
        self.queued: list[bytes] = []

    def put(self, datagrams: Any, replay: bool = False) -> bool:
        self.queued += list(datagrams)
        return True

    async def drained(self) -> None:
        return None


class FakeEndpoint:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> bool:
        self.sent.append(data)
        return True


class FakeGuard:
    def __init__(self) -> None:
        self.promotions = 0
        self.wakes = 0

    async def promote(self) -> None:
        self.promotions += 1

    def wake(self) -> None:
        self.wakes += 1


def _fx(tmp_path: Path, journal: FakeJournal, role: Role = Role.MASTER
        ) -> tuple[Effects, list[Coroutine[Any, Any, Any]], list[str]]:
    core = node.NodeCore(node.Settings(batch_max_messages=2), RoleState(role=role))
    spawned: list[Coroutine[Any, Any, Any]] = []
    woken: list[str] = []

    def spawn(coro: Coroutine[Any, Any, Any]) -> Any:
        spawned.append(coro)
        return None

    fx = Effects(core, journal, FakeEndpoint(), FakeFeed(), FakeGuard(),  # type: ignore[arg-type]
                 tmp_path / "charon.ctl", post=lambda event: fx.do(event(9.0)),
                 wake=lambda: woken.append("wake"), spawn=spawn)
    return fx, spawned, woken


def test_a_batch_that_does_not_seal_is_logged_counted_and_dropped(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fx, _, woken = _fx(tmp_path, FakeJournal(fail=SealError("entry too large")))
    for raw in tunnels(1).datagrams[:2]:
        fx.do(fx.core.on_ha(raw, decode(raw), 1.0))
    assert woken == ["wake"]
    assert fx.core.counters["batches_dropped"] == 1 and fx.core.batcher.backlog == 0
    rec = next(r for r in caplog.records if "sealing a batch" in r.getMessage())
    assert rec.levelno == logging.ERROR and rec.exc_info and rec.exc_info[0] is SealError


def test_a_committed_batch_comes_back_as_an_event(tmp_path: Path) -> None:
    journal = FakeJournal()
    fx, _, _ = _fx(tmp_path, journal)
    flight = Flight(1, [b"a", b"b"])
    fx.core.batcher.flights.append(flight)
    fx.do([node.SubmitBatch((b"a", b"b"), 0, 1)])
    journal.callbacks[0](None, FailReason.NOT_LEADER.value)
    assert fx.core.counters["commit_retries"] == 1 and fx.core.batcher.rewinding
    flight.awaited = True  # resent
    journal.callbacks[0]((APPLIED, 2), None)
    assert fx.core.counters["batches"] == 1 and fx.core.counters["batch_messages"] == 2


def test_a_report_that_raises_is_logged_and_counted(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    fx, _, _ = _fx(tmp_path, FakeJournal(fail=RuntimeError("queue gone")))
    fx.do([node.Report({"vrrp": "master"})])
    assert fx.counters["report_errors"] == 1
    assert any(r.exc_info and "report failed" in r.getMessage() for r in caplog.records)


def test_a_lost_report_is_counted_by_reason(tmp_path: Path) -> None:
    journal = FakeJournal()
    fx, _, _ = _fx(tmp_path, journal)
    fx.do([node.Report({"vrrp": "master"})])
    journal.callbacks[0](None, FailReason.QUEUE_FULL.value)
    assert fx.core.counters["reports_failed:QUEUE_FULL"] == 1


def test_charon_fifo_commands_are_written_and_failures_counted(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fx, _, _ = _fx(tmp_path, FakeJournal())
    fx.do([node.CharonFifo("-1")])  # no FIFO: charon is not running (ENOENT), counted only
    assert fx.counters["fifo_errors"] == 1 and not caplog.records
    os.mkfifo(fx.charon_fifo)
    reader = os.open(fx.charon_fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        fx.do([node.CharonFifo("+1"), node.CharonFifo("-1")])
        assert os.read(reader, 100) == b"+1\n-1\n" and fx.counters["fifo_errors"] == 1
        filler = os.open(fx.charon_fifo, os.O_WRONLY | os.O_NONBLOCK)
        with pytest.raises(BlockingIOError):
            while True:
                os.write(filler, b"x" * 65536)
        os.close(filler)
        fx.do([node.CharonFifo("*1")])  # the pipe is full: EAGAIN, logged and counted
        assert fx.counters["fifo_errors"] == 2
        assert f"errno {errno.EAGAIN}" in caplog.text or "Resource temporarily" in caplog.text
    finally:
        os.close(reader)


def test_promotion_replay_feed_and_heartbeat(tmp_path: Path) -> None:
    journal = FakeJournal()
    fx, spawned, _ = _fx(tmp_path, journal, Role.BACKUP)
    fx.do([node.SendToCharon(b"hb"), node.FeedCharon((b"x",)), node.StartPromotion()])
    assert fx.endpoint.sent == [b"hb"] and fx.feed.queued == [b"x"]  # type: ignore[attr-defined]
    asyncio.run(spawned.pop())
    assert fx.guard.promotions == 1  # type: ignore[attr-defined]
    fx.core.tick(1.0, 0.0, node.RaftView("follower", "n1", 3, 3))
    fx.do([node.StartReplay(fx.core.sync.generation)])  # an empty journal: it ends at once
    asyncio.run(spawned.pop())
    assert fx.core.sync.state is node.SyncState.SYNCED and fx.core.counters["replays"] == 1


def test_leaving_master_cancels_the_promotion_and_wakes_the_guard_to_revoke(
        tmp_path: Path) -> None:
    fx, _, _ = _fx(tmp_path, FakeJournal())
    guard = fx.guard
    assert isinstance(guard, FakeGuard)
    fx.do([node.CancelPromotion()])
    assert guard.wakes == 1  # its next step sees the role and revokes every send permit


def test_applies_queued_behind_the_replay_start_are_not_fed_twice(tmp_path: Path) -> None:
    """A batch Raft applied before the plan was taken, whose announcement the loop handles
    after the replay started, is in the plan: fed again, its IKE_ADDs would leave charon two
    IKE_SAs with one ID, and a later IKE_DELETE would destroy only one (the CI run of d3be1c0:
    a restored backup kept a deleted lease tunnel and went to FAULT on charon_drift)."""
    announced: list[tuple[list[bytes], int]] = []  # the loop's queue (Supervisor.threadsafe)
    (port,) = free_ports(1)
    journal = ClusterJournal("n1", f"127.0.0.1:{port}", [], tmp_path / "raft",
                             derive_keys(bytes(range(32)), "test"),
                             on_applied=lambda batch, applied, refeed, number: announced.append(
                                 ([raw for raw, _ in applied] + refeed, number)))
    try:
        wait_until(lambda: journal.status()["role"] == "leader", 20)
        fx, spawned, _ = _fx(tmp_path, journal, Role.BACKUP)  # type: ignore[arg-type]
        stream = tunnels(5).datagrams
        first, later = stream[:12], stream[12:]  # three tunnels, then two
        _commit(journal, first)
        fx.do(fx.core.tick(1.0, 0.0, node.RaftView("leader", "n1", 3, 3)))  # the replay starts
        assert len(spawned) == 1
        spawned.pop().close()  # its end (`_replayed`) is not what this test is about
        plan = list(fx.feed.queued)  # type: ignore[attr-defined]
        # this process's first replay: each IKE_SA deleted first (an earlier hasync may have
        # fed this charon), then the first batch
        deletes = [raw for raw in plan if decode(raw).type is MessageType.IKE_DELETE]
        assert len(deletes) == 3 and plan and set(plan) - set(deletes) <= set(first)
        _commit(journal, later)
        for datagrams, number in announced:  # now the loop handles what Raft announced
            fx.do(fx.core.on_applied(datagrams, None, None, number))
        queued = fx.feed.queued  # type: ignore[attr-defined]
        assert queued == plan + list(later)  # the first batch once (in the plan), then later
        adds = [raw for raw in queued if decode(raw).type is MessageType.IKE_ADD]
        assert len(adds) == len(set(adds)) == 5
        assert fx.core.counters["replay_covered"] == len(first)
    finally:
        journal.destroy()


def _commit(journal: ClusterJournal, datagrams: list[bytes]) -> None:
    done: list[object] = []
    journal.submit(datagrams, lambda result, error: done.append(error))
    wait_until(lambda: done, 20)
    assert outcome(done[0]) is FailReason.SUCCESS
