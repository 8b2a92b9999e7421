"""The guard with the send fence, end to end on a simulated cluster (tests/guardsim.py): kernels
that send traffic through their node's fence onto the wire, a Raft that stalls, fails or lags.
Each scenario ends asserting the invariant: no (SA, seq) on the wire twice, neither across
nodes nor within one (`Sim.check_wire`), plus what the scenario is about."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from guardsim import Sim

from hasync.guard import Reserve
from hasync.guard.driver import STALL_S

K1 = ("192.0.2.101", 0xC0FFEE01, 50)
K2 = ("192.0.2.101", 0xC0FFEE02, 50)  # K1 rekeyed: same reqid, same peer


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


def accepted_mark(sim: Sim, key: tuple[str, int, int]) -> int:
    with sim.raft.lock:
        return sim.raft.seqs.records[key].mark


async def master_sending(sim: Sim, node: str, pps: float, seconds: float) -> None:
    """`node` becomes VRRP master and its kernel sends K1 at `pps` for `seconds`."""
    sim.become_master(node)
    sim.kernels[node].rate(K1, pps)
    await sim.run(seconds)


async def gw1_sending(pps: float, seconds: float, esn: bool = False) -> Sim:
    """A two-node cluster holding K1, whose master gw1 has sent it at `pps` for `seconds`."""
    sim = Sim()
    sim.add_sa(K1, esn=esn)
    await master_sending(sim, "gw1", pps, seconds)
    return sim


def test_a_raft_that_stalls_forever_stops_the_wire_at_the_last_committed_mark() -> None:
    """(a) Raft stalls forever on the master: the wire never passes the last committed mark;
    the fence drops exactly the packets above it, and the guard shows them per SA."""
    async def scenario() -> None:
        sim = await gw1_sending(2000, 1.0)
        assert sim.activated["gw1"] == 1 and sim.kernels["gw1"].top(K1) > 1000
        sim.raft.stalled = True
        await sim.run(0.2)  # an answer already applied is granted; nothing commits after
        kernel, fence = sim.kernels["gw1"], sim.fences["gw1"]
        mark = accepted_mark(sim, K1)
        assert kernel.sas[K1].oseq <= mark  # not yet past: the permit still covers it
        dropped, oseq = fence.dropped.get(K1, 0), kernel.sas[K1].oseq
        await sim.run(3.0)
        assert accepted_mark(sim, K1) == mark
        assert kernel.top(K1) == mark  # the wire reached the mark and stopped there
        attempted_above = kernel.sas[K1].oseq - mark
        assert attempted_above > 4000 and oseq <= mark  # 3 s at 2000/s, less a renewal's lead
        assert fence.dropped[K1] - dropped == attempted_above
        status = sim.guards["gw1"].status()
        assert status["fence"]["fenced"]["c0ffee01@192.0.2.101"] >= dropped + attempted_above \
            - 2000  # read at most every second
        assert sim.guards["gw1"].tracker.stats.violations > 0
        sim.check_wire()
    run(scenario)


def test_a_rekey_just_before_a_failover_never_overlaps() -> None:
    """(b) the master's hasync dies as charon rekeys (new SA, same reqid and peer, no record
    committed): the old master's kernel sends on, fenced; the new master starts at 0."""
    async def scenario() -> None:
        sim = Sim()
        sim.add_sa(K1)
        sim.become_master("gw1")
        gw1 = sim.kernels["gw1"]
        gw1.rate(K1, 5000)
        await sim.run(2.0)
        sim.add_sa(K2)
        gw1.rate(K1, 0)
        gw1.rate(K2, 5000)  # the rekeyed SA carries the traffic from its first packet
        sim.kill("gw1")  # before K2's first mark commits
        await sim.run(3.0)  # keepalived takes its time; gw1's kernel sends on
        sim.become_master("gw2")
        for k in (K1, K2):
            sim.kernels["gw2"].rate(k, 2500)
        await sim.run(2.0)
        assert gw1.wire.get(K2) is None and sim.fences["gw1"].dropped[K2] > 20_000
        assert sim.first("gw2", K1) > gw1.top(K1) and sim.first("gw2", K2) >= 1
        assert sim.activated["gw2"] == 1
        sim.check_wire()
    run(scenario)


def test_a_rate_step_is_fenced_not_sent_twice() -> None:
    """(c) 0 -> 5k packets/s on an SA, then a failover: whatever outran the mark was dropped."""
    async def scenario() -> None:
        sim = Sim(commit_s=0.05)
        sim.add_sa(K1)
        sim.become_master("gw1")
        await sim.run(2.0)
        sim.kernels["gw1"].rate(K1, 5000)
        await sim.run(2.0)
        assert sim.kernels["gw1"].top(K1) <= accepted_mark(sim, K1)
        sim.kill("gw1")
        await sim.run(0.5)
        await master_sending(sim, "gw2", 5000, 2.0)
        assert sim.first("gw2", K1) > sim.kernels["gw1"].top(K1)
        assert sim.fences["gw1"].dropped[K1] > 0  # after the kill at least
        sim.check_wire()
    run(scenario)


