#!/usr/bin/env python3
"""What syncing the Raft journal costs (issue 17 finding 5): pysyncobj's FileJournal (no msync,
no fsync) against hasync's DurableFileJournal (hasync/journal/durable.py).

Prints and saves (--json) per journal:
- append_us: one `add` of a 300-byte entry, alone (p50 over --adds appends);
- commit_p50_ms / commit_p99_ms: one HA batch (4 datagrams) submitted on the leader of a
  3-node ClusterJournal cluster on loopback until its callback, one at a time;
- commits_per_s: --pipelined batches submitted at once, all committed and applied.
The three nodes share this machine's disk (the state directories are made under --dir, by
default the checkout's filesystem, not a tmpfs), so every sync of every node hits one device.

Usage: .venv/bin/python bench/journal_sync.py [--commits 300] [--pipelined 2000]
       [--adds 2000] [--json bench/results/journal_sync.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from hasync.journal import durable  # noqa: E402
from hasync.journal.seal import derive_keys  # noqa: E402
from hasync.raft import ClusterJournal  # noqa: E402

import hastream  # noqa: E402
from netutil import free_ports  # noqa: E402

MODES = {"pysyncobj": False, "durable": True}


def append_us(base: Path, durable_mode: bool, n: int) -> float:
    """p50 microseconds of one journal `add` of a 300-byte entry."""
    path = str(base / f"adds-{durable_mode}")
    j = durable.create_journal(path) if durable_mode else durable.pj.FileJournal(path)
    times = []
    for i in range(1, n + 1):
        t = time.perf_counter()
        j.add(b"x" * 300, i, 1)
        times.append(time.perf_counter() - t)
    j._destroy()
    return statistics.median(times) * 1e6


def _wait(pred: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError("cluster did not get there")
        time.sleep(0.02)


def _commit(j: ClusterJournal, datagrams: list[bytes]) -> None:
    ev = threading.Event()
    errors: list[Any] = []
    j.submit(datagrams, lambda r, e: (errors.append(e), ev.set()))
    if not ev.wait(10) or errors[0] not in (None, 0):
        raise RuntimeError(f"commit failed: {errors}")


def cluster_numbers(base: Path, commits: int, pipelined: int) -> dict[str, float]:
    """Commit latency and throughput of a 3-node cluster with the installed journal."""
    ports = free_ports(3)
    keys = derive_keys(bytes(range(32)), "bench")
    nodes = [ClusterJournal(f"n{i}", f"127.0.0.1:{p}",
                            [f"127.0.0.1:{q}" for q in ports if q != p], base / f"n{i}", keys)
             for i, p in enumerate(ports)]
    try:
        _wait(lambda: sum(j.status()["role"] == "leader" for j in nodes) == 1)
        leader = next(j for j in nodes if j.status()["role"] == "leader")
        s = hastream.tunnels(commits + pipelined)
        batches = [s.datagrams[i:i + 4] for i in range(0, len(s.datagrams), 4)]
        lat = []
        for b in batches[:commits]:
            t = time.perf_counter()
            _commit(leader, b)
            lat.append(time.perf_counter() - t)
        done: list[Any] = []
        t = time.perf_counter()
        for b in batches[commits:commits + pipelined]:
            leader.submit(b, lambda r, e: done.append(e))
        _wait(lambda: len(done) >= pipelined, 120)
        elapsed = time.perf_counter() - t
        lat.sort()
        return {"commit_p50_ms": statistics.median(lat) * 1e3,
                "commit_p99_ms": lat[int(len(lat) * 0.99) - 1] * 1e3,
                "commits_per_s": pipelined / elapsed,
                "pipelined_failed": sum(e not in (None, 0) for e in done)}
    finally:
        for j in nodes:
            j.destroy()
        time.sleep(0.5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--commits", type=int, default=300)
    ap.add_argument("--pipelined", type=int, default=2000)
    ap.add_argument("--adds", type=int, default=2000)
    ap.add_argument("--dir", type=Path, default=ROOT)
    ap.add_argument("--json", type=Path, default=ROOT / "bench/results/journal_sync.json")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix=".journal-sync-", dir=args.dir))
    fs = subprocess.run(["df", "-T", str(base)], capture_output=True, text=True).stdout
    out: dict[str, Any] = {"python": platform.python_version(), "cpus": os.cpu_count(),
                           "filesystem": fs.splitlines()[-1].split()[1] if fs else "?",
                           "commits": args.commits, "pipelined": args.pipelined,
                           "adds": args.adds}
    try:
        for name, mode in MODES.items():
            durable.install(mode)
            d = base / name
            d.mkdir()
            row = {"append_us": append_us(d, mode, args.adds)}
            row.update(cluster_numbers(d, args.commits, args.pipelined))
            out[name] = row
            print(name, json.dumps({k: round(v, 2) for k, v in row.items()}), flush=True)
    finally:
        durable.install(True)
        shutil.rmtree(base, ignore_errors=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    print("saved", args.json)


if __name__ == "__main__":
    main()
