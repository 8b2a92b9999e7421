"""Bringing the lab's daemons up: charon on every node, swanctl configuration, keepalived on
the gateways, and a watch on keepalived's notify FIFOs.

Rules: a daemon that does not come up in time is a LabError naming the node and its log;
VRRP transitions are timestamped with time.monotonic() the moment their line is read.
"""

from __future__ import annotations

import datetime
import os
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import confgen, observe, pki
from .prereq import LabError
from .procs import Lab
from .topology import PRIVATE_VIP, PRIVATE_VIP6, PROTECTED, PUBLIC_VIP, PUBLIC_VIP6

CHARON = "/usr/lib/ipsec/charon"
# swanctl itself only needs to read PEM files; a short plugin list keeps it fast under TCG
SWANCTL_TOOL_CONF = "swanctl { load = pem pkcs1 pkcs8 x509 openssl }\n"


def vici_path(lab: Lab, node: str) -> Path:
    """Where `node`'s charon listens for vici."""
    return lab.run_dir(node) / "charon.vici"


def client_sas(lab: Lab, node: str) -> list[observe.IkeSa]:
    """`node`'s IKE_SAs: its charon's over vici, or what its lister says (a libreswan
    client, lswclients.py)."""
    lister = lab.listers.get(node)
    return lister() if lister else observe.list_sas(str(vici_path(lab, node)))


def write_configs(lab: Lab, timers: confgen.LabTimers, keys_in_log: bool = False,
                  tunnels: dict[str, list[Any]] | None = None, hasync: bool = False,
                  extra: dict[str, tuple[str, ...]] | None = None,
                  ciphers: dict[str, str] | None = None, route: str = "",
                  mobike: tuple[str, ...] = ()) -> dict[str, pki.Credential]:
    """Write PKI, strongswan.conf and swanctl.conf for every charon of the lab; with
    `tunnels` (client: its benchmark tunnels), each client carries those instead of one;
    with `extra` (client: connection names), a client also carries those (leases.py); with
    `ciphers` (client: confgen.ESP_CIPHERS name), a client's tunnel uses that cipher; with
    `route` (routebased.KINDS), the gateways' tunnels are route-based; with `mobike`, those
    clients and the gateways use MOBIKE (mobike.py). Returns the lab's credentials."""
    clients = [n.name for n in lab.topo.by_role("client")]
    creds = pki.make_lab_pki(clients, datetime.datetime.now(datetime.UTC))
    # gateways with IPv6 (--ipv6) offer the IPv6 pool too: the lease tunnels ask for both
    six_pools = any(g.address6 for g in lab.topo.by_role("gateway"))
    for node in lab.topo.nodes:
        if node.role not in ("gateway", "client"):
            continue
        etc = lab.etc_dir(node.name)
        gw = node.role == "gateway"
        (etc / "strongswan.conf").write_text(confgen.strongswan_conf(
            str(lab.log_path(node.name, "charon-file")), str(vici_path(lab, node.name)),
            timers, ha=gw, keys_in_log=keys_in_log and gw, many_peers=tunnels is not None,
            hasync_peer=hasync and gw, install_routes=not (gw and route == "vti"),
            six=gw and node.address6 is not None))
        (etc / "swanctl-tool.conf").write_text(SWANCTL_TOOL_CONF)
        swan = etc / "swanctl"
        pki.install_swanctl_dir(swan, creds["ca"], creds["gateway" if gw else node.name])
        if gw:
            six = node.address6 is not None  # it holds the IPv6 VIP as well
            text = confgen.swanctl_gateway(f"{PUBLIC_VIP}, {PUBLIC_VIP6}" if six else PUBLIC_VIP,
                                           PROTECTED, route, mobike=bool(mobike), six=six)
        elif tunnels is not None:
            text = confgen.swanctl_client_tunnels(
                [t.conn for t in tunnels.get(node.name, [])], node.name in confgen.ESN_CLIENTS,
                PUBLIC_VIP, PROTECTED, timers)
        else:
            text = confgen.swanctl_client(node.name, PUBLIC_VIP6 if node.address6 else PUBLIC_VIP,
                                          PROTECTED, timers,
                                          (extra or {}).get(node.name, ()),
                                          (ciphers or {}).get(node.name, "aes256gcm"),
                                          mobike=node.name in mobike,
                                          six=node.address6 is not None, extra_six=six_pools)
        (swan / "swanctl.conf").write_text(text)
    return creds


