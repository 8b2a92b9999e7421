"""The lab's moving parts, shared by every scenario: bring the lab up, run probe streams
through every tunnel, read what clients and gateways say, apply a fault, restore a gateway.

Rules (the split with failover.py): this module acts on a running lab and reads its state;
the failover scenario's sequence and the numbers it reports live in failover.py, a run's data
and lifecycle in session.py. Times are time.monotonic() in one kernel. The mode is "baseline"
(keepalived alone) or "hasync" (hasync on every gateway, keepalived tracking `hasync health`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from typing import Any

from . import (
    adverts,
    aftercheck,
    canaries,
    cluster,
    confgen,
    hasyncd,
    inner6,
    leases,
    libreswan_text,
    linkfault,
    lswclients,
    mobike,
    observe,
    pcap,
    prereq,
    probe,
    routebased,
    topology,
    tunnels,
)
from .prereq import LabError
from .procs import Lab
from .session import LabSpec, Run

log = logging.getLogger("hasync_lab")
PROBE_PORT = 7000
CANARY_PORT = PROBE_PORT + 1  # the canary tunnels' probe server (canaries.py)
ANY_SOURCE = "0.0.0.0"  # a flow bound to it sends from whatever address the kernel picks
FAULTS = ("kill", "links", "stop", "charon", "upgrade", "partition", "partition-backup", "hasync",
          "restart", "keepalived")
TWO_SENDER_FAULTS = FAULTS[5:]  # partfault.py runs these (issue 16)


def gateways(run: Run, late: bool = False) -> list[str]:
    """The gateways started at bring-up, or (late) those started after the clients."""
    gws = [n.name for n in run.lab.topo.by_role("gateway")]
    k = len(gws) - run.spec.late_gateways
    return gws[k:] if late else gws[:k]


def start_gateways(run: Run, gws: list[str]) -> None:
    """Start hasync (in hasync mode), charon and keepalived on `gws`, in priority order."""
    lab, spec = run.lab, run.spec
    witness = [n.name for n in lab.topo.by_role("witness")]
    if spec.mode == "hasync":
        for gw in [*gws, *witness]:
            hasyncd.start(lab, gw)
    for gw in gws:
        cluster.start_charon(lab, gw)
    for gw in gws:
        cluster.wait_charon(lab, gw)
        cluster.load_config(lab, gw)
    log.info("charon up on %s", ", ".join(gws))
    if spec.mode == "hasync":
        hasyncd.wait_cluster(lab, [*gws, *witness])
        log.info("hasync cluster formed on %s", ", ".join([*gws, *witness]))
    for gw in gws:
        run.priorities[gw] = priority(int(gw[2:]), len(gws))
        t0 = time.monotonic()
        start_vrrp(run, gw)
        if not run.vrrp.events:  # one master first: two starting together were both MASTER
            run.vrrp.wait_master(t0, 30)
    log.info("gateways up: %s (%s)", ", ".join(gws), spec.mode)


def priority(k: int, gateways: int) -> int:
    """VRRP priority of gateway k (from 1): 200, 190, then down to 40 in even steps.

    gw2, the first new master, keeps 190 as in every saved result; the others sit 30 to 100
    points apart: the master-down skew between two candidates, (256 - priority) x advert /
    256, then differs by 58 to 195 ms at 0.5 s, beyond emulation's jitter (20 ms was not).
    """
    if k <= 2:
        return 210 - 10 * k
    step = min(100, 150 // max(1, gateways - 2))
    return 190 - step * (k - 2)


def bring_up(run: Run) -> None:
    """Build the network, start every daemon, elect gw1 master and bring every tunnel up."""
    lab, spec = run.lab, run.spec
    warm_kernel_crypto()
    topology.build(lab.topo, lambda argv, stdin: lab.run(None, argv, stdin=stdin) and None)
    listen_adverts(run)
    lab.prepare_dirs()
    for gw in (n.name for n in lab.topo.by_role("gateway")) if spec.route_based else ():
        for argv in routebased.setup(spec.route_based, topology.PUBLIC_VIP, six=spec.ipv6):
            lab.run(gw, argv)
    for gw in lab.topo.by_role("gateway") if spec.mobike else ():  # advertise only the VIP
        lab.run(gw.name, ["ip", "-batch", "-"], stdin=mobike.deprecate_batch(gw))
    clients = [n.name for n in lab.topo.by_role("client")]
    run.tunnels = tunnels.plan(spec.tunnels, clients)
    if spec.ipv6 and not spec.tunnels:  # the IPv6 client's IPv6 flow (inner6.py)
        run.tunnels += inner6.flows(lab.topo)
    extra = {spec.lease_client: leases.conns(spec.failovers + 1)} if spec.leases else None
    ciphers = {c: spec.cipher_of(i) for i, c in enumerate(clients)}
    creds = cluster.write_configs(lab, spec.timers, tunnels=tunnels.by_client(run.tunnels)
                                  if spec.tunnels else None, hasync=spec.mode == "hasync",
                                  extra=extra, ciphers=ciphers, route=spec.route_based,
                                  mobike=spec.mobike)
    if spec.mode == "hasync":
        hasyncd.write_configs(lab)
    other = lswclients.names(lab, spec.client_impl)  # libreswan: pluto, not charon
    charons = [n for n in clients if n not in other]
    for n in charons:
        cluster.start_charon(lab, n)
    run.libreswan = lswclients.start(lab, other, creds, spec.timers, ciphers)
    start_gateways(run, gateways(run))
    for n in charons:
        cluster.wait_charon(lab, n)
        cluster.load_config(lab, n)
    first = steady_master(run, gateways(run)[0])
    if not cluster.holds_vip(lab, first):
        raise LabError(f"{first} is VRRP master but does not hold {topology.PUBLIC_VIP} and "
                       f"{topology.PRIVATE_VIP} (its keepalived log says why)")
    if spec.tunnels:
        tunnels.initiate(lab, run.tunnels)
    else:
        cluster.initiate(lab, charons)
        lswclients.up(run.libreswan)
    log.info("tunnels up: %d on %s", len(run.tunnels), ", ".join(clients))


STEADY_S = 3.0  # a master is steady when no VRRP event came for this long
STEADY_TIMEOUT_S = 60.0


def steady_master(run: Run, planned: str) -> str:
    """VRRP's one steady master (VrrpWatch.wait_steady), else `planned` after
    STEADY_TIMEOUT_S; a flap that moved the VIPs away from `planned` is logged: under
    emulation a node's health failed for seconds at times (a stalled guard read)."""
    found = run.vrrp.wait_steady(STEADY_S, STEADY_TIMEOUT_S)
    if found is None:
        log.warning("no steady VRRP master after %.0f s: taking %s as planned",
                    STEADY_TIMEOUT_S, planned)
    elif found != planned:
        log.warning("%s is VRRP master, not %s as planned (a flap): taking %s", found,
                    planned, found)
    return found or planned


