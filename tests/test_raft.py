"""The Raft journal in one process: apply never raises, snapshots are sealed and restore."""

from __future__ import annotations

import time
from pathlib import Path

from hasync.journal.seal import derive_keys
from hasync.raft import ClusterJournal, _open_large, _seal_large

import hastream
from netutil import free_ports

KEYS = derive_keys(bytes(range(32)), "test")


def _wait(pred: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def _node(tmp: Path, port: int) -> ClusterJournal:
    return ClusterJournal("n1", f"127.0.0.1:{port}", [], tmp, KEYS)


def test_stream_applies_snapshot_is_sealed_and_restores(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    s = hastream.tunnels(30)
    j = _node(tmp_path, port)
    try:
        _wait(lambda: j.status()["role"] == "leader")
        done: list[object] = []
        for i in range(0, len(s.datagrams), 8):
            j.submit(s.datagrams[i:i + 8], lambda r, e: done.append(e))
        j._apply_batch(b"\x01not a sealed entry", callback=lambda r, e: done.append(e))
        j._apply_batch(b"", callback=lambda r, e: done.append(e))
        _wait(lambda: len(done) == 17)
        assert j.counters["entry_rejected:SealError"] == 2  # counted, never raised
        assert len(j.state.summaries(0.0)) == 30
        before = j.state.to_dict()
        j.forceLogCompaction()
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


def test_large_blobs_seal_in_chunks_and_detect_tampering() -> None:
    from hasync.journal.seal import Sealer, SealError
    sealer = Sealer(KEYS)
    blob = bytes(range(256)) * 3000  # several chunks
    sealed = _seal_large(sealer, blob)
    assert _open_large(sealer, sealed) == blob and blob[:1000] not in sealed
    for bad in (sealed[:-1], sealed[: len(sealed) // 2], sealed + sealed[:100]):
        try:
            _open_large(sealer, bad)
        except SealError:
            continue
        raise AssertionError("tampered snapshot opened")
