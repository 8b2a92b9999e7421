"""Fixtures shared by test modules: the benchmark's smallest case, run once per session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SMOKE_TUNNELS = 3  # one per lab client: the NAT'd one and the ESN one among them


def _host_fence() -> bool:
    """Whether this host's own network namespace has hasync's fence table."""
    try:
        return subprocess.run(["nft", "list", "table", "inet", "hasync_fence"],
                              capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session", autouse=True)
def _no_fence_left_on_the_host() -> Any:
    """Daemons started by tests (as root) install the fence in the host's namespace, where it
    drops every outbound ESP packet; remove it after the session if the session made it."""
    before = _host_fence()
    yield
    if not before and _host_fence():
        subprocess.run(["nft", "delete", "table", "inet", "hasync_fence"], check=False,
                       capture_output=True, timeout=10)


@pytest.fixture(scope="session")
def bench_smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`bench/failover.py --tunnels 3 --repeats 1`, as a user runs it: both modes, one
    failover each, in the lab (the VM here). Returns its JSON, plot paths and stdout."""
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    out = tmp_path_factory.mktemp("bench")
    path, plots = out / "failover.json", out / "plots"
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "failover.py"), "--tunnels",
                          str(SMOKE_TUNNELS), "--repeats", "1", "--json", str(path), "--plots",
                          str(plots), "--lab-out", str(out / "lab")], cwd=ROOT,
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=1800)
    sys.stdout.write(res.stdout[-6000:])
    assert res.returncode == 0, res.stderr[-4000:]
    return {"doc": json.loads(path.read_text()), "plots": plots, "stdout": res.stdout,
            "stderr": res.stderr}
