"""One lab run end to end: bring up, baseline traffic, K failovers, measurements, teardown.

Rules: the result holds only measured values (see docs/lab.md for each field); a failover
whose clients never recover is a result, not an error; any error still tears the lab down.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import signal
import subprocess
import time
from pathlib import Path

from ..seqguard import Reserve
from . import aftercheck, cluster, confgen, hasyncd, pcap, probe, topology
from .prereq import LabError
from .procs import Lab
from .scenario import (
    LabSpec,
    Run,
    _mount_base,
    artifacts,
    bring_up,
    capture,
    client_state,
    fail,
    fault_of,
    join_vrrp,
    kernel_release,
    read_probes,
    restore,
    signal_probes,
    spec_dict,
    start_traffic,
    wait_flowing,
)

log = logging.getLogger("hasync.lab")
LOSS_GRACE_S = 1.0  # packets sent this close to the end of a window may still be in flight
SKIP_FLOOR = Reserve().bound(0)  # docs/takeover.md: what a failover may skip at low rates


def reuse_in_window(packets: tuple[pcap.EspPacket, ...], dst: str, start: float,
                    end: float) -> int:
    """Packets to `dst` in [start, end) whose (SPI, seq) was already seen on the wire."""
    seen: set[tuple[int, int]] = set()
    reused = 0
    for p in sorted(packets, key=lambda p: p.ts):
        if p.dst != dst or p.ts >= end:
            continue
        key = (p.spi, p.seq)
        if key in seen and p.ts >= start:
            reused += 1
        seen.add(key)
    return reused


def from_c_rx(client_log: probe.ProbeLog) -> list[tuple[int, float, float]]:
    """What a client received from the server."""
    return client_log.peer(probe.DEFAULT_SERVER_NAME).received


def _client_result(run: Run, name: str, before: dict[str, object], after: dict[str, object],
                   window: tuple[float, float, float]) -> dict[str, object]:
    """Per-client numbers for one failover; window = (t_kill, t_end, wall start of window)."""
    t_kill, t_end, wall_start = window
    logs = read_probes(run)
    mine, srv = logs.get(name, probe.ProbeLog()), logs.get("srv", probe.ProbeLog())
    to_c, from_c = srv.peer(name), mine.peer(probe.DEFAULT_SERVER_NAME)
    w0 = t_kill - 1.0
    rx_c, rx_s = from_c_rx(mine), srv.peer(name).received
    gap_to = probe.stream_stats(to_c.sent, rx_c, w0, t_end)
    gap_from = probe.stream_stats(from_c.sent, rx_s, w0, t_end)
    loss_to = probe.stream_stats(to_c.sent, rx_c, w0, t_end - LOSS_GRACE_S)
    loss_from = probe.stream_stats(from_c.sent, rx_s, w0, t_end - LOSS_GRACE_S)
    node = run.lab.topo.node(name)
    cap = capture(run, name)
    ike_b, ike_a = before["ike"], after["ike"]
    spi_b = ike_b.spis if ike_b else ""  # type: ignore[attr-defined]
    spi_a = ike_a.spis if ike_a else ""  # type: ignore[attr-defined]
    sa_b, sa_a = before["sa_replay"], after["sa_replay"]
    assert isinstance(sa_b, dict) and isinstance(sa_a, dict)
    kill_wall, end_wall = t_kill + run.wall_offset, t_end + run.wall_offset
    inits = pcap.ike_sa_inits(cap.ike, kill_wall, end_wall, initiator=node.address)
    jumps = pcap.seq_jumps(cap.packets, node.address, kill_wall)
    return {
        "name": name, "nat": node.behind_nat, "encap": after["encap"],
        "ike_spi_before": spi_b, "ike_spi_after": spi_a, "ike_sa_init": inits,
        "reestablished": (bool(spi_a) and spi_a != spi_b) or inits > 0,
        "resumed": gap_to.resumed_at is not None and gap_from.resumed_at is not None,
        "outage_ms": round(max(gap_to.longest_gap_ms, gap_from.longest_gap_ms), 1),
        "outage_to_client_ms": round(gap_to.longest_gap_ms, 1),
        "outage_from_client_ms": round(gap_from.longest_gap_ms, 1),
        "lost_to_client": loss_to.lost, "lost_from_client": loss_from.lost,
        "sent_to_client": loss_to.sent, "sent_from_client": loss_from.sent,
        "replay_errors": int(after["seq_errors"]) - int(before["seq_errors"]),  # type: ignore[call-overload]
        "replay_errors_sa": sum(v - sa_b.get(k, 0) for k, v in sa_a.items()),
        "seq_reuse": reuse_in_window(cap.packets, node.address, wall_start,
                                     t_end + run.wall_offset),
        "seq_jumps": [dataclasses.asdict(j) for j in jumps],
        "seq_skipped": max((j.seq_skipped for j in jumps), default=None),
        "rate_pps": max((j.rate_pps for j in jumps), default=None),
        "seq_skip_ok": all(0 <= j.seq_skipped <= max(j.packets_2s, SKIP_FLOOR) for j in jumps),
        "esp_to_client": sum(1 for p in cap.packets if p.dst == node.address
                             and wall_start <= p.ts < t_end + run.wall_offset),
    }


def one_failover(run: Run, master: str, wall_start: float, fault: str) -> dict[str, object]:
    """Fail `master`, wait for the VIP to move and the clients to recover, and measure."""
    lab, spec = run.lab, run.spec
    clients = [c.name for c in lab.topo.by_role("client")]
    actual = run.vrrp.current_master()
    if actual is not None and actual != master:  # VRRP moved the VIP on its own (a flap)
        log.warning("%s is VRRP master, not %s as planned: failing %s", actual, master, actual)
        master = actual
    before = {c: client_state(run, c) for c in clients}
    t_kill = fail(run, master, fault)
    ev = run.vrrp.wait_master(t_kill, 60, exclude=master)
    log.info("%s failed (%s); %s master after %.0f ms", master, fault, ev.node,
             (ev.t - t_kill) * 1000)
    vip = cluster.holds_vip(lab, ev.node)
    ok = wait_flowing(run, max(ev.t, t_kill), spec.timeout_s)
    log.info("traffic back for %d of %d clients", len(ok), len(clients))
    time.sleep(spec.settle_s)
    t_end = time.monotonic()
    after = {c: client_state(run, c) for c in clients}
    promotion = None
    if spec.mode == "hasync":  # traffic flows before the barrier ends (backups are pre-jumped)
        promotion = hasyncd.wait_promotion(lab, ev.node, t_kill + run.wall_offset,
                                           confgen.LAB_BARRIER_MS / 1000 + 30)
    return {"from": master, "to": ev.node, "fault": fault, "promotion": promotion,
            "vrrp_detect_ms": round((ev.t - t_kill) * 1000, 1), "vip_moved": vip,
            "window_s": round(t_end - t_kill, 2),
            "clients": [_client_result(run, c, before[c], after[c], (t_kill, t_end, wall_start))
                        for c in clients]}


def _tunnels(run: Run) -> list[dict[str, object]]:
    """Each client's tunnel as it came up."""
    out = []
    for c in run.lab.topo.by_role("client"):
        st = client_state(run, c.name)
        ike = st["ike"]
        out.append({"name": c.name, "nat": c.behind_nat, "encap": st["encap"],
                    "established": ike is not None,
                    "ike_spi": ike.spis if ike else "",  # type: ignore[attr-defined]
                    "virtual_ip": list(ike.local_vips) if ike else []})  # type: ignore[attr-defined]
    return out


