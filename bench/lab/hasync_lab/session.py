"""One lab run's data and life, shared by every scenario (failover, mirror, xfrm-check,
capture-ha): what to run (LabSpec), the run in progress (Run), and `lab_run`, the one
lifecycle: plan the topology, clear what an earlier run left, mount a fresh tmpfs, run,
tear down.

Rules: a scenario never plans, mounts or tears down on its own: it runs inside
`with lab_run(spec, out_dir) as run`; teardown runs whatever happened, keeps the artifacts
in `out_dir`, and leaves no namespace, bridge, process or mount behind.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import adverts, cluster, confgen, pcap, probe, topology, tunnels
from .procs import Lab

log = logging.getLogger("hasync_lab")


@dataclass(frozen=True)
class LabSpec:
    """What to run."""

    mode: str = "baseline"
    gateways: int = 3
    clients: int = 3
    nat_clients: int = 1
    failovers: int = 1
    rate: float = 20.0  # probe packets/s each way; 50 starved the emulated CPUs (decisions.md)
    fault: str = "kill"
    faults: tuple[str, ...] = ()  # one per failover (overrides `fault`)
    late_gateways: int = 0  # gateways started only after the clients connected
    tunnels: int = 0  # the benchmark's N tunnels dealt over the clients (0: one per client)
    rekey_checks: bool = True  # hasync: a CHILD_SA rekey first; rekeys and DPD at the end
    timeout_s: float = 90.0  # per failover: wait this long for every client's traffic
    settle_s: float = 2.0  # keep measuring this long after the last client resumed
    timers: confgen.LabTimers = field(default_factory=confgen.LabTimers)
    witness: bool = False  # a witness node (hasync alone, a Raft voter) beside the gateways
    heal_after_s: float | None = None  # partition faults: lift the cut this long after it
    restart_after_s: float = 3.0  # the hasync fault: start hasync again this long after
    force_rate: float = 300.0  # pkt/s the server sends one client through the master's own
    #                            address during partition and hasync faults (partition.py)
    leases: bool = False  # lease rounds before and after every failover (leases.py)
    lease_client: str = "c2"  # the client whose extra tunnels the lease rounds move
    route_based: str = ""  # gateways' tunnels through an XFRM interface or VTI (routebased.py)
    ipv6: bool = False  # the first client reaches the VIP over IPv6 (topology.PUBLIC_VIP6)
    inflight: str = ""  # an exchange in flight at the first fault (inflight.KINDS), or none
    proposals: tuple[str, ...] = ()  # ESP cipher of each client in order (confgen.ESP_CIPHERS);
    #                                  () or a shorter list: aes256gcm for the rest
    mobike: tuple[str, ...] = ()  # clients with MOBIKE on, each roaming twice (mobike.py)
    prometheus: bool = False  # a real Prometheus scrapes every gateway (monitor.py)
    client_impl: tuple[str, ...] = ()  # IKE implementation of each client in order
    #                                    (lswclients.IMPLS); () or shorter: strongswan
    canaries: int = 0  # the benchmark's tunnels probed at canary_rate (canaries.py)
    canary_rate: float = 20.0  # probe packets/s each way of a canary tunnel

    def cipher_of(self, index: int) -> str:
        """The ESP cipher of the client at `index` (0-based, plan order)."""
        return self.proposals[index] if index < len(self.proposals) else "aes256gcm"


@dataclass
class Run:
    """A lab run in progress: the lab, its watchers, and where its artifacts go."""

    spec: LabSpec
    lab: Lab
    out_dir: Path
    vrrp: cluster.VrrpWatch = field(default_factory=cluster.VrrpWatch)
    priorities: dict[str, int] = field(default_factory=dict)
    wall_offset: float = 0.0  # time.time() - time.monotonic(): maps pcap times to ours
    probe_logs: dict[str, tuple[int, probe.ProbeLogs, str]] = field(default_factory=dict)
    tunnels: list[tunnels.Tunnel] = field(default_factory=list)
    flows: dict[str, tuple[int, Path]] = field(default_factory=dict)  # probeflows log stem
    #                                        (canaries.stems): (pid, flows file)
    canaries: frozenset[str] = frozenset()  # tunnels probed at spec.canary_rate
    adverts: adverts.AdvertLog | None = None  # VRRP as a client on the public LAN hears it
    captures: dict[str, pcap.PcapTail] = field(default_factory=dict)
    vrrp_later: list[str] = field(default_factory=list)  # restored; keepalived still to start
    roamed: dict[str, list[str]] = field(default_factory=dict)  # client: outer addresses so
    #                                                             far, oldest first (mobike.py)
    libreswan: dict[str, Any] = field(default_factory=dict)  # client: its lswclients pluto


@contextlib.contextmanager
def lab_run(spec: LabSpec, out_dir: Path) -> Iterator[Run]:
    """The run of `spec`: planned, cleared of an earlier run's leftovers, on a fresh tmpfs;
    torn down when the block ends, whatever ended it."""
    topo = topology.plan(spec.gateways, spec.clients, spec.nat_clients, witness=spec.witness,
                         ipv6_clients=int(spec.ipv6))
    cleanup_stale(topo)
    run = Run(spec, Lab(topo, mount_base()), out_dir)
    try:
        yield run
    finally:
        teardown(run)


def mount_base() -> Path:
    """A fresh tmpfs for the lab's runtime (FIFOs and unix sockets need a real filesystem)."""
    base = Path(tempfile.mkdtemp(prefix="hasync-lab."))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=700", "tmpfs", str(base)], check=True)
    return base


def teardown(run: Run) -> None:
    """Stop every process, keep the artifacts, remove namespaces, bridges and the tmpfs."""
    if run.adverts:
        run.adverts.close()
    try:
        ps_snapshot(run, "ps.txt")
        run.lab.stop_all()
        run.vrrp.close()
        artifacts(run)
    finally:
        cleanup_stale(run.lab.topo)
        subprocess.run(["umount", "-l", str(run.lab.base)], check=False, capture_output=True)
        shutil.rmtree(run.lab.base, ignore_errors=True)


def cleanup_stale(topo: topology.Topology) -> None:
    """Remove this plan's namespaces and bridges if they exist (from this or an earlier run)."""
    lab = Lab(topo, Path("/nonexistent"))
    for n in topo.nodes:
        if Path(f"/run/netns/{topo.ns(n.name)}").exists():
            lab.kill_node(n.name)
    for argv in topology.teardown_commands(topo):
        subprocess.run(argv, check=False, capture_output=True, stdin=subprocess.DEVNULL)


def ps_snapshot(run: Run, name: str) -> None:
    """Who used the CPU so far (cumulative per process), into the artifacts' log/."""
    try:
        (run.lab.base / "log" / name).write_text(run.lab.run(None, [
            "ps", "-eo", "pid,cputime,etime,comm,args", "--sort=-cputime"], check=False))
    except (OSError, subprocess.SubprocessError) as e:  # a diagnostic: the run goes on
        log.warning("no process snapshot %s: %s", name, e)


def artifacts(run: Run) -> None:
    """Copy logs, probe logs and captures into the output directory."""
    dest = run.out_dir / "lab-artifacts"
    shutil.rmtree(dest, ignore_errors=True)
    for sub in ("log", "probe", "cap"):
        src = run.lab.base / sub
        if src.exists():
            shutil.copytree(src, dest / sub)


def kernel_release() -> str:
    """The running kernel's release."""
    return platform.release()


def spec_dict(spec: LabSpec) -> dict[str, object]:
    """The spec as JSON-ready data."""
    return asdict(spec)
