"""hasync on the lab's gateways: configuration, start, status, and the check that every backup's
charon holds what the master's holds.

Rules: the lab runs the real `hasync daemon` in each gateway's namespaces, as systemd would
run it on a real gateway; Raft runs over the protected network; the lab reads hasync only
through its control socket, and charon and the kernel only through vici and `ip`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from hasync import control
from hasync.cli import sas_pages
from hasync.journal.seal import generate_key_file

from . import cluster, confgen, monitor, observe
from .prereq import LabError
from .procs import Lab

RAFT_PORT = 7100
log = logging.getLogger("hasync_lab")


def raft_addr(lab: Lab, gw: str) -> str:
    """A cluster node's Raft address: its protected-network address."""
    priv = f"{lab.topo.prefix}-priv"
    ifc = next(i for i in lab.topo.node(gw).ifaces if i.bridge == priv)
    return f"{ifc.addrs[0].split('/')[0]}:{RAFT_PORT}"


def members(lab: Lab) -> list[str]:
    """Every node that runs hasync: the gateways, then the witness if there is one."""
    return [n.name for n in lab.topo.nodes if n.role in ("gateway", "witness")]


def control_socket(lab: Lab, gw: str) -> Path:
    """A gateway's hasync control socket."""
    return lab.run_dir(gw) / "hasync.sock"


def vrrp_fifo(lab: Lab, gw: str) -> Path:
    """The FIFO keepalived writes VRRP events to for hasync."""
    return lab.run_dir(gw) / "hasync-vrrp.fifo"


def write_configs(lab: Lab) -> None:
    """One cluster key for all members, and each one's hasync.toml (the witness's holds only
    [node] and [cluster])."""
    gws = members(lab)
    key = lab.base / "cluster.key"
    generate_key_file(key)
    for gw in gws:
        etc = lab.etc_dir(gw)
        shutil.copy(key, etc / "cluster.key")
        os.chmod(etc / "cluster.key", 0o600)
        peers = [raft_addr(lab, o) for o in gws if o != gw]
        if lab.topo.node(gw).role == "witness":
            text = confgen.witness_toml(gw, raft_addr(lab, gw), peers, str(lab.base / "state" / gw),
                                        str(etc / "cluster.key"), str(control_socket(lab, gw)),
                                        str(health_file(lab, gw)))
        else:
            text = confgen.hasync_toml(
                gw, raft_addr(lab, gw), peers, str(lab.base / "state" / gw),
                str(etc / "cluster.key"), str(control_socket(lab, gw)), str(vrrp_fifo(lab, gw)),
                str(cluster.vici_path(lab, gw)), str(health_file(lab, gw)), metrics_addr(lab, gw))
        (etc / "hasync.toml").write_text(text)


def metrics_addr(lab: Lab, gw: str) -> str:
    """A gateway's metrics endpoint: its protected-network address (monitor.py scrapes it)."""
    return f"{raft_addr(lab, gw).rsplit(':', 1)[0]}:{monitor.METRICS_PORT}"


def start(lab: Lab, gw: str) -> None:
    """Start hasync on `gw` (in its private /run, where charon's control FIFO lives)."""
    lab.spawn(gw, "hasync", [sys.executable, "-m", "hasync", "daemon", "--config",
                             str(lab.etc_dir(gw) / "hasync.toml")],
              env={"PYTHONDONTWRITEBYTECODE": "1"})


# the checkout's deploy/ (this file is bench/lab/hasync_lab/hasyncd.py)
HEALTH_CHECK = Path(__file__).resolve().parents[3] / "deploy" / "hasync-health-check"


def health_file(lab: Lab, gw: str) -> Path:
    """Where `gw`'s hasync writes its health verdict."""
    return lab.run_dir(gw) / "hasync.health"


def health_cmd(lab: Lab, gw: str) -> str:
    """The command keepalived's track_script runs on `gw` (as deploy/ configures it)."""
    return f"/bin/sh {HEALTH_CHECK} {health_file(lab, gw)} {confgen.LAB_HEALTH_MAX_AGE_S}"


