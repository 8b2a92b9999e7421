"""Tests of hasync.prevote (Raft's PreVote) and of its use by the journal's SyncObj: a member
cut off and back does not depose the leader the others still follow."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_handoff import _journals, _leader

from hasync.prevote import PreVote
from hasync.raft import ClusterJournal

from netutil import wait_until


def test_a_voter_that_hears_a_leader_or_leads_denies_and_a_stale_log_is_denied() -> None:
    p = PreVote(min_timeout_s=1.0)
    p.leader_heard(10.0)
    assert not p.grant(10.5, False, 3, (3, 40), 4, (3, 40))  # heard the leader 0.5 s ago
    assert p.grant(11.0, False, 3, (3, 40), 4, (3, 40))
    assert not p.grant(11.0, True, 3, (3, 40), 4, (3, 40))  # it leads
    assert not p.grant(11.0, False, 3, (3, 40), 4, (3, 39))  # the asker's log is behind
    assert not p.grant(11.0, False, 3, (3, 40), 4, (2, 90))  # older last term
    assert p.grant(11.0, False, 3, (3, 40), 4, (4, 1))  # newer last term
    assert not p.grant(11.0, False, 4, (3, 40), 4, (3, 40))  # not a higher term


def test_an_election_is_cleared_by_a_majority_of_one_round() -> None:
    p = PreVote(min_timeout_s=1.0)
    first = p.start()
    second = p.start()
    assert not p.granted(first, "b", 5)  # an answer to an older round
    assert not p.granted(second, "b", 5)  # 2 of 5
    assert not p.granted(second, "b", 5)  # the same voter twice
    assert p.granted(second, "c", 5) and p.cleared  # 3 of 5
    p.leader_heard(0.0)
    assert not p.cleared  # a leader spoke: no election after all


def _cut(nodes: list[ClusterJournal], gone: ClusterJournal) -> Any:
    """Drop every Raft message to and from `gone` (its TCP connections stay up, as behind a
    firewall that drops); returns a function that heals the cut."""
    address = gone._raft.selfNode.address
    undo = []
    for n in nodes:
        transport = n._raft._SyncObj__transport
        send = transport.send

        def cut(node: Any, message: Any, send: Any = send, me: bool = n is gone) -> Any:
            return None if me or node.address == address else send(node, message)
        transport.send = cut
        undo.append((transport, send))

    def heal() -> None:
        for transport, send in undo:
            transport.send = send
    return heal


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[list[ClusterJournal], ClusterJournal]]:
    """Three journals in-process and their leader; destroyed after the test."""
    nodes = _journals(tmp_path)
    try:
        yield nodes, _leader(nodes)
    finally:
        for n in nodes:
            n.destroy()


def test_a_member_cut_off_and_back_does_not_depose_the_leader(
        cluster: tuple[list[ClusterJournal], ClusterJournal]) -> None:
    nodes, leader = cluster
    term = leader.status()["term"]
    gone = next(n for n in nodes if n is not leader)
    heal = _cut(nodes, gone)
    time.sleep(3.0)  # several election timeouts (0.3-0.75 s) for the cut member
    assert gone.status()["term"] == term  # it asked, and raised nothing
    heal()
    wait_until(lambda: gone.status()["leader"] == leader._raft.selfNode.address, 10)
    time.sleep(1.0)
    assert leader.status()["role"] == "leader" and leader.status()["term"] == term
    done: list[object] = []
    leader.barrier(lambda result, error: done.append(error))
    wait_until(lambda: done, 10)
    assert done in ([0], [None])


def test_a_handoff_still_moves_the_leadership_past_the_pre_vote(
        cluster: tuple[list[ClusterJournal], ClusterJournal]) -> None:
    nodes, leader = cluster
    leader.hand_off()
    wait_until(lambda: leader.counters["leader_handoff:SUCCESS"] == 1, 10)
    wait_until(lambda: sum(n.status()["role"] == "leader" for n in nodes) == 1
               and leader.status()["role"] != "leader", 10)


def test_a_malformed_pre_vote_is_dropped_unanswered(
        cluster: tuple[list[ClusterJournal], ClusterJournal]) -> None:
    """Fields of the wrong type (not what this code sends) get no answer and raise nothing."""
    _, leader = cluster
    raft = leader._raft
    sent: list[Any] = []
    raft._SyncObj__transport.send = lambda node, message: sent.append(message)
    peer = next(iter(raft._SyncObj__otherNodes))
    for bad in ({"term": "9", "last_log_term": 1, "last_log_index": 1},
                {"term": 9, "last_log_term": None, "last_log_index": 1}, {}):
        raft._SyncObj__onMessageReceived(peer, {"type": "hasync_pre_vote", **bad})
    raft._SyncObj__onMessageReceived(peer, {"type": "hasync_pre_vote", "term": 99,
                                            "last_log_term": 99, "last_log_index": 99,
                                            "round": 1})
    answers = [m for m in sent if m.get("type") == "hasync_pre_vote_answer"]
    assert answers == [{"type": "hasync_pre_vote_answer", "granted": False, "round": 1}]
