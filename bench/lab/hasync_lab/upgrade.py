"""A package upgrade of the next master's charon, before the master fails (issue 17, finding 3).

Rules: the restart is done as strongSwan's unit would do it on a package upgrade with deploy/'s
drop-in: SIGTERM to charon, deploy/strongswan-ha-flush.conf's `ip xfrm state flush` and
`ip xfrm policy flush`, a new charon, and its connections loaded LOAD_DELAY_S after its vici
socket opens (strongswan.service's `swanctl --load-all`, delayed so that a replay sent before
the load would be lost, as it was before this issue). hasync is given no hint: the lab then only
watches, up to RECOVER_TIMEOUT_S, until charon holds the journal's IKE_SAs again (vici `stats`),
the kernel holds two SAs per tunnel, and hasync's health is good; what it saw is reported, and
the failover that follows (a kill of the master) is measured as any other.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

from . import cluster, hasyncd
from .session import Run

log = logging.getLogger("hasync_lab")
LOAD_DELAY_S = 5.0
RECOVER_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0


def next_master(run: Run, master: str) -> str:
    """The backup VRRP picks when `master` fails: the highest priority running keepalived."""
    running = {n for n, w, p in run.lab.procs if w == "keepalived" and p.poll() is None}
    backups = [g for g in run.priorities if g != master and g in running]
    return max(backups, key=lambda g: run.priorities[g])


def charon_ikes(run: Run, node: str) -> int | None:
    """IKE_SAs `node`'s charon holds, passive ones included (vici `stats` ikesas.total)."""
    from hasync import vicicheck
    answer = vicicheck.ask(cluster.vici_path(run.lab, node), 5.0, vicicheck.stats)
    return answer.value if answer.ok else None


def kernel_sas(run: Run, node: str) -> int:
    """ESP SAs in `node`'s kernel."""
    out = run.lab.run(node, ["ip", "xfrm", "state", "list"], check=False)
    return sum(1 for line in out.splitlines() if line.startswith("src "))


def upgrade_charon(run: Run, master: str) -> dict[str, Any]:
    """Restart the next master's charon as an upgrade would; wait until hasync refilled it."""
    lab, node = run.lab, next_master(run, master)
    want = len({(t.client, t.conn) for t in run.tunnels})  # IKE_SAs (inner6: 2 flows, 1 SA)
    before = hasyncd.status(lab, node) or {}
    replays_before = (before.get("counters") or {}).get("replays", 0)
    t0 = time.monotonic()
    for n, w, p in lab.procs:
        if n == node and w == "charon" and p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(STOP_TIMEOUT_S)
    for what in ("state", "policy"):  # deploy/strongswan-ha-flush.conf
        lab.run(node, ["ip", "xfrm", what, "flush"])
    cluster.start_charon(lab, node)
    cluster.wait_charon(lab, node)
    t_vici = time.monotonic()
    time.sleep(LOAD_DELAY_S)
    cluster.load_config(lab, node)
    t_loaded = time.monotonic()
    log.info("charon on %s restarted as an upgrade would; waiting for hasync to refill it", node)
    held = ikes = sas = None
    while time.monotonic() < t0 + RECOVER_TIMEOUT_S:
        st = hasyncd.status(lab, node) or {}
        ikes, sas = charon_ikes(run, node), kernel_sas(run, node)
        healthy = ((st.get("health") or {}).get("healthy")) is True
        if ikes == want and sas >= 2 * want and healthy and st.get("synced"):
            held = time.monotonic()
            break
        time.sleep(1.0)
    st = hasyncd.status(lab, node) or {}
    charon = (st.get("takeover") or {}).get("charon") or {}
    result = {"node": node, "tunnels": want, "charon_ikes": ikes, "kernel_sas": sas,
              "refilled": held is not None,
              "refilled_after_load_s": round(held - t_loaded, 2) if held else None,
              "vici_up_after_stop_s": round(t_vici - t0, 2),
              "charon_restarts_seen": charon.get("restarts"),
              "replays": (st.get("counters") or {}).get("replays", 0) - replays_before,
              "replays_abandoned": (st.get("counters") or {}).get("replays_abandoned", 0),
              "health": (st.get("health") or {}).get("reasons")}
    log.info("upgrade of %s's charon: %s", node, result)
    return result
