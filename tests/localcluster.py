"""A real hasync cluster on loopback, for tests and bench/replication.py: N `hasync daemon`
processes talking Raft over TCP, each with a stand-in charon (a UDP socket at its `ha_local`).

Rules: every process is killed at close; each node's files live in its own directory under
`base`; the stand-in charon only sends and receives datagrams, it is no charon (the lab's
scenarios use the real one).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hasync import control
from hasync.journal.seal import generate_key_file

from fakevici import FakeCharon
from netutil import free_ports, wait_until

ROOT = Path(__file__).resolve().parent.parent  # the checkout: `python -m hasync` runs from it


@dataclass
class Node:
    """One daemon and its stand-in charon."""

    name: str
    dir: Path
    raft: int
    ha_remote: int
    ha_local: int
    proc: subprocess.Popen[bytes] | None = None
    charon: socket.socket | None = None
    vici: FakeCharon | None = None  # its stand-in vici: charon's incarnation and connections

    @property
    def config(self) -> Path:
        """The node's hasync.toml."""
        return self.dir / "hasync.toml"

    @property
    def sock(self) -> Path:
        """The node's control socket."""
        return self.dir / "run" / "control.sock"


def _config(node: Node, peers: str, extra: str, witness: bool) -> str:
    """A node's hasync.toml; a witness has only [node] and [cluster]."""
    text = (f'[node]\nname = "{node.name}"\nrole = "{"witness" if witness else "gateway"}"\n'
            f'state_dir = "{node.dir / "state"}"\ncontrol_socket = "{node.sock}"\n'
            f'health_file = "{node.dir / "run" / "health"}"\n'
            f'[cluster]\nname = "test"\nkey_file = "{node.dir / "cluster.key"}"\n'
            f'bind = "127.0.0.1:{node.raft}"\npeers = [{peers}]\n{extra}\n')
    if witness:
        return text
    return text + (f'[charon]\nha_local = "127.0.0.1:{node.ha_local}"\n'
                   f'ha_remote = "127.0.0.2:{node.ha_remote}"\n'
                   f'control_fifo = "{node.dir / "run" / "charon.ha"}"\n'
                   f'vici_socket = "{node.dir / "run" / "charon.vici"}"\n'
                   f'[keepalived]\nnotify_fifo = "{node.dir / "run" / "vrrp.fifo"}"\n')


@dataclass
class LocalCluster:
    """N daemons on loopback."""

    base: Path
    n: int = 3
    nodes: list[Node] = field(default_factory=list)
    extra: str = ""  # more [cluster] settings, e.g. "batch_max_messages = 256"
    witnesses: int = 0  # the last this many nodes run as witnesses (node.role = "witness")

    def __post_init__(self) -> None:
        key = self.base / "cluster.key"
        generate_key_file(key)
        ports = free_ports(3 * self.n)
        for i in range(self.n):
            d = self.base / f"n{i + 1}"
            (d / "run").mkdir(parents=True)
            shutil.copy(key, d / "cluster.key")
            os.chmod(d / "cluster.key", 0o600)
            self.nodes.append(Node(f"n{i + 1}", d, ports[3 * i], ports[3 * i + 1],
                                   ports[3 * i + 2]))
        for node in self.nodes:
            peers = ", ".join(f'"127.0.0.1:{o.raft}"' for o in self.nodes if o is not node)
            witness = self.nodes.index(node) >= self.n - self.witnesses
            node.config.write_text(_config(node, peers, self.extra, witness))
            node.charon = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            node.charon.bind(("127.0.0.1", node.ha_local))
            node.charon.settimeout(0.05)
            if not witness:  # the golden stream's IKE_SAs name the connection "rw"
                node.vici = FakeCharon(node.dir / "run" / "charon.vici", conns=("rw",))

    def start(self, node: Node) -> None:
        """Start `node`'s daemon."""
        log = open(node.dir / "daemon.log", "ab")  # noqa: SIM115 - owned by the child
        node.proc = subprocess.Popen([sys.executable, "-m", "hasync", "daemon", "--config",
                                      str(node.config)], cwd=ROOT, stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()

    def start_all(self) -> None:
        """Start every daemon."""
        for node in self.nodes:
            self.start(node)

    def kill(self, node: Node, sig: int = signal.SIGKILL) -> None:
        """Stop `node`'s daemon with `sig` and wait for it."""
        if node.proc and node.proc.poll() is None:
            node.proc.send_signal(sig)
            node.proc.wait(timeout=15)

    def close(self) -> None:
        """Kill every daemon and close the stand-in charons."""
        for node in self.nodes:
            self.kill(node)
            if node.charon:
                node.charon.close()
            if node.vici:
                node.vici.stop()

    def status(self, node: Node, digest: bool = True) -> dict[str, Any] | None:
        """`hasync status` of `node` (without the journal's digest, which hashes every SA,
        if not `digest`), or None while it does not answer."""
        try:
            return control.request(node.sock, "status", timeout=3.0, digest=digest)
        except control.ControlError:
            return None

    def sas(self, node: Node) -> dict[str, Any]:
        """`hasync sas` of `node`."""
        return control.request(node.sock, "sas", timeout=5.0)

    def wait(self, pred: Any, timeout: float = 30.0, what: str = "condition") -> None:
        """Poll `pred()` until true, or fail naming `what`."""
        wait_until(pred, timeout, f"{what} ({timeout} s)")

    def leader(self) -> Node | None:
        """The node every live node names as Raft leader, if they agree."""
        names = set()
        for node in self.nodes:
            if node.proc and node.proc.poll() is None:
                st = self.status(node)
                if st is None or not st["raft"]["leader"]:
                    return None
                names.add(st["raft"]["leader"])
        if len(names) != 1:
            return None
        port = int(names.pop().rsplit(":", 1)[1])
        return next(n for n in self.nodes if n.raft == port)

    def vrrp(self, node: Node, state: str) -> None:
        """Tell `node` what keepalived would: its VRRP state."""
        with open(node.dir / "run" / "vrrp.fifo", "w") as f:
            f.write(f'INSTANCE "VI_1" {state} 100\n')

    def feed(self, node: Node, datagrams: list[bytes], pace: float = 0.0) -> None:
        """Send datagrams from `node`'s stand-in charon to its daemon."""
        assert node.charon is not None
        for d in datagrams:
            node.charon.sendto(d, ("127.0.0.2", node.ha_remote))
            if pace:
                time.sleep(pace)

    def drain(self, node: Node) -> list[bytes]:
        """Everything `node`'s daemon sent to its stand-in charon so far."""
        assert node.charon is not None
        out = []
        while True:
            try:
                out.append(node.charon.recv(65535))
            except TimeoutError:
                return out
