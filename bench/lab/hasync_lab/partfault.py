"""The faults that must not make two senders (issue 16): a partitioned master, a partitioned
backup, kill -9 of the master's hasync (started again after --restart-after, or, `restart`,
after 1 s as systemd would), a restart of the master's keepalived (`keepalived`: stopped, then
started 1 s later); each under forced traffic through the failing node's
own address, then healed (or restarted), and measured over the whole window.

Rules: like failover.py, the result holds only measured values: VRRP events as keepalived's
notify FIFO delivers them, `hasync status` of every cluster node, the client captures (the
same seq-reuse detector as every failover), and a killed hasync's kernel fence counters read
with nft before its restart (the restart replaces the table). The master struck is VRRP's
steady master (scenario.steady_master: a flap under emulation may have moved the VIPs before
the fault), and the result lists the VRRP events around the fault. A partition is lifted
(and the hasync restarted) inside the window, so reuse counts the heal too. Fields a product
version does not report (the fence's per-SA counts) are null, never guessed. Times are
relative to the fault.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

from hasync.charonwatch import DRIFT_S
from hasync.fence import rules as fence_rules
from hasync.healthfile import VERDICT_PERIOD_S

from . import cluster, confgen, hasyncd, observe, partition
from .failover import ClientCapture, GatewayDrops, Window, _tunnel_result, client_capture
from .scenario import (
    client_state,
    gateway_counters,
    read_probes,
    start_vrrp,
    steady_master,
    wait_flowing,
)
from .session import Run

log = logging.getLogger("hasync_lab")
FAULTS = ("partition", "partition-backup", "hasync", "restart", "keepalived")
KILLS = ("hasync", "restart")  # kill -9 of the master's hasync, then a start
STOPS = {"hasync": ("hasync", signal.SIGKILL), "restart": ("hasync", signal.SIGKILL),
         "keepalived": ("keepalived", signal.SIGTERM)}  # fault -> the process stopped, how
QUORUM_TIMEOUT_MS = confgen.LAB_QUORUM_MS  # hasync's [cluster] quorum_timeout_ms in the lab
FORCE_LEAD_S = 2.0  # forced traffic runs this long before the fault
CONVERGE_TIMEOUT_S = 120.0  # Raft re-election and catch-up under TCG took tens of seconds
PARTITION_HOLD_S = 30.0  # a partition without --heal-after still ends before the window does
RESTART_READ_S = 1.0  # the kernel fence read before a restart: an nft process under TCG
RESTART_SEC_S = 1.0  # `restart` and `keepalived`: hasync.service's RestartSec; a quick restart
STOP_WAIT_S = 30.0  # a process stopped by a fault must be gone within this
HOLDINGS_WAIT_S = DRIFT_S + 5.0  # a struck node's charon may differ from its journal this long
HOLDINGS_EVERY_S = 2.0  # (hasync's health fails after DRIFT_S)
EVENTS_BEFORE_S = 10.0  # VRRP events this long before the fault are reported with it


def release_bound_s(timing: tuple[int, int, int, int] = confgen.LAB_HEALTH_TIMING) -> float:
    """How soon a cut-off master must give up the VIPs (issue 16): the time to notice the lost
    majority (the quorum timeout, then up to one verdict period until the verdict file says
    so), keepalived's fall x interval of failed checks, plus 1 s."""
    notice_s = QUORUM_TIMEOUT_MS / 1000 + VERDICT_PERIOD_S
    return notice_s + timing[2] * timing[0] + 1.0


def target_of(fault: str, master: str, gateways: list[str]) -> str:
    """The node a fault strikes: the master, or (partition-backup) the last backup."""
    if fault == "partition-backup":
        return [g for g in gateways if g != master][-1]
    return master


def left_master_at(run: Run, node: str, t: float) -> float | None:
    """When `node` first reported a state other than MASTER after `t` (keepalived removes the
    VIPs on leaving MASTER), or None."""
    with run.vrrp.lock:
        return next((e.t for e in run.vrrp.events
                     if e.node == node and e.t >= t and e.state != "MASTER"), None)


