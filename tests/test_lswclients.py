"""The libreswan clients of a failover run (lswclients.py): which clients are libreswan, how
the lab lists one, and the DPD verdict read from pluto's log (captured from real pluto 4.10 in
tests/data/libreswan/). The run itself is the matrix (tests/test_lab_takeover.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hasync_lab import libreswan_text as text
from hasync_lab import lswclients, topology
from hasync_lab.procs import Lab

DATA = Path(__file__).resolve().parent / "data" / "libreswan"


class Pluto:
    """whack's view and pluto's log, as captured: what lswclients reads of a client."""

    def __init__(self, states: str, traffic: str, log: str) -> None:
        self.states, self.traffic, self.log = states, traffic, log
        self.debug: list[list[str]] = []

    def status(self) -> text.Status:
        return text.status(self.states, self.traffic, text.CONN)

    def log_offset(self) -> int:
        return 0

    def log_text(self, offset: int = 0) -> str:
        return self.log[offset:]

    def whack(self, args: list[str], check: bool = True) -> tuple[int, str]:
        self.debug.append(args)
        return 0, ""


def pluto(log: str) -> Pluto:
    return Pluto((DATA / "ping-showstates.txt").read_text(),
                 (DATA / "ping-trafficstatus.txt").read_text(), (DATA / log).read_text())


def test_the_impls_name_the_libreswan_clients_in_plan_order() -> None:
    lab = Lab(topology.plan(3, 4), Path("/nonexistent"))
    assert lswclients.names(lab, ("strongswan", "strongswan", "strongswan", "libreswan")) == [
        "c4"]
    assert lswclients.names(lab, ("libreswan",)) == ["c1"]
    assert lswclients.names(lab, ()) == []


def test_the_lab_lists_a_libreswan_client_as_one_established_ike_sa() -> None:
    (sa,) = lswclients.sas(pluto("pluto-rekeys-and-liveness.log"))  # type: ignore[arg-type]
    assert sa.state == "ESTABLISHED" and sa.spi_i.startswith("#") and sa.child_spis
    assert lswclients.sas(Pluto("", "", "")) == []  # type: ignore[arg-type]


def test_an_answered_liveness_check_on_the_same_ike_sa_is_a_dpd_that_succeeded() -> None:
    client = pluto("pluto-rekeys-and-liveness.log")
    start = client.log.index("queueing liveness probe")  # the window: after the set-up
    got = lswclients.dpd(client, start, 0.1, 1.0)  # type: ignore[arg-type]
    assert got["ok"] and got["error"] is None, got
    assert client.debug == [["--debug", "none"]]  # the window's logging is switched off


def test_a_peer_declared_dead_is_a_dpd_that_failed_and_says_why() -> None:
    got = lswclients.dpd(pluto("pluto-dpd-dead.log"), 0, 0.1, 1.0)  # type: ignore[arg-type]
    assert not got["ok"] and "no liveness check answered" in str(got["error"]), got
    with pytest.raises(ValueError, match="no time after the DPD delay"):
        lswclients.dpd(pluto("pluto-dpd-dead.log"), 0, 10, 5)  # type: ignore[arg-type]
