"""The quorum probe (hasync/quorum.py): when a probe goes out, what an answer proves, the reason."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hasync import control
from hasync.quorum import QuorumProbe

from localcluster import LocalCluster, Node


def test_a_fresh_node_sends_at_once_and_counts_its_age_from_start() -> None:
    p = QuorumProbe(limit_s=1.5, started=100.0)
    assert p.due(100.0)
    assert p.reason(101.5) is None
    assert p.reason(101.6) == "no Raft majority for 1.6 s (limit 1.5 s)"


def test_a_probe_every_eighth_of_the_limit_answered_or_not() -> None:
    p = QuorumProbe(limit_s=2.0, started=0.0)
    n = p.sent(0.0)
    assert not p.due(0.2) and p.due(0.25)  # every limit / 8, the first one still pending
    m = p.sent(0.25)
    p.answered(m, True, 0.25)
    assert p.outstanding == {n: 0.0} and p.last_ok == 0.25
    assert p.reason(2.25) is None and p.reason(2.3) is not None  # age from the send time


def test_a_probe_stuck_at_a_dead_leader_does_not_hold_back_the_next() -> None:
    # the leader dies at 0.9 with probe 1 forwarded to it; a new one leads from 2.0
    p = QuorumProbe(limit_s=4.0, started=0.0)
    p.answered(p.sent(0.0), True, 0.0)
    stuck, t = p.sent(0.5), 0.5
    while t < 2.0:
        t += 0.1
        if p.due(t):
            n = p.sent(t)
            p.answered(n, False, t)  # no leader during the election
    t = 2.5
    assert p.due(t)
    p.answered(p.sent(t), True, t)
    assert p.reason(t + 0.1) is None and stuck in p.outstanding


def test_an_unanswered_probe_is_given_up_after_the_limit() -> None:
    p = QuorumProbe(limit_s=1.0, started=0.0)
    first = p.sent(0.0)
    assert not p.due(0.12) and p.due(0.125)
    assert p.counts.get("probes_given_up") is None
    assert p.due(1.0) and p.counts["probes_given_up"] == 1 and p.outstanding == {}
    second = p.sent(1.0)
    p.answered(first, True, 0.0)  # late: proves contact at 0.0 only
    assert p.outstanding == {second: 1.0} and p.last_ok == 0.0
    assert p.reason(1.5) == "no Raft majority for 1.5 s (limit 1.0 s)"
    p.answered(second, True, 1.0)
    assert p.reason(1.5) is None and p.outstanding == {}


def test_a_failed_probe_proves_nothing() -> None:
    p = QuorumProbe(limit_s=1.0, started=0.0)
    p.answered(p.sent(0.2), False, 0.2)
    assert p.last_ok is None and p.counts == {"probes_sent": 1, "probes_failed": 1}
    assert not p.due(0.3) and p.due(0.325)  # the next one, an eighth of the limit later
    assert p.status(1.2) == {"age_s": 1.2, "limit_s": 1.0, "ok": False, "probes_sent": 1,
                            "probes_failed": 1}


def test_an_older_success_never_moves_the_last_contact_back() -> None:
    p = QuorumProbe(limit_s=1.0, started=0.0)
    p.answered(2, True, 5.0)
    p.answered(1, True, 4.0)
    assert p.last_ok == 5.0


# ---- a real cluster on loopback (tests/localcluster.py): the probe where Raft's view lags ----

TIMING = "heartbeat_ms = 50\nelection_timeout_ms = 300\nquorum_timeout_ms = 1400"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path, n=3, extra=TIMING)
    try:
        c.start_all()
        yield c
    finally:
        c.close()


def _problems(node: Node) -> list[str]:
    try:
        return control.request(node.sock, "health", timeout=3.0).get("problems", [])
    except control.ControlError:
        return []


def _lost(reasons: list[str]) -> bool:
    return any(r.startswith("no Raft majority for ") for r in reasons)


def test_a_cut_off_master_fails_health_while_pysyncobj_still_calls_it_leader(
        cluster: LocalCluster) -> None:
    c = cluster
    c.wait(lambda: c.leader() is not None, what="a Raft leader")
    leader = c.leader()
    assert leader is not None
    for n in c.nodes:
        c.vrrp(n, "MASTER" if n is leader else "BACKUP")
    c.wait(lambda: ((c.status(leader) or {}).get("takeover") or {}).get("epoch") is not None,
           what="the master's claim committed")
    c.wait(lambda: (c.status(leader) or {})["quorum"].get("probes_ok", 0) > 0,
           what="a probe of the master committed")
    for n in c.nodes:
        if n is not leader:
            c.kill(n)
    c.wait(lambda: _lost(_problems(leader)), what="the master's health naming the lost majority")
    st = c.status(leader)
    assert st is not None
    # pysyncobj keeps a leader cut off from its majority leading for leaderFallbackTimeout
    # (config.py, 30 s by default): only the probe tells it has no majority (quorum.py).
    assert st["raft"]["role"] == "leader" and st["takeover"]["epoch"] is not None
    assert st["quorum"]["ok"] is False
    c.wait(lambda: _lost((c.status(leader) or {})["health"]["reasons"]),
           what="the verdict keepalived's check reads naming the lost majority")
    c.start(c.nodes[0] if c.nodes[0] is not leader else c.nodes[1])
    c.wait(lambda: not _lost(_problems(leader)), what="the majority heard again")