def latest_state(run: Run, node: str) -> str | None:
    """`node`'s last VRRP state."""
    with run.vrrp.lock:
        states = [e.state for e in run.vrrp.events if e.node == node]
    return states[-1] if states else None


def events_since(run: Run, t0: float, t_fault: float) -> list[list[object]]:
    """VRRP events from `t0` on as [node, state, seconds from the fault]."""
    with run.vrrp.lock:
        return [[e.node, e.state, round(e.t - t_fault, 2)] for e in run.vrrp.events
                if e.t >= t0]


def kernel_fence(run: Run, node: str) -> dict[str, object] | None:
    """What `node`'s kernel fence dropped so far, read with nft in its namespace (a restarted
    hasync replaces the table and its counters): per SA as "spi@daddr", and unknown."""
    out = run.lab.run(node, ["nft", "-j", "list", "table", fence_rules.FAMILY,
                             fence_rules.TABLE], check=False)
    try:
        counts = fence_rules.counts_from_json([out], {})
    except fence_rules.FenceParseError:
        return None
    return {"fenced": {f"{k[1]:08x}@{k[0]}": n for k, n in sorted(counts.per_sa.items())
                       if n}, "unknown": counts.unknown}


def find_counts(section: Any, spis: set[int]) -> int | None:
    """Fenced packets on `spis` in a status "fence" section, read defensively: a mapping or
    list whose entries name an SPI (int, hex or "addr/spi" key, or a "spi" field) with a
    count ("fenced", "packets", "dropped", or the value itself); None when none is found."""
    if not isinstance(section, dict | list):
        return None
    names = {f"{s:08x}" for s in spis} | {f"0x{s:08x}" for s in spis} | {str(s) for s in spis}
    total, found = 0, False
    items = section.items() if isinstance(section, dict) else enumerate(section)
    for k, v in items:
        key = str(k).lower()
        spi = str(v.get("spi", "")).lower() if isinstance(v, dict) else ""
        hit = spi in names or any(key == n or key.endswith(("/" + n, ":" + n, " " + n))
                                  or key.startswith(n + "@") for n in names)  # spi@daddr
        if hit:
            n = v if isinstance(v, int) else next(
                (v[f] for f in ("fenced", "packets", "dropped") if isinstance(v, dict)
                 and isinstance(v.get(f), int)), None)
            if isinstance(n, int) and not isinstance(n, bool):
                total, found = total + n, True
        elif isinstance(v, dict | list):
            sub = find_counts(v, spis)
            if sub is not None:
                total, found = total + sub, True
    return total if found else None


def fence_section(st: dict[str, Any] | None) -> Any:
    """The fence section of a `hasync status` (under the guard's "takeover" or top level)."""
    if not st:
        return None
    return (st.get("takeover") or {}).get("fence") or (st.get("guard") or {}).get(
        "fence") or st.get("fence")


def converge(run: Run, nodes: list[str], struck: str, demote: bool,
             timeout: float) -> dict[str, object]:
    """Wait until one gateway is VRRP master (not `struck` when `demote`), its hasync is
    master and the sender, and every cluster node answers with the same applied index and
    journal digest; say how it ended."""
    t0, digests, st_master, sends = time.monotonic(), {}, None, False
    ok, settled = False, False
    while time.monotonic() < t0 + timeout:
        st_master = run.vrrp.current_master()
        sts = {n: hasyncd.status(run.lab, n) for n in nodes}
        digests = {n: (st or {}).get("journal", {}).get("digest") for n, st in sts.items()}
        settled = all(sts.values()) and hasyncd.settled(sts)
        one = st_master is not None and (not demote or st_master != struck)
        sends = one and sends_as_master(sts.get(st_master or ""))
        ok = sends and settled and len(set(digests.values())) == 1 and \
            None not in digests.values()
        if ok:
            break
        time.sleep(1.0)
    return {"converged": ok, "after_s": round(time.monotonic() - t0, 1), "master": st_master,
            "master_sends": sends, "struck_state": latest_state(run, struck),
            "settled": settled, "digests": digests}