def listen_adverts(run: Run) -> None:
    """Hear VRRP from the first client on the public LAN (the master-down interval)."""
    lan = [c for c in run.lab.topo.by_role("client") if not c.behind_nat]
    if lan:
        run.adverts = adverts.AdvertLog(f"/run/netns/{run.lab.topo.ns(lan[0].name)}",
                                        lan[0].address)
        run.adverts.start()
        if run.adverts.error:
            log.warning("cannot hear VRRP on %s: %s", lan[0].name, run.adverts.error)


def warm_kernel_crypto() -> None:
    """Instantiate the kernel's AES-GCM ESP transforms before charon installs the first SA.

    Under TCG the first rfc4106(gcm(aes)) SA takes seconds (transform set-up and self-test),
    long enough for a client to give up on its IKE_AUTH exchange.
    """
    t0 = time.monotonic()
    for key_bytes in (20, 36):  # AES-128 and AES-256 GCM, each with its 4-byte salt
        if not prereq.kernel_has_esp(key_bytes):
            raise LabError("this kernel cannot install an AES-GCM ESP SA (esp4, gcm missing?)")
    log.info("kernel ESP crypto ready after %.1f s", time.monotonic() - t0)


def start_traffic(run: Run) -> None:
    """Start the captures on each client's link and the probe streams."""
    lab, py = run.lab, sys.executable
    for d in ("probe", "cap"):
        (lab.base / d).mkdir(exist_ok=True)
    env = {"PYTHONDONTWRITEBYTECODE": "1"}
    for c in lab.topo.by_role("client"):
        lab.spawn(c.name, "tcpdump", ["tcpdump", "-i", "e0", "-n", "-U", "--immediate-mode",
                                      "-Z", "root", "-s", "128",
                                      "-w", str(lab.base / "cap" / f"{c.name}.pcap"),
                                      "esp or udp port 4500 or udp port 500"], private_run=False)
    six = any(inner6.is_flow(t.name) for t in run.tunnels)
    run.canaries = canaries.pick(run.tunnels, run.spec.canaries) if run.spec.tunnels else (
        frozenset())
    for stem, port, rate in (("srv", PROBE_PORT, run.spec.rate),
                             ("srv" + canaries.SUFFIX, CANARY_PORT, run.spec.canary_rate)):
        if stem == "srv" or run.canaries:
            lab.spawn("srv", stem.replace("srv", "probe"), [
                py, "-m", "hasync_lab.probe", "server", "--bind",
                inner6.server_bind(port, six), "--rate", str(rate), "--log",
                str(lab.base / "probe" / f"{stem}.log")], env=env, private_run=False)
    server = ["--server", f"{topology.SERVER_IP}:{PROBE_PORT}", "--rate", str(run.spec.rate)]
    for c, ts in tunnels.by_client(run.tunnels).items():
        logf = str(lab.base / "probe" / f"{c}.log")
        if not run.spec.tunnels:  # one tunnel: one flow, its source the kernel's pick (its VIP)
            lab.spawn(c, "probe", [py, "-m", "hasync_lab.probeflows", "client", *server,
                                   "--flow", f"{c}@{ANY_SOURCE}", "--log", logf],
                      env=env, private_run=False)
            for t in (t for t in ts if inner6.is_flow(t.name)):  # and its IPv6 flow
                lab.spawn(c, "probe", inner6.client_argv(
                    py, t.name, PROBE_PORT, run.spec.rate,
                    str(lab.base / "probe" / inner6.log_name(t.name))), env=env,
                    private_run=False)
            continue
        vips = tunnels.all_vips(lab, c, ts)
        for stem, canary, mine in canaries.stems(c, ts, run.canaries):
            flows = lab.base / "probe" / f"{stem}.flows"
            flows.write_text(tunnels.flows_text(mine, vips))
            to = ["--server", f"{topology.SERVER_IP}:{CANARY_PORT}", "--rate",
                  str(run.spec.canary_rate)] if canary else server
            p = lab.spawn(c, stem.replace(c, "probe"), [
                py, "-m", "hasync_lab.probeflows", "client", *to, "--flows-file", str(flows),
                "--log", str(lab.base / "probe" / f"{stem}.log")], env=env, private_run=False)
            run.flows[stem] = (p.pid, flows)
    run.wall_offset = time.time() - time.monotonic()


