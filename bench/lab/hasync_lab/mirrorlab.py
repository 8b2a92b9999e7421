"""The mirror scenario: hasync on every gateway, clients connected through the master, and a
gateway that starts only afterwards; every backup's charon must end up holding the master's
IKE_SAs (PASSIVE, same SPIs) and its kernel the same ESP SAs.

Rules: the result holds what vici, `ip xfrm` and `hasync status` said; teardown always runs.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from . import hasyncd
from .scenario import bring_up, gateways, start_gateways, tunnel_table
from .session import LabSpec, Run, kernel_release, lab_run


def _status_text(run: Run, gw: str) -> str:
    """`hasync status` as a user on the gateway would run it."""
    res = subprocess.run([sys.executable, "-m", "hasync", "status", "--config",
                          str(run.lab.etc_dir(gw) / "hasync.toml")], capture_output=True,
                         text=True, timeout=60, stdin=subprocess.DEVNULL)
    return res.stdout + res.stderr


def run_mirror(spec: LabSpec, out_dir: Path) -> dict[str, object]:
    """Run the mirror scenario; return the result document."""
    with lab_run(spec, out_dir) as run:
        t0 = time.monotonic()
        bring_up(run)
        early, late = gateways(run), gateways(run, late=True)
        master = early[0]
        views = hasyncd.wait_mirrored(run.lab, master, early[1:])
        t_late = time.monotonic()
        if late:
            start_gateways(run, late)
        views = hasyncd.wait_mirrored(run.lab, master, early[1:] + late)
        caught_up = time.monotonic() - t_late
        hasyncd.wait_members(run.lab, early + late, master)
        gws = {}
        for gw in early + late:
            gws[gw] = {"late": gw in late, "view": views[gw],
                       "mirrors_master": gw == master or hasyncd.mirrored(views[master],
                                                                          views[gw]),
                       "status": hasyncd.status(run.lab, gw),
                       "status_text": _status_text(run, gw)}
        return {"mode": "hasync", "scenario": "mirror", "kernel": kernel_release(),
                "master": master, "tunnels": tunnel_table(run), "gateways": gws,
                "late_catchup_s": round(caught_up, 1) if late else None,
                "duration_s": round(time.monotonic() - t0, 1)}
