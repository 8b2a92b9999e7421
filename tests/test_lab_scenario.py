"""The lab scenario's parts that need no namespaces: VRRP priorities, and the probe logs of
the one probe runtime read as the lab reads them."""

from __future__ import annotations

import itertools
import signal
import time
from pathlib import Path

import pytest
from test_probe import free_port, probe, wait_for

from hasync_lab import topology, tunnels
from hasync_lab.probe import DEFAULT_SERVER_NAME
from hasync_lab.procs import Lab
from hasync_lab.scenario import ANY_SOURCE, flowing_since, priority, read_probes
from hasync_lab.session import LabSpec, Run


@pytest.mark.parametrize("gateways", range(2, 8))
def test_priorities_fall_and_candidates_sit_apart(gateways: int) -> None:
    prios = [priority(k, gateways) for k in range(1, gateways + 1)]
    assert prios[:2] == [200, 190]  # gw2, the first new master, as in every saved result
    assert prios == sorted(prios, reverse=True) and prios[-1] >= 40
    # two backups competing for the VIP differ by 30 points (58 ms at advert 0.5 s) or more
    assert all(a - b >= 30 for a, b in itertools.pairwise(prios[1:]))


def test_classic_client_and_server_logs_read_as_the_lab_reads_them(tmp_path: Path) -> None:
    # the processes and arguments of start_traffic's classic case, on loopback
    (tmp_path / "probe").mkdir()
    run = Run(LabSpec(tunnels=0), Lab(topology.plan(2, 1, 0), tmp_path), tmp_path)
    run.tunnels = tunnels.plan(0, ["c1"])
    endpoint, t0 = f"127.0.0.1:{free_port()}", time.monotonic()
    srv = probe("server", "--bind", endpoint, "--rate", "50",
                "--log", str(tmp_path / "probe" / "srv.log"))
    c1 = None
    try:
        wait_for(tmp_path / "probe" / "srv.log", 10)
        c1 = probe("client", "--server", endpoint, "--rate", "50", "--flow", f"c1@{ANY_SOURCE}",
                   "--log", str(tmp_path / "probe" / "c1.log"), module="hasync_lab.probeflows")
        deadline = time.monotonic() + 20
        while flowing_since(run, t0) != {"c1"} and time.monotonic() < deadline:
            time.sleep(0.2)  # read_probes parses what was added since its last call
        assert flowing_since(run, t0) == {"c1"}
    finally:
        for proc in (c1, srv):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.communicate(timeout=30)
    logs = read_probes(run)
    assert set(logs) == {"srv", "c1"}
    up = logs["srv"].peer("c1").received
    down = logs["c1"].peer(DEFAULT_SERVER_NAME).received
    assert len(up) >= 5 and len(down) >= 5
    assert {seq for seq, *_ in up} <= {seq for seq, _ in logs["c1"].peer(DEFAULT_SERVER_NAME).sent}
    assert [state[0] for state in run.probe_logs.values()] == [
        (tmp_path / "probe" / f"{name}.log").stat().st_size for name in run.probe_logs]
