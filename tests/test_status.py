"""Tests of hasync.status: the control answers, built from snapshots."""

from __future__ import annotations

from dataclasses import dataclass

from hasync.status import (
    JournalView,
    health_answer,
    health_section,
    members_answer,
    sas_answer,
    status_answer,
)


def test_members_lag_and_report_age() -> None:
    got = members_answer({"n2": {"vrrp": "backup", "applied": 7, "ts": 95.0},
                          "n1": {"vrrp": "master", "ts": 99.5}}, commit=10, wall=100.0)
    assert list(got) == ["n1", "n2"]
    assert got["n2"] == {"vrrp": "backup", "applied": 7, "ts": 95.0, "lag": 3,
                         "report_age_s": 5.0}
    assert got["n1"]["lag"] == 10


def test_status_answer_shape() -> None:
    st = status_answer(
        node="gw1", cluster="c", core={"role": "backup", "synced": True},
        raft={"commit_index": 12, "applied_index": 10}, journal=JournalView(1, 2, {}, "d"),
        members={}, sections={"feed": {"fed": 3}}, counters={"fifo_errors": 1},
        uptime_s=3.14159, wall=0.0)
    assert st == {"node": "gw1", "cluster": "c", "role": "backup", "synced": True,
                  "raft": {"commit_index": 12, "applied_index": 10}, "members": {}, "lag": 2,
                  "journal": {"ike_sas": 1, "child_sas": 2, "anomalies": {}, "digest": "d"},
                  "feed": {"fed": 3}, "counters": {"fifo_errors": 1}, "uptime_s": 3.1}


def test_health_answers() -> None:
    assert health_section((False, ["x"]), True, {"vici_busy": 2}) == {
        "healthy": False, "reasons": ["x"], "vici_busy": True, "vici_busy_checks": 2,
        "late_verdicts": 0}
    assert health_answer(node="gw1", role="master", ha_rx_age_s=None, ha_timeout_s=3.0,
                         raft_joined=False, raft_leader=None)["raft_joined"] is False


def test_sas_answer_is_plain_dicts() -> None:
    @dataclass
    class S:
        config_name: str

    assert sas_answer([S("a")]) == {"ike_sas": [{"config_name": "a"}]}
