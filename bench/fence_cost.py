"""What the send fence costs: the time of a grant transaction for N SAs, and raw ESP packets/s
through a veth pair with and without the fence (N permits installed).

Needs root, `ip` and /usr/sbin/nft; runs in two network namespaces of its own (bench/fence_net.py)
and deletes them. Grants: the first grant of N new SAs (permits and counters), then a grant
moving every SA's mark (delete + add per SA: a tick where all SAs moved), then one SA's mark
with N installed, then `counts()`; each the median of `--repeats`. Packets/s: one process sends
`--packets` raw ESP packets of one permitted SA as fast as it can; the receiver counts arrivals
on its input hook. Prints a table and saves bench/results/fence_cost.json.

    .venv/bin/python bench/fence_cost.py [--sas 1,100,1000,20000] [--packets 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fence_net import V4, FenceNet

from hasync.fence.nft import NftFence
from hasync.fence.port import Permit

RESULTS = Path(__file__).resolve().parent / "results" / "fence_cost.json"
DST = V4[1]
SPI = 0x1000
BASE_SPI = 0x10000


def permits(n: int, mark: int) -> list[Permit]:
    """N SAs to one peer (the measured SA first), each permitted (mark - 2^20, mark]."""
    keys = [(DST, SPI, 50)] + [(DST, BASE_SPI + k, 50) for k in range(n - 1)]
    return [Permit(k, max(mark - (1 << 20), 0), mark, False) for k in keys]


def ms(coro_factory, repeats: int) -> float:  # type: ignore[no-untyped-def]
    """The median milliseconds of `repeats` runs of a fresh coroutine."""
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        asyncio.run(coro_factory())
        runs.append((time.perf_counter() - t) * 1000)
    return statistics.median(runs)


def grant_costs(net: FenceNet, n: int, repeats: int, library: bool) -> dict[str, float]:
    """Milliseconds of a first grant, a grant moving all N, one moving one SA, counts(), a
    grant of prepared permits and a backup's counts() with them; through the nft command or
    libnftables in-process."""
    fence = NftFence(netns=net.sender, timeout_s=120.0, library=library)
    firsts = []
    for _ in range(repeats):
        asyncio.run(fence.setup())
        t = time.perf_counter()
        asyncio.run(fence.grant(permits(n, 1 << 21)))
        firsts.append((time.perf_counter() - t) * 1000)
    marks = iter(range((1 << 21) + 1000, 1 << 30, 1000))
    all_ms = ms(lambda: fence.grant(permits(n, next(marks))), repeats)
    one = iter(range(1 << 30, 1 << 31, 1000))
    one_ms = ms(lambda: fence.grant([Permit((DST, SPI, 50), 0, next(one), False)]), repeats)
    counts_ms = ms(fence.counts, repeats)
    prepared, standby = [], []  # a promotion's grant when a backup prepared the same
    for _ in range(repeats):  #    permits behind the shut gate (D262, D265), and its counts
        asyncio.run(fence.setup())
        asyncio.run(fence.prepare(permits(n, 1 << 21)))
        standby.append(ms(fence.counts, 1))
        t = time.perf_counter()
        asyncio.run(fence.grant(permits(n, 1 << 21)))  # opens the gate, then adds counters
        prepared.append((time.perf_counter() - t) * 1000)
    return {"first_grant_ms": round(statistics.median(firsts), 1),
            "grant_all_ms": round(all_ms, 1), "grant_one_ms": round(one_ms, 1),
            "counts_ms": round(counts_ms, 1),
            "grant_prepared_ms": round(statistics.median(prepared), 1),
            "standby_counts_ms": round(statistics.median(standby), 1)}


def throughput(net: FenceNet, n: int | None, packets: int, above: bool = False
               ) -> dict[str, float]:
    """Packets/s sent and how many arrived; `n` permits installed (None: no fence at all), the
    measured SA's permitted 1..packets (`above`: its packets are all above the mark)."""
    subprocess.run(["ip", "netns", "exec", net.sender, "nft", "flush", "ruleset"], check=True)
    if n is not None:
        fence = NftFence(netns=net.sender, timeout_s=120.0)
        asyncio.run(fence.setup())
        asyncio.run(fence.grant(permits(n, packets)))
    net.count_esp()
    pps = net.blast(DST, SPI, packets + 1 if above else 1, packets)
    time.sleep(0.2)
    got = net.received_esp()
    return {"sent_pps": round(pps), "received": got, "above_mark": above}


def netns_exec_ms(net: FenceNet, repeats: int) -> float:
    """What `ip netns exec` adds to each nft command here (the daemon runs nft without it)."""
    runs = []
    for _ in range(max(repeats, 5)):
        t = time.perf_counter()
        subprocess.run(["ip", "netns", "exec", net.sender, "true"], check=True)
        runs.append((time.perf_counter() - t) * 1000)
    return round(statistics.median(runs), 1)


def main() -> int:
    """Measure, print, save."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sas", default="1,100,1000,20000", help="SA counts, comma-separated")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--packets", type=int, default=200000)
    a = ap.parse_args()
    sizes = sorted(int(x) for x in a.sas.split(","))
    net = FenceNet().open()
    try:
        grants = [{"backend": b, "sas": n, **grant_costs(net, n, a.repeats, b == "library")}
                  for b in ("process", "library") for n in sizes]
        flows = [{"sas": None, **throughput(net, None, a.packets)}]
        flows += [{"sas": n, **throughput(net, n, a.packets)} for n in sizes]
        flows.append({"sas": sizes[-1], **throughput(net, sizes[-1], a.packets, above=True)})
        exec_ms = netns_exec_ms(net, a.repeats)
    finally:
        net.close()
    print(f"{'backend':>8} {'SAs':>7} {'first ms':>9} {'all ms':>9} {'one ms':>8} "
          f"{'counts ms':>10} {'prepared ms':>12} {'standby counts':>15}")
    for g in grants:
        print(f"{g['backend']:>8} {g['sas']:>7} {g['first_grant_ms']:>9} {g['grant_all_ms']:>9} "
              f"{g['grant_one_ms']:>8} {g['counts_ms']:>10} {g['grant_prepared_ms']:>12} "
              f"{g['standby_counts_ms']:>15}")
    print(f"(each nft command here includes `ip netns exec`: {exec_ms} ms)")
    print(f"\n{'permits':>8} {'sent pkt/s':>11} {'received':>9} {'seq':>10}")
    for f in flows:
        label = "no fence" if f["sas"] is None else str(f["sas"])
        seq = "above mark" if f["above_mark"] else "permitted"
        print(f"{label:>8} {f['sent_pps']:>11} {f['received']:>9} {seq:>10}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "machine": platform.platform(), "python": platform.python_version(),
        "nft": subprocess.run(["nft", "--version"], capture_output=True, text=True).stdout.strip(),
        "repeats": a.repeats, "packets": a.packets, "netns_exec_ms": exec_ms, "grants": grants,
        "throughput": flows},
        indent=1) + "\n")
    print(f"written to {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
