"""The lab's pure result helpers: sequence-reuse counting and the printed table."""

from __future__ import annotations

from hasync_lab import report
from hasync_lab.pcap import EspPacket
from hasync_lab.tunnels import by_spi, reuse_by_spi


def _p(ts: float, spi: int, seq: int, dst: str = "192.0.2.101") -> EspPacket:
    return EspPacket(ts, "192.0.2.1", dst, spi, seq, False)


def test_reuse_counts_only_repeats_inside_the_window() -> None:
    pkts = (_p(1, 1, 1), _p(2, 1, 2), _p(3, 1, 1), _p(10, 1, 2), _p(11, 2, 1),
            _p(12, 1, 3, dst="192.0.2.102"), _p(13, 1, 3, dst="192.0.2.102"))
    def reuse(dst: str, start: float, end: float) -> int:
        return sum(reuse_by_spi(by_spi(pkts, dst), start, end).values())
    assert reuse("192.0.2.101", 0, 100) == 2
    assert reuse("192.0.2.101", 5, 100) == 1  # the repeat at t=10
    assert reuse("192.0.2.101", 0, 5) == 1
    assert reuse("192.0.2.102", 0, 100) == 1
    assert reuse_by_spi(by_spi(pkts, "192.0.2.101"), 0, 100) == {1: 2, 2: 0}
    assert reuse_by_spi(by_spi((), "192.0.2.101"), 0, 100) == {}


def test_table_has_a_row_per_client_and_failover() -> None:
    client = {"name": "c1", "nat": False, "reestablished": True, "resumed": True,
              "outage_ms": 19291.2, "lost_to_client": 901, "lost_from_client": 964,
              "replay_errors": 0, "seq_reuse": 0}
    res = {"mode": "baseline", "runner": "vm", "kernel": "6.1", "advert_int": 0.5,
           "rate_pps": 50.0,
           "failovers": [{"from": "gw1", "to": "gw2", "vrrp_detect_ms": 2040.0,
                          "vip_moved": True, "clients": [client, {**client, "name": "c2"}]}]}
    text = report.table(res)
    assert "gw1->gw2: VRRP master after 2040 ms" in text
    rows = [line for line in text.splitlines() if line.strip().startswith("gw1->gw2 ")]
    assert len(rows) == 2 and "19291" in rows[0] and "c2" in rows[1]


def test_a_two_sender_fault_shows_release_fenced_counts_and_the_forced_flow() -> None:
    client = {"name": "c1", "nat": False, "reestablished": False, "resumed": True,
              "outage_ms": 15042.0, "lost_to_client": 90, "lost_from_client": 9,
              "replay_errors": 0, "seq_reuse": 0, "fenced": None, "fenced_at_undo": 812}
    fo = {"from": "gw2", "to": "gw1", "fault": "hasync", "vrrp_detect_ms": 12780.1,
          "vip_moved": True, "vip_release_s": 12.68, "vip_release_bound_s": 13.0,
          "converged": True, "clients": [client, {**client, "name": "c2", "fenced": 3,
                                                  "fenced_at_undo": None}],
          "forced": {"client": "c1", "via": "10.1.0.12", "rate_pps": 300.0, "sent": 2971,
                     "answered": 418}}
    text = report.table({"failovers": [fo]})
    assert "VIP released after 13 s (bound 13.0), converged: yes" in text
    assert "fenced per client: c1=- (812 before the restart), c2=3" in text
    assert "forced 300.0 pkt/s to c1 via 10.1.0.12: sent 2971, answered 418" in text


def test_gaps_are_ms_from_the_kill_and_merged_across_directions() -> None:
    from hasync_lab.failover import Window, gaps_ms, master_down_ms, union
    w = Window(t_kill=100.0, t_end=104.0, wall_start=0.0)
    rx = [(0, 0.0, t) for t in (99.0, 99.5, 99.6, 101.5, 101.6, 103.9)]
    assert gaps_ms(rx, w, 0.3) == [[-1000.0, -500.0], [-400.0, 1500.0], [1600.0, 3900.0]]
    assert gaps_ms([], w, 0.3) == [[-1000.0, 4000.0]]
    assert union([[1.0, 3.0], [-2.0, 0.0], [2.5, 4.0]]) == [[-2.0, 0.0], [1.0, 4.0]]
    assert master_down_ms(0.5, 190) == 1628.9  # RFC 5798 6.1


def test_gateway_drops_count_growth_on_the_tunnels_spis_and_moved_mib_counters() -> None:
    from hasync_lab.failover import GatewayDrops
    before = {"sa": {1: (2, 0), 2: (0, 0)}, "stat": {"XfrmInStateSeqError": 5, "XfrmInNoStates": 1}}
    after = {"sa": {1: (9, 1), 2: (3, 0), 3: (4, 4)},
             "stat": {"XfrmInStateSeqError": 15, "XfrmInNoStates": 1}}
    gw = GatewayDrops(before, after)
    assert gw.of({1}, 0) == 7 and gw.of({1}, 1) == 1
    assert gw.of({2, 3, 4}, 0) == 7  # an SA new since the fault counts from 0, a gone one not
    assert gw.stat() == {"XfrmInStateSeqError": 10}
    assert GatewayDrops({}, after).of({1}, 0) == 9  # the new master was not read before
