"""How long decoding an XFRM SA dump takes: whole (`SaInfo`), lean (`SaReplay`) and the
sequence guard's own decoder (`replayrows`, what the daemon runs).

The sequence guard dumps every SA each read; this measures the decode alone (no kernel, no
root), for dumps of N SAs built from one keyed, UDP-encapsulated SA as the kernel sends it.
Prints a table and saves bench/results/xfrm_decode.json.

    .venv/bin/python bench/xfrm_decode.py [--sas 200,2000,20000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from ipaddress import IPv4Address as A
from pathlib import Path

from hasync.xfrm import (
    Algorithm,
    Encap,
    LifetimeCfg,
    LifetimeCur,
    Message,
    MessageType,
    ReplayState,
    SaInfo,
    Selector,
    Stats,
    XfrmId,
)
from hasync.xfrm.codec import encode_message, parse_messages
from hasync.xfrm.replayrows import parse_replay_rows

RESULTS = Path(__file__).resolve().parent / "results" / "xfrm_decode.json"


def one_sa(spi: int) -> bytes:
    """One NEWSA as a GETSA dump carries it: AEAD, NAT-T encapsulation, replay state."""
    info = SaInfo(
        Selector(A("10.1.0.0"), A("10.3.0.7"), family=2, prefixlen_d=24, prefixlen_s=32),
        XfrmId(A("192.0.2.1"), spi, 50), A("192.0.2.200"), LifetimeCfg(), LifetimeCur(),
        Stats(), seq=0, reqid=spi & 0xFFFF, family=2, mode=1, replay_window=32, flags=0,
        encap=Encap(2, 4500, 4500, A("0.0.0.0")),
        replay=ReplayState(oseq=1000, seq=900, bitmap=0xFFFFFFFF),
        algorithms=(Algorithm("aead", "rfc4106(gcm(aes))"),))
    return encode_message(Message(MessageType.NEWSA, 2, 1, 0, info))


def time_decode(buf: bytes, lean: bool, repeats: int, rows: bool = False) -> float:
    """The median milliseconds of `repeats` decodes of `buf` (`rows`: the guard's decoder)."""
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        if rows:
            parse_replay_rows(buf, 1)
        else:
            parse_messages(buf, lean=lean)
        runs.append((time.perf_counter() - t) * 1000)
    return statistics.median(runs)


def main() -> int:
    """Measure, print, save."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sas", default="200,2000,20000", help="dump sizes, comma-separated")
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    rows = []
    for n in sorted(int(x) for x in a.sas.split(",")):
        buf = b"".join(one_sa(0xC0000000 + k) for k in range(n))
        full, lean = time_decode(buf, False, a.repeats), time_decode(buf, True, a.repeats)
        guard = time_decode(buf, True, a.repeats, rows=True)
        rows.append({"sas": n, "whole_ms": round(full, 1), "lean_ms": round(lean, 1),
                     "rows_ms": round(guard, 1), "speedup": round(full / lean, 2),
                     "rows_speedup": round(full / guard, 2)})
    print(f"{'SAs':>7} {'whole ms':>10} {'lean ms':>9} {'rows ms':>9} {'lean x':>7} {'rows x':>7}")
    for r in rows:
        print(f"{r['sas']:>7} {r['whole_ms']:>10} {r['lean_ms']:>9} {r['rows_ms']:>9} "
              f"{r['speedup']:>7} {r['rows_speedup']:>7}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": platform.platform(),
                                   "python": platform.python_version(),
                                   "repeats": a.repeats, "rows": rows}, indent=1) + "\n")
    print(f"written to {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
