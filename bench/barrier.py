#!/usr/bin/env python3
"""The promotion's barrier against one Raft round trip, natively (issue 19: "the barrier no
longer than one Raft round trip when the leader survives").

A 3-node cluster of the real journal (`hasync.raft.ClusterJournal`: pysyncobj over TCP on
loopback, sealed entries, durable journals), one process per node. One node becomes the
sender and journals the replay-state records of N tunnels (2N SAs, SEQ entries of 512
records); a follower that does not lead Raft then times, alternately, `--rounds` times each:

- `barrier_ms`: an empty entry, submitted until its callback here (the node has applied it):
  one Raft commit as this node sees it, the round trip the target is measured against;
- `claim_ms`: a CLAIM with the term's first marks (`Reserve()`, D261), submitted until its
  callback here: the promotion's barrier (`guard.promoter`, `_claim_once`).

Between rounds each node reads its records as the guard's next tick does after a claim (so a
claim's marks are in the records before the next one, as in the daemon). Prints medians and
maxima per N and saves them (--json).

    .venv/bin/python bench/barrier.py [--tunnels 0,1000,10000] [--rounds 15]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from promotion_cost import sa_key  # noqa: E402  (the same tunnels' SAs)

from hasync.guard.entries import SeqEntry  # noqa: E402
from hasync.guard.records import SeqRecord  # noqa: E402
from hasync.guard.rules import Reserve  # noqa: E402
from hasync.journal.seal import derive_keys  # noqa: E402
from hasync.raft import ClusterJournal  # noqa: E402

from netutil import free_ports  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "barrier.json"
PER_ENTRY = 512  # records per SEQ entry (entries.MAX_RECORDS)


def _wait(submit: Any, timeout: float = 20.0) -> tuple[float, Any]:
    """Submit with a callback; (ms until it ran, its result); raise if it failed."""
    done = threading.Event()
    box: list[Any] = []
    t0 = time.perf_counter()
    submit(lambda result, error: (box.append((result, error)), done.set()))
    if not done.wait(timeout):
        raise TimeoutError("no callback")
    ms = (time.perf_counter() - t0) * 1000
    result, error = box[0]
    if error not in (None, 0):
        raise RuntimeError(f"commit failed: {error}")
    return ms, result


def _seed(j: ClusterJournal, n: int) -> int:
    """Become the sender and journal 2n records; the number of records held."""
    _, epoch = _wait(lambda cb: j.claim(cb))
    recs = [SeqRecord(sa_key(i, out), 5000, 0, (0,), 50.0, j.node, time.time(), epoch)
            for i in range(n) for out in (True, False)]
    pending = []
    for at in range(0, len(recs), PER_ENTRY):
        ev = threading.Event()
        j.submit_seq(SeqEntry(j.node, time.time(), tuple(recs[at:at + PER_ENTRY]), (),
                              epoch), lambda r, e, ev=ev: ev.set())
        pending.append(ev)
    for ev in pending:
        ev.wait(30)
    with j.lock:
        return len(j.seqs.records)


def _reader(j: ClusterJournal, stop: threading.Event) -> None:
    """Read the records whenever a mark moved, as the guard's tick does (driver.py)."""
    seen = -1
    while not stop.wait(0.05):
        with j.lock:
            if j.seqs.moves != seen:
                seen = j.seqs.moves
                len(j.seqs.records)


def _node(i: int, ports: list[int], base: str, conn: Connection) -> None:
    """One member: answers the parent's commands over `conn`."""
    keys = derive_keys(bytes(range(32)), "bench")
    me = f"127.0.0.1:{ports[i]}"
    j = ClusterJournal(f"gw{i}", me, [f"127.0.0.1:{p}" for p in ports if p != ports[i]],
                       Path(base) / f"n{i}", keys)
    stop = threading.Event()
    threading.Thread(target=_reader, args=(j, stop), daemon=True).start()
    try:
        while True:
            cmd, arg = conn.recv()
            if cmd == "quit":
                break
            if cmd == "role":
                conn.send(j.status()["role"])
            elif cmd == "seed":
                conn.send(_seed(j, arg))
            elif cmd == "time":
                conn.send(_rounds(j, arg))
    finally:
        stop.set()
        j.destroy()


def _rounds(j: ClusterJournal, rounds: int) -> dict[str, list[float]]:
    """Alternate barriers and claims; each round's times in ms."""
    out: dict[str, list[float]] = {"barrier_ms": [], "claim_ms": []}
    for _ in range(rounds):
        time.sleep(0.3)  # the other nodes' readers take the last claim's marks in
        out["barrier_ms"].append(_wait(j.barrier)[0])
        time.sleep(0.3)
        ms, epoch = _wait(lambda cb: j.claim(cb, Reserve()))
        if type(epoch) is not int:
            raise RuntimeError(f"claim refused: {epoch!r}")
        out["claim_ms"].append(ms)
    return out


def _ask(conn: Connection, cmd: str, arg: Any = None) -> Any:
    conn.send((cmd, arg))
    if not conn.poll(300):
        raise TimeoutError(cmd)
    return conn.recv()


def run(n: int, rounds: int) -> dict[str, Any]:
    """One fresh cluster with n tunnels' records: the times of a follower's commits."""
    base = tempfile.mkdtemp(prefix=".barrier-", dir=ROOT)
    ports = free_ports(3)
    ctx = mp.get_context("spawn")
    pipes = [ctx.Pipe() for _ in ports]
    procs = [ctx.Process(target=_node, args=(i, ports, base, pipes[i][1]), daemon=True)
             for i in range(3)]
    for p in procs:
        p.start()
    conns = [a for a, _ in pipes]
    try:
        deadline = time.monotonic() + 30
        while True:
            roles = [_ask(c, "role") for c in conns]
            if roles.count("leader") == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        leader = roles.index("leader")
        followers = [i for i in range(3) if i != leader]
        held = _ask(conns[followers[1]], "seed", n)
        times = _ask(conns[followers[0]], "time", rounds)
        if [_ask(c, "role") for c in conns].index("leader") != leader:
            raise RuntimeError("the leader changed during the run")
    finally:
        for c in conns:
            c.send(("quit", None))
        for p in procs:
            p.join(10)
        shutil.rmtree(base, ignore_errors=True)
    row: dict[str, Any] = {"tunnels": n, "records": held}
    for name, xs in times.items():
        row[name.replace("_ms", "_p50_ms")] = round(statistics.median(xs), 2)
        row[name.replace("_ms", "_max_ms")] = round(max(xs), 2)
        row[name] = [round(x, 2) for x in xs]
    row["claim_over_barrier"] = round(row["claim_p50_ms"] / row["barrier_p50_ms"], 2)
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tunnels", default="0,1000,10000")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--json", type=Path, default=RESULTS)
    a = p.parse_args()
    rows = []
    for n in (int(x) for x in a.tunnels.split(",")):
        row = run(n, a.rounds)
        rows.append(row)
        print(f"N={n:>6}: barrier p50 {row['barrier_p50_ms']:6.1f} ms (max "
              f"{row['barrier_max_ms']:6.1f}), claim p50 {row['claim_p50_ms']:6.1f} ms (max "
              f"{row['claim_max_ms']:6.1f}), claim/barrier {row['claim_over_barrier']}",
              flush=True)
    out = {"python": platform.python_version(), "rounds": a.rounds, "rows": rows}
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(out, indent=2) + "\n")
    print("saved", a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
