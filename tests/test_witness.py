"""Two gateways and a witness on loopback (real daemons, pysyncobj over TCP): the witness's vote
keeps a majority when one gateway dies; without it the survivor's health names the lost
majority (hasync/witness.py, hasync/quorum.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hasync import control

from localcluster import LocalCluster, Node

TIMING = "heartbeat_ms = 50\nelection_timeout_ms = 300\nquorum_timeout_ms = 1400"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path, n=3, witnesses=1, extra=TIMING)
    try:
        c.start_all()
        yield c
    finally:
        c.close()


def _health(node: Node) -> dict[str, Any] | None:
    try:
        return control.request(node.sock, "health", timeout=3.0)
    except control.ControlError:
        return None


def _quorum_ok(c: LocalCluster, node: Node) -> bool:
    """A probe of `node` committed and its majority is recent (not merely a young node)."""
    st = c.status(node)
    return st is not None and st["quorum"].get("ok") is True and st["quorum"].get(
        "probes_ok", 0) > 0


def test_the_witness_votes_and_a_lone_gateway_names_the_lost_majority(
        cluster: LocalCluster) -> None:
    gw1, gw2, witness = cluster.nodes
    cluster.wait(lambda: cluster.leader() is not None, what="a Raft leader")
    cluster.wait(lambda: all(_quorum_ok(cluster, n) for n in cluster.nodes),
                 what="every node hearing a majority")
    st = cluster.status(witness)
    assert st is not None and st["role"] == "witness" and "journal" in st
    h = _health(witness)
    assert h is not None and h["role"] == "witness"
    cluster.wait(lambda: (_health(witness) or {}).get("raft_joined") is True,
                 what="the witness caught up")
    cluster.kill(gw1)
    cluster.wait(lambda: cluster.leader() is not None, what="a leader among gw2 and the witness")
    commit = (cluster.status(gw2) or {})["raft"]["commit_index"] or 0
    cluster.wait(lambda: ((cluster.status(gw2) or {})["raft"]["commit_index"] or 0) > commit + 2,
                 what="gw2's probes committing with the witness's vote")
    assert _quorum_ok(cluster, gw2)
    cluster.kill(witness)
    cluster.wait(lambda: any(p.startswith("no Raft majority for ")
                             for p in (_health(gw2) or {}).get("problems", [])),
                 timeout=30, what="gw2's health naming the lost majority")
    st = cluster.status(gw2)
    assert st is not None and st["quorum"]["ok"] is False
    cluster.wait(lambda: any("no Raft majority for " in line for line in _lines(gw2, "health: ")),
                 timeout=10, what="gw2 logging the onset")


def _lines(node: Node, text: str) -> list[str]:
    return [line for line in (node.dir / "daemon.log").read_text().splitlines() if text in line]


def test_a_lone_witness_logs_the_lost_majority_once_and_its_return(cluster: LocalCluster) -> None:
    gw1, gw2, witness = cluster.nodes
    cluster.wait(lambda: _quorum_ok(cluster, witness), what="a probe of the witness committed")
    before = len(_lines(witness, "health: no Raft majority for "))  # a slow start logs one too
    cluster.kill(gw1)
    cluster.kill(gw2)
    cluster.wait(lambda: any(p.startswith("no Raft majority for ")
                             for p in (_health(witness) or {}).get("problems", [])),
                 timeout=30, what="the witness's health naming the lost majority")
    cluster.wait(lambda: len(_lines(witness, "health: no Raft majority for ")) > before,
                 timeout=5, what="the witness logging the onset")
    age = (cluster.status(witness) or {})["quorum"]["age_s"]
    cluster.wait(lambda: (cluster.status(witness) or {})["quorum"]["age_s"] > age + 2.5,
                 what="the lost majority lasting a few more checks")
    assert len(_lines(witness, "health: no Raft majority for ")) == before + 1
    oks = len(_lines(witness, "health: ok"))
    cluster.start(gw1)
    cluster.wait(lambda: len(_lines(witness, "health: ok")) > oks,
                 what="the witness logging the recovery")
    assert (_health(witness) or {}).get("problems") == []