def wait_synced(lab: Lab, gw: str, timeout: float = 180) -> None:
    """Wait until `gw`'s hasync has caught up and replayed the journal into its charon."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = status(lab, gw)
        if st and st["synced"] and st["lag"] == 0:
            return
        time.sleep(0.5)
    raise LabError(f"hasync on {gw} did not sync within {timeout:.0f} s")


def wait_promotion(lab: Lab, gw: str, since_wall: float,
                   timeout: float) -> dict[str, Any] | None:
    """`gw`'s last promotion once it is done, if it started after `since_wall` (time.time());
    after `timeout`, whatever `hasync status` shows then."""
    deadline = time.monotonic() + timeout
    promotion = None
    while time.monotonic() < deadline:
        promotion = ((status(lab, gw) or {}).get("takeover") or {}).get("last_promotion")
        if promotion and promotion.get("started", 0) >= since_wall and promotion.get("done"):
            break
        time.sleep(0.5)
    return promotion


def status(lab: Lab, gw: str) -> dict[str, Any] | None:
    """`hasync status` of `gw`, or None while it does not answer."""
    try:
        return control.request(control_socket(lab, gw), "status", timeout=10.0)
    except control.ControlError:
        return None


def settled_status(lab: Lab, gws: list[str], timeout: float = 30.0
                   ) -> tuple[dict[str, dict[str, Any] | None], bool]:
    """Every gateway's status once all that answer have applied the same committed index (or
    the last poll after `timeout`), each with its journaled SAs (`sas`) for diagnosis, and
    whether they settled."""
    deadline = time.monotonic() + timeout
    while True:
        sts = {gw: status(lab, gw) for gw in gws}
        ok = settled(sts)
        if ok or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    for gw, st in sts.items():
        if st is not None:
            with contextlib.suppress(control.ControlError):
                pages = sas_pages(control_socket(lab, gw), timeout=10.0)  # every page
                st["sas"] = {"ike_sas": [ike for page in pages for ike in page["ike_sas"]]}
    return sts, ok


def settled(sts: dict[str, dict[str, Any] | None]) -> bool:
    """Whether every answering node has applied all it knows committed, at one index."""
    raft = [st["raft"] for st in sts.values() if st]
    return bool(raft) and all(r["applied_index"] == r["commit_index"] for r in raft) and len(
        {r["applied_index"] for r in raft}) == 1


def wait_cluster(lab: Lab, gws: list[str], timeout: float = 90) -> None:
    """Wait until every gateway's hasync answers and names a Raft leader."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sts = [status(lab, gw) for gw in gws]
        if all(st and st["raft"]["leader"] for st in sts):
            return
        time.sleep(0.5)
    raise LabError(f"hasync on {', '.join(gws)} did not form a Raft cluster within "
                   f"{timeout:.0f} s; see {lab.base / 'log'}")


def charon_view(lab: Lab, gw: str) -> dict[str, Any]:
    """A gateway's IKE_SAs (vici) and ESP SPIs (kernel)."""
    sas = observe.list_sas(str(cluster.vici_path(lab, gw)))
    return {"ike_sas": {s.spis: s.state for s in sas},
            "child_spis": sorted({spi for s in sas for pair in s.child_spis for spi in pair}),
            "xfrm_spis": sorted(f"{x.spi:08x}" for x in observe.xfrm_states(lab, gw))}


def mirrored(master: dict[str, Any], backup: dict[str, Any]) -> bool:
    """Whether `backup` holds every IKE_SA of `master` as PASSIVE and all its ESP SPIs."""
    established = any(state == "ESTABLISHED" for state in master["ike_sas"].values())
    return established and not any(missing(master, backup).values())


def missing(master: dict[str, Any], backup: dict[str, Any]) -> dict[str, list[str]]:
    """What `backup` lacks of `master`: IKE_SAs (not PASSIVE there) and kernel SPIs."""
    passive = {spis for spis, state in backup["ike_sas"].items() if state == "PASSIVE"}
    return {"ike_sas": sorted(spis for spis, state in master["ike_sas"].items()
                              if state == "ESTABLISHED" and spis not in passive),
            "xfrm_spis": sorted(set(master["xfrm_spis"]) - set(backup["xfrm_spis"]))}


def wait_mirrored(lab: Lab, master: str, backups: list[str],
                  timeout: float = 90) -> dict[str, dict[str, Any]]:
    """Wait until every backup mirrors `master`; return every gateway's view either way."""
    t0 = time.monotonic()
    while True:
        views = {gw: charon_view(lab, gw) for gw in [master, *backups]}
        done = [b for b in backups if mirrored(views[master], views[b])]
        if len(done) == len(backups) or time.monotonic() > t0 + timeout:
            log.info("%d of %d backups mirror %s after %.1f s", len(done), len(backups), master,
                     time.monotonic() - t0)
            return views
        time.sleep(1.0)


def wait_members(lab: Lab, gws: list[str], master: str, timeout: float = 30) -> bool:
    """Wait until every gateway's `hasync status` lists every member in its VRRP role.

    Members report every 5 s through Raft, so a role keepalived just set shows everywhere
    a few seconds later.
    """
    want = {gw: "master" if gw == master else "backup" for gw in gws}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sts = [status(lab, gw) for gw in gws]
        if all(st and {k: m["vrrp"] for k, m in st["members"].items()} == want for st in sts):
            return True
        time.sleep(0.5)
    return False
