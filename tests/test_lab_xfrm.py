"""Lab test of hasync's XFRM netlink module against real ESP SAs (in the VM when this kernel
has no ESP): GETAE reads each outbound SA's replay state on the master, NEWAE moves its
outbound sequence number forward, and the clients keep receiving, above the jump.

It runs with `make test-lab-extended`: `make test`'s takeover lab (tests/test_lab_takeover.py)
drives the same module through every promotion and checks its effect on the wire (each
client's sequence jump within the bound, no reuse, replay drops no more than the packets in
flight at the fault), and `make test` keeps to its 20 minutes.
"""

from __future__ import annotations

from typing import Any

from labrun import LAB_EXTENDED, lab_fixture

pytestmark = LAB_EXTENDED


check = lab_fixture("xfrm", ["xfrm-check"], 900)


def test_getae_reads_and_newae_jumps_every_outbound_sa(check: dict[str, Any]) -> None:
    jumps = check["jumps"]
    assert len(jumps) == 2  # one outbound SA per client
    assert {j["encap"] for j in jumps} == {True, False}  # the NAT-T client's SA too
    assert {j["esn"] for j in jumps} == {True, False}  # and an ESN SA (64-bit counters)
    for j in jumps:
        assert j["oseq_before"] > 20, j  # traffic had been flowing on it
        assert j["oseq_after"] >= j["oseq_before"] + check["jump"], j


def test_clients_receive_above_the_jump_without_replay_drops(check: dict[str, Any]) -> None:
    by_spi = {j["spi"]: j for j in check["jumps"]}
    for name, c in check["clients"].items():
        assert c["flowing_after"], name
        assert c["replay_errors"] == 0, name
        mine = [spi for spi in c["last_seq_by_spi"] if spi in by_spi]
        assert len(mine) == 1, (name, c)
        assert c["last_seq_by_spi"][mine[0]] > by_spi[mine[0]]["oseq_before"] + check["jump"]


def test_replay_events_follow_each_sa_past_the_jump(check: dict[str, Any]) -> None:
    by_spi = {j["spi"]: j for j in check["jumps"]}
    assert set(check["events"]) == set(by_spi)
    for spi, ev in check["events"].items():
        assert ev["thresh"] == check["event_threshold"], (spi, ev)  # GETAE shows our threshold
        assert ev["events"] > 0, (spi, ev)  # XFRMNLGRP_AEVENTS delivered replay events
        assert ev["max_oseq"] > by_spi[spi]["oseq_after"], (spi, ev)  # counting past the jump