def sends_as_master(st: dict[str, Any] | None) -> bool:
    """Whether a `hasync status` says master and holding a sender epoch (its promotion's
    claim): a VRRP master without it drops every tunnel's traffic."""
    if not st:
        return False
    return st.get("role") == "master" and (st.get("takeover") or {}).get("epoch") is not None


def strike(run: Run, fault: str, node: str) -> tuple[float, float]:
    """Apply `fault` to `node`; (time before, time after) the action."""
    if fault in STOPS:
        what, sig = STOPS[fault]
        t = time.monotonic()
        for n, w, p in run.lab.procs:
            if n == node and w == what and p.poll() is None:
                os.killpg(p.pid, sig)
                p.wait(STOP_WAIT_S)  # keepalived gives the VIPs up as it stops
        return t, time.monotonic()
    return partition.cut(run.lab, node)


def undo(run: Run, fault: str, node: str) -> tuple[float, float, list[int]]:
    """Lift the partition, or start the stopped process again; (time before, after, what the
    cut dropped per rule)."""
    if fault in STOPS:
        t = time.monotonic()
        if STOPS[fault][0] == "hasync":
            hasyncd.start(run.lab, node)
        else:
            start_vrrp(run, node)
        return t, time.monotonic(), []
    return partition.heal(run.lab)


def forced_client(run: Run) -> tuple[str, str] | None:
    """The client the forced traffic goes to and its inner address (the first tunnel's)."""
    tun = run.tunnels[0]
    ike = client_state(run, tun.client)["ikes"].get(tun.conn)  # type: ignore[attr-defined]
    vips = list(ike.local_vips) if ike else []
    return (tun.client, vips[0]) if vips else None


def one_partition(run: Run, master: str, wall_start: float, fault: str) -> dict[str, object]:
    """Strike, hold, heal (or restart), converge, and measure every client over it all."""
    lab, spec = run.lab, run.spec
    gws = [g.name for g in lab.topo.by_role("gateway")]
    nodes = partition.cluster_nodes(lab.topo)
    t_look = time.monotonic()
    master = steady_master(run, master)
    node = target_of(fault, master, gws)
    clients = [c.name for c in lab.topo.by_role("client")]
    before = {c: client_state(run, c) for c in clients}
    gw_before = {g: gateway_counters(run, g) for g in gws}
    fc = forced_client(run)
    via = lab.topo.node(node).ifaces[1].addrs[0].split("/")[0]
    forced = partition.start_force(lab, fc[0], fc[1], via, spec.force_rate) if fc else None
    read_probes(run)
    time.sleep(FORCE_LEAD_S)
    t_fault, t_struck = strike(run, fault, node)
    log.info("%s: %s struck (%.1f s to apply)", fault, node, t_struck - t_fault)
    hold = {"hasync": spec.restart_after_s, "restart": RESTART_SEC_S,
            "keepalived": RESTART_SEC_S}.get(
        fault, spec.heal_after_s or PARTITION_HOLD_S)
    at_undo = None
    if fault == "hasync":  # read the dead hasync's fence just before the restart resets it
        time.sleep(max(0.0, t_fault + hold - RESTART_READ_S - time.monotonic()))
        at_undo = kernel_fence(run, node)
    time.sleep(max(0.0, t_fault + hold - time.monotonic()))
    t_undo, t_undone, drops = undo(run, fault, node)
    log.info("%s undone after %.1f s", fault, t_undo - t_fault)
    conv = converge(run, nodes, node, demote=fault == "partition", timeout=CONVERGE_TIMEOUT_S)
    ok = wait_flowing(run, t_undone, spec.timeout_s)
    time.sleep(spec.settle_s)
    t_end = time.monotonic()
    forced_out = partition.stop_force(lab, forced) if forced else None
    ev = run.vrrp.master_since(t_fault, exclude=node)
    new = ev.node if ev else master
    after = {c: client_state(run, c) for c in clients}
    w = Window(t_fault, t_end, wall_start)
    caps = {c: client_capture(run, c, w) for c in clients}
    sts = {n: hasyncd.status(lab, n) for n in nodes}
    held = holdings(run, node) if fault in KILLS else None
    gw = GatewayDrops(gw_before.get(new, {}), gateway_counters(run, new))
    t_left = left_master_at(run, node, t_fault) if node == master else None
    return {
        "from": node, "to": ev.node if ev else None, "fault": fault,
        "vrrp_detect_ms": round((ev.t - t_fault) * 1000, 1) if ev else None,
        "vip_moved": ev is not None, "promotion": None, "promotion_start_ms": None,
        "strike_s": round(t_struck - t_fault, 2), "undo_at_s": round(t_undo - t_fault, 2),
        "vip_release_s": round(t_left - t_fault, 2) if t_left else None,
        "vip_release_bound_s": release_bound_s() if node == master else None,
        "cut_drops": drops, "forced": forced_out, "converge": conv,
        "vrrp_events": events_since(run, min(t_look, t_fault - EVENTS_BEFORE_S), t_fault),
        "fence_at_undo": at_undo, "struck_holdings": held,
        "converged": conv["converged"], "flowing_after_undo": sorted(ok),
        "window_s": round(t_end - t_fault, 2), "gateway_xfrm_stat": gw.stat(),
        "struck_status": _brief(sts.get(node)), "statuses": {n: _brief(s) for n, s in
                                                               sts.items()},
        "clients": [_client(run, t, before[t.client], after[t.client], caps[t.client], w, gw,
                            sts.get(node), fc, at_undo) for t in run.tunnels]}


