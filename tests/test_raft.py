"""The Raft journal in one process: apply never raises and says so once, snapshots are sealed
and restore, shared state is read through copies."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hasync.guard.entries import ACCEPTED, REJECTED, SeqEntry
from hasync.guard.records import SeqRecord
from hasync.ha import MessageType, decode
from hasync.journal.machine import Kind
from hasync.journal.seal import Sealer, derive_keys, pack_batch
from hasync.journal.state import JournalState
from hasync.raft import ClusterJournal
from hasync.syncobj_compat import FailReason, outcome

import hastream
from netutil import free_ports, wait_until

KEYS = derive_keys(bytes(range(32)), "test")
KEY = ("192.0.2.101", 0xC0FFEE01, 50)


def _wait(pred: Callable[[], object], timeout: float = 20.0) -> None:
    wait_until(pred, timeout)


def _node(tmp: Path, port: int, **kw: Any) -> ClusterJournal:
    return ClusterJournal("n1", f"127.0.0.1:{port}", [], tmp, KEYS, **kw)


@pytest.fixture
def leader(tmp_path: Path) -> Any:
    """A one-node cluster, already leader."""
    (port,) = free_ports(1)
    j = _node(tmp_path, port)
    try:
        _wait(lambda: j.status()["role"] == "leader")
        yield j
    finally:
        j.destroy()


def _logged(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    """The log records about counter `name`."""
    return [r for r in caplog.records if r.getMessage().startswith(f"raft journal: {name}: ")]


def _commit(propose: Callable[[Callable[[Any, Any], None]], None]) -> FailReason:
    """Propose, wait for pysyncobj's callback, return its outcome by name."""
    return _commit_result(propose)[0]


def _commit_result(propose: Callable[[Callable[[Any, Any], None]], None]) -> tuple[
        FailReason, Any]:
    """Propose, wait for pysyncobj's callback: its outcome by name and the apply's result."""
    done: list[tuple[Any, Any]] = []
    propose(lambda result, error: done.append((result, error)))
    _wait(lambda: done)
    return outcome(done[0][1]), done[0][0]


