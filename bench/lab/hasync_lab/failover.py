"""The failover scenario: bring up, baseline traffic, K failovers, and what each client
suffered in each (the lab's moving parts are scenario.py's; the lifecycle is session.py's).

Rules: the result holds only measured values (probe logs, client kernels, a capture on each
client's link, keepalived's FIFO; docs/lab.md names each field); a failover whose clients
never recover is a result, not an error; the run lives in `lab_run`, so any error still
tears the lab down.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hasync.guard import Reserve

from . import (
    aftercheck,
    canaries,
    cluster,
    confgen,
    hasyncd,
    inflight,
    inner6,
    leases,
    lswclients,
    mobike,
    monitor,
    pcap,
    probe,
    routebased,
    topology,
    tunnels,
)
from .prereq import LabError
from .scenario import (
    TWO_SENDER_FAULTS,
    bring_up,
    capture,
    client_state,
    fail,
    fault_of,
    gateway_counters,
    join_vrrp,
    read_probes,
    restore,
    start_traffic,
    stop_probes,
    tunnel_table,
    wait_flowing,
)
from .session import LabSpec, Run, kernel_release, lab_run, ps_snapshot, spec_dict
from .tunnels import Tunnel
from .upgrade import upgrade_charon

log = logging.getLogger("hasync_lab")
LOSS_GRACE_S = 1.0  # packets sent this close to the end of a window may still be in flight
SKIP_FLOOR = Reserve().bound(0)  # docs/takeover.md: what a failover may skip at low rates


def from_c_rx(client_log: probe.ProbeLog) -> list[tuple[int, float, float]]:
    """What a client received from the server."""
    return client_log.peer(probe.DEFAULT_SERVER_NAME).received


@dataclass(frozen=True)
class Window:
    """One failover's measuring window: monotonic kill and end, and wall start (pcap times)."""

    t_kill: float
    t_end: float
    wall_start: float


@dataclass(frozen=True)
class ClientCapture:
    """What one client's link capture says over a window, tallied by SPI once for all its
    tunnels."""

    ike_sa_inits: int
    jumps: dict[int, pcap.SeqJump]
    reuse: dict[int, int]
    esp: dict[int, int]


def client_capture(run: Run, name: str, w: Window) -> ClientCapture:
    """Tally `name`'s capture: IKE_SA_INITs, sequence jumps, reuse and ESP count per SPI."""
    cap = capture(run, name)
    kill_wall, end_wall = w.t_kill + run.wall_offset, w.t_end + run.wall_offset
    # its tunnel's outer addresses (--ipv6: IPv6; --mobike: every one it roamed to)
    addr = mobike.addresses(run, name)
    spis = tunnels.by_spi(cap.packets, addr)
    jumps = pcap.seq_jumps(cap.packets, addr, kill_wall)
    return ClientCapture(
        pcap.ike_sa_inits(cap.ike, kill_wall, end_wall, initiator=addr),
        {j.spi: j for j in jumps}, tunnels.reuse_by_spi(spis, w.wall_start, end_wall),
        {spi: sum(1 for p in ps if w.wall_start <= p.ts < end_wall)
         for spi, ps in spis.items()})


def gaps_ms(received: list[tuple[int, float, float]], w: Window, min_gap_s: float) -> list[
        list[float]]:
    """Receive gaps longer than `min_gap_s` in [kill - 1 s, end], ms relative to the kill."""
    times = sorted(t for _, _, t in received if w.t_kill - 1.0 <= t <= w.t_end)
    edges = [w.t_kill - 1.0, *times, w.t_end]
    return [[round((a - w.t_kill) * 1000, 1), round((b - w.t_kill) * 1000, 1)]
            for a, b in itertools.pairwise(edges) if b - a > min_gap_s]


