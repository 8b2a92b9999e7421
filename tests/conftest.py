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