def test_stream_applies_snapshot_is_sealed_and_restores(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    s = hastream.tunnels(30)
    j = _node(tmp_path, port)
    try:
        _wait(lambda: j.status()["role"] == "leader")
        done: list[object] = []
        for i in range(0, len(s.datagrams), 8):
            j.submit(s.datagrams[i:i + 8], lambda r, e: done.append(e))
        j._propose_sealed(Kind.BATCH, b"\x02not a sealed entry", lambda r, e: done.append(e))
        j._propose_sealed(Kind.BATCH, b"", lambda r, e: done.append(e))
        _wait(lambda: len(done) == 17)
        assert j.counters["entry_rejected:SealError"] == 2  # counted, never raised
        assert len(j.state.summaries(0.0)) == 30
        adds = sum(decode(d).type == MessageType.CHILD_ADD for d in s.datagrams)
        assert j.child_adds == adds > 0
        before = j.state.to_dict()
        j.compact()
        _wait(lambda: (tmp_path / "raft.snapshot").exists())
    finally:
        j.destroy()
    time.sleep(0.5)
    for f in tmp_path.iterdir():
        data = f.read_bytes()
        for secret in s.secrets:
            assert secret not in data, f"secret in clear in {f.name}"
    j2 = _node(tmp_path, port)
    try:
        _wait(lambda: len(j2.state.summaries(0.0)) == 30)
        assert j2.state.to_dict() == before
    finally:
        j2.destroy()


def test_each_rejection_is_logged_once_and_counted_each_time(
        leader: ClusterJournal, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="hasync.raft")
    for _ in range(3):
        assert _commit(lambda cb: leader._propose_sealed(Kind.SEQ, b"garbage", cb)) == (
            FailReason.SUCCESS)
    other = Sealer(derive_keys(bytes(32), "test"), "n9")  # another cluster's key
    sealed = other.seal(pack_batch([b"x"], "n9", 1.0), Kind.BATCH)
    assert _commit(lambda cb: leader._propose_sealed(Kind.BATCH, sealed, cb)) == (
        FailReason.SUCCESS)
    mine = Sealer(KEYS, "n9").seal(b"\x93\x01", Kind.BATCH)  # opens, but is no batch
    assert _commit(lambda cb: leader._propose_sealed(Kind.BATCH, mine, cb)) == (
        FailReason.SUCCESS)
    unknown = Sealer(KEYS, "n9").seal(b"\x93\x01", 99)  # opens as kind 99: no such kind
    assert _commit(lambda cb: leader._propose_sealed(99, unknown, cb)) == FailReason.SUCCESS
    leader._replica.apply([1], mine, callback=lambda r, e: None)  # unhashable kind
    assert _commit(leader.barrier) == FailReason.SUCCESS  # applied after it: not wedged
    counters = leader.counters
    assert counters["seq_rejected:SealError"] == 3
    assert counters["entry_rejected:SealError"] == 2  # another key; a kind it was not sealed for
    assert counters["entry_rejected:EntryError"] == 2  # not a batch; an unknown kind
    assert set(counters) == {"seq_rejected:SealError", "entry_rejected:SealError",
                             "entry_rejected:EntryError", "barriers_applied"}
    for name in set(counters) - {"barriers_applied"}:
        (record,) = _logged(caplog, name)  # once per name, however often it is hit
        assert record.exc_info is None  # named rejections: no traceback
    assert len(caplog.records) == 3


def test_a_raising_listener_is_logged_once_with_its_traceback(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def boom(*_: object) -> None:
        raise RuntimeError("listener bug")

    caplog.set_level(logging.ERROR, logger="hasync.raft")
    (port,) = free_ports(1)
    j = _node(tmp_path, port, on_applied=boom)
    j.on_seq = boom
    try:
        _wait(lambda: j.status()["role"] == "leader")
        s = hastream.tunnels(2)
        for _ in range(2):
            assert _commit(lambda cb: j.submit(s.datagrams[:4], cb)) == FailReason.SUCCESS
        assert _commit(j.claim) == FailReason.SUCCESS  # moves the sender: on_seq too
        rec = SeqRecord(KEY, 5000, 7, (1,), 50.0, "n1", 1.0, 1)
        assert _commit(lambda cb: j.submit_seq(SeqEntry("n1", 1.0, (rec,), epoch=1), cb)) == (
            FailReason.SUCCESS)
        assert j.counters["on_applied_error"] == 2 and j.counters["on_seq_error"] == 2
        assert j.counters["batches_applied"] == 2  # the state moved on regardless
        assert len(caplog.records) == 2
        for name in ("on_applied_error", "on_seq_error"):
            (r,) = _logged(caplog, name)
            assert r.exc_info is not None and "listener bug" in str(r.exc_info[1])
    finally:
        j.destroy()


def test_seq_barrier_and_member_reports_apply(leader: ClusterJournal) -> None:
    moved: list[int] = []
    rec = SeqRecord(KEY, 5000, 7, (1,), 50.0, "n1", 1.0, 1)
    entry = SeqEntry("n1", 1.0, (rec,), epoch=1)
    # before any claim nobody is the sender: the entry commits, is rejected, changes nothing
    assert _commit_result(lambda cb: leader.submit_seq(entry, cb)) == (
        FailReason.SUCCESS, REJECTED)
    assert _commit_result(leader.claim) == (FailReason.SUCCESS, 1)  # the claim's epoch
    leader.on_seq = lambda: moved.append(1)
    assert _commit_result(lambda cb: leader.submit_seq(entry, cb)) == (
        FailReason.SUCCESS, ACCEPTED)
    with leader.lock:
        assert leader.seqs.records[KEY] == rec and leader.seqs.sender == ("n1", 1)
    assert moved == [1]
    assert leader.counters["seq_rejected:not_sender"] == 1
    assert _commit(leader.barrier) == FailReason.SUCCESS
    info = {"vrrp": "BACKUP", "raft": "leader", "applied": 3, "ts": 1.5}
    assert _commit(lambda cb: leader.report(info, cb)) == FailReason.SUCCESS
    view = leader.members_view()
    assert view == {"n1": info}
    view["n1"]["vrrp"] = "changed"  # a copy: the journal's reports stay as applied
    assert leader.members_view()["n1"]["vrrp"] == "BACKUP"
    c = leader.counters
    assert (c["seq_entries_applied"], c["barriers_applied"], c["member_reports_applied"]) == (
        1, 1, 1)


def test_raft_status_is_a_copy_taken_on_rafts_thread(leader: ClusterJournal) -> None:
    st = leader.raft_status()
    assert st["state"] == 2 and st["leader"] is not None and st["commit_idx"] >= 1
    st["state"] = 0  # a copy: changing it changes nothing
    assert leader.raft_status()["state"] == 2
    s = leader.status()
    assert s["role"] == "leader" and s["peers"] == {} and s["applied_index"] >= 1


def test_a_snapshot_that_does_not_open_is_counted_and_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="hasync.raft")
    (tmp_path / "raft.snapshot").write_bytes(b"\x00\x00\x00\x05hello")
    (port,) = free_ports(1)
    j = _node(tmp_path, port)
    try:
        _wait(lambda: j.counters["snapshot_load_error"] == 1)
        (r,) = _logged(caplog, "snapshot_load_error")
        assert r.exc_info is not None
    finally:
        j.destroy()


def test_a_proposal_after_destroy_fails_by_name(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    j = _node(tmp_path, port)
    j.destroy()
    done: list[Any] = []
    j.barrier(lambda result, error: done.append(outcome(error)))
    assert done == [FailReason.MISSING_LEADER]


def test_a_state_bug_is_counted_per_datagram_and_logged_once_with_its_traceback(
        leader: ClusterJournal, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object) -> None:
        raise KeyError("state bug")

    caplog.set_level(logging.WARNING, logger="hasync.raft")
    monkeypatch.setattr(leader.state, "apply", broken)
    s = hastream.tunnels(1)
    for _ in range(2):
        assert _commit(lambda cb: leader.submit(s.datagrams[:3], cb)) == FailReason.SUCCESS
    assert leader.counters["apply_error"] == 6 and leader.counters["batches_applied"] == 2
    (r,) = _logged(caplog, "apply_error")
    assert r.exc_info is not None and "state bug" in str(r.exc_info[1])
    assert len(caplog.records) == 1


def test_finding8_an_entry_is_bound_to_its_kind_and_an_old_format_is_named(
        leader: ClusterJournal) -> None:
    """A sealed member report resubmitted as a claim does not open (the kind is the seal's
    purpose: seal.py); a format-1 entry (before issue 17) is counted under its own name."""
    from hasync.journal.machine import pack_member
    report = Sealer(KEYS, "n9").seal(pack_member("n9", {"vrrp": "BACKUP"}), Kind.MEMBER)
    assert _commit(lambda cb: leader._propose_sealed(Kind.CLAIM, report, cb)) == (
        FailReason.SUCCESS)
    old = b"\x01" + bytes(12) + bytes(40)
    assert _commit(lambda cb: leader._propose_sealed(Kind.BATCH, old, cb)) == FailReason.SUCCESS
    counters = leader.counters
    assert counters["claim_rejected:SealError"] == 1
    assert counters["entry_rejected:SealFormatError"] == 1


def _fill(j: ClusterJournal, n: int, seed: int = 1) -> None:
    """Commit `n` tunnels of the synthetic stream (within _wait's 20 s)."""
    s, done = hastream.tunnels(n, seed=seed), []
    for i in range(0, len(s.datagrams), 8):
        j.submit(s.datagrams[i:i + 8], lambda r, e: done.append(e))
    _wait(lambda: len(done) == (len(s.datagrams) + 7) // 8)


def _gated_pack(monkeypatch: pytest.MonkeyPatch, j: ClusterJournal) -> tuple[
        threading.Event, list[tuple[str, bool]]]:
    """Make snapshot packing wait for a gate (30 s at most); record its thread and whether
    the journal lock was free meanwhile."""
    import hasync.raftsnap as raftsnap
    gate, seen = threading.Event(), []
    real = raftsnap.pack_snapshot

    def slow_pack(*args: Any) -> bytes:
        free = j.lock.acquire(timeout=5)  # what the event loop would wait for
        if free:
            j.lock.release()
        seen.append((threading.current_thread().name, free))
        gate.wait(30)
        return real(*args)

    monkeypatch.setattr(raftsnap, "pack_snapshot", slow_pack)
    return gate, seen


def test_finding6_a_snapshot_is_packed_off_the_lock_and_off_rafts_thread(
        leader: ClusterJournal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While a snapshot is being packed, the lock is free and Raft keeps committing; the
    snapshot lands once packed and holds the state as it was copied."""
    import hasync.raftsnap as raftsnap
    _fill(leader, 20)
    before = leader.state.to_dict()
    gate, seen = _gated_pack(monkeypatch, leader)
    leader.compact()
    _wait(lambda: seen)
    assert seen == [("hasync-snapshot", True)]
    _fill(leader, 3, seed=2)  # before the fix: Raft's thread is stuck in the serializer
    assert not (tmp_path / "raft.snapshot").exists()  # only a finished snapshot is put in place
    gate.set()
    _wait(lambda: (tmp_path / "raft.snapshot").exists())
    state, _seqs, _raft_data, _streams = raftsnap.unpack_snapshot(
        raftsnap.open_chunks(leader._sealer, (tmp_path / "raft.snapshot").read_bytes()))
    assert state == before and "snapshot_save_error" not in leader.counters


def test_a_local_snapshot_finishing_after_an_installed_one_is_discarded(
        leader: ClusterJournal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A local snapshot that finishes after one from the leader was installed is discarded."""
    _fill(leader, 5)
    final = tmp_path / "raft.snapshot"
    gate, seen = _gated_pack(monkeypatch, leader)
    leader.compact()
    _wait(lambda: seen)
    final.write_bytes(b"the leader's snapshot")  # as Serializer.setTransmissionData does
    leader._snapshots.writer.installed()  # then SnapshotFiles.load
    gate.set()
    _wait(lambda: not leader._snapshots.writer.busy)
    assert final.read_bytes() == b"the leader's snapshot"
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_a_snapshot_installed_over_a_fed_state_announces_the_jump(tmp_path: Path) -> None:
    """A node that fed charon from its own (older) state and then installs the leader's
    snapshot announces, as one numbered batch, the datagrams that take charon from the one
    to the other (JournalState.jump_plan): without them charon kept the old SAs (the CI run
    of 37f02a7: a restored gateway with its journal on disk, a CHILD_SA lost)."""
    ports = free_ports(2)
    leader_stream, own_stream = hastream.tunnels(3, seed=1), hastream.tunnels(2, seed=2)
    leader = _node(tmp_path / "leader", ports[0])
    try:
        _wait(lambda: leader.status()["role"] == "leader")
        assert _commit(lambda cb: leader.submit(leader_stream.datagrams, cb)) == (
            FailReason.SUCCESS)
        leader.compact()
        _wait(lambda: (tmp_path / "leader" / "raft.snapshot").exists())
    finally:
        leader.destroy()
    heard: list[tuple[Any, list[Any], list[bytes], int]] = []
    node = _node(tmp_path / "node", ports[1], on_applied=lambda *a: heard.append(a))
    try:
        _wait(lambda: node.status()["role"] == "leader")
        assert _commit(lambda cb: node.submit(own_stream.datagrams, cb)) == FailReason.SUCCESS
        _wait(lambda: heard)
        with node.lock:
            old = JournalState.from_dict(node.state.to_dict())
        node._snapshots.load(str(tmp_path / "leader" / "raft.snapshot"))
        batch, applied, jump, number = heard[-1]
        assert batch is None and applied == [] and number == node.applied_batches == 2
        assert jump == node.state.jump_plan(old) and node.counters["snapshot_jumps"] == 1
        deleted = {decode(raw).get("ike_id") for raw in jump
                   if decode(raw).type == MessageType.IKE_DELETE}
        assert len(deleted) == 2 and len(node.state.summaries(0.0)) == 3
    finally:
        node.destroy()


def test_proposals_go_on_while_a_snapshot_load_resets_pysyncobjs_method_names(
        leader: ClusterJournal) -> None:
    """A snapshot load (SyncObj.__loadDumpFile) ends with __onSetCodeVersion(0) on Raft's
    thread, which empties and refills the table pysyncobj's @replicated wrapper reads on the
    caller's thread; a proposal in that window raised KeyError((consumer id, 'apply')) from the
    loop (seen on a restarted gateway loading the leader's snapshot). Proposals must not read it."""
    stop = threading.Event()

    def reload_names() -> None:
        while not stop.is_set():
            leader._raft._SyncObj__onSetCodeVersion(0)  # what every snapshot load ends with

    loader = threading.Thread(target=reload_names)
    loader.start()
    done: list[FailReason] = []
    try:
        for _ in range(3000):
            leader.barrier(lambda result, error: done.append(outcome(error)))
    finally:
        stop.set()
        loader.join()
    _wait(lambda: len(done) == 3000)
    assert set(done) == {FailReason.SUCCESS}
