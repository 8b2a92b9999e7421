"""Lab tool, run inside a gateway's network namespace: read every outbound ESP SA's replay
state over XFRM netlink (GETAE) and move its outbound sequence number forward by JUMP
(NEWAE + NLM_F_REPLACE); then join XFRMNLGRP_AEVENTS, set each SA's replay threshold
(XFRMA_REPLAY_THRESH) and collect the replay events the traffic makes; print it all as JSON.

Rules: `python -m hasync_lab.xfrmjump SRC JUMP`; touches only SAs whose source is SRC; the
whole replay state is written back as read, with only oseq changed (xfrm_new_ae() copies
all of it); it prints no key material (hasync.xfrm keeps none).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time

from hasync.xfrm.socket import XfrmSocket


def jump_all(src: str, jump: int) -> list[dict[str, object]]:
    """Jump every SA from `src`; return what GETAE said before and after."""
    out: list[dict[str, object]] = []
    with XfrmSocket() as xs:
        for sa in xs.dump_sas():
            if str(sa.saddr) != src:
                continue
            dst, spi = sa.id.daddr, sa.id.spi
            before = xs.get_replay(dst, spi)
            if before.replay_esn is not None:
                st = before.replay_esn
                new = st.oseq64 + jump
                xs.set_replay_esn(dst, spi, state=dataclasses.replace(
                    st, oseq=new & 0xFFFFFFFF, oseq_hi=new >> 32))
                old = st.oseq64
            else:
                assert before.replay is not None
                r = before.replay
                xs.set_replay(dst, spi, seq=r.seq, oseq=r.oseq + jump, bitmap=r.bitmap)
                old = r.oseq
            after = xs.get_replay(dst, spi)
            now = after.replay_esn.oseq64 if after.replay_esn else after.replay.oseq  # type: ignore[union-attr]
            out.append({"spi": f"{spi:08x}", "dst": str(dst), "esn": before.replay_esn is not None,
                        "encap": sa.encap is not None, "oseq_before": old, "oseq_after": now})
    return out


EVENT_THRESHOLD = 5  # packets between replay events (XFRMA_REPLAY_THRESH)
EVENT_WATCH_S = 4.0


def watch_events(src: str) -> dict[str, dict[str, object]]:
    """Per SA from `src`: replay events seen in EVENT_WATCH_S with a threshold set."""
    out: dict[str, dict[str, object]] = {}
    with XfrmSocket() as xs:
        xs.subscribe_aevents()  # first: the kernel makes events only while someone listens
        for sa in xs.dump_sas():
            if str(sa.saddr) == src:
                xs.set_thresholds(sa.id.daddr, sa.id.spi, replay_maxdiff=EVENT_THRESHOLD)
                out[f"{sa.id.spi:08x}"] = {"events": 0, "max_oseq": 0, "thresh": None}
        for spi in out:
            out[spi]["thresh"] = xs.get_replay(*_dst_of(xs, spi)).replay_thresh
        deadline = time.monotonic() + EVENT_WATCH_S
        while time.monotonic() < deadline:
            for ev in xs.read_events(max(0.0, deadline - time.monotonic())):
                key = f"{ev.id.sa_id.spi:08x}"
                if key in out:
                    oseq = ev.replay_esn.oseq64 if ev.replay_esn else (
                        ev.replay.oseq if ev.replay else 0)
                    out[key]["events"] = int(out[key]["events"]) + 1  # type: ignore[call-overload]
                    out[key]["max_oseq"] = max(int(out[key]["max_oseq"]), oseq)  # type: ignore[call-overload]
    return out


def _dst_of(xs: XfrmSocket, spi: str) -> tuple[str, int]:
    """(destination, SPI) of the SA with this hex SPI."""
    for sa in xs.dump_sas():
        if f"{sa.id.spi:08x}" == spi:
            return str(sa.id.daddr), sa.id.spi
    raise LookupError(spi)


def main(argv: list[str]) -> int:
    """Print the jumps and the replay events as JSON."""
    jumps = jump_all(argv[0], int(argv[1]))
    print(json.dumps({"jumps": jumps, "events": watch_events(argv[0]),
                      "event_threshold": EVENT_THRESHOLD}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