def read_probes(run: Run) -> dict[str, probe.ProbeLog]:
    """Every probe log of the run, by tunnel (and "srv", the server's); each call parses only
    the lines added since the last one (the logs grow by 100 lines a second per tunnel, read
    every 0.5 s)."""
    out: dict[str, probe.ProbeLog] = {}
    groups = {canaries.log_group(stem): logs  # both servers' logs parse as one (canaries.py)
              for stem, (_, logs, _) in run.probe_logs.items()}
    for f in (run.lab.base / "probe").glob("*.log"):
        group = canaries.log_group(f.stem)
        offset, logs, partial = run.probe_logs.get(f.stem) or (
            0, groups.setdefault(group, probe.ProbeLogs()), "")
        with open(f, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
        lines = (partial + data.decode(errors="replace")).split("\n")
        logs.add_lines(line for line in lines[:-1] if line)
        run.probe_logs[f.stem] = (offset + len(data), logs, lines[-1])
        if group == "srv":
            out["srv"] = logs.of(probe.DEFAULT_SERVER_NAME)
        else:
            out.update(logs.logs)
    return out


def capture(run: Run, client: str) -> pcap.PcapCapture:
    """Everything captured so far on `client`'s link (read incrementally)."""
    tail = run.captures.setdefault(client, pcap.PcapTail(run.lab.base / "cap" / f"{client}.pcap"))
    return tail.read()


def flowing_since(run: Run, t: float) -> set[str]:
    """Tunnels with packets sent after `t` received in both directions."""
    logs, ok = read_probes(run), set()
    srv = logs.get("srv", probe.ProbeLog())
    for tun in run.tunnels:
        down = logs.get(tun.name, probe.ProbeLog()).peer(probe.DEFAULT_SERVER_NAME).received
        up = srv.peer(tun.name).received
        if any(ts > t for _, ts, _ in reversed(down)) and any(
                ts > t for _, ts, _ in reversed(up)):
            ok.add(tun.name)
    return ok


LIST_TRIES = 3
FOLLOW_AFTER_S = 5.0  # no tunnel is re-established sooner: a client's DPD waits dpd_delay
FOLLOW_EVERY_S = 2.0
REPORT_EVERY_S = 15.0  # a long wait for traffic says where it stands this often


def wait_flowing(run: Run, t: float, timeout: float) -> set[str]:
    """Wait until every tunnel flows both ways after `t`; return those that do. Meanwhile the
    benchmark's probe flows follow a re-established tunnel to its new virtual IP."""
    want = {tun.name for tun in run.tunnels}
    t0 = time.monotonic()
    deadline, follow_at = t0 + timeout, t0 + FOLLOW_AFTER_S
    ok: set[str] = set()
    report_at = t0 + REPORT_EVERY_S
    while time.monotonic() < deadline:
        t_poll = time.monotonic()
        ok = flowing_since(run, t)
        if ok == want:
            break
        if time.monotonic() >= report_at:
            log.info("waiting for traffic: %d of %d tunnels flow after %.0f s (poll %.1f s)",
                     len(ok), len(want), time.monotonic() - t0, time.monotonic() - t_poll)
            report_at = time.monotonic() + REPORT_EVERY_S
        if run.flows and time.monotonic() >= follow_at:
            follow_vips(run, want - ok)
            follow_at = time.monotonic() + FOLLOW_EVERY_S
        time.sleep(0.5)
    return ok


def follow_vips(run: Run, stalled: set[str]) -> None:
    """On each client with a stalled tunnel, point its probe flows at the current VIPs."""
    for c, ts in tunnels.by_client(run.tunnels).items():
        for stem, _, mine in canaries.stems(c, ts, run.canaries):
            ready = (run.lab.base / "probe" / f"{stem}.log").exists()  # its SIGHUP handler
            if stem in run.flows and ready and any(t.name in stalled for t in mine):
                pid, path = run.flows[stem]
                with contextlib.suppress(OSError, LabError):
                    tunnels.follow_vips(run.lab, c, mine, path, pid)


def client_state(run: Run, name: str) -> dict[str, object]:
    """What one client's charon and kernel say now (`ikes`: ESTABLISHED IKE_SAs by
    connection; `ike`: the last of them, the classic lab's one tunnel)."""
    lab = run.lab
    want = len({t.conn for t in run.tunnels if t.client == name})  # IKE_SAs, not flows
    for _ in range(LIST_TRIES):  # a busy IKE_SA is not listed (noblock): ask again
        sas = [s for s in cluster.client_sas(lab, name) if s.state == "ESTABLISHED"]
        if len({s.name for s in sas}) >= want:
            break
        time.sleep(1.0)
    states, stat = observe.xfrm_states_and_stat(lab, name)
    home = [s for s in sas if s.name == aftercheck.CONNECTION]  # not a leases.py tunnel
    return {"ike": (home or sas or [None])[-1], "ikes": {s.name: s for s in sas},
            "seq_errors": stat.get("XfrmInStateSeqError", 0),
            "sa_replay": {s.spi: s.replay for s in states},
            "encap": any(s.encap for s in states)}


def gateway_counters(run: Run, name: str) -> dict[str, Any]:
    """One gateway's XFRM drop counters: per SA (replay, integrity failed) and the MIB's."""
    states, stat = observe.xfrm_states_and_stat(run.lab, name)
    return {"sa": {s.spi: (s.replay, s.failed) for s in states}, "stat": stat}


def fault_of(spec: LabSpec, k: int) -> str:
    """The fault of failover `k` (0-based)."""
    return spec.faults[k] if spec.faults else spec.fault


def fail(run: Run, node: str, fault: str) -> float:
    """Apply `fault` to `node`; return the time it struck."""
    lab = run.lab
    t = time.monotonic()
    if fault in ("kill", "upgrade"):  # a dead machine: its kernel silent, every process gone
        # (upgrade: the next master's charon was restarted first, upgrade.py)
        t = links_down(lab, node)
        lab.kill_node(node, signal.SIGKILL)
    elif fault == "charon":  # charon dies; keepalived (tracking hasync health) and hasync stay
        for n, w, p in lab.procs:
            if n == node and w == "charon" and p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    elif fault == "links":
        t = links_down(lab, node)
    else:
        for what in ("keepalived", "charon"):
            for n, w, p in lab.procs:
                if n == node and w == what and p.poll() is None:
                    os.killpg(p.pid, signal.SIGTERM)
    return t


def links_down(lab: Lab, node: str) -> float:
    """Every link of `node` down at one instant; return that instant (linkfault.py)."""
    return linkfault.set_links(f"/run/netns/{lab.topo.ns(node)}",
                               [ifc.name for ifc in lab.topo.node(node).ifaces], up=False)


def _links(lab: Lab, node: str, state: str) -> None:
    """Every link of `node` up or down, with one `ip -batch` (all at once, not one by one)."""
    batch = lab.base / "log" / f"{node}-links-{state}.ip"
    batch.write_text("".join(f"link set {ifc.name} {state}\n"
                             for ifc in lab.topo.node(node).ifaces))
    lab.run(node, ["ip", "-batch", str(batch)])


def signal_probes(run: Run, sig: int) -> None:
    """Send `sig` to every probe (captures keep running)."""
    for _, what, p in run.lab.procs:
        if what.startswith("probe") and p.poll() is None:  # probe, probe-canary
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, sig)


