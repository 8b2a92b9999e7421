"""The lab's CPU accounting: /proc/[pid]/stat parsing and per-process shares."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from hasync_lab import cpustat
from hasync_lab.procs import Lab
from hasync_lab.topology import Topology


def test_parse_stat_reads_session_and_cpu_ticks_past_an_odd_comm() -> None:
    line = "4242 (a) b (c)) S 1 4242 4200 0 -1 4194304 10 0 0 0 70 30 5 2 20 0 1 0 5 6 7"
    assert cpustat.parse_stat(line) == (4200, 107)


def test_shares_and_summary() -> None:
    s = cpustat.shares({"gw1/hasync": 1.0, "c1/charon": 2.0},
                       {"gw1/hasync": 2.7, "c1/charon": 2.5, "srv/probe": 0.001}, 2.0)
    assert s == pytest.approx({"gw1/hasync": 0.85, "c1/charon": 0.25, "srv/probe": 0.0005})
    assert cpustat.summary(s) == "gw1/hasync 85%, c1/charon 25%"
    assert cpustat.summary({}) == "idle" and cpustat.shares({}, {"x": 1.0}, 0) == {}


def test_sample_counts_a_spawned_process_and_its_reaped_child(tmp_path: Path) -> None:
    burn = ("import subprocess, sys, time\n"
            "code = 'import time\\nwhile time.process_time() < 0.3: pass'\n"
            "subprocess.run([sys.executable, '-c', code])\n"
            "print('done', flush=True)\n"
            "time.sleep(30)\n")
    p = subprocess.Popen([sys.executable, "-c", burn], start_new_session=True,
                         stdout=subprocess.PIPE, text=True)
    try:
        lab = Lab(Topology.__new__(Topology), tmp_path)
        lab.procs.append(("gw1", "burn", p))
        assert p.stdout is not None and p.stdout.readline() == "done\n"
        t0 = time.monotonic()
        assert cpustat.sample(lab)["gw1/burn"] >= 0.29
        assert time.monotonic() - t0 < 5
    finally:
        p.kill()
        p.wait()