def _received_so_far(run: Run) -> dict[str, dict[str, int]]:
    """Probe packets received so far in each direction, per client."""
    logs = read_probes(run)
    srv = logs.get("srv", probe.ProbeLog())
    return {c.name: {"to_client": len(from_c_rx(logs.get(c.name, probe.ProbeLog()))),
                     "from_client": len(srv.peer(c.name).received)}
            for c in run.lab.topo.by_role("client")}


def run_failovers(run: Run) -> dict[str, object]:
    """Bring up, start traffic, run the spec's failovers; return the result document."""
    spec, lab = run.spec, run.lab
    t0 = time.monotonic()
    bring_up(run)
    tunnels = _tunnels(run)
    start_traffic(run)
    want = {c.name for c in lab.topo.by_role("client")}
    flowing = wait_flowing(run, time.monotonic(), 150)  # Python starts slowly under TCG
    if flowing != want:
        raise LabError(f"probe traffic does not flow for {sorted(want - flowing)}")
    master, wall = lab.topo.by_role("gateway")[0].name, 0.0
    before: dict[str, object] = {}
    if spec.mode == "hasync":
        before = _before_failovers(run, master)
    time.sleep(2.0)
    warmup = _received_so_far(run)
    fos = []
    for k in range(spec.failovers):
        fo = one_failover(run, master, wall, fault_of(spec, k))
        fos.append(fo)
        join_vrrp(run)
        wall = time.monotonic() + run.wall_offset
        if k + 1 < spec.failovers:
            restore(run, master)
            time.sleep(2.0)
        master = str(fo["to"])
    after = _after_failovers(run) if spec.mode == "hasync" else {}
    gws = [g.name for g in lab.topo.by_role("gateway")]
    final = {gw: hasyncd.status(lab, gw) for gw in gws} if spec.mode == "hasync" else {}
    names = {c.name for c in lab.topo.by_role("client")}
    return {"mode": spec.mode, "before_failovers": before, "after_failovers": after,
            "final_status": final, "esn_clients": sorted(names & set(confgen.ESN_CLIENTS)),
            "kernel": kernel_release(), "advert_int": spec.timers.advert_int_s,
            "timers": spec.timers.as_dict(), "rate_pps": spec.rate, "spec": spec_dict(spec),
            "gateways": [g.name for g in lab.topo.by_role("gateway")], "tunnels": tunnels,
            "warmup": warmup, "failovers": fos, "duration_s": round(time.monotonic() - t0, 1)}