def restore(run: Run, node: str) -> None:
    """Bring a failed gateway back as the lowest-priority backup, with an empty charon.

    The probes pause meanwhile: no failover is measured during a restore, and under TCG they
    would take a third of the CPU that the restarting charon and hasync need.
    """
    signal_probes(run, signal.SIGSTOP)
    try:
        _restore(run, node)
    finally:
        signal_probes(run, signal.SIGCONT)
    ok = wait_flowing(run, time.monotonic(), 60)
    log.info("traffic flows again for %d of %d tunnels", len(ok), len(run.tunnels))


def _restore(run: Run, node: str) -> None:
    lab = run.lab
    lab.kill_node(node, signal.SIGKILL)
    six = ((f"{topology.PUBLIC_VIP6}/64", "e0"), (f"{topology.PRIVATE_VIP6}/64", "e1")) \
        if lab.topo.node(node).address6 else ()
    for addr, dev in ((f"{topology.PUBLIC_VIP}/24", "e0"), (f"{topology.PRIVATE_VIP}/24", "e1"),
                      (f"{topology.PRIVATE_VIP}/32", "e1"), *six):  # /32: hidden (D274)
        lab.run(node, ["ip", "addr", "del", addr, "dev", dev], check=False)
    _links(lab, node, "up")
    for what in ("state", "policy"):  # a rebooted kernel holds no SAs (deploy/: on a restart)
        lab.run(node, ["ip", "xfrm", what, "flush"], check=False)
    if run.spec.mode == "hasync":
        hasyncd.start(lab, node)
    cluster.start_charon(lab, node)
    cluster.wait_charon(lab, node)
    cluster.load_config(lab, node)
    if run.spec.mode == "hasync":  # as on a real gateway: keepalived after hasync is ready
        hasyncd.wait_synced(lab, node)
    run.priorities[node] = max(1, min(run.priorities.values()) - 10)
    run.vrrp_later.append(node)
    log.info("%s restored (priority %d; joins VRRP after the next failover)", node,
             run.priorities[node])


