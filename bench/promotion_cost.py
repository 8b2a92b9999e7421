"""What a promotion costs after the barrier, natively: the sequence guard's work from its claim
being applied to charon's activation (`xfrm_ms` + `activate_ms` of its report), at N tunnels.

This host has no ESP, so bench/failover.py measures it in the VM under TCG only. Here the
guard's real code runs with the real send fence (libnftables in-process, as the daemon runs
it, D278; in a network namespace of its own: bench/fence_net.py) and a stand-in for the XFRM
port (tests/guardfakes.py, an in-memory kernel): on the promotion's common path (D273: the
kernel's SA notices say nothing changed since the backup's last read) the promotion reads no
SA and writes none, so the stand-in is not touched after the backup's tick. Each run: a
backup holding 2N SAs with journaled marks ticks once (its read, its pre-jumps, its standby
permits behind the shut gate), then promotes; the median of `--repeats` per N, and a
least-squares fit over N. Needs root and nft. Prints a table and saves
bench/results/promotion_cost.json.

    .venv/bin/python bench/promotion_cost.py [--tunnels 100,1000,10000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent / "tests"))

from fence_net import FenceNet  # noqa: E402

from hasync.fence.nft import NftFence  # noqa: E402
from hasync.guard import Guard, KernelSa, Reserve  # noqa: E402
from hasync.guard.entries import SeqRecord  # noqa: E402

from guardfakes import FakeJournal, FakeKernel, FakeWatch  # noqa: E402

RESULTS = ROOT / "results" / "promotion_cost.json"


def sa_key(i: int, out: bool) -> tuple[str, int, int]:
    """Tunnel i's outbound SA (to its client) or inbound SA (to the VIP)."""
    dst = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}" if out else "192.0.2.1"
    return dst, 0x100000 + 2 * i + (0 if out else 1), 50


async def _promote(n: int, net: FenceNet) -> dict[str, float]:
    """One backup with `n` tunnels ticks, then promotes: its report's phases in ms."""
    journal, role, watch = FakeJournal(), [False], FakeWatch()
    sas = []
    for i in range(n):
        for out in (True, False):
            key = sa_key(i, out)
            journal.seqs.put(SeqRecord(key, 5000, 0, (0,), 50.0, "gw1", 1.0))
            sas.append(KernelSa(key, False, 10, 0, (0,), 32))
    kernel = FakeKernel(sas)
    fence = NftFence(netns=net.sender, timeout_s=300.0, library=True)  # as the daemon
    acts: list[float] = []
    g = Guard("gw2", journal, Reserve(), lambda: acts.append(time.monotonic()), fence, 0.1,
              kernel=kernel, clock=time.monotonic, wall=time.time, sleep=asyncio.sleep,
              is_master=lambda: role[0], watch=watch)  # type: ignore[arg-type]
    try:
        await g.step(master=False, mirrored=0)  # read, pre-jump, standby permits
        jumped = {w.sa.key: w.oseq for w in kernel.writes}
        kernel.sas = [KernelSa(s.key, False, jumped.get(s.key, s.oseq), 0, (0,), 32)
                      for s in sas]
        kernel.writes, role[0] = [], True
        t0 = time.monotonic()
        rep = await g.promote()
        total = (time.monotonic() - t0) * 1000
    finally:
        g.close()
    assert rep.read == "notices" and rep.writes == 0 and not kernel.writes, rep
    return {"claim_ms": rep.wait_ms, "xfrm_ms": rep.xfrm_ms, "activate_ms": rep.activate_ms,
            "after_barrier_ms": round(rep.xfrm_ms + rep.activate_ms, 2),
            "total_ms": round(total, 2)}


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares y = a + b x: (a, b)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs)
    return my - b * mx, b


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tunnels", default="100,1000,10000")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path, default=RESULTS)
    a = p.parse_args()
    ns = [int(x) for x in a.tunnels.split(",")]
    rows = []
    net = FenceNet().open()
    try:
        for n in ns:
            runs = [asyncio.run(_promote(n, net)) for _ in range(a.repeats)]
            row = {"tunnels": n, **{k: round(statistics.median(r[k] for r in runs), 2)
                                    for k in runs[0]}}
            rows.append(row)
            print(f"N={n:>6}: claim {row['claim_ms']:8.1f} ms, after the barrier "
                  f"{row['after_barrier_ms']:8.1f} ms (XFRM phase {row['xfrm_ms']:.1f}, "
                  f"activate {row['activate_ms']:.1f})", flush=True)
    finally:
        net.close()
    a0, slope = fit([float(r["tunnels"]) for r in rows], [r["after_barrier_ms"] for r in rows])
    print(f"after the barrier: {a0:.2f} ms + {slope:.5f} ms/tunnel x N (target < 0.01)")
    out = {"host": platform.node(), "python": platform.python_version(),
           "date": time.strftime("%Y-%m-%d"), "repeats": a.repeats, "rows": rows,
           "fit": {"intercept_ms": round(a0, 3), "ms_per_tunnel": round(slope, 6)}}
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
