"""Lab test of the mirror: hasync on every gateway, clients through gw1, gw3 started after
them; real charon, keepalived and kernel XFRM (in the VM when this kernel has no ESP).
"""

from __future__ import annotations

from typing import Any

from labrun import LAB_EXTENDED, lab_fixture

# The takeover lab (tests/test_lab_takeover.py) restores gateways that must catch up before
# keepalived starts; this longer scenario (a gateway joining after the clients) runs with
# `make test-lab-extended`, outside `make test`'s time budget.
pytestmark = LAB_EXTENDED


mirror = lab_fixture("mirror", ["mirror"], 1200)  # once, as a user would run it


def test_backups_hold_the_masters_sas_passive_with_its_spis(mirror: dict[str, Any]) -> None:
    gws = mirror["gateways"]
    master = gws[mirror["master"]]["view"]
    assert mirror["master"] == "gw1"
    assert len(master["ike_sas"]) == 3 and set(master["ike_sas"].values()) == {"ESTABLISHED"}
    assert len(master["xfrm_spis"]) == 6  # one CHILD_SA per client, two SAs each
    for gw in ("gw2", "gw3"):
        view = gws[gw]["view"]
        assert view["ike_sas"] == dict.fromkeys(master["ike_sas"], "PASSIVE"), gw
        assert set(master["xfrm_spis"]) <= set(view["xfrm_spis"]), gw
        assert set(master["child_spis"]) <= set(view["child_spis"]), gw


def test_a_gateway_started_late_catches_up(mirror: dict[str, Any]) -> None:
    gw3 = mirror["gateways"]["gw3"]
    assert gw3["late"] and gw3["mirrors_master"]
    assert mirror["late_catchup_s"] is not None


def test_hasync_status_shows_the_cluster_on_every_node(mirror: dict[str, Any]) -> None:
    for gw, info in mirror["gateways"].items():
        st, text = info["status"], info["status_text"]
        assert st["role"] == ("master" if gw == "gw1" else "backup"), gw
        assert st["raft"]["leader"] and st["lag"] == 0, gw
        assert set(st["raft"]["peers"].values()) == {"connected"}, gw
        assert st["journal"]["ike_sas"] == 3 and st["journal"]["child_sas"] == 3, gw
        assert st["synced"] if gw != "gw1" else st["charon_segments"] == [1], gw
        assert f"node {gw} of cluster lab" in text and "peer 10.1.0." in text, gw
        assert not any(k.startswith("dropped:") for k in st["ha"]), gw
        roles = {name: m["vrrp"] for name, m in st["members"].items()}
        assert roles == {"gw1": "master", "gw2": "backup", "gw3": "backup"}, gw
        assert "member gw1: VRRP master" in text, gw