def start_charon(lab: Lab, node: str) -> None:
    """Start charon on `node` (returns at once; see wait_charon)."""
    vici_path(lab, node).unlink(missing_ok=True)
    # a charon killed with -9 leaves its pid file, and a new one refuses to start beside it
    (lab.run_dir(node) / "charon.pid").unlink(missing_ok=True)
    lab.spawn(node, "charon", [CHARON],
              env={"STRONGSWAN_CONF": str(lab.etc_dir(node) / "strongswan.conf")})


def wait_charon(lab: Lab, node: str, timeout: float = 90) -> None:
    """Wait until `node`'s charon accepts vici connections."""
    path = str(vici_path(lab, node))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(path)
                return
        except OSError:
            time.sleep(0.2)
    raise LabError(f"charon on {node} did not open {path} within {timeout:.0f} s; "
                   f"see {lab.log_path(node, 'charon')}")


def swanctl(lab: Lab, node: str, args: list[str], timeout: float = 60,
            check: bool = True) -> str:
    """Run swanctl against `node`'s charon."""
    etc = lab.etc_dir(node)
    env = {"SWANCTL_DIR": str(etc / "swanctl"),
           "STRONGSWAN_CONF": str(etc / "swanctl-tool.conf")}
    argv = ["swanctl", *args, "--uri", f"unix://{vici_path(lab, node)}"]
    return lab.run(None, argv, env=env, check=check, timeout=timeout)


def load_config(lab: Lab, node: str) -> None:
    """Load `node`'s connections, pools and credentials into its charon."""
    swanctl(lab, node, ["--load-all", "--noprompt", "--file",
                        str(lab.etc_dir(node) / "swanctl" / "swanctl.conf")])


def initiate(lab: Lab, clients: list[str], timeout: float = 90) -> None:
    """Bring up every client's tunnel, in parallel; raise naming the clients that failed."""
    procs = {}
    for c in clients:
        etc = lab.etc_dir(c)
        env = {**os.environ, "SWANCTL_DIR": str(etc / "swanctl"),
               "STRONGSWAN_CONF": str(etc / "swanctl-tool.conf")}
        argv = ["swanctl", "--initiate", "--child", "net", "--timeout", str(int(timeout)),
                "--uri", f"unix://{vici_path(lab, c)}"]
        procs[c] = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    failed = []
    for c, p in procs.items():
        out, _ = p.communicate(timeout=timeout + 30)
        if p.returncode != 0:
            failed.append(f"{c}: {out.decode(errors='replace').strip()[-300:]}")
    if failed:
        raise LabError("tunnels did not come up:\n" + "\n".join(failed))


@dataclass
class VrrpEvent:
    """One line from a keepalived notify FIFO, with the time it was read."""

    node: str
    state: str  # MASTER, BACKUP, FAULT, STOP, ...
    t: float


