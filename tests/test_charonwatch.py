"""charonwatch.py: charon's restarts, loaded connections and drift from the journal (issue 17,
finding 3), and the vici answers it reads (vicicheck.stats, conn_names)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hasync.charonwatch import DRIFT_S, CharonWatch, Holdings
from hasync.vicicheck import conn_names, ike_total, incarnation, stats

from fakevici import FakeCharon

EMPTY = Holdings(charon_ikes=0, journal_ikes=3, journal_children=3, children_missing=3)
SAME = Holdings(charon_ikes=3, journal_ikes=3, journal_children=3, children_missing=0)


def test_finding3_a_new_incarnation_is_a_restart_and_needs_its_connections_again() -> None:
    w = CharonWatch()
    assert w.on_stats("Dec 05 10:00:00 2026") == "first"
    assert w.problem(0.0) == "charon_not_ready: its connections are not loaded (checking)"
    assert w.on_conns({"rw"}, {"rw", "site"}) is False
    assert "(site)" in str(w.problem(0.0))
    assert w.on_conns({"rw", "site"}, {"rw", "site"}) is True and w.problem(0.0) is None
    assert w.on_stats("Dec 05 10:00:00 2026") == ""
    assert w.on_stats(None) == "" and not w.up  # down: the incarnation is kept
    assert w.problem(1.0) is None  # a dead charon is vici's reason, not this one
    assert w.on_stats("Dec 05 10:05:00 2026") == "restart" and not w.ready
    assert w.counters["charon_restarts"] == 1 and w.counters["charon_down_checks"] == 1
    assert w.on_conns(set(), set()) is True  # the journal names none: ready at once


def test_finding3_drift_fails_health_only_once_it_lasted_between_settled_checks() -> None:
    w = CharonWatch()
    w.on_stats("a")
    w.on_conns(set(), set())
    w.compare(EMPTY, 10.0)
    assert w.problem(10.0 + DRIFT_S * 2) is None  # no settled check since: not confirmed
    w.compare(EMPTY, 10.0 + DRIFT_S)
    assert w.problem(10.0 + DRIFT_S) == (
        "charon_drift: charon holds 0 IKE_SAs of the journal's 3; 3 of its 3 CHILD_SAs are "
        "not in the kernel")
    w.compare(SAME, 30.0)
    assert w.problem(30.0) is None and w.status()["drift"]["charon_ikes"] == 3
    w.compare(EMPTY, 31.0)
    w.compare(None, 32.0)  # stopped mirroring (or charon down): no drift judged
    w.compare(EMPTY, 33.0 + DRIFT_S)
    assert w.problem(33.0 + DRIFT_S) is None


def test_finding3_kernel_children_missing_is_drift_too() -> None:
    held = Holdings(charon_ikes=3, journal_ikes=3, journal_children=4, children_missing=1)
    assert held.differs and not SAME.differs


class _Session:
    def __init__(self, answer: dict[str, Any], conns: list[dict[str, Any]]) -> None:
        self.answer, self.conns = answer, conns

    def stats(self) -> dict[str, Any]:
        return self.answer

    def list_conns(self) -> list[dict[str, Any]]:
        return self.conns


def test_stats_and_conn_names_read_vici_answers_as_the_vici_package_gives_them() -> None:
    # vici/protocol.py decodes keys to str and leaves values as bytes
    answer = {"uptime": {"running": b"5 minutes", "since": b"Dec 05 10:00:00 2026"},
              "ikesas": {"total": b"3", "half-open": b"0"}}
    assert stats(_Session(answer, [])) == 3
    assert stats(_Session({}, [])) is None
    assert ike_total({"ikesas": {"total": b"x"}}) is None
    assert conn_names(_Session({}, [{"rw": {}}, {"site": {}}])) == {"rw", "site"}


def test_finding3_the_incarnation_is_the_vici_socket_and_changes_when_it_is_bound_anew(
        tmp_path: Path) -> None:
    path = tmp_path / "charon.vici"
    assert not incarnation(path, 0.5).ok
    first = FakeCharon(path, ikes=2)
    try:
        a, b = incarnation(path, 2.0), incarnation(path, 2.0)
        assert a.ok and a.value == b.value and a.value[1] == 2
    finally:
        first.stop()
    path.unlink()
    second = FakeCharon(path, ikes=0)  # a restarted charon binds its socket anew
    try:
        c = incarnation(path, 2.0)
        assert c.ok and c.value[0] != a.value[0] and c.value[1] == 0
    finally:
        second.stop()
