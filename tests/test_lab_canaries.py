"""hasync_lab.canaries: which tunnels are probed fast, their processes, their logs."""

from __future__ import annotations

from hasync_lab import canaries
from hasync_lab.tunnels import Tunnel


def _plan(n: int, clients: int = 3) -> list[Tunnel]:
    return [Tunnel(f"t{i:04d}", f"c{i % clients + 1}", f"t{i:04d}", "net") for i in range(n)]


def test_canaries_are_taken_round_robin_over_the_clients() -> None:
    ts = _plan(10)
    assert canaries.pick(ts, 3) == {"t0000", "t0001", "t0002"}  # one on each client
    assert canaries.pick(ts, 4) == {"t0000", "t0001", "t0002", "t0003"}
    assert canaries.pick(ts, 0) == frozenset()
    assert canaries.pick(ts, 50) == {t.name for t in ts}
    assert canaries.pick(_plan(5, clients=1), 2) == {"t0000", "t0001"}


def test_each_client_has_a_slow_and_a_canary_process_where_it_has_tunnels() -> None:
    ts = _plan(7)
    fast = canaries.pick(ts, 3)
    c1 = [t for t in ts if t.client == "c1"]
    got = [(stem, canary, [t.name for t in mine])
           for stem, canary, mine in canaries.stems("c1", c1, fast)]
    assert got == [("c1", False, ["t0003", "t0006"]), ("c1-canary", True, ["t0000"])]
    assert [s for s, _, _ in canaries.stems("c1", c1, frozenset())] == ["c1"]
    assert [s for s, _, _ in canaries.stems("c1", c1, frozenset(t.name for t in c1))] == [
        "c1-canary"]


def test_both_servers_logs_are_read_as_one_and_rates_follow_the_tunnel() -> None:
    assert canaries.log_group("srv") == canaries.log_group("srv-canary") == "srv"
    assert canaries.log_group("c1-canary") == "c1-canary"
    fast = frozenset({"t0000"})
    assert canaries.rate_of("t0000", fast, 0.2, 20.0) == 20.0
    assert canaries.rate_of("t0001", fast, 0.2, 20.0) == 0.2
