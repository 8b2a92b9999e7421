"""hasync_lab.cluster: which gateway keepalived's notify events name as VRRP master."""

from __future__ import annotations

from hasync_lab.cluster import VrrpEvent, VrrpWatch


def test_current_master_is_the_one_node_whose_latest_event_is_master() -> None:
    w = VrrpWatch()
    assert w.current_master() is None
    w.events += [VrrpEvent("gw1", "MASTER", 1.0), VrrpEvent("gw2", "BACKUP", 1.1)]
    assert w.current_master() == "gw1"
    w.events += [VrrpEvent("gw1", "FAULT", 2.0), VrrpEvent("gw2", "MASTER", 2.1)]
    assert w.current_master() == "gw2"
    w.events.append(VrrpEvent("gw3", "MASTER", 3.0))  # two claim it (split brain): no answer
    assert w.current_master() is None
