"""The sequence guard's rules: reserves, the master's tracker, the targets, the bound."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hasync.guard.entries import SeqEntry, SeqLog
from hasync.guard.records import U32_MAX, KernelSa, SeqRecord
from hasync.guard.rules import (
    RateMeter,
    Reserve,
    SeqTracker,
    plan_writes,
    stretch,
    target_oseq,
)

KEY = ("192.0.2.101", 0xC0FFEE01, 50)
R = Reserve()


def sa(oseq: int = 0, seq: int = 0, esn: bool = False, key: tuple[str, int, int] = KEY,
       bitmap: tuple[int, ...] = (0,)) -> KernelSa:
    return KernelSa(key, esn, oseq, seq, bitmap, 32)


def rec(mark: int, seq: int = 0, node: str = "gw1", rate: float = 0.0, ts: float = 1000.0,
        bitmap: tuple[int, ...] = (0,)) -> SeqRecord:
    return SeqRecord(KEY, mark, seq, bitmap, rate, node, ts)


def test_reserve_grows_with_rate_above_its_floors() -> None:
    assert R.ahead(0) == 768 and R.takeover(0) == 576 and R.bound(0) == 1344
    assert R.ahead(10_000) == 8000 and R.takeover(10_000) == 10_000
    assert R.bound(10_000) <= 2 * 10_000  # at most two seconds of traffic above the floors


def test_rate_meter_reports_the_peak_and_forgets_resets() -> None:
    m = RateMeter()
    assert m.update(0.0, 0) == 0.0
    assert m.update(0.1, 10) == 100.0
    assert m.update(0.2, 50) == 400.0
    assert m.update(0.3, 60) == 400.0  # the peak stays while it is in the window
    assert m.update(10.0, 61) < 1.0  # old samples left the window
    assert m.update(10.1, 0) == 0.0  # a counter that went back is a new SA


def test_tracker_journals_a_new_sa_at_once() -> None:
    t = SeqTracker("gw1")
    recs, gone = t.observe([sa()], {}, now=0.0, wall=1000.0)
    assert [r.mark for r in recs] == [R.floor] and gone == []


def test_tracker_renews_when_half_the_reserve_is_used() -> None:
    t = SeqTracker("gw1")
    committed = {KEY: rec(1000)}
    assert t.observe([sa(oseq=1000 - R.floor // 2)], committed, 0.0, 1000.0)[0] == []
    recs, _ = t.observe([sa(oseq=1000 - R.floor // 2 + 1)], committed, 0.1, 1000.1)
    assert recs and recs[0].mark > 1000


def test_tracker_counts_an_oseq_past_its_own_mark() -> None:
    t = SeqTracker("gw1")
    t.observe([sa(oseq=1500)], {KEY: rec(1000)}, 0.0, 1000.0)
    assert t.stats.violations == 1 and t.stats.max_overrun == 500


def test_marks_of_an_earlier_term_are_no_violation() -> None:
    # master, demoted for a moment (its guard pre-jumped the SA past its own mark), master again
    t = SeqTracker("gw1", master_since=2000.0)
    t.observe([sa(oseq=1600)], {KEY: rec(1000)}, 0.0, 2001.0)  # rec(1000) journaled before
    assert t.stats.violations == 0
    t.master_since = 0.0
    t.observe([sa(oseq=1600)], {KEY: rec(1000)}, 0.1, 2001.1)
    assert t.stats.violations == 1


def test_a_new_master_renews_marks_another_node_journaled() -> None:
    t = SeqTracker("gw2")
    recs, _ = t.observe([sa(oseq=5000)], {KEY: rec(10_000, node="gw1")}, 0.0, 1000.0)
    assert recs[0].node == "gw2" and recs[0].mark == 5000 + R.floor
    assert t.stats.violations == 0  # gw1's mark binds gw1, not gw2


def test_inbound_state_is_journaled_while_it_moves() -> None:
    t = SeqTracker("gw1")
    committed = {KEY: rec(R.floor, seq=10)}
    recs, _ = t.observe([sa(seq=12, bitmap=(3,))], committed, 0.0, 1000.0)
    assert recs[0].seq == 12 and recs[0].bitmap == (3,)
    t.submitted(recs, 0.0)
    assert t.observe([sa(seq=13)], {KEY: recs[0]}, 0.1, 1000.1)[0] == []  # too soon
    assert t.observe([sa(seq=14)], {KEY: recs[0]}, 5.1, 1005.1)[0][0].seq == 14


def test_records_of_sas_long_gone_are_forgotten() -> None:
    t = SeqTracker("gw1")
    assert t.observe([], {KEY: rec(100, ts=1000.0)}, 0.0, 1030.0) == ([], [])
    assert t.observe([], {KEY: rec(100, ts=1000.0)}, 0.0, 1061.0) == ([], [KEY])


def test_targets_move_counters_up_never_down() -> None:
    records = {KEY: rec(1000, seq=77, bitmap=(0xF,))}
    (w,) = plan_writes([sa(oseq=10, seq=5)], records, R)
    assert (w.oseq, w.seq, w.bitmap) == (1000 + R.takeover_floor, 77, (0xF,))
    assert plan_writes([sa(oseq=10**6, seq=100)], records, R) == []


def test_outbound_moves_come_first_and_a_backup_leaves_inbound_only_ones_out() -> None:
    key_in = ("192.0.2.1", 0xC0FFEE02, 50)
    inbound = sa(oseq=5000, seq=10, key=key_in)  # its counter already past the target
    outbound = sa(oseq=10)
    records = {KEY: rec(1000), key_in: SeqRecord(key_in, 1000, 900, (0xFF,), 0.0, "gw1", 1.0)}
    first, second = plan_writes([inbound, outbound], records, R)
    assert first.sa == outbound and first.oseq == 1000 + R.takeover_floor
    assert second.sa == inbound and (second.oseq, second.seq) == (5000, 900)
    (only,) = plan_writes([inbound, outbound], records, R, inbound=False)
    assert only.sa == outbound
    carried = sa(oseq=10, seq=3)  # a write that moves oseq carries the journaled inbound state
    (w,) = plan_writes([carried], {KEY: rec(1000, seq=77)}, R, inbound=False)
    assert (w.oseq, w.seq) == (1000 + R.takeover_floor, 77)


def test_an_sa_without_a_record_still_gets_the_takeover_reserve() -> None:
    (w,) = plan_writes([sa()], {}, R)
    assert w.oseq == R.takeover_floor and w.seq == 0


def test_no_quorum_adds_its_reserve_and_clamps_at_the_counter_size() -> None:
    assert target_oseq(sa(), rec(1000), R, R.no_quorum) == 1000 + 576 + R.no_quorum
    assert target_oseq(sa(), rec(U32_MAX - 5), R) == U32_MAX  # the SA stops, no wrap
    assert target_oseq(sa(esn=True), rec(U32_MAX - 5), R) == U32_MAX - 5 + 576


def test_a_write_lands_past_what_the_kernel_may_have_sent_meanwhile() -> None:
    (w,) = plan_writes([sa(oseq=1000 + R.takeover_floor - 10)], {KEY: rec(1000)}, R)
    assert w.oseq == 1000 + R.takeover_floor - 10 + 64


def test_an_esn_bitmap_of_another_shape_is_not_restored() -> None:
    s = sa(seq=1, esn=True, bitmap=(0, 0))
    (w,) = plan_writes([s], {KEY: rec(0, seq=50, bitmap=(1, 2, 3))}, R)
    assert w.bitmap == (0, 0) and w.seq == 50


def _simulate(rate: float, kill_at: float, latency: float, lag: float,
              ramp: bool = True, tick: float = 0.1, tick_s: float = 0.1,
              settle: float = 0.0, double_s: float = 0.25) -> tuple[int, int, bool]:
    """A master sending at `rate` with reads every `tick` (its tracker told the nominal tick is
    `tick_s`), commits after `latency`, a backup that sees commits `lag` late; returns (old
    master's last seq, backup target, violated after `settle` s).
    With `ramp`, traffic starts at 1000 packets/s at most and at most doubles every `double_s`
    (0.25 s: the assumption of docs/takeover.md)."""
    dt = 0.01
    tracker, log = SeqTracker("gw1", tick_s=tick_s), SeqLog()
    settled = 0
    pending: list[tuple[float, SeqEntry]] = []
    history: list[tuple[float, dict]] = [(0.0, {})]
    oseq, carry, t, next_tick, in_flight = 0, 0.0, 0.0, 0.0, False
    while t < kill_at:
        for due, entry in [p for p in pending if p[0] <= t]:
            log.apply(entry)
            pending.remove((due, entry))
            history.append((due, dict(log.records)))
            in_flight = False
        if t < settle:
            settled = tracker.stats.violations
        if t >= next_tick:
            recs, _ = tracker.observe([sa(oseq=oseq)], log.records, t, 1000 + t)
            if recs and not in_flight:
                tracker.submitted(recs, t)
                pending.append((t + latency, SeqEntry("gw1", 1000 + t, tuple(recs))))
                in_flight = True
            next_tick += tick
        carry += (min(rate, 1000 * 2 ** (t / double_s)) if ramp else rate) * dt
        oseq, carry = oseq + int(carry), carry - int(carry)
        t += dt
    seen = [h for ts, h in history if ts <= kill_at - lag][-1]
    target = target_oseq(sa(), seen.get(KEY), tracker.reserve)
    return oseq, target, tracker.stats.violations > settled


@settings(max_examples=60, deadline=None)
@given(rate=st.floats(0, 50_000), kill_at=st.floats(0.5, 6.0), latency=st.floats(0.001, 0.1),
       lag=st.floats(0, 0.3))
def test_the_bound_holds_and_is_tight(rate: float, kill_at: float, latency: float,
                                      lag: float) -> None:
    last, target, violated = _simulate(rate, kill_at, latency, lag)
    assert not violated
    assert target > last  # the new master's first packet carries target + 1: never reused
    assert target - last - 1 <= R.bound(rate)  # and it skips at most ahead + takeover


def test_a_burst_faster_than_the_assumption_shows_as_a_violation() -> None:
    assert _simulate(200_000, 2.0, 0.1, 0.0, ramp=False)[2]  # a step from idle to 200 kpps


def test_a_rekeyed_sa_starts_from_its_predecessors_rate() -> None:
    t = SeqTracker("gw1")
    old = KernelSa(KEY, False, 0, 0, (0,), 32, reqid=7)
    for i in range(5):
        t.observe([KernelSa(KEY, False, i * 1000, 0, (0,), 32, reqid=7)], {}, i * 0.1, 1000.0)
    new = KernelSa(("192.0.2.101", 0xBEEF, 50), False, 0, 0, (0,), 32, reqid=7)
    recs, _ = t.observe([old, new], {}, 0.5, 1000.5)
    assert max(r.mark for r in recs if r.key == new.key) >= R.ahead(10_000)


def test_slow_reads_stretch_the_reserves() -> None:
    assert stretch(0.1, 0.1) == 0.0 and stretch(0.05, 0.1) == 0.0
    assert stretch(0.5, 0.1) == 0.8  # twice the excess: renewal is due at half the reserve
    assert R.ahead(10_000, 0.8) == 16_000 and R.takeover(10_000, 0.5) == 15_000
    assert R.ahead(0, 5.0) == R.floor and R.bound(10_000, 0.8, 0.5) == 31_000


def test_a_tracker_stretches_its_marks_for_slow_reads_and_forgets_at_restart() -> None:
    t = SeqTracker("gw1", tick_s=0.1)
    for i in range(6):  # 10,000 packets/s read every 0.5 s
        recs, _ = t.observe([sa(oseq=i * 5000)], {}, i * 0.5, 1000.0 + i)
    assert t.stats.stretch_ms == 800.0 and t.stats.read_interval_ms == 500.0
    assert recs[0].mark == 25_000 + R.ahead(10_000, 0.8)
    t.restart()
    t.observe([sa(oseq=30_000)], {}, 100.0, 1100.0)
    assert t.stats.stretch_ms == 0.0  # the gap since the last term is no read interval


@pytest.mark.parametrize("rate", [2_000.0, 5_000.0, 20_000.0])
def test_steady_traffic_read_slowly_stays_below_its_stretched_marks(rate: float) -> None:
    last, target, violated = _simulate(rate, 9.0, 0.1, 0.0, ramp=False, tick=1.0, settle=4.0)
    assert not violated and target > last
    # a tracker that took 1 s for its nominal tick does not stretch, and is overrun
    assert _simulate(rate, 9.0, 0.1, 0.0, ramp=False, tick=1.0, tick_s=1.0, settle=4.0)[2]