def union(intervals: list[list[float]]) -> list[list[float]]:
    """Overlapping intervals merged, in order."""
    out: list[list[float]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def _tunnel_result(run: Run, tun: Tunnel, before: dict[str, Any], after: dict[str, Any],
                   cc: ClientCapture, w: Window, gw: GatewayDrops) -> dict[str, object]:
    """One tunnel's numbers for one failover."""
    logs = read_probes(run)
    mine, srv = logs.get(tun.name, probe.ProbeLog()), logs.get("srv", probe.ProbeLog())
    to_c, from_c = srv.peer(tun.name), mine.peer(probe.DEFAULT_SERVER_NAME)
    w0, t_end = w.t_kill - 1.0, w.t_end
    rx_c, rx_s = from_c_rx(mine), to_c_rx(srv, tun.name)
    pps = canaries.rate_of(tun.name, run.canaries, run.spec.rate, run.spec.canary_rate)
    min_gap = max(3.0 / pps, 0.3) if pps > 0 else 1.0  # a shorter silence is no outage
    gap_to = probe.stream_stats(to_c.sent, rx_c, w0, t_end, min_gap)
    gap_from = probe.stream_stats(from_c.sent, rx_s, w0, t_end, min_gap)
    loss_to = probe.stream_stats(to_c.sent, rx_c, w0, t_end - LOSS_GRACE_S)
    loss_from = probe.stream_stats(from_c.sent, rx_s, w0, t_end - LOSS_GRACE_S)
    node = run.lab.topo.node(tun.client)
    ike_b, ike_a = before["ikes"].get(tun.conn), after["ikes"].get(tun.conn)
    spi_b, spi_a = (ike_b.spis if ike_b else ""), (ike_a.spis if ike_a else "")
    multi = run.spec.tunnels > 0  # else one tunnel per client: all of its SPIs are the tunnel's
    spis = tunnels.inbound_spis(ike_b) | tunnels.inbound_spis(ike_a) if multi else set(cc.esp)
    sa_b, sa_a = before["sa_replay"], after["sa_replay"]
    jumps = [cc.jumps[s] for s in sorted(spis) if s in cc.jumps]
    up = tunnels.outbound_spis(ike_b) | tunnels.outbound_spis(ike_a)
    return {
        "name": tun.name, "client": tun.client, "nat": node.behind_nat,
        "canary": tun.name in run.canaries, "probe_pps": pps,
        "impl": "libreswan" if tun.client in run.libreswan else "strongswan",
        "inner": "ipv6" if inner6.is_flow(tun.name) else "ipv4",
        "mobike": tun.client in run.spec.mobike,
        "encap": ike_a.encap if multi and ike_a else after["encap"],
        "ike_spi_before": spi_b, "ike_spi_after": spi_a, "ike_sa_init": cc.ike_sa_inits,
        "reestablished": spi_a != spi_b if multi else
        (bool(spi_a) and spi_a != spi_b) or cc.ike_sa_inits > 0,
        "resumed": gap_to.resumed_at is not None and gap_from.resumed_at is not None,
        "outage_ms": round(max(gap_to.longest_gap_ms, gap_from.longest_gap_ms), 1),
        "outage_to_client_ms": round(gap_to.longest_gap_ms, 1),
        "outage_from_client_ms": round(gap_from.longest_gap_ms, 1),
        "gaps_ms": union(gaps_ms(rx_c, w, min_gap) + gaps_ms(rx_s, w, min_gap)),
        "lost_to_client": loss_to.lost, "lost_from_client": loss_from.lost,
        "sent_to_client": loss_to.sent, "sent_from_client": loss_from.sent,
        "replay_errors": sum(sa_a.get(s, 0) - sa_b.get(s, 0) for s in spis) if multi else
        int(after["seq_errors"]) - int(before["seq_errors"]),
        "replay_errors_sa": sum(v - sa_b.get(k, 0) for k, v in sa_a.items()
                                if not multi or k in spis),
        "replay_errors_gw": gw.of(up, 0),
        "integrity_failed_gw": gw.of(up, 1),
        "seq_reuse": sum(cc.reuse.get(s, 0) for s in spis),
        "seq_jumps": [dataclasses.asdict(j) for j in jumps],
        "seq_skipped": max((j.seq_skipped for j in jumps), default=None),
        "rate_pps": max((j.rate_pps for j in jumps), default=None),
        "seq_skip_ok": all(0 <= j.seq_skipped <= max(j.packets_2s, SKIP_FLOOR) + loss_to.lost
                           for j in jumps),
        "esp_to_client": sum(cc.esp.get(s, 0) for s in spis),
    }


@dataclass(frozen=True)
class GatewayDrops:
    """The new master's XFRM counters before the fault and after the window."""

    before: dict[str, Any]
    after: dict[str, Any]

    def of(self, spis: set[int], counter: int) -> int:
        """Packets the gateway dropped on `spis` in the window (0: replay, 1: integrity)."""
        b, a = self.before.get("sa", {}), self.after.get("sa", {})
        return sum(a[s][counter] - b.get(s, (0, 0))[counter] for s in spis if s in a)

    def stat(self) -> dict[str, int]:
        """The XFRM MIB counters that moved in the window (/proc/net/xfrm_stat)."""
        b, a = self.before.get("stat", {}), self.after.get("stat", {})
        return {k: v - b.get(k, 0) for k, v in a.items() if v != b.get(k, 0)}


def to_c_rx(srv: probe.ProbeLog, name: str) -> list[tuple[int, float, float]]:
    """What the server received from tunnel `name`."""
    return srv.peer(name).received


def one_failover(run: Run, master: str, wall_start: float, fault: str) -> dict[str, object]:
    """Fail `master`, wait for the VIP to move and the clients to recover, and measure."""
    lab, spec = run.lab, run.spec
    clients = [c.name for c in lab.topo.by_role("client")]
    actual = run.vrrp.current_master()
    if actual is not None and actual != master:  # VRRP moved the VIP on its own (a flap)
        log.warning("%s is VRRP master, not %s as planned: failing %s", actual, master, actual)
        master = actual
    upgraded = upgrade_charon(run, master) if fault == "upgrade" else None
    before = {c: client_state(run, c) for c in clients}
    gw_before = {g.name: gateway_counters(run, g.name)
                 for g in lab.topo.by_role("gateway") if g.name != master}
    read_probes(run)  # parse the backlog now, not on the CPUs the failover needs
    t_kill = fail(run, master, fault)
    ev = run.vrrp.wait_master(t_kill, 60, exclude=master)
    log.info("%s failed (%s); %s master after %.0f ms", master, fault, ev.node,
             (ev.t - t_kill) * 1000)
    vip = cluster.holds_vip(lab, ev.node)
    ok = wait_flowing(run, max(ev.t, t_kill), spec.timeout_s)
    log.info("traffic back for %d of %d tunnels", len(ok), len(run.tunnels))
    time.sleep(spec.settle_s)
    t_end = time.monotonic()
    after = {c: client_state(run, c) for c in clients}
    gw = GatewayDrops(gw_before.get(ev.node, {}), gateway_counters(run, ev.node))
    promotion = None
    if spec.mode == "hasync":  # traffic flows before the barrier ends (backups are pre-jumped)
        promotion = hasyncd.wait_promotion(lab, ev.node, t_kill + run.wall_offset,
                                           confgen.LAB_BARRIER_MS / 1000 + 30)
    w = Window(t_kill, t_end, wall_start)
    t_read = time.monotonic()
    caps = {c: client_capture(run, c, w) for c in clients}
    log.info("window read: states and promotion in %.1f s, captures in %.1f s",
             t_read - t_end, time.monotonic() - t_read)
    started = (promotion or {}).get("started")
    return {"from": master, "to": ev.node, "fault": fault, "promotion": promotion,
            "upgrade": upgraded,
            "promotion_start_ms": round((started - t_kill - run.wall_offset) * 1000, 1)
            if started else None,
            "vrrp_detect_ms": round((ev.t - t_kill) * 1000, 1), "vip_moved": vip,
            **measured_master_down(run, master, t_kill, ev.t),
            "master_down_config_ms": master_down_ms(spec.timers.advert_int_s,
                                                    run.priorities.get(ev.node, 0)),
            "window_s": round(t_end - t_kill, 2), "fault_at": round(t_kill + run.wall_offset, 3),
            "gateway_xfrm_stat": gw.stat(),
            "clients": [_tunnel_result(run, t, before[t.client], after[t.client],
                                       caps[t.client], w, gw) for t in run.tunnels]}


def measured_master_down(run: Run, master: str, t_kill: float,
                         t_master: float) -> dict[str, object]:
    """The master-down interval as it happened: from `master`'s last advertisement (heard on
    the public LAN before the fault) to the new master's MASTER line."""
    last = run.adverts.last_from(run.lab.topo.node(master).address, t_kill) \
        if run.adverts else None
    return {"master_down_ms": round((t_master - last.t) * 1000, 1) if last else None,
            "last_advert_ms": round((last.t - t_kill) * 1000, 1) if last else None,
            "last_advert_priority": last.priority if last else None}


def master_down_ms(advert_int_s: float, priority: int) -> float:
    """RFC 5798 6.1: Master_Down_Interval = 3 x advert + (256 - priority) x advert / 256."""
    return round((3 * advert_int_s + (256 - priority) * advert_int_s / 256) * 1000, 1)


def _received_so_far(run: Run) -> dict[str, dict[str, int]]:
    """Probe packets received so far in each direction, per tunnel."""
    logs = read_probes(run)
    srv = logs.get("srv", probe.ProbeLog())
    return {t.name: {"to_client": len(from_c_rx(logs.get(t.name, probe.ProbeLog()))),
                     "from_client": len(srv.peer(t.name).received)} for t in run.tunnels}


DATAPLANE_SH = ("cat /proc/net/xfrm_stat; echo softnet_stat; cat /proc/net/softnet_stat; "
                "ip xfrm policy count; ip -s xfrm state count; "
                "echo routes220 $(ip route show table 220 | wc -l); ip -s link; "
                "sysctl net.ipv4.ip_forward; sysctl -a 2>/dev/null | grep '\\.rp_filter'; "
                "echo neighbours; ip neigh; echo nstat; nstat -asz 2>&1 | grep -v ' 0 '; "
                "cat /proc/net/sockstat /proc/sys/net/ipv4/udp_mem; ss -uanm | head -80; "
                "ip -s xfrm state")
ROOT_DATAPLANE_SH = "ip -s link; bridge fdb show | grep -v permanent; nstat -asz | grep -v ' 0 '"


def dataplane_dump(run: Run) -> None:
    """Every node's XFRM counters, SAs, routes and links, for a failed traffic start."""
    for node, script in [*((n.name, DATAPLANE_SH) for n in run.lab.topo.nodes),
                         (None, ROOT_DATAPLANE_SH)]:  # None: the bridges between namespaces
        name = node or "root"
        try:
            out = run.lab.run(node, ["sh", "-c", script], check=False, timeout=120)
            run.lab.log_path(name, "dataplane").write_text(out)
        except (OSError, subprocess.SubprocessError) as e:  # the traffic error still follows
            log.warning("no dataplane dump of %s: %s", name, e)


def run_failovers(run: Run) -> dict[str, object]:
    """Bring up, start traffic, run the spec's failovers; return the result document."""
    spec, lab = run.spec, run.lab
    t0 = time.monotonic()
    scraping = spec.prometheus and spec.mode == "hasync"
    bring_up(run)
    if scraping:  # it starts while the traffic does
        monitor.start(lab, {g.name: hasyncd.metrics_addr(lab, g.name)
                            for g in lab.topo.by_role("gateway")})
    tunnels = tunnel_table(run)
    start_traffic(run)
    want = {t.name for t in run.tunnels}
    # Python starts slowly under TCG; a thousand flows take longer still
    flowing = wait_flowing(run, time.monotonic(), 150 + 0.1 * spec.tunnels)
    if flowing != want:
        dataplane_dump(run)
        raise LabError(f"probe traffic does not flow for {len(want - flowing)} tunnels: "
                       f"{sorted(want - flowing)} (XFRM state of every node: "
                       f"lab-artifacts/log/*-dataplane.log)")
    master, wall = run.vrrp.current_master() or lab.topo.by_role("gateway")[0].name, 0.0
    before: dict[str, object] = {}
    if spec.mode == "hasync":
        before = _before_failovers(run, master)
    book = leases.Book(spec.lease_client) if spec.leases else None
    if book is not None:
        before["leases"] = leases.one_round(lab, book, master, running_gateways(run))
    if scraping:
        before["prometheus_ready"] = monitor.wait_ready(lab)
    roams = [mobike.roam(run, c, 0, master, running_gateways(run)) for c in spec.mobike]
    time.sleep(2.0)
    warmup = _received_so_far(run)
    fos = []
    for k in range(spec.failovers):
        fault = fault_of(spec, k)
        flight = inflight.start(run, master, spec.inflight) if k == 0 and spec.inflight \
            else None
        if fault in TWO_SENDER_FAULTS:  # imported here: partfault builds on this module
            from .partfault import one_partition
            fo = one_partition(run, master, wall, fault)
        else:
            fo = one_failover(run, master, wall, fault)
        if flight is not None:
            fo["inflight"] = inflight.finish(run, str(fo["from"]),
                                             str(fo["to"]) if fo["to"] else None, flight)
        fos.append(fo)
        ps_snapshot(run, f"ps-failover-{k + 1}.txt")
        join_vrrp(run)
        if k == 0 and spec.mobike:  # the second roam: after the first takeover
            roams += [mobike.roam(run, c, 1, str(fo["to"] or master), running_gateways(run))
                      for c in spec.mobike]
            attach_roams(fo, roams)
        if book is not None and fo["to"]:
            fo["leases"] = leases.one_round(lab, book, str(fo["to"]), running_gateways(run))
        if not spec.tunnels:  # no virtual IP held twice, on any gateway or client
            fo["vips"] = leases.census(lab, running_gateways(run))
        wall = time.monotonic() + run.wall_offset
        # a partition heals and a killed hasync restarts in the fault's own undo: that node
        # is alive and rejoins by itself; restoring it would kill its keepalived and charon
        if k + 1 < spec.failovers and fault not in TWO_SENDER_FAULTS:
            restore(run, str(fo["from"]))  # the node struck, VRRP's master at the fault
            time.sleep(2.0)
        master = str(fo["to"] or master)
    if scraping:  # what Prometheus scraped around each fault (a partition's has no fault_at)
        spans = [(float(fo["fault_at"]) - 10, float(fo["fault_at"]) + float(fo["window_s"]) + 30)
                 for fo in fos if "fault_at" in fo]  # +30 s: a dead member's report goes stale
        for fo, scraped in zip([fo for fo in fos if "fault_at" in fo], monitor.around(lab, spans),
                               strict=True):
            fo["prometheus"] = scraped
    bound = routebased.observe(lab, spec.route_based, topology.PUBLIC_VIP) \
        if spec.route_based else {}
    rekeys = checks_on(spec) and not set(spec.faults or (spec.fault,)) & set(TWO_SENDER_FAULTS)
    after = _after_failovers(run) if spec.mode == "hasync" and rekeys else {}
    gws = [n.name for n in lab.topo.nodes if n.role in ("gateway", "witness")]
    final, settled = hasyncd.settled_status(lab, gws) if spec.mode == "hasync" else ({}, None)
    names = {c.name for c in lab.topo.by_role("client")}
    moved = {"mobike": mobike.summary(run, roams)} if spec.mobike else {}
    return {"mode": spec.mode, **moved, "before_failovers": before, "after_failovers": after,
            "route_based": bound,
            "final_status": final, "final_settled": settled,
            "esn_clients": sorted(names & set(confgen.ESN_CLIENTS)),
            "kernel": kernel_release(), "advert_int": spec.timers.advert_int_s,
            "timers": spec.timers.as_dict(), "rate_pps": spec.rate, "spec": spec_dict(spec),
            "canaries": sorted(run.canaries), "canary_rate_pps": spec.canary_rate,
            "gateways": [g.name for g in lab.topo.by_role("gateway")], "tunnels": tunnels,
            "tunnel_count": len(run.tunnels),
            "warmup": warmup, "failovers": fos, "duration_s": round(time.monotonic() - t0, 1)}


def attach_roams(fo: dict[str, Any], roams: list[dict[str, Any]]) -> None:
    """The roams around failover `fo` (before its fault, after its takeover), on the
    failover and on each roaming client's row."""
    fo["roams"] = roams
    for c in fo["clients"]:
        c["roams"] = [r for r in roams if r["client"] == c["client"]]


def running_gateways(run: Run) -> list[str]:
    """The gateways whose charon runs now."""
    up = {n for n, w, p in run.lab.procs if w == "charon" and p.poll() is None}
    return [g.name for g in run.lab.topo.by_role("gateway") if g.name in up]


def checks_on(spec: LabSpec) -> bool:
    """Whether the run rekeys around its failovers (aftercheck: the classic lab's clients)."""
    return spec.rekey_checks and not spec.tunnels


def _before_failovers(run: Run, master: str) -> dict[str, object]:
    """Rekey one CHILD_SA (so a failover meets a rekeyed SA; not with rekey_checks off) and
    wait for every backup to mirror the master."""
    lab = run.lab
    first = lab.topo.by_role("client")[0].name
    rekey = aftercheck.child_rekey(lab, first) if checks_on(run.spec) else None
    backups = [g.name for g in lab.topo.by_role("gateway") if g.name != master]
    views = hasyncd.wait_mirrored(lab, master, backups, 90 + 0.3 * run.spec.tunnels)
    return {"child_rekey": {first: rekey},
            "mirrored": all(hasyncd.mirrored(views[master], views[b]) for b in backups),
            "missing": {b: hasyncd.missing(views[master], views[b]) for b in backups}}


def _after_failovers(run: Run) -> dict[str, object]:
    """Against the last master: each client rekeys its IKE_SA and CHILD_SA, then runs DPD."""
    lab, timers, other = run.lab, run.spec.timers, run.libreswan
    clients = [c.name for c in lab.topo.by_role("client")]
    out: dict[str, dict[str, object]] = {
        c: lswclients.checks_after(other[c]) if c in other else
        {"ike_rekey": aftercheck.ike_rekey(lab, c)} for c in clients}
    for c in (c for c in clients if c not in other):
        out[c]["child_rekey"] = aftercheck.child_rekey(lab, c)
    offsets = {c: lswclients.dpd_begin(other[c]) if c in other else
               aftercheck.log_offset(lab, c) for c in clients}
    stop_probes(run)  # DPD runs only after dpd_delay without inbound traffic
    window = timers.dpd_delay_s + 30
    for c in clients:
        out[c]["dpd"] = lswclients.dpd(other[c], offsets[c], timers.dpd_delay_s, window) \
            if c in other else aftercheck.dpd(lab, c, timers.dpd_delay_s, window,
                                              offset=offsets[c])
    return out


def run_lab(spec: LabSpec, out_dir: Path) -> dict[str, object]:
    """Run the failover scenario on this kernel (it must have ESP); return its result."""
    with lab_run(spec, out_dir) as run:
        return run_failovers(run)
