"""Processes of the lab: commands inside a node's namespaces, daemons with their logs, and
teardown that leaves nothing behind.

Rules: every daemon runs in its node's network namespace and in a private mount namespace
whose /run is the node's own tmpfs directory (charon's pid file and HA FIFO have fixed paths
under /var/run, a symlink to /run); configuration lives outside /run. Every process started
is remembered and killed at teardown, whatever happened before.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .prereq import LabError
from .topology import Topology

# mount the node's runtime directory over /run, then exec the daemon
_PRIVATE_RUN = 'mount --bind "$1" /run && shift && exec "$@"'


@dataclass
class Lab:
    """A running lab: its topology, its directories, and every process it started."""

    topo: Topology
    base: Path  # tmpfs: run/<node> (each node's /run), etc/<node>, log/
    procs: list[tuple[str, str, subprocess.Popen[bytes]]] = field(default_factory=list)
    quiet_errors: bool = False
    # node: how to list its IKE SAs, for a client that runs no charon (lswclients.py)
    listers: dict[str, Callable[[], list[Any]]] = field(default_factory=dict)

    def run_dir(self, node: str) -> Path:
        """The directory mounted over /run in `node`'s daemons."""
        return self.base / "run" / node

    def etc_dir(self, node: str) -> Path:
        """Configuration files of `node`."""
        return self.base / "etc" / node

    def log_path(self, node: str, what: str) -> Path:
        """Where the output of `what` on `node` goes."""
        return self.base / "log" / f"{node}-{what}.log"

    def prepare_dirs(self) -> None:
        """Create run/, etc/ and log/ directories for every node."""
        for n in self.topo.nodes:
            self.run_dir(n.name).mkdir(parents=True, exist_ok=True)
            self.etc_dir(n.name).mkdir(parents=True, exist_ok=True)
        (self.base / "log").mkdir(parents=True, exist_ok=True)

    def argv_in(self, node: str, argv: list[str], private_run: bool = False) -> list[str]:
        """Wrap `argv` to run in `node`'s network (and, with private_run, mount) namespace."""
        inner = argv
        if private_run:
            inner = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                     _PRIVATE_RUN, "sh", str(self.run_dir(node)), *argv]
        return ["ip", "netns", "exec", self.topo.ns(node), *inner]

    def spawn(self, node: str, what: str, argv: list[str], env: dict[str, str] | None = None,
              private_run: bool = True) -> subprocess.Popen[bytes]:
        """Start a long-running process on `node`, its output to log/<node>-<what>.log."""
        log = open(self.log_path(node, what), "ab")  # noqa: SIM115 - owned by the child
        full_env = {**os.environ, **(env or {})}
        proc = subprocess.Popen(self.argv_in(node, argv, private_run), stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, env=full_env,
                                start_new_session=True)
        log.close()
        self.procs.append((node, what, proc))
        return proc

    def run(self, node: str | None, argv: list[str], env: dict[str, str] | None = None,
            check: bool = True, timeout: float = 60, stdin: str | None = None) -> str:
        """Run a command to completion (in `node`'s netns, or the root one) and return stdout."""
        full = self.argv_in(node, argv) if node else argv
        res = subprocess.run(full, capture_output=True, env={**os.environ, **(env or {})},
                             input=stdin.encode() if stdin is not None else None,
                             stdin=subprocess.DEVNULL if stdin is None else None,
                             timeout=timeout, check=False)
        if check and res.returncode != 0:
            raise LabError(f"{' '.join(full)} failed ({res.returncode}): "
                           f"{res.stderr.decode(errors='replace').strip()[-800:]}")
        return res.stdout.decode(errors="replace")

    def node_pids(self, node: str) -> list[int]:
        """Every process in `node`'s network namespace."""
        out = self.run(None, ["ip", "netns", "pids", self.topo.ns(node)], check=False)
        return [int(p) for p in out.split()]

    def kill_node(self, node: str, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to every process in `node`'s network namespace."""
        for pid in self.node_pids(node):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def reap(self) -> None:
        """Forget processes that have exited."""
        for _, _, p in self.procs:
            p.poll()

    def stop_all(self, grace: float = 3.0) -> None:
        """Terminate every process the lab started, then kill what is left."""
        for _, _, p in self.procs:
            if p.poll() is None:
                _signal_group(p, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for _, _, p in self.procs:
            try:
                p.wait(timeout=max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(p, signal.SIGKILL)
                p.wait(timeout=5)
        for n in self.topo.nodes:  # anything else left in a namespace (children, strays)
            self.kill_node(n.name)


def _signal_group(p: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, sig)