def holdings(run: Run, node: str) -> dict[str, object]:
    """What `node`'s charon holds once its hasync was started again: its IKE_SAs, each
    counted (a replay over a charon that held them made a second one per ID), against its
    journal's, and its CHILD_SAs' SPIs that are not in the kernel. Read again, up to
    HOLDINGS_WAIT_S, until they agree: a journaled update in flight rebuilds an IKE_SA (the
    kernel between its delete and its install), as hasync's own drift check allows."""
    deadline, tries = time.monotonic() + HOLDINGS_WAIT_S, 0
    while True:
        tries += 1
        st = hasyncd.status(run.lab, node) or {}
        sas = observe.list_sas(str(cluster.vici_path(run.lab, node)))
        kernel = {f"{x.spi:08x}" for x in observe.xfrm_states(run.lab, node)}
        children = {spi for s in sas for pair in s.child_spis for spi in pair}
        out = {"charon_ike_sas": len(sas), "journal_ike_sas": (st.get("journal") or {}).get(
            "ike_sas"), "children_missing": sorted(children - kernel), "reads": tries}
        agree = out["charon_ike_sas"] == out["journal_ike_sas"] and not out["children_missing"]
        if agree or time.monotonic() > deadline:
            return out
        time.sleep(HOLDINGS_EVERY_S)


def _client(run: Run, tun: Any, before: dict[str, Any], after: dict[str, Any],
            cc: ClientCapture, w: Window, gw: GatewayDrops, struck: dict[str, Any] | None,
            fc: tuple[str, str] | None, at_undo: dict[str, object] | None
            ) -> dict[str, object]:
    """One client's failover numbers plus what the struck node's fence held for it (its
    status after the window; for a killed hasync also its kernel's count before the restart,
    which the restart resets)."""
    out = _tunnel_result(run, tun, before, after, cc, w, gw)
    out["fenced"] = find_counts(fence_section(struck), set(cc.esp))
    out["fenced_at_undo"] = find_counts((at_undo or {}).get("fenced"), set(cc.esp))
    out["forced"] = fc is not None and fc[0] == tun.client
    return out


def _brief(st: dict[str, Any] | None) -> dict[str, object] | None:
    """What the result keeps of a node's status: Raft, journal, health, the guard's view."""
    if st is None:
        return None
    take = st.get("takeover") or {}
    return {"raft": st.get("raft"), "journal": st.get("journal"), "health": st.get("health"),
            "fence": fence_section(st), "tracker": take.get("tracker"),
            "last_promotion": take.get("last_promotion"), "counters": st.get("counters")}
