"""bench/promotion_cost.py at two small N: the promotion takes the notices path with the real
send fence (root and nft), writes nothing, and the JSON carries every row and the fit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "promotion_cost.py"
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nft"),
                                reason="needs root and nft (Debian: nftables)")


def test_the_promotion_bench_runs_the_notices_path_and_saves_its_fit(tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    env = {**os.environ, "PYTHONPATH": str(BENCH.parent.parent)}
    run = subprocess.run([sys.executable, str(BENCH), "--tunnels", "10,40", "--repeats", "1",
                          "--json", str(out)], capture_output=True, text=True, timeout=300,
                         env=env)
    assert run.returncode == 0, run.stderr  # the bench asserts the notices path, no writes
    saved = json.loads(out.read_text())
    assert [r["tunnels"] for r in saved["rows"]] == [10, 40]
    assert all(r["after_barrier_ms"] > 0 for r in saved["rows"])
    assert "ms_per_tunnel" in saved["fit"] and "ms/tunnel" in run.stdout
