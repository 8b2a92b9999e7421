"""The lab scenario's pure parts: VRRP priorities."""

from __future__ import annotations

import itertools

import pytest

from hasync_lab.scenario import priority


@pytest.mark.parametrize("gateways", range(2, 8))
def test_priorities_fall_and_candidates_sit_apart(gateways: int) -> None:
    prios = [priority(k, gateways) for k in range(1, gateways + 1)]
    assert prios[:2] == [200, 190]  # gw2, the first new master, as in every saved result
    assert prios == sorted(prios, reverse=True) and prios[-1] >= 40
    # two backups competing for the VIP differ by 30 points (58 ms at advert 0.5 s) or more
    assert all(a - b >= 30 for a, b in itertools.pairwise(prios[1:]))
