#!/usr/bin/env python3
"""Replication benchmark: 3 hasync daemons on loopback, fed charon-shaped HA streams.

Prints and saves (--json) msgs_per_s (committed HA messages per second at saturation),
p50_ms/p99_ms (from charon's datagram on the master to the same datagram at a backup's charon,
at 2,000 messages/s offered), bytes_per_tunnel (resident memory of a backup's daemon per
IKE_SA with one CHILD_SA, at 10k and 100k tunnels) and catchup_s (a node with an empty state
directory joining a cluster that holds 100k tunnels, until it has replayed them into charon).

Usage: .venv/bin/python bench/replication.py [--tunnels 100000] [--json PATH]
The streams clone a tunnel captured from the real charon (tests/data/ha) with fresh SPIs,
nonces and DH secrets; the stand-in charons are UDP sockets, so this measures hasync alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import hastream  # noqa: E402
from localcluster import LocalCluster, Node  # noqa: E402

TARGETS = {"msgs_per_s": 20000, "p99_ms": 20.0, "bytes_per_tunnel": 2048, "catchup_s": 10.0}


def rss_bytes(node: Node) -> int:
    """Resident memory of `node`'s daemon."""
    assert node.proc is not None
    for line in Path(f"/proc/{node.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def journaled(c: LocalCluster, node: Node) -> tuple[int, bool]:
    """(IKE_SAs in `node`'s journal, synced into its charon)."""
    st = c.status(node, digest=False)  # polled often: the digest would hash every SA
    return (st["journal"]["ike_sas"], st["synced"]) if st else (-1, False)


def feed_saturated(c: LocalCluster, master: Node, datagrams: list[bytes], want: int,
                   window: int = 4000) -> float:
    """Keep the master busy: at most `window` datagrams sent and not yet read by hasync (its
    socket buffer holds about that many; a real charon never bursts more), checked every
    0.1 s; return the seconds until every node journaled `want` tunnels."""
    def accepted() -> int:
        st = c.status(master, digest=False)
        return st["ha"].get("accepted", 0) if st else 0

    t0, sent, acc0 = time.monotonic(), 0, accepted()
    while sent < len(datagrams):
        room = window - (sent - (accepted() - acc0))
        if room > 0:
            c.feed(master, datagrams[sent:sent + room])
            sent = min(sent + room, len(datagrams))
        time.sleep(0.1)
    deadline = time.monotonic() + 900
    while not all(journaled(c, n)[0] >= want for n in c.nodes):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the cluster did not journal {want} tunnels within 900 s")
        time.sleep(0.2)
    return time.monotonic() - t0


def latency(c: LocalCluster, master: Node, backup: Node, rate: float, seconds: float,
            first_tunnel: int) -> list[float]:
    """Per-datagram master-charon to backup-charon latency (ms) at `rate` messages/s."""
    s = hastream.tunnels(int(rate * seconds / 4), seed=first_tunnel)
    arrived: dict[bytes, float] = {}
    stop = threading.Event()
    assert backup.charon is not None

    def drain() -> None:
        while not stop.is_set():
            try:
                arrived[backup.charon.recv(65535)] = time.monotonic()  # type: ignore[union-attr]
            except TimeoutError:
                continue

    c.drain(backup)
    t = threading.Thread(target=drain, daemon=True)
    t.start()
    sent_at: dict[bytes, float] = {}
    t0 = time.monotonic()
    for i, d in enumerate(s.datagrams):
        while time.monotonic() < t0 + i / rate:
            time.sleep(0.0002)
        sent_at[d] = time.monotonic()
        c.feed(master, [d])
    deadline = time.monotonic() + 10
    while len(set(sent_at) & set(arrived)) < len(sent_at) and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    t.join()
    return [(arrived[d] - ts) * 1000 for d, ts in sent_at.items() if d in arrived]


def catchup(c: LocalCluster, node: Node, want: int) -> float:
    """Wipe `node`'s state, restart it, and time until it journaled and replayed `want`."""
    c.kill(node, signal.SIGKILL)
    shutil.rmtree(node.dir / "state")
    t0 = time.monotonic()
    c.start(node)
    deadline = t0 + 600
    while journaled(c, node) != (want, True):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{node.name} did not catch up within 600 s")
        time.sleep(0.05)
    return time.monotonic() - t0


def run(tunnels: int) -> dict[str, Any]:
    """The whole benchmark; returns the results."""
    base = Path(tempfile.mkdtemp(prefix="hasync-bench."))
    c = LocalCluster(base)
    out: dict[str, Any] = {"nodes": 3, "tunnels": tunnels, "targets": TARGETS,
                           "machine": {"cpus": os.cpu_count(),
                                       "python": platform.python_version()}}
    try:
        c.start_all()
        c.wait(lambda: c.leader() is not None, 60, "a Raft leader")
        master, backups = c.nodes[0], c.nodes[1:]
        for n in c.nodes:
            c.vrrp(n, "MASTER" if n is master else "BACKUP")
        c.wait(lambda: all(journaled(c, b)[1] for b in backups), 30, "backups synced")
        rss0 = rss_bytes(backups[0])
        lat = sorted(latency(c, master, backups[0], 2000.0, 5.0, first_tunnel=10**6))
        done = journaled(c, master)[0]
        out["p50_ms"] = round(statistics.median(lat), 2)
        out["p99_ms"] = round(lat[int(len(lat) * 0.99) - 1], 2)
        out["latency_samples"] = len(lat)
        small = hastream.tunnels(10000 - done, seed=1)
        secs = feed_saturated(c, master, small.datagrams, 10000)
        out["msgs_per_s"] = round(len(small.datagrams) / secs)
        out["bytes_per_tunnel"] = {"10k": round((rss_bytes(backups[0]) - rss0) / 10000)}
        big = hastream.tunnels(tunnels - 10000, seed=2)
        secs = feed_saturated(c, master, big.datagrams, tunnels)
        out["msgs_per_s_100k"] = round(len(big.datagrams) / secs)
        out["bytes_per_tunnel"][f"{tunnels // 1000}k"] = round(
            (rss_bytes(backups[0]) - rss0) / tunnels)
        out["catchup_s"] = round(catchup(c, backups[1], tunnels), 1)
    finally:
        c.close()
        shutil.rmtree(base, ignore_errors=True)
    return out


def main() -> int:
    """Run, print, save."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tunnels", type=int, default=100000)
    ap.add_argument("--json", type=Path, help="write the results here")
    a = ap.parse_args()
    res = run(a.tunnels)
    for k in ("msgs_per_s", "msgs_per_s_100k", "p50_ms", "p99_ms", "bytes_per_tunnel",
              "catchup_s"):
        print(f"{k:>18}: {res[k]}   (target {TARGETS.get(k.split('_100k')[0], '-')})")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(res, indent=1) + "\n")
        print(f"written to {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
