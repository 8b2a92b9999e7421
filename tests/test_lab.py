"""Lab tests: the baseline failover on real charon, keepalived and kernel XFRM (in the VM when
this kernel has no ESP). The benchmark's smallest case (conftest.bench_smoke) makes the run
every test in this module reads; Ctrl-C is tried on `hasync lab failover` itself.
"""

from __future__ import annotations

import ipaddress
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hasync_lab.topology import POOL

from labrun import LAB, ROOT

pytestmark = LAB


# the baseline run (keepalived alone) comes from the bench smoke, which issue 18 moved to
# `make test-lab-extended` to give `make test`'s time to the matrix and leases runs
BASELINE_RUN = pytest.mark.lab_extended


@pytest.fixture(scope="module")
def baseline(bench_smoke: dict[str, Any]) -> dict[str, Any]:
    """The baseline lab run of the benchmark's smallest case (conftest.bench_smoke)."""
    (run,) = [r for r in bench_smoke["doc"]["runs"] if r["mode"] == "baseline"]
    assert run["error"] is None, run["error"]
    return run["result"]


@BASELINE_RUN
def test_every_tunnel_comes_up_nat_client_encapsulated(baseline: dict[str, Any]) -> None:
    tunnels = baseline["tunnels"]
    assert len(tunnels) == 3 and {t["client"] for t in tunnels} == {"c1", "c2", "c3"}
    pool = ipaddress.ip_network(POOL)
    for t in tunnels:
        assert t["established"], t
        assert t["encap"] is t["nat"], t  # UDP encapsulation exactly for the NAT'd client
        assert t["virtual_ip"] and ipaddress.ip_address(t["virtual_ip"][0]) in pool
    assert sum(t["nat"] for t in tunnels) == 1


@BASELINE_RUN
def test_probe_stream_flows_both_ways(baseline: dict[str, Any]) -> None:
    for name, counts in baseline["warmup"].items():
        assert counts["to_client"] > 20 and counts["from_client"] > 20, name


@BASELINE_RUN
def test_killing_the_master_moves_the_vip(baseline: dict[str, Any]) -> None:
    (fo,) = baseline["failovers"]
    assert fo["from"] == "gw1" and fo["to"] in ("gw2", "gw3")
    assert fo["vip_moved"] is True
    assert 0 < fo["vrrp_detect_ms"] < 30000


@BASELINE_RUN
def test_result_has_every_field_measured(baseline: dict[str, Any]) -> None:
    assert baseline["mode"] == "baseline" and baseline["runner"] in ("vm", "native")
    assert baseline["kernel"] and baseline["advert_int"] > 0
    (fo,) = baseline["failovers"]
    assert len(fo["clients"]) == 3
    for c in fo["clients"]:
        assert c["ike_spi_before"], c
        # keepalived alone carries no SA over: the new master never sends on an old SA, so no
        # sequence number is sent twice and no client drops a packet as a replay
        assert c["seq_reuse"] == 0 and c["replay_errors"] == 0, c
        # the master was killed with traffic flowing both ways: each way lost some, not more
        # than was sent
        assert 0 < c["lost_to_client"] <= c["sent_to_client"], c
        assert 0 < c["lost_from_client"] <= c["sent_from_client"], c
        assert c["outage_ms"] > 0 and c["sent_to_client"] > 0 and c["sent_from_client"] > 0
        assert c["esp_to_client"] > 0, c  # the capture on the client's link saw ESP
        assert c["reestablished"] == (c["ike_spi_after"] != c["ike_spi_before"])


@BASELINE_RUN
def test_baseline_never_keeps_a_tunnel_across_failover(baseline: dict[str, Any]) -> None:
    # Without state sync, gw2 has no SA: a client's traffic can only come back on a new IKE_SA.
    (fo,) = baseline["failovers"]
    for c in fo["clients"]:
        if c["resumed"]:
            assert c["reestablished"], c
            assert c["lost_to_client"] > 0 and c["lost_from_client"] > 0, c


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_the_lab_and_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "artifacts"
    # as a terminal's Ctrl-C finds it: a runner that starts us in the background (nohup, `&`)
    # leaves SIGINT ignored, and Python keeps an ignored SIGINT ignored
    proc = subprocess.Popen([sys.executable, "-m", "hasync", "lab", "failover", "--baseline",
                             "--out", str(out)], cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=_default_sigint)
    assert proc.stdout is not None
    for line in proc.stdout:  # interrupt once the daemons are running
        if "charon up" in line:
            break
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, rest[-2000:]
    assert "interrupted" in rest
    left = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True).stdout
    assert left == "", f"processes left behind: {left}"
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "hl-" not in netns
