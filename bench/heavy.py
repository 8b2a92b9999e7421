#!/usr/bin/env python3
"""What heavy commands cost on a node holding many tunnels (issue 17 findings 6 and 7).

Builds the journal state of --tunnels tunnels (tests/hastream.py: IKE_ADD, IKE_MID_RESPONDER,
IKE_UPDATE, CHILD_ADD each) and 2 sequence records per tunnel, then measures:
- sas_unpaged: `hasync sas` as it was (every summary under the journal lock, one answer):
  lock held (= the event loop's stall: the handler runs on it), answer bytes vs the control
  protocol's 16 MiB;
- sas_paged: the handler now (status.py Answers.sas, page after page, SAS_PAGE each): the
  longest page (lock held, = longest loop stall), all pages, the largest answer;
- snapshot_old: the serializer as it was: to_dict of both logs under the lock, then pickle,
  seal and fsync on Raft's thread (lock held, Raft thread busy);
- snapshot_new: SnapshotFiles.save now (raftsnap.py, snapwriter.py): lock held, time on the
  calling (Raft) thread, the worker's time; the state is swapped into a one-node journal;
- memory: bytes per tunnel of the journal state and per SA of the sequence records and of the
  rate meter (tracemalloc over --mem-tunnels), RSS per tunnel at --tunnels.
Prints and saves JSON (--json, default bench/results/heavy_<tunnels>.json).

Usage: .venv/bin/python bench/heavy.py [--tunnels 100000] [--mem-tunnels 5000] [--json PATH]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from hasync.control import MAX_RESPONSE  # noqa: E402
from hasync.guard.entries import SeqLog  # noqa: E402
from hasync.guard.records import SeqRecord  # noqa: E402
from hasync.guard.rules import RateMeter  # noqa: E402
from hasync.ha import decode  # noqa: E402
from hasync.journal.machine import ApplyMachine  # noqa: E402
from hasync.journal.seal import Sealer, derive_keys, seal_chunks  # noqa: E402
from hasync.journal.state import JournalState  # noqa: E402
from hasync.raft import ClusterJournal  # noqa: E402
from hasync.raftsnap import pack_snapshot  # noqa: E402
from hasync.status import SAS_PAGE, Answers, sas_answer  # noqa: E402

import hastream  # noqa: E402
from netutil import free_ports  # noqa: E402

KEYS = derive_keys(bytes(range(32)), "bench")


class TimedLock:
    """An RLock that records how long each outermost hold lasted."""

    def __init__(self) -> None:
        self._lock, self._depth, self._since, self.holds = threading.RLock(), 0, 0.0, []

    def __enter__(self) -> TimedLock:
        self._lock.acquire()
        self._depth += 1
        if self._depth == 1:
            self._since = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.holds.append(time.perf_counter() - self._since)
        self._lock.release()

    def acquire(self, *a: Any, **k: Any) -> bool:
        return self._lock.acquire(*a, **k)

    def release(self) -> None:
        self._lock.release()


class Ticker:
    """A thread that wakes every millisecond and records the longest gap: how long any
    other Python thread (Raft's tick thread, the event loop) could not run, GIL included."""

    def __init__(self) -> None:
        self.longest, self._stop = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last = time.perf_counter()
        while not self._stop.is_set():
            time.sleep(0.001)
            now = time.perf_counter()
            self.longest, last = max(self.longest, now - last - 0.001), now

    def __enter__(self) -> Ticker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def build(n: int) -> tuple[JournalState, SeqLog]:
    """The journal state and sequence log of `n` tunnels."""
    s = hastream.tunnels(n)
    st = JournalState()
    for i, raw in enumerate(s.datagrams):
        st.apply(raw, decode(raw), 1000.0 + i)
    seqs = SeqLog(sender=("gw1", 1))
    for spi in s.child_spis:
        for k in (("192.0.2.1", spi, 50), ("198.51.100.1", spi ^ 0xFFFF, 50)):
            seqs.put(SeqRecord(k, 1 << 20, 123456, (0xFFFFFFFF,), 1500.0, "gw1", 1.7e9, 1))
    return st, seqs


def rss() -> int:
    """Resident bytes of this process."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def sas(st: JournalState) -> dict[str, Any]:
    """`hasync sas` before (one answer) and now (pages)."""
    t = time.perf_counter()
    old = sas_answer(st.summaries(time.time()))
    held = time.perf_counter() - t
    old_bytes = len(json.dumps({"ok": True, "result": old}, separators=(",", ":")))
    del old
    lock = TimedLock()
    answers = Answers(cfg=None, core=None, journal=type("J", (), {"lock": lock, "state": st}),
                      fx=None, healthfile=None, takeover=dict, started=0.0)  # type: ignore
    t, pages, largest, longest, after = time.perf_counter(), 0, 0, 0.0, 0
    while after is not None:
        p0 = time.perf_counter()
        page = answers.sas({"after": after})
        longest = max(longest, time.perf_counter() - p0)
        largest = max(largest, len(json.dumps({"ok": True, "result": page},
                                              separators=(",", ":"))))
        pages, after = pages + 1, page["next"]
        time.sleep(0.001)  # the loop serves others between two requests
    return {"sas_unpaged": {"lock_s": round(held, 3), "answer_bytes": old_bytes,
                            "over_control_limit": old_bytes > MAX_RESPONSE},
            "sas_paged": {"page": SAS_PAGE, "pages": pages,
                          "longest_page_s": round(longest, 4),
                          "longest_lock_s": round(max(lock.holds), 4),
                          "all_pages_s": round(time.perf_counter() - t, 3),
                          "largest_answer_bytes": largest}}


def snapshot_old(st: JournalState, seqs: SeqLog, d: Path) -> dict[str, Any]:
    """The serializer as it was: to_dict under the lock, the rest on Raft's thread."""
    sealer = Sealer(KEYS, "n1")
    t = time.perf_counter()
    state, seq = st.to_dict(), seqs.to_dict()
    locked = time.perf_counter() - t
    data = seal_chunks(sealer, pack_snapshot(state, seq, None))
    with open(d / "old.snapshot", "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return {"lock_s": round(locked, 3), "raft_thread_s": round(time.perf_counter() - t, 3),
            "bytes": len(data)}


def snapshot_new(st: JournalState, seqs: SeqLog, d: Path) -> dict[str, Any]:
    """The journal's serializer now (SnapshotFiles.save), on this thread as pysyncobj would
    call it."""
    (port,) = free_ports(1)
    j = ClusterJournal("n1", f"127.0.0.1:{port}", [], d / "node", KEYS)
    try:
        lock = TimedLock()
        j.lock = lock  # type: ignore[assignment]
        with lock:
            j._machine = ApplyMachine(st, seqs)
        lock.holds.clear()
        final = d / "new.snapshot"
        with Ticker() as ticker:
            t = time.perf_counter()
            j._snapshots.save(str(final) + ".tmp", None)
            caller = time.perf_counter() - t
            j._snapshots.writer.wait()
            worker = time.perf_counter() - t
        while not final.exists():  # pysyncobj's tick thread calls the checker
            time.sleep(0.01)
        return {"lock_s": round(max(lock.holds), 4), "raft_thread_s": round(caller, 4),
                "worker_s": round(worker, 3), "longest_gil_stall_s": round(ticker.longest, 4),
                "bytes": final.stat().st_size}
    finally:
        j.destroy()  # asynchronous: let Raft's thread close its journal before the dir goes
        time.sleep(1.0)


def memory(n: int) -> dict[str, Any]:
    """tracemalloc bytes per tunnel (journal state), per SA (seq record, rate meter)."""
    s = hastream.tunnels(n, seed=3)
    decoded = [(raw, decode(raw)) for raw in s.datagrams]
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    st = JournalState()
    for i, (raw, msg) in enumerate(decoded):
        st.apply(raw, msg, float(i))
    state_b = tracemalloc.get_traced_memory()[0] - base
    del decoded
    gc.collect()
    base = tracemalloc.get_traced_memory()[0]
    meters = [RateMeter() for _ in range(n)]
    for step in range(31):  # a 3 s window of 0.1 s ticks
        for m in meters:
            m.update(step * 0.1, step * 1000 + 1)
    meter_b = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return {"journal_state_bytes_per_tunnel": round(state_b / n),
            "rate_meter_bytes_per_sa": round(meter_b / n),
            "datagram_bytes_per_tunnel": round(sum(map(len, s.datagrams)) / n)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tunnels", type=int, default=100_000)
    ap.add_argument("--mem-tunnels", type=int, default=5000)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    out: dict[str, Any] = {"tunnels": a.tunnels, "python": platform.python_version(),
                           "machine": platform.machine(), "cpus": os.cpu_count()}
    gc.collect()
    before = rss()
    t = time.perf_counter()
    st, seqs = build(a.tunnels)
    gc.collect()
    out["build_s"] = round(time.perf_counter() - t, 1)
    out["rss_bytes_per_tunnel"] = round((rss() - before) / a.tunnels)
    out.update(sas(st))
    with tempfile.TemporaryDirectory(dir=ROOT / "bench" / "results") as tmp:
        out["snapshot_old"] = snapshot_old(st, seqs, Path(tmp))
        out["snapshot_new"] = snapshot_new(st, seqs, Path(tmp))
    out["memory"] = memory(a.mem_tunnels)
    print(json.dumps(out, indent=1))
    path = a.json or ROOT / "bench" / "results" / f"heavy_{a.tunnels}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
