"""Raft nodes as processes (tests/raftproc.py), so that a test can kill -9 them.

Rules: test helper only; every process is killed at close; each node's files live in
base/<name>/ (state/, raft.log, shadow/ when recorded).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netutil import free_ports, wait_until

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve().parent / "raftproc.py"


@dataclass
class Proc:
    """One node process and the lines it printed."""

    name: str
    port: int
    dir: Path
    proc: subprocess.Popen[str] | None = None
    lines: queue.Queue[str] = field(default_factory=queue.Queue)
    acks: list[int] = field(default_factory=list)
    reader: threading.Thread | None = None

    @property
    def state(self) -> Path:
        """The node's pysyncobj files."""
        return self.dir / "state"

    @property
    def shadow(self) -> Path:
        """What the power-loss recorder kept."""
        return self.dir / "shadow"

    def log(self) -> str:
        """Everything pysyncobj and hasync logged at WARNING and up, every run."""
        path = self.dir / "raft.log"
        return path.read_text() if path.exists() else ""


class ProcCluster:
    """n node processes on loopback."""

    def __init__(self, base: Path, n: int = 3) -> None:
        self.nodes = [Proc(f"n{i + 1}", port, base / f"n{i + 1}")
                      for i, port in enumerate(free_ports(n))]
        for node in self.nodes:
            node.state.mkdir(parents=True, exist_ok=True)

    def start(self, node: Proc, *flags: str) -> None:
        """Start (or restart) one node; waits for READY."""
        peers = ",".join(str(o.port) for o in self.nodes if o is not node)
        args = [sys.executable, str(SCRIPT), node.name, str(node.port), peers, str(node.state),
                *flags]
        env = dict(os.environ, PYTHONPATH=f"{ROOT}:{ROOT / 'tests'}")
        node.lines = queue.Queue()
        node.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env, cwd=ROOT)
        node.reader = threading.Thread(target=self._read, args=(node, node.proc, node.lines),
                                       daemon=True)
        node.reader.start()
        self.expect(node, "READY")

    @staticmethod
    def _read(node: Proc, proc: subprocess.Popen[str], lines: queue.Queue[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("ACK"):
                node.acks.append(int(line.split()[1]))
            else:
                lines.put(line.rstrip("\n"))

    def send(self, node: Proc, command: str) -> None:
        """One command line to a node."""
        assert node.proc is not None and node.proc.stdin is not None
        node.proc.stdin.write(command + "\n")
        node.proc.stdin.flush()

    def expect(self, node: Proc, prefix: str, timeout: float = 30.0) -> str:
        """The next line that starts with `prefix`."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{node.name}: no {prefix!r} in {timeout} s")
            try:
                line = node.lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                if node.proc is not None and node.proc.poll() is not None:
                    raise AssertionError(f"{node.name} exited ({node.proc.returncode})") from None
                continue
            if line.startswith(prefix):
                return line

    def status(self, node: Proc) -> dict[str, Any]:
        """The node's role, indexes, digest and ESP mark."""
        self.send(node, "status")
        return dict(json.loads(self.expect(node, "STATUS ")[len("STATUS "):]))

    def wait(self, pred: Any, timeout: float = 30.0) -> None:
        """Poll `pred` until true."""
        wait_until(pred, timeout)

    def leader(self) -> Proc:
        """The node that says it leads (waits for one)."""
        found: list[Proc] = []

        def one() -> bool:
            found[:] = [n for n in self.live() if self.status(n)["role"] == "leader"]
            return len(found) == 1
        self.wait(one)
        return found[0]

    def live(self) -> list[Proc]:
        """Nodes whose process runs."""
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def kill(self, node: Proc) -> None:
        """kill -9 one node and reap it."""
        if node.proc is not None and node.proc.poll() is None:
            os.kill(node.proc.pid, signal.SIGKILL)
            node.proc.wait()
        if node.reader is not None:
            node.reader.join(5)  # every line printed before the kill is read

    def close(self) -> None:
        """Kill every node."""
        for node in self.nodes:
            self.kill(node)
