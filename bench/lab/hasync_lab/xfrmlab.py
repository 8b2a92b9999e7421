"""The XFRM check: with probe streams running through every tunnel, hasync's XFRM netlink
module reads each outbound ESP SA's replay state on the master and jumps its outbound
sequence number; the client must then see that SA's sequence numbers continue above the
jump, with its traffic and replay protection intact.

Rules: runs in the lab (VM or native); everything reported is read off the kernel (GETAE on
the gateway, the capture and xfrm_stat on the clients); teardown always runs.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from . import pcap, topology
from .prereq import LabError
from .scenario import bring_up, client_state, start_traffic, wait_flowing
from .session import LabSpec, Run, kernel_release, lab_run

JUMP = 100_000


def run_xfrm_check(spec: LabSpec, out_dir: Path) -> dict[str, object]:
    """Jump the master's outbound SAs during traffic; return what every side saw."""
    with lab_run(spec, out_dir) as run:
        return _jump_and_watch(run)


def _jump_and_watch(run: Run) -> dict[str, object]:
    """Bring the lab up, start traffic, jump gw1's outbound SAs, and read what followed."""
    topo = run.lab.topo
    bring_up(run)
    start_traffic(run)
    names = [c.name for c in topo.by_role("client")]
    if wait_flowing(run, time.monotonic(), 60) != set(names):
        raise LabError("probe traffic does not flow before the jump")
    before = {c: client_state(run, c) for c in names}
    out = run.lab.run("gw1", [sys.executable, "-m", "hasync_lab.xfrmjump",
                              topology.PUBLIC_VIP, str(JUMP)])
    t_jump = time.monotonic()
    doc = json.loads(out)
    jumps = doc["jumps"]
    flowing = wait_flowing(run, t_jump, 30)
    time.sleep(2.0)
    after = {c: client_state(run, c) for c in names}
    clients = {}
    for c in names:
        node = topo.node(c)
        cap = pcap.read_pcap(run.lab.base / "cap" / f"{c}.pcap")
        seen = pcap.spi_summary([p for p in cap.packets if p.dst == node.address])
        clients[c] = {"address": node.address, "nat": node.behind_nat,
                      "flowing_after": c in flowing,
                      "replay_errors": int(after[c]["seq_errors"])  # type: ignore[call-overload]
                      - int(before[c]["seq_errors"]),  # type: ignore[call-overload]
                      "last_seq_by_spi": {f"{spi:08x}": s.last_seq
                                          for spi, s in seen.items()}}
    return {"scenario": "xfrm-check", "kernel": kernel_release(), "jump": JUMP,
            "jumps": jumps, "events": doc["events"],
            "event_threshold": doc["event_threshold"], "clients": clients}
