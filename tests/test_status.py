"""Tests of hasync.status: the control answers, built from snapshots."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from hasync.status import (
    STALE_REPORT_S,
    JournalView,
    health_answer,
    health_section,
    members_answer,
    sas_answer,
    status_answer,
)
from hasync.views import status_text


def test_members_lag_and_report_age() -> None:
    got = members_answer({"n2": {"vrrp": "backup", "applied": 7, "ts": 95.0},
                          "n1": {"vrrp": "master", "ts": 99.5}}, commit=10, wall=100.0)
    assert list(got) == ["n1", "n2"]
    assert got["n2"] == {"vrrp": "backup", "applied": 7, "ts": 95.0, "lag": 3,
                         "report_age_s": 5.0, "reachable": True}
    assert got["n1"]["lag"] == 10


def test_a_member_whose_report_is_stale_is_unreachable_but_never_this_node() -> None:
    """A killed gateway's last report said "VRRP master": 24 s later it is unreachable, beside
    the real master; this node's own report ages too when reports cannot commit."""
    members = {"gw1": {"vrrp": "master", "raft": "follower", "applied": 9, "ts": 76.0},
               "gw2": {"vrrp": "master", "raft": "leader", "applied": 10, "ts": 99.0},
               "gw3": {"vrrp": "backup", "raft": "follower", "applied": 10, "ts": 70.0}}
    got = members_answer(members, commit=10, wall=100.0, me="gw3")
    assert [got[g]["reachable"] for g in ("gw1", "gw2", "gw3")] == [False, True, True]
    assert members_answer(members, 10, 76.0 + STALE_REPORT_S, "gw3")["gw1"]["reachable"]
    text = status_text({"members": got})
    assert "member gw1: UNREACHABLE, no report for 24.0 s (it last said VRRP master" in text
    assert "member gw2: VRRP master, raft leader" in text


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
        "late_verdicts": 0, "verdicts": {}, "verdict_age_s": None}
    assert health_answer(node="gw1", role="master", ha_rx_age_s=None, ha_timeout_s=3.0,
                         raft_joined=False, raft_leader=None)["raft_joined"] is False


def test_sas_answer_is_plain_dicts() -> None:
    @dataclass
    class S:
        config_name: str

    assert sas_answer([S("a")]) == {"ike_sas": [{"config_name": "a"}], "total": 1, "start": 0,
                                    "next": None}


def _journal(n: int) -> Any:
    """What Answers.sas reads of a ClusterJournal: its lock and a state of `n` tunnels."""
    import threading
    import types

    from hasync.ha import decode
    from hasync.journal.state import JournalState

    import hastream
    st = JournalState()
    for i, raw in enumerate(hastream.tunnels(n).datagrams):
        st.apply(raw, decode(raw), 1000.0 + i)
    return types.SimpleNamespace(lock=threading.RLock(), state=st)


def _answers(journal: Any) -> Any:
    from hasync.status import Answers
    return Answers(cfg=None, core=None, journal=journal, fx=None, healthfile=None,  # type: ignore[arg-type]
                   takeover=dict, started=0.0)


def test_finding6_sas_answers_a_page_and_summarizes_only_that_page(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A `sas` request summarizes at most one page under the lock; following "next" visits
    every IKE_SA once, and every answer fits the control protocol."""
    import hasync.journal.summary as summary
    from hasync.control import encode_line
    from hasync.status import SAS_PAGE
    calls: list[int] = []
    real = summary.summarize
    monkeypatch.setattr(summary, "summarize", lambda *a: calls.append(1) or real(*a))
    answers, seen, after = _answers(_journal(SAS_PAGE + 37)), [], 0
    while after is not None:
        calls.clear()
        page = answers.sas({"after": after})
        assert len(calls) == len(page["ike_sas"]) <= SAS_PAGE  # before the fix: every SA
        assert page["total"] == SAS_PAGE + 37 and page["start"] == after
        encode_line({"ok": True, "result": page})  # raises past control.MAX_RESPONSE
        seen += [(s["initiator_spi"], s["responder_spi"]) for s in page["ike_sas"]]
        after = page["next"]
    assert len(seen) == len(set(seen)) == SAS_PAGE + 37
    assert answers.sas({"after": 10, "limit": 3})["next"] == 13


@pytest.mark.parametrize("args", [{"after": -1}, {"after": "0"}, {"limit": 0},
                                  {"limit": 10**6}, {"limit": True}])
def test_finding6_a_bad_sas_page_is_refused_by_name(args: dict[str, Any]) -> None:
    from hasync.control import BadRequest
    with pytest.raises(BadRequest) as err:
        _answers(_journal(1)).sas(args)
    assert err.value.reason == "bad_args" and "sas:" in err.value.message