def _before_failovers(run: Run, master: str) -> dict[str, object]:
    """Rekey one CHILD_SA (so a failover meets a rekeyed SA) and wait for every backup."""
    lab = run.lab
    first = lab.topo.by_role("client")[0].name
    rekey = aftercheck.child_rekey(lab, first)
    backups = [g.name for g in lab.topo.by_role("gateway") if g.name != master]
    views = hasyncd.wait_mirrored(lab, master, backups)
    return {"child_rekey": {first: rekey},
            "mirrored": all(hasyncd.mirrored(views[master], views[b]) for b in backups),
            "missing": {b: hasyncd.missing(views[master], views[b]) for b in backups}}


def _after_failovers(run: Run) -> dict[str, object]:
    """Against the last master: each client rekeys its IKE_SA and CHILD_SA, then runs DPD."""
    lab, timers = run.lab, run.spec.timers
    clients = [c.name for c in lab.topo.by_role("client")]
    out: dict[str, dict[str, object]] = {c: {"ike_rekey": aftercheck.ike_rekey(lab, c)}
                                         for c in clients}
    for c in clients:
        out[c]["child_rekey"] = aftercheck.child_rekey(lab, c)
    offsets = {c: aftercheck.log_offset(lab, c) for c in clients}
    stop_probes(run)  # DPD runs only after dpd_delay without inbound traffic
    for c in clients:
        out[c]["dpd"] = aftercheck.dpd(lab, c, timers.dpd_delay_s, timers.dpd_delay_s + 30,
                                       offset=offsets[c])
    return out


def stop_probes(run: Run) -> None:
    """Stop every probe stream (captures keep running)."""
    signal_probes(run, signal.SIGTERM)


def run_lab(spec: LabSpec, out_dir: Path) -> dict[str, object]:
    """Run the scenario on this kernel (it must have ESP); always tear everything down."""
    topo = topology.plan(spec.gateways, spec.clients, spec.nat_clients)
    _cleanup_stale(topo)
    base = _mount_base()
    run = Run(spec, Lab(topo, base), out_dir)
    try:
        return run_failovers(run)
    finally:
        teardown(run)


def teardown(run: Run) -> None:
    """Stop every process, keep the artifacts, remove namespaces, bridges and the tmpfs."""
    try:
        with contextlib.suppress(Exception):  # who used the CPU, for the artifacts
            (run.lab.base / "log" / "ps.txt").write_text(run.lab.run(None, [
                "ps", "-eo", "pid,cputime,etime,comm,args", "--sort=-cputime"], check=False))
        run.lab.stop_all()
        run.vrrp.close()
        artifacts(run)
    finally:
        _cleanup_stale(run.lab.topo)
        subprocess.run(["umount", "-l", str(run.lab.base)], check=False, capture_output=True)
        shutil.rmtree(run.lab.base, ignore_errors=True)


def _cleanup_stale(topo: topology.Topology) -> None:
    """Remove this plan's namespaces and bridges if they exist (from this or an earlier run)."""
    lab = Lab(topo, Path("/nonexistent"))
    for n in topo.nodes:
        if Path(f"/run/netns/{topo.ns(n.name)}").exists():
            lab.kill_node(n.name)
    for argv in topology.teardown_commands(topo):
        subprocess.run(argv, check=False, capture_output=True, stdin=subprocess.DEVNULL)
