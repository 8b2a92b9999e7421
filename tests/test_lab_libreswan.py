"""The libreswan road warrior against a strongSwan responder with the lab gateways' connections,
in the lab VM (issue 18, item 7): `python -m hasync_lab.libreswan_check OUT --vm`. Left out of
`make test` for time (lab_extended) until the failover lab carries a libreswan client. Run
twice: the client on the responder's link, and behind a masquerading router (as the lab's c3)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from hasync_lab import libreswan_check

from labrun import NEEDS_ROOT, ROOT


@pytest.fixture(scope="module", params=["direct", "nat"])
def run(request: pytest.FixtureRequest,
        tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp(f"libreswan-{request.param}")
    nat = ["--nat"] if request.param == "nat" else []
    res = subprocess.run([sys.executable, "-m", "hasync_lab.libreswan_check", str(out), "--vm",
                          *nat],
                         cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                         timeout=libreswan_check.VM_BUDGET_S + 60)
    sys.stdout.write(res.stdout[-6000:])
    result: dict[str, Any] = json.loads((out / "libreswan-check.json").read_text())
    assert "error" not in result, result.get("traceback")
    return result


@pytest.mark.lab
@pytest.mark.lab_extended
@NEEDS_ROOT
def test_libreswan_gets_a_virtual_ip_and_carries_traffic(run: dict[str, Any]) -> None:
    assert run["up"]["vip"] == "10.3.0.1" and run["up"]["esp_spis"], run["up"]
    assert run["up"]["encap"] is run["up"]["nat"], run["up"]  # behind NAT: ESP in UDP 4500
    assert run["ping"]["ok"] and run["ping_after_rekeys"]["ok"], run


@pytest.mark.lab
@pytest.mark.lab_extended
@NEEDS_ROOT
def test_libreswan_rekeys_child_and_ike_without_a_new_ike_sa_init(run: dict[str, Any]) -> None:
    assert run["rekey_child"]["ok"] and run["rekey_ike"]["ok"], run
    ev = run["rekey_events"]
    assert (ev["ike_sa_inits"], ev["ike_rekeys"], ev["child_rekeys"]) == (0, 1, 1), ev


@pytest.mark.lab
@pytest.mark.lab_extended
@NEEDS_ROOT
def test_libreswan_dpd_is_answered_and_restarts_when_the_peer_is_silent(
        run: dict[str, Any]) -> None:
    assert run["dpd_answered"]["ok"], run["dpd_answered"]
    dead = run["dpd_dead"]
    assert dead["ok"] and dead["events"]["action"] == "restarting", dead
    assert dead["events"]["gave_up"] and dead["events"]["ike_sa_inits"] >= 1, dead
    assert run["ping_after_dpd"]["ok"], run