@pytest.mark.parametrize("failover_at", [None, 0.5])
def test_a_one_and_a_half_second_election_at_5k_never_overlaps(
        failover_at: float | None) -> None:
    """(d) Raft elects for 1.5 s at 5k packets/s (commits wait, then land), with the failover
    after it or in the middle of it (the new master's claim waits for the election too)."""
    async def scenario() -> None:
        sim = await gw1_sending(5000, 2.0)
        sim.raft.stalled = True
        if failover_at is None:
            await sim.run(1.5)
        else:
            await sim.run(failover_at)
            sim.kill("gw1")
            await master_sending(sim, "gw2", 5000, 1.5 - failover_at)
        sim.raft.resume()
        await sim.run(1.0)
        if failover_at is None:
            assert sim.kernels["gw1"].top(K1) <= accepted_mark(sim, K1)
            sim.kill("gw1")
            await master_sending(sim, "gw2", 5000, 2.0)
        assert sim.activated["gw2"] == 1
        assert sim.first("gw2", K1) > sim.kernels["gw1"].top(K1)
        sim.check_wire()
    run(scenario)


def test_a_promotion_with_20k_sas_under_traffic_writes_late_but_never_overlaps() -> None:
    """(e) 20k SAs: gw2's hasync restarts as gw1 dies, so every counter needs its write; the
    writes take 100 us each (2 s in all) while every SA sends, so the later ones land behind
    counters that had passed their targets, which only fenced packets had done."""
    async def scenario() -> None:
        sim = Sim(write_s_per_sa=100e-6)
        keys = [(f"198.51.{i >> 8}.{i & 0xFF}", 0x10000 + i, 50) for i in range(20_000)]
        for k in keys:
            sim.add_sa(k)
        sim.alive["gw2"] = False
        sim.become_master("gw1")
        for k in keys:
            sim.kernels["gw1"].rate(k, 20)
        await sim.run(1.0)
        sim.kill("gw1")  # its kernel sends on through its permits
        sim.alive["gw2"] = True
        sim.become_master("gw2")
        for k in keys:
            sim.kernels["gw2"].rate(k, 1500)
        await sim.run(3.0)
        assert sim.activated["gw2"] == 1
        assert sim.kernels["gw2"].writes >= 20_000 and sim.kernels["gw2"].behind > 1000
        per_key = sim.check_wire()
        assert sum("gw2" in by_node for by_node in per_key.values()) == 20_000
    run(scenario)


def test_two_vrrp_masters_on_one_raft_leave_one_sender() -> None:
    """(f) both nodes think they are VRRP master while Raft connects them: after gw2's claim
    gw1's marks are rejected, gw1 is deposed and revokes, its wire stays below gw2's first."""
    async def scenario() -> None:
        sim = await gw1_sending(2000, 2.0)
        sim.raft.slow["gw1"] = 0.3  # gw1's renewal in flight lands after gw2's claim
        while not sim.guards["gw1"].flight.open:
            await sim.run(0.01)
        await master_sending(sim, "gw2", 2000, 3.0)  # gw1 stays VRRP master
        g1 = sim.guards["gw1"]
        assert g1.stats.rejected >= 1 and sim.raft.seqs.rejected >= 1
        assert g1.stats.deposed == 1 and g1.term.epoch is None
        assert not sim.fences["gw1"].permits
        assert g1.health(sim.clock.t) == ["not_sender"]
        assert sim.raft.seqs.sender == ("gw2", 2)
        assert sim.kernels["gw1"].top(K1) < sim.first("gw2", K1)
        sim.check_wire()
    run(scenario)


def test_a_claim_that_never_commits_activates_nothing_and_permits_nothing() -> None:
    """(g) a minority node (cut off from the majority) becomes VRRP master: its claim never
    commits; no activation, no marks, no permits, nothing on its wire; health says so."""
    async def scenario() -> None:
        sim = await gw1_sending(1000, 1.0)
        sim.raft.cut.add("gw2")
        # traffic reaches it: all of it is fenced
        await master_sending(sim, "gw2", 1000, STALL_S + 1.0)
        g2 = sim.guards["gw2"]
        assert g2.health(sim.clock.t) == ["not_sender"]
        sim.become_backup("gw2")
        await sim.run(0.5)
        rep = g2.last_promotion
        assert rep is not None and not rep.claimed and not rep.done and rep.claim_attempts > 3
        assert sim.activated["gw2"] == 0 and not sim.fences["gw2"].permits
        assert sim.kernels["gw2"].wire == {} and sim.fences["gw2"].dropped[K1] > 4000
        assert sim.raft.seqs.sender == ("gw1", 1) and g2.health(sim.clock.t) == []
        sim.check_wire()
    run(scenario)


def test_an_esn_sa_fenced_for_2_31_packets_never_wraps_into_its_permit() -> None:
    """(a) for ESN: the fence matches only the low 32 bits, so a counter 2^31 past a stalled
    mark would come back into the permit's window; the guard empties the permit at 2^30 past
    it, so the wire still stops at the mark and the next master's numbers never meet it."""
    async def scenario() -> None:
        sim = await gw1_sending(2000, 1.0, esn=True)
        gw1 = sim.kernels["gw1"]
        sim.raft.stalled = True
        await sim.run(0.2)
        mark = accepted_mark(sim, K1)
        gw1.rate(K1, 1e9)  # 2^32 packets in 4.3 s, lazily numbered
        await sim.run(5.0)
        assert gw1.sas[K1].oseq > mark + (1 << 32)  # the low 32 bits went all the way round
        assert gw1.top(K1) == mark and sim.guards["gw1"].stats.esn_stops == 1
        assert sim.fences["gw1"].permits[K1].hi == mark
        sim.kill("gw1")
        sim.raft.stalled = False
        sim.raft.resume()
        await master_sending(sim, "gw2", 2000, 2.0)
        assert sim.first("gw2", K1) > mark
        sim.check_wire()
    run(scenario)


def test_the_reserve_states_what_a_failover_may_skip() -> None:
    r = Reserve()
    assert r.bound(0) == 768 + 1 + 576 and r.bound(10_000) == 8000 + 1 + 576