def join_vrrp(run: Run) -> None:
    """Start keepalived on the gateways restored before the failover just measured.

    A restored gateway is a Raft member and mirrors charon at once, but joins VRRP only
    after the next failover: among backups, VRRP picks the new master by a skew of
    (256 - priority) x advert / 256, 20 ms between priorities 180 and 170, which emulation's
    jitter overturns. One candidate at a time keeps the ring gw1 -> gw2 -> gw3 -> gw1.
    """
    for node in run.vrrp_later:
        start_vrrp(run, node)
    run.vrrp_later.clear()


def start_vrrp(run: Run, gw: str) -> None:
    """Start keepalived on `gw`; in hasync mode it feeds hasync and tracks `hasync health`."""
    hasync = run.spec.mode == "hasync"
    cluster.start_keepalived(run.lab, gw, run.priorities[gw], run.spec.timers.advert_int_s,
                             run.vrrp, hasyncd.vrrp_fifo(run.lab, gw) if hasync else None,
                             hasyncd.health_cmd(run.lab, gw) if hasync else None,
                             hide_private=bool(run.spec.mobike))


def stop_probes(run: Run) -> None:
    """Stop every probe stream (captures keep running)."""
    signal_probes(run, signal.SIGTERM)


def _esp_of(run: Run, client: str, index: int) -> str:
    """The ESP proposal `client` makes, in its implementation's syntax."""
    cipher = run.spec.cipher_of(index)
    if client in run.libreswan:
        return libreswan_text.ESP[cipher]
    return confgen.client_esp(client, cipher)


def tunnel_table(run: Run) -> list[dict[str, object]]:
    """Each tunnel as it came up (IKE tunnels: not inner6's extra flows)."""
    clients = [c.name for c in run.lab.topo.by_role("client")]
    states = {c: client_state(run, c) for c in clients}
    out = []
    for t in (t for t in run.tunnels if not inner6.is_flow(t.name)):
        st = states[t.client]
        ike = st["ikes"].get(t.conn)  # type: ignore[attr-defined]
        out.append({"name": t.name, "client": t.client,
                    "impl": "libreswan" if t.client in run.libreswan else "strongswan",
                    "outer": run.lab.topo.node(t.client).address6 or "ipv4",
                    "esp": _esp_of(run, t.client, clients.index(t.client)),
                    "nat": run.lab.topo.node(t.client).behind_nat,
                    "encap": ike.encap if run.spec.tunnels and ike else st["encap"],
                    "established": ike is not None, "ike_spi": ike.spis if ike else "",
                    "virtual_ip": list(ike.local_vips) if ike else []})
    return out
