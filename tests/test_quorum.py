"""The quorum probe (hasync/quorum.py): when a probe goes out, what an answer proves, the reason."""

from __future__ import annotations

from hasync.quorum import QuorumProbe


def test_a_fresh_node_sends_at_once_and_counts_its_age_from_start() -> None:
    p = QuorumProbe(limit_s=1.5, started=100.0)
    assert p.due(100.0)
    assert p.reason(101.5) is None
    assert p.reason(101.6) == "no Raft majority for 1.6 s (limit 1.5 s)"


def test_one_probe_at_a_time_then_one_per_quarter_limit() -> None:
    p = QuorumProbe(limit_s=2.0, started=0.0)
    n = p.sent(0.0)
    assert not p.due(0.1)  # one outstanding
    p.answered(n, True, 0.0)
    assert not p.due(0.4) and p.due(0.5)  # every limit / 4
    assert p.reason(2.0) is None and p.reason(2.1) is not None  # age from the send time


def test_an_unanswered_probe_is_given_up_after_the_limit() -> None:
    p = QuorumProbe(limit_s=1.0, started=0.0)
    first = p.sent(0.0)
    assert not p.due(0.99)
    assert p.due(1.0) and p.counts["probes_given_up"] == 1
    second = p.sent(1.0)
    p.answered(first, True, 0.0)  # late: proves contact at 0.0 only
    assert p.outstanding == (second, 1.0) and p.last_ok == 0.0
    assert p.reason(1.5) == "no Raft majority for 1.5 s (limit 1.0 s)"
    p.answered(second, True, 1.0)
    assert p.reason(1.5) is None and p.outstanding is None


def test_a_failed_probe_proves_nothing() -> None:
    p = QuorumProbe(limit_s=1.0, started=0.0)
    p.answered(p.sent(0.2), False, 0.2)
    assert p.last_ok is None and p.counts == {"probes_sent": 1, "probes_failed": 1}
    assert p.due(0.3)  # no success yet: ask again
    assert p.status(1.2) == {"age_s": 1.2, "limit_s": 1.0, "ok": False, "probes_sent": 1,
                            "probes_failed": 1}


def test_an_older_success_never_moves_the_last_contact_back() -> None:
    p = QuorumProbe(limit_s=1.0, started=0.0)
    p.answered(2, True, 5.0)
    p.answered(1, True, 4.0)
    assert p.last_ok == 5.0
