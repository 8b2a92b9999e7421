"""What sealing costs (issue 17 finding 8, seal format 2): the time to seal and to open one
journal entry of several sizes, to derive one subkey (HKDF, paid once per node, purpose and
generation an opener meets), and to seal and open a snapshot of `--snapshot` bytes in chunks.
Each is the median of `--repeats` runs of `--loops` calls. Prints a table and saves
bench/results/seal_cost.json.

    .venv/bin/python bench/seal_cost.py [--repeats 7] [--loops 2000] [--snapshot 8000000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from hasync.journal.seal import Sealer, derive_keys, derive_subkey, open_chunks, seal_chunks

RESULTS = Path(__file__).resolve().parent / "results" / "seal_cost.json"
SIZES = (64, 4096, 65536, 192 * 1024)


def per_call_us(fn: Callable[[], object], loops: int, repeats: int) -> float:
    """The median over `repeats` of the mean time of one call, in microseconds."""
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        runs.append((time.perf_counter() - start) / loops * 1e6)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--loops", type=int, default=2000)
    ap.add_argument("--snapshot", type=int, default=8_000_000)
    a = ap.parse_args()
    keys = derive_keys(os.urandom(32), "bench")
    sealer, reader = Sealer(keys, "gw1"), Sealer(keys, "gw2")
    rows: dict[str, float] = {}
    for size in SIZES:
        payload = os.urandom(size)
        blob = sealer.seal(payload, 1)
        loops = max(20, a.loops * 64 // max(64, size // 64))
        rows[f"seal_{size}B_us"] = per_call_us(lambda p=payload: sealer.seal(p, 1), loops,
                                               a.repeats)
        rows[f"open_{size}B_us"] = per_call_us(lambda b=blob: reader.open(b, 1), loops,
                                               a.repeats)
    rows["derive_subkey_us"] = per_call_us(
        lambda: derive_subkey(keys, 1, os.urandom(8), "gw1"), a.loops, a.repeats)
    snap = os.urandom(a.snapshot)
    sealed = seal_chunks(sealer, snap)
    rows["snapshot_seal_ms"] = per_call_us(lambda: seal_chunks(sealer, snap), 1, a.repeats) / 1e3
    rows["snapshot_open_ms"] = per_call_us(lambda: open_chunks(reader, sealed), 1,
                                           a.repeats) / 1e3
    for name, value in rows.items():
        print(f"{name:24} {value:10.2f}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": platform.machine(), "python":
                                   platform.python_version(), "snapshot_bytes": a.snapshot,
                                   "results": rows}, indent=1) + "\n")
    print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