@dataclass
class VrrpWatch:
    """Reads every gateway's keepalived notify FIFO in a thread of its own."""

    events: list[VrrpEvent] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    fds: list[int] = field(default_factory=list)
    fifos: set[Path] = field(default_factory=set)

    def watch(self, node: str, fifo: Path) -> None:
        """Create `fifo` if needed and read it; O_RDWR so the writer never sees no reader. A
        FIFO already read (keepalived started again) keeps its one reader: two would split
        its lines between them."""
        if fifo in self.fifos:
            return
        self.fifos.add(fifo)
        if not fifo.exists():
            os.mkfifo(fifo, 0o600)
        fd = os.open(fifo, os.O_RDWR)
        self.fds.append(fd)
        threading.Thread(target=self._read, args=(node, fd), daemon=True).start()

    def _read(self, node: str, fd: int) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                return
            if not chunk:
                return
            now = time.monotonic()
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                parts = line.decode(errors="replace").split()
                # `INSTANCE "VI_1" MASTER 180` (keepalived's vrrp_notify_fifo format)
                if len(parts) >= 3 and parts[0] == "INSTANCE":
                    with self.lock:
                        self.events.append(VrrpEvent(node, parts[2], now))

    def master_since(self, t: float, exclude: str | None = None) -> VrrpEvent | None:
        """The first MASTER event after `t` from a node other than `exclude`."""
        with self.lock:
            for e in self.events:
                if e.state == "MASTER" and e.t >= t and e.node != exclude:
                    return e
        return None

    def current_master(self) -> str | None:
        """The one node whose latest event is MASTER, or None if there is not exactly one."""
        latest: dict[str, str] = {}
        with self.lock:
            for e in self.events:
                latest[e.node] = e.state
        masters = [node for node, state in latest.items() if state == "MASTER"]
        return masters[0] if len(masters) == 1 else None

    def wait_steady(self, hold_s: float, timeout: float) -> str | None:
        """Wait until one node is VRRP master with no event for `hold_s` (steady_master);
        that node, or None after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                found = steady_master(list(self.events), time.monotonic(), hold_s)
            if found or time.monotonic() >= deadline:
                return found
            time.sleep(0.5)

    def wait_master(self, t: float, timeout: float, exclude: str | None = None) -> VrrpEvent:
        """Wait for master_since(t, exclude); raise LabError on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ev = self.master_since(t, exclude)
            if ev:
                return ev
            time.sleep(0.02)
        raise LabError(f"no gateway became VRRP master within {timeout:.0f} s")

    def close(self) -> None:
        """Stop reading."""
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()


def steady_master(events: list[VrrpEvent], now: float, hold_s: float) -> str | None:
    """The one node whose latest VRRP state is MASTER, when no event came in the last
    `hold_s` (a flap is still settling otherwise); None if there is no such node."""
    latest: dict[str, str] = {}
    for e in events:
        latest[e.node] = e.state
    masters = [n for n, st in latest.items() if st == "MASTER"]
    quiet = not events or now - max(e.t for e in events) >= hold_s
    return masters[0] if len(masters) == 1 and quiet else None


def start_keepalived(lab: Lab, node: str, priority: int, advert_int: float,
                     watch: VrrpWatch, hasync_fifo: Path | None = None,
                     health_cmd: str | None = None, hide_private: bool = False) -> None:
    """Write `node`'s keepalived.conf and start keepalived with its FIFO watched; with
    `hide_private`, the protected VIP has link scope (never advertised by MOBIKE)."""
    run = lab.run_dir(node)
    fifo = run / "vrrp.fifo"
    watch.watch(node, fifo)
    conf = lab.etc_dir(node) / "keepalived.conf"
    conf.write_text(confgen.keepalived_conf(
        node, priority, advert_int, str(fifo),
        [(f"{PUBLIC_VIP}/24", "e0"), (f"{PRIVATE_VIP}/24", "e1")], "e0",
        str(hasync_fifo) if hasync_fifo else None, health_cmd,
        [(f"{PUBLIC_VIP6}/64", "e0"), (f"{PRIVATE_VIP6}/64", "e1")]
        if lab.topo.node(node).address6 else [],
        (f"{PRIVATE_VIP}/24", f"{PRIVATE_VIP6}/64") if hide_private else ()))
    for stale in ("keepalived.pid", "vrrp.pid"):  # left by a keepalived killed with -9
        (run / stale).unlink(missing_ok=True)
    lab.spawn(node, "keepalived", ["keepalived", "--dont-fork", "--log-console", "--vrrp",
                                   "-f", str(conf), "-p", str(run / "keepalived.pid"),
                                   "-r", str(run / "vrrp.pid")])


def holds_vip(lab: Lab, node: str) -> bool:
    """Whether `node` has both IPv4 virtual IPs configured: keepalived runs master without
    one the kernel refused, and logs only a Netlink error (D274)."""
    public = lab.run(node, ["ip", "-o", "-4", "addr", "show", "dev", "e0"], check=False)
    private = lab.run(node, ["ip", "-o", "-4", "addr", "show", "dev", "e1"], check=False)
    return f" {PUBLIC_VIP}/" in public and f" {PRIVATE_VIP}/" in private
