"""Lab test of one takeover, as `make demo` runs it: hasync on every gateway, probe streams
through every client's tunnel (one client behind NAT, one with ESN, one whose CHILD_SA was
rekeyed before the fault), kill -9 of every process of the master; real charon, keepalived and
kernel XFRM (in the VM when this kernel has no ESP). The longer run (two kills in a row, then a
charon kill onto the restored gateway) is tests/test_lab_takeover.py.

`make test` runs the longer one, which covers everything asserted here; this one runs with
`make test-lab-extended` (it checks `make demo`'s own command line, at 10 more minutes of VM).
"""

from __future__ import annotations

from typing import Any

from hasync.guard import Reserve

from labrun import LAB_EXTENDED, check_promotion_phases, lab_fixture

pytestmark = LAB_EXTENDED
FLOOR = Reserve().bound(0)  # docs/takeover.md: the most a failover may skip at low rates


takeover = lab_fixture("hasync", ["failover"], 1800)  # hasync mode, one kill


def test_clients_keep_their_tunnels(takeover: dict[str, Any]) -> None:
    (fo,) = takeover["failovers"]
    assert takeover["mode"] == "hasync" and fo["from"] == "gw1" and fo["vip_moved"]
    for c in fo["clients"]:
        assert c["reestablished"] is False and c["ike_sa_init"] == 0, c["name"]
        assert c["ike_spi_after"] == c["ike_spi_before"], c["name"]
        assert c["resumed"], c["name"]


def test_no_sequence_number_is_sent_twice_and_none_is_dropped_as_replay(
        takeover: dict[str, Any]) -> None:
    (fo,) = takeover["failovers"]
    for c in fo["clients"]:
        assert c["esp_to_client"] > 0 and c["seq_reuse"] == 0, c["name"]
        assert c["replay_errors"] <= c["lost_to_client"] + c["lost_from_client"], c["name"]


def test_the_jump_is_safe_and_tight(takeover: dict[str, Any]) -> None:
    (fo,) = takeover["failovers"]
    for c in fo["clients"]:
        assert c["seq_jumps"], c["name"]  # the capture saw both masters' packets on the SA
        for j in c["seq_jumps"]:
            assert 0 <= j["seq_skipped"] <= max(j["packets_2s"], FLOOR), (c["name"], j)


def test_nat_esn_and_rekeyed_sas_are_among_them(takeover: dict[str, Any]) -> None:
    (fo,) = takeover["failovers"]
    assert any(c["nat"] and c["encap"] for c in fo["clients"])
    assert takeover["esn_clients"] == ["c2"]
    before = takeover["before_failovers"]
    assert before["mirrored"] and all(r["ok"] for r in before["child_rekey"].values()), before


def test_the_promotion_reports_its_phases(takeover: dict[str, Any]) -> None:
    p = takeover["failovers"][0]["promotion"]
    assert p and p["done"] and p["quorum"] and p["sas"] >= 6 and not p["errors"], p
    check_promotion_phases(p)


def test_rekeys_and_dpd_succeed_against_the_new_master(takeover: dict[str, Any]) -> None:
    after = takeover["after_failovers"]
    (fo,) = takeover["failovers"]
    assert after and set(after) == {c["name"] for c in fo["clients"]}, after
    for name, checks in after.items():
        for what in ("ike_rekey", "child_rekey", "dpd"):
            assert checks[what]["ok"], (name, what, checks[what])
