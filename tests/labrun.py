"""Running a `hasync lab` command from a lab test, as a user would: one subprocess, its JSON
result loaded, its output shown when the test fails; the lab tests' marks and fixtures.

Rules: test helper only; the command must exit 0 and write the JSON it was asked for.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hasync_lab.confgen import LAB_BARRIER_MS

ROOT = Path(__file__).resolve().parent.parent
NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")
LAB = [pytest.mark.lab, NEEDS_ROOT]  # a module's pytestmark: a lab test of `make test`
# a module's pytestmark: a longer lab scenario, run by `make test-lab-extended`
LAB_EXTENDED = [pytest.mark.lab, pytest.mark.lab_extended, NEEDS_ROOT]


def run_lab(tmp_path_factory: pytest.TempPathFactory, name: str, args: list[str],
            timeout: float) -> tuple[dict[str, Any], str]:
    """Run `hasync lab ARGS --json ... --out ...`; return its JSON result and its stdout."""
    out = tmp_path_factory.mktemp(name)
    path = out / f"{name}.json"
    res = subprocess.run([sys.executable, "-m", "hasync", "lab", *args, "--json", str(path),
                          "--out", str(out / "artifacts")], cwd=ROOT, stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=timeout)
    sys.stdout.write(res.stdout[-6000:])
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(path.read_text()), res.stdout


def lab_fixture(name: str, args: list[str], timeout: float) -> Any:
    """A module-scoped fixture: `run_lab(..., name, args, timeout)`'s JSON result, run once."""
    @pytest.fixture(scope="module")
    def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
        return run_lab(tmp_path_factory, name, args, timeout)[0]
    return result


PHASES = ("wait_ms", "xfrm_ms", "activate_ms")


def check_promotion_phases(p: dict[str, Any]) -> None:
    """A promotion report's phases took time, add up to its total, and kept to their limits."""
    # a Raft barrier and a read and write of the kernel's SAs cross threads and take time
    assert p["wait_ms"] > 0 and p["xfrm_ms"] > 0 and p["activate_ms"] >= 0, p
    # each of the four is rounded to 0.1 ms on its own: the phases make up the whole
    assert abs(p["total_ms"] - sum(p[k] for k in PHASES)) <= 0.2, p
    if p["quorum"]:  # the barrier answered before its timeout (the lab's barrier_timeout_ms)
        assert p["wait_ms"] < LAB_BARRIER_MS, p
