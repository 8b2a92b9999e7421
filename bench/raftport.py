#!/usr/bin/env python3
"""What junk on the Raft port costs a node (issue 17 finding 4): pysyncobj's TCPTransport
against hasync's GuardedTransport (hasync/raftnet.py).

One node (a one-node SyncObj with a password, as ClusterJournal runs it) on 127.0.0.1; one
connection from the same address (a member's) announces a 1 GiB message and sends --mib MiB
of random bytes. Prints and saves (--json) per transport:
- seconds: until the node closed the connection or took every byte;
- accepted_mib: what the node's socket took before it closed;
- max_tick_gap_ms: the longest time without a tick of the node from the attack's start to 1 s
  after its end (the tick thread also runs Raft: elections, heartbeats, applies);
- rss_growth_mib: the process's resident memory after the attack minus before.

Usage: .venv/bin/python bench/raftport.py [--mib 64] [--json bench/results/raftport.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from pysyncobj.transport import TCPTransport  # noqa: E402

from hasync.raftnet import guarded_transport  # noqa: E402
from hasync.raftport import PortCounters  # noqa: E402
from hasync.syncobj_compat import SyncObj, SyncObjConf  # noqa: E402

from netutil import free_ports  # noqa: E402


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _attack(port: int, mib: int, deadline_s: float) -> tuple[float, int]:
    """Send a 1 GiB header and `mib` MiB of junk; (seconds, bytes the socket took)."""
    block = os.urandom(1 << 20)
    sock = socket.create_connection(("127.0.0.1", port), timeout=deadline_s)
    sent, start = 0, time.monotonic()
    data = struct.pack("i", 1 << 30) + block
    try:
        while sent < mib << 20 and time.monotonic() - start < deadline_s:
            sent += sock.send(data)
            data = block
    except OSError:
        pass
    finally:
        sock.close()
    return time.monotonic() - start, sent


def run(mode: str, mib: int, deadline_s: float) -> dict[str, Any]:
    """One transport under the junk attack."""
    (port,) = free_ports(1)
    counters = PortCounters()
    transport = TCPTransport if mode == "pysyncobj" else guarded_transport(counters)
    conf = SyncObjConf(password="bench", autoTickPeriod=0.05, dynamicMembershipChange=False)
    node = SyncObj(f"127.0.0.1:{port}", [], conf, transportClass=transport)
    ticks: list[float] = []
    node.addOnTickCallback(lambda: ticks.append(time.monotonic()))
    try:
        time.sleep(1.0)
        rss = _rss_mib()
        start = time.monotonic()
        seconds, sent = _attack(port, mib, deadline_s)
        time.sleep(1.0)  # let the node read what its socket took
        during = [start] + [t for t in ticks if t >= start] + [time.monotonic()]
        gaps = [b - a for a, b in itertools.pairwise(sorted(during))]
        return {"transport": mode, "seconds": round(seconds, 3),
                "accepted_mib": round(sent / (1 << 20), 1),
                "max_tick_gap_ms": round(max(gaps, default=0.0) * 1000, 1),
                "rss_growth_mib": round(_rss_mib() - rss, 1), "counters": counters.snapshot()}
    finally:
        node.destroy()
        time.sleep(0.5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--deadline", type=float, default=120.0)
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "raftport.json")
    a = ap.parse_args()
    results = [run(mode, a.mib, a.deadline) for mode in ("hasync", "pysyncobj")]
    out = {"mib": a.mib, "machine": platform.machine(), "cpus": os.cpu_count(),
           "python": platform.python_version(), "results": results}
    print(json.dumps(out, indent=1))
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
