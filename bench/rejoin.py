#!/usr/bin/env python3
"""Rejoin benchmark: how long a restarted member of a 3-node loopback cluster takes to hear
the Raft leader again (D252: pysyncobj retries a lost peer every connectionRetryTime, 5 s by
default; hasync sets 0.5 s).

Usage: .venv/bin/python bench/rejoin.py [--down 2.0] [--rounds 6] [--json PATH]
Each round SIGKILLs a follower, wipes its state directory, waits --down seconds, starts it,
and times until its `hasync status` names the leader. Only a follower the leader connects to
is restarted (pysyncobj: the member whose "ip:port" sorts higher connects, transport.py
_shouldConnect); a cluster without one is built again. Prints and saves (--json) every time
and the median; process start-up (about 0.3 s) is included.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from localcluster import LocalCluster  # noqa: E402


def rejoin_times(down: float, rounds: int) -> list[float]:
    """Seconds from each restart until the member names the leader."""
    for _ in range(10):
        times = _rounds(down, rounds)
        if times:
            return times
    raise RuntimeError("no cluster had a follower the leader connects to")


def _rounds(down: float, rounds: int) -> list[float]:
    """One cluster's rounds; [] if the leader connects to none of its followers."""
    base = Path(tempfile.mkdtemp(prefix="hasync-rejoin."))
    c = LocalCluster(base)
    times: list[float] = []
    try:
        c.start_all()
        c.wait(lambda: c.leader() is not None, 60, "a Raft leader")
        leader = c.leader()
        assert leader is not None
        followers = [n for n in c.nodes if n is not leader
                     and f"127.0.0.1:{n.raft}" < f"127.0.0.1:{leader.raft}"]
        for k in range(rounds if followers else 0):
            node = followers[k % len(followers)]
            c.kill(node, signal.SIGKILL)
            shutil.rmtree(node.dir / "state", ignore_errors=True)
            time.sleep(down)
            t0 = time.monotonic()
            c.start(node)
            while not ((c.status(node, digest=False) or {}).get("raft") or {}).get("leader"):
                if time.monotonic() - t0 > 60:
                    raise RuntimeError(f"{node.name} heard no leader within 60 s")
                time.sleep(0.02)
            times.append(round(time.monotonic() - t0, 2))
            time.sleep(1.0)
    finally:
        c.close()
        shutil.rmtree(base, ignore_errors=True)
    return times


def main() -> int:
    """Run, print, save."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--down", type=float, default=2.0, help="seconds the member stays down")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--json", type=Path, help="write the results here")
    a = ap.parse_args()
    times = rejoin_times(a.down, a.rounds)
    res = {"down_s": a.down, "rejoin_s": times, "median_s": round(statistics.median(times), 2)}
    print(f"rejoin after {a.down} s down: {times} (median {res['median_s']} s)")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
