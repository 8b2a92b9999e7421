"""The sequence guard's rules: reserves, the master's tracker, the targets, the bound."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hasync.guard.entries import SeqEntry, SeqLog
from hasync.guard.records import U32_MAX, KernelSa, SeqRecord
from hasync.guard.rules import (
    Held,
    MasterPlan,
    RateMeter,
    Reserve,
    SeqTracker,
    claim_lows,
    claim_marks,
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
    assert R.ahead(0) == 768 and R.bound(0) == 768 + 1 + 576
    assert R.ahead(10_000) == 8000 and R.bound(10_000) == 8000 + 1 + 576


def test_rate_meter_reports_the_peak_and_forgets_resets() -> None:
    m = RateMeter()
    assert m.update(0.0, 0) == 0.0
    assert m.update(0.1, 10) == 100.0
    assert m.update(0.2, 50) == 400.0
    assert m.update(0.3, 60) == 400.0  # the peak stays while it is in the window
    assert m.update(10.0, 61) < 1.0  # old samples left the window
    assert m.update(10.1, 0) == 0.0  # a counter that went back is a new SA


def observe(t: SeqTracker, sas: list[KernelSa], committed: dict, held: dict | None = None,
            now: float = 0.0, wall: float = 1000.0, epoch: int = 1) -> MasterPlan:
    return t.observe(sas, committed, held or {}, epoch, now, wall)


def test_a_term_s_first_mark_starts_at_the_target_after_a_jump() -> None:
    t = SeqTracker("gw2")
    plan = observe(t, [sa(oseq=10)], {KEY: rec(5000, node="gw1")}, epoch=4)
    (w,) = plan.writes
    assert w.oseq == 5000 + 1 + R.takeover_floor  # the counter jumps first
    (r,) = plan.records
    assert plan.lows[KEY] == 5577 and r.mark == 5577 + R.floor
    assert (r.node, r.epoch) == ("gw2", 4) and t.stats.first_marks == 1
    # a counter already past the target: no write, the permit starts where it stands
    plan = observe(SeqTracker("gw2"), [sa(oseq=9000)], {KEY: rec(5000, node="gw1")})
    assert plan.writes == [] and plan.lows[KEY] == 9000 and plan.records[0].mark == 9768


def test_an_sa_re_created_under_a_held_key_is_jumped_past_the_key_s_mark() -> None:
    """The orphan of an in-flight CHILD rekey sent 1410..1855 on the new master; the CHILD_SA
    re-created for the client's retransmission has the orphan's (address, SPI) and a counter
    at 0: it must start past every mark of the key, not continue the orphan's permit (the
    final clean-clone run of a85649c saw it resend 1396..1784 under its new keys)."""
    t = SeqTracker("gw2")
    committed, held = {KEY: rec(2600, node="gw2")}, {KEY: Held(1410, 2600)}
    plan = observe(t, [sa(oseq=3)], committed, held, epoch=2)
    (w,) = plan.writes
    assert w.oseq == 2600 + 1 + R.takeover_floor and plan.lows[KEY] == w.oseq
    assert t.stats.recreated == 1 and t.stats.first_marks == 1 and t.stats.violations == 0
    # the same SA read again below nothing: an ordinary renewal, never a second jump
    assert observe(t, [sa(oseq=1500)], committed, held).writes == []


def test_a_new_sa_without_a_record_starts_at_zero_and_is_journaled_at_once() -> None:
    plan = observe(SeqTracker("gw1"), [sa()], {})
    assert plan.writes == [] and plan.lows == {KEY: 0} and plan.records[0].mark == R.floor


def test_tracker_renews_when_half_the_reserve_is_used() -> None:
    t = SeqTracker("gw1")
    committed, held = {KEY: rec(1000)}, {KEY: Held(0, 1000)}
    assert observe(t, [sa(oseq=1000 - R.floor // 2)], committed, held).records == []
    plan = observe(t, [sa(oseq=1000 - R.floor // 2 + 1)], committed, held, 0.1, 1000.1)
    assert plan.records[0].mark > 1000 and plan.lows[KEY] == 0 and plan.writes == []


def test_tracker_counts_an_oseq_past_its_own_accepted_mark() -> None:
    t = SeqTracker("gw1")
    observe(t, [sa(oseq=1500)], {KEY: rec(1000)}, {KEY: Held(0, 1000)})
    assert t.stats.violations == 1 and t.stats.max_overrun == 500
    observe(t, [sa(oseq=1600)], {KEY: rec(1000)}, {}, 0.1)  # not held: a first mark
    assert t.stats.violations == 1


def test_inbound_state_is_journaled_while_it_moves() -> None:
    t = SeqTracker("gw1")
    committed, held = {KEY: rec(R.floor, seq=10)}, {KEY: Held(0, R.floor)}
    recs = observe(t, [sa(seq=12, bitmap=(3,))], committed, held).records
    assert recs[0].seq == 12 and recs[0].bitmap == (3,) and recs[0].mark == R.floor
    t.submitted(recs, 0.0)
    assert observe(t, [sa(seq=13)], {KEY: recs[0]}, held, 0.1).records == []  # too soon
    assert observe(t, [sa(seq=14)], {KEY: recs[0]}, held, 5.1).records[0].seq == 14


def test_records_of_sas_long_gone_are_forgotten() -> None:
    t = SeqTracker("gw1")
    assert observe(t, [], {KEY: rec(100, ts=1000.0)}, wall=1030.0).gone == []
    assert observe(t, [], {KEY: rec(100, ts=1000.0)}, wall=1061.0).gone == [KEY]


def test_targets_move_counters_up_never_down() -> None:
    records = {KEY: rec(1000, seq=77, bitmap=(0xF,))}
    (w,) = plan_writes([sa(oseq=10, seq=5)], records, R)
    assert (w.oseq, w.seq, w.bitmap) == (1001 + R.takeover_floor, 77, (0xF,))
    assert plan_writes([sa(oseq=10**6, seq=100)], records, R) == []


def test_outbound_moves_come_first_and_a_backup_leaves_inbound_only_ones_out() -> None:
    key_in = ("192.0.2.1", 0xC0FFEE02, 50)
    inbound = sa(oseq=5000, seq=10, key=key_in)  # its counter already past the target
    outbound = sa(oseq=10)
    records = {KEY: rec(1000), key_in: SeqRecord(key_in, 1000, 900, (0xFF,), 0.0, "gw1", 1.0)}
    first, second = plan_writes([inbound, outbound], records, R)
    assert first.sa == outbound and first.oseq == 1001 + R.takeover_floor
    assert second.sa == inbound and (second.oseq, second.seq) == (5000, 900)
    (only,) = plan_writes([inbound, outbound], records, R, inbound=False)
    assert only.sa == outbound
    carried = sa(oseq=10, seq=3)  # a write that moves oseq carries the journaled inbound state
    (w,) = plan_writes([carried], {KEY: rec(1000, seq=77)}, R, inbound=False)
    assert (w.oseq, w.seq) == (1001 + R.takeover_floor, 77)


def test_an_sa_without_a_record_is_not_moved() -> None:
    """Nobody was permitted anything on it: 0 is past everything on the wire."""
    assert plan_writes([sa()], {}, R) == [] and target_oseq(sa(), None, R) == 0


def test_targets_lie_past_the_mark_and_clamp_at_the_counter_size() -> None:
    assert target_oseq(sa(), rec(1000), R) == 1000 + 1 + 576
    assert target_oseq(sa(), rec(1000), Reserve(takeover_floor=0)) == 1001
    assert target_oseq(sa(), rec(U32_MAX - 5), R) == U32_MAX  # the SA stops, no wrap
    assert target_oseq(sa(esn=True), rec(U32_MAX - 5), R) == U32_MAX - 5 + 577


def test_a_backup_write_lands_past_what_the_kernel_may_have_sent_meanwhile() -> None:
    (w,) = plan_writes([sa(oseq=1000 + R.takeover_floor - 10)], {KEY: rec(1000)}, R)
    assert w.oseq == 1000 + R.takeover_floor - 10 + 64


def test_an_esn_bitmap_of_another_shape_is_not_restored() -> None:
    s = sa(seq=1, esn=True, bitmap=(0, 0))
    (w,) = plan_writes([s], {KEY: rec(0, seq=50, bitmap=(1, 2, 3))}, R)
    assert w.bitmap == (0, 0) and w.seq == 50


def _simulate(rate: float, kill_at: float, latency: float, ramp: bool = True,
              tick: float = 0.1, tick_s: float = 0.1, settle: float = 0.0,
              double_s: float = 0.25) -> tuple[int, int, bool]:
    """The sender at `rate` with reads every `tick` (its tracker told the nominal tick is
    `tick_s`), commits after `latency`, permits (lo, mark] from what was accepted; returns
    (its last seq on the wire, the new master's target, the counter passed the mark after
    `settle` s: the fence dropped). With `ramp`, traffic starts at 1000 packets/s at most and
    at most doubles every `double_s` (the growth the reserve's module header states)."""
    dt = 0.01
    tracker, log = SeqTracker("gw1", tick_s=tick_s), SeqLog()
    log.claim("gw1", log.view())
    settled, held = 0, {}
    pending: list[tuple[float, SeqEntry, dict]] = []
    oseq, carry, t, next_tick, in_flight, wire = 0, 0.0, 0.0, 0.0, False, 0
    while t < kill_at:
        for due, entry, lows in [p for p in pending if p[0] <= t]:
            assert log.apply(entry).accepted
            for r in entry.records:
                held[r.key] = Held(held[r.key].lo if r.key in held else lows[r.key], r.mark)
            pending.remove((due, entry, lows))
            in_flight = False
        if t < settle:
            settled = tracker.stats.violations
        if t >= next_tick:
            plan = tracker.observe([sa(oseq=oseq)], log.records, held, 1, t, 1000 + t)
            if plan.records and not in_flight:
                tracker.submitted(plan.records, t)
                pending.append((t + latency, SeqEntry("gw1", 1000 + t, tuple(plan.records),
                                                      epoch=1), plan.lows))
                in_flight = True
            next_tick += tick
        carry += (min(rate, 1000 * 2 ** (t / double_s)) if ramp else rate) * dt
        oseq, carry = oseq + int(carry), carry - int(carry)
        if KEY in held:
            wire = max(wire, min(oseq, held[KEY].hi))
        t += dt
    target = target_oseq(sa(), log.records.get(KEY), tracker.reserve)
    return wire, target, tracker.stats.violations > settled


@settings(max_examples=60, deadline=None)
@given(rate=st.floats(0, 50_000), kill_at=st.floats(0.5, 6.0), latency=st.floats(0.001, 0.1))
def test_under_the_stated_growth_the_fence_never_drops_and_the_skip_is_bounded(
        rate: float, kill_at: float, latency: float) -> None:
    last, target, violated = _simulate(rate, kill_at, latency)
    assert not violated  # rate growth within the module header's bound: nothing fenced
    assert target > last  # the new master's first packet carries target + 1: never reused
    # and it skips at most ahead + 1 + floor (1 % for the meter sampling whole packets)
    assert target - last - 1 <= R.bound(rate * 1.01)


def test_a_burst_faster_than_the_assumption_is_fenced_and_still_below_the_target() -> None:
    last, target, violated = _simulate(200_000, 2.0, 0.1, ramp=False)
    assert violated and target > last  # a step from idle to 200 kpps: dropped, not reused


def test_a_rekeyed_sa_starts_from_its_predecessors_rate() -> None:
    t = SeqTracker("gw1")
    old = KernelSa(KEY, False, 0, 0, (0,), 32, reqid=7)
    for i in range(5):
        observe(t, [KernelSa(KEY, False, i * 1000, 0, (0,), 32, reqid=7)], {}, now=i * 0.1)
    new = KernelSa(("192.0.2.101", 0xBEEF, 50), False, 0, 0, (0,), 32, reqid=7)
    recs = observe(t, [old, new], {}, now=0.5, wall=1000.5).records
    assert max(r.mark for r in recs if r.key == new.key) >= R.ahead(10_000)


def test_slow_reads_stretch_the_reserves() -> None:
    assert stretch(0.1, 0.1) == 0.0 and stretch(0.05, 0.1) == 0.0
    assert stretch(0.5, 0.1) == 0.8  # twice the excess: renewal is due at half the reserve
    assert R.ahead(10_000, 0.8) == 16_000
    assert R.ahead(0, 5.0) == R.floor and R.bound(10_000, 0.8) == 16_000 + 1 + 576


def test_a_tracker_stretches_its_marks_for_slow_reads_and_forgets_at_restart() -> None:
    t = SeqTracker("gw1", tick_s=0.1)
    for i in range(6):  # 10,000 packets/s read every 0.5 s
        recs = observe(t, [sa(oseq=i * 5000)], {}, now=i * 0.5, wall=1000.0 + i).records
    assert t.stats.stretch_ms == 800.0 and t.stats.read_interval_ms == 500.0
    assert recs[0].mark == 25_000 + R.ahead(10_000, 0.8)
    t.restart()
    observe(t, [sa(oseq=30_000)], {}, now=100.0, wall=1100.0)
    assert t.stats.stretch_ms == 0.0  # the gap since the last term is no read interval


@pytest.mark.parametrize("rate", [2_000.0, 5_000.0, 20_000.0])
def test_steady_traffic_read_slowly_stays_below_its_stretched_marks(rate: float) -> None:
    last, target, violated = _simulate(rate, 9.0, 0.1, ramp=False, tick=1.0, settle=4.0)
    assert not violated and target > last
    # a tracker that took 1 s for its nominal tick does not stretch, and is fenced
    assert _simulate(rate, 9.0, 0.1, ramp=False, tick=1.0, tick_s=1.0, settle=4.0)[2]


def _exact_peak(samples: list[tuple[float, int]], now: float, window: float) -> float:
    """The peak step rate among steps that end within `window` of `now` (brute force)."""
    steps = [(v1 - v0) / (t1 - t0) for (t0, v0), (t1, v1) in pairwise(samples)
             if t1 > t0 and now - t1 <= window]
    return max(steps, default=0.0)


def test_a_rate_meter_never_reports_less_than_the_window_s_peak() -> None:
    import random

    from hasync.guard.rules import RATE_BUCKET_S, RATE_WINDOW_S
    rng, m, samples, now, value = random.Random(7), RateMeter(), [], 0.0, 0
    for _ in range(3000):
        now += rng.choice((0.01, 0.1, 0.1, 0.3, 1.7))
        value += rng.choice((0, 0, 5, 50, 5000))
        samples.append((now, value))
        got = m.update(now, value)
        assert _exact_peak(samples, now, RATE_WINDOW_S) <= got
        assert got <= _exact_peak(samples, now, RATE_WINDOW_S + RATE_BUCKET_S) + 1e-9


def test_finding7_a_rate_meter_s_memory_stays_fixed_and_small() -> None:
    """A meter fed a fast tick (100 samples a second) holds a few hundred bytes, whatever the
    tick; a deque of samples held every sample of the window (~4.4 KB per SA at 0.1 s)."""
    import tracemalloc
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        meters = [RateMeter() for _ in range(200)]
        for step in range(500):
            for m in meters:
                m.update(step * 0.01, step * 1000 + 1)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert grown / len(meters) < 400, f"{grown / len(meters):.0f} bytes per meter"


MOVED = ("192.0.2.121", KEY[1], KEY[2])  # the same SA after its peer moved (MOBIKE)


def test_a_moved_sa_s_backup_target_is_past_the_mark_journaled_at_its_old_address() -> None:
    # The old master journaled marks under the peer's first address only, then the peer
    # moved: the backup's SA (re-installed at the new address) must not start below them.
    moved = KernelSa(MOVED, False, 0, 0, (0,), 32)
    (w,) = plan_writes([moved], {KEY: rec(5000)}, R)
    assert w.oseq == 5000 + 1 + R.takeover_floor and w.sa.key == MOVED


def test_a_moved_sa_s_target_takes_the_highest_mark_of_its_spi_under_any_address() -> None:
    records = {KEY: rec(5000), MOVED: SeqRecord(MOVED, 9000, 0, (0,), 0.0, "gw1", 1000.0)}
    assert [w.oseq for w in plan_writes([sa(oseq=10)], records, R)] == [9000 + 1 + 576]
    other_spi = ("192.0.2.101", KEY[1] + 1, 50)
    assert plan_writes([sa(key=other_spi)], records, R) == []  # another SPI: no record


def test_the_master_s_first_mark_after_a_move_starts_past_the_old_address_s_mark() -> None:
    # On the master itself charon moved the SA (kernel_netlink update_sa() keeps its counter);
    # the new key has no permit yet, so its first mark starts past the old key's.
    t = SeqTracker("gw1")
    plan = observe(t, [KernelSa(MOVED, False, 4990, 0, (0,), 32)], {KEY: rec(5000)},
                   held={KEY: Held(0, 5000)})
    (w,) = plan.writes
    assert w.oseq == 5000 + 1 + R.takeover_floor
    assert plan.lows[MOVED] == w.oseq and plan.records[0].mark > w.oseq


def test_the_jump_after_a_move_does_not_count_as_traffic() -> None:
    # The master's own write past the old address's mark must not size the SA's reserve:
    # a reserve of 10,000 packets would make the next failover skip that far (lab, --mobike).
    t = SeqTracker("gw1")
    moved = KernelSa(MOVED, False, 4990, 0, (0,), 32)
    plan = observe(t, [moved], {KEY: rec(5000)}, held={KEY: Held(0, 5000)}, now=0.0)
    (w,) = plan.writes
    after = KernelSa(MOVED, False, w.oseq + 2, 0, (0,), 32)  # 2 packets in 0.1 s
    held = {MOVED: Held(w.oseq, plan.records[0].mark)}
    observe(t, [after], {KEY: rec(5000)}, held=held, now=0.1)
    assert t._rate(after, 0.2) == pytest.approx(20.0)


def test_a_claims_marks_lie_past_every_mark_of_their_spi_and_invert_to_their_lows() -> None:
    """D261: the claim's first permit of an SA starts at its target (the highest mark of its
    (SPI, protocol) under any destination, + 1 + takeover floor) and reaches ahead(its rate);
    none near 2^32, where the record cannot say whether the SA has ESN."""
    moved = ("198.51.100.7", KEY[1], KEY[2])  # the same SA after MOBIKE, journaled higher
    high = ("192.0.2.102", 7, 50)
    records = {KEY: rec(1000, rate=2000.0), moved: SeqRecord(moved, 4000, 0, (0,), 0.0, "gw1", 1.0),
               high: SeqRecord(high, U32_MAX - 1000, 0, (0,), 0.0, "gw1", 1.0)}
    marks = claim_marks(records, R)
    lo = 4000 + 1 + R.takeover_floor
    assert marks == {KEY: (lo, lo + R.ahead(2000.0)), moved: (lo, lo + R.ahead(0.0))}
    log = SeqLog(records=dict(records))
    assert log.claim("gw2", log.view(), R) == 1
    assert log.records[high] == records[high]  # left for the term's first read
    assert (log.records[KEY].mark, log.records[KEY].node, log.records[KEY].epoch) == (
        lo + 1600, "gw2", 1)
    assert claim_lows(log.records, "gw2", 1, R) == {
        KEY: Held(lo, lo + 1600, claimed=True), moved: Held(lo, lo + 768, claimed=True)}
    assert claim_lows(log.records, "gw3", 1, R) == {} == claim_lows(log.records, "gw2", 2, R)
    assert claim_marks({KEY: rec(10, rate=1e308)}, R) == {}  # no overflow, no permit


def test_a_claimed_permit_that_misses_the_counter_makes_a_first_mark_not_a_violation() -> None:
    t = SeqTracker("gw2", R)
    committed = {KEY: rec(5000, node="gw2")}
    for oseq in (100, 9000):  # below the permit (a write that failed), above it (a counter
        held = {KEY: Held(2000, 5000, claimed=True)}  # fenced while this node was a backup)
        plan = t.observe([sa(oseq=oseq)], committed, held, 2, float(oseq), 1000.0)
        target = 5000 + 1 + R.takeover_floor
        assert plan.lows == {KEY: max(oseq, target)}
    assert t.stats.violations == 0 and t.stats.recreated == 0 and t.stats.first_marks == 2
    plan = t.observe([sa(oseq=2100)], committed, {KEY: Held(2000, 5000, claimed=True)}, 2,
                     20.0, 1000.0)
    assert plan.records == [] and t.stats.first_marks == 2  # within it: nothing due yet


def test_a_claimants_promotion_writes_up_to_its_permits_lo_not_past_its_own_marks() -> None:
    committed = {KEY: rec(9000, node="gw2")}  # the claim's own mark
    held = {KEY: Held(5577, 9000, claimed=True)}
    (w,) = plan_writes([sa(oseq=10)], committed, R, held=held)
    assert w.oseq == 5577
    (w,) = plan_writes([sa(oseq=10)], committed, R)  # a backup: past the mark
    assert w.oseq == 9000 + 1 + R.takeover_floor


def test_an_sa_whose_permit_is_in_force_is_written_past_it_or_only_its_inbound_state() -> None:
    """D265: with the claim's permit of KEY already granted (`live`), a counter found below
    lo goes past hi (not to lo: the kernel may have sent into the permit since the read); one
    at or past lo is not moved; an inbound restore writes back the counter read."""
    committed = {KEY: rec(9000, seq=70, node="gw2")}  # the claim's own mark
    held = {KEY: Held(5577, 9000, claimed=True)}
    live = frozenset({KEY})
    (w,) = plan_writes([sa(oseq=10)], committed, R, held=held, live=live)
    assert w.oseq == 9000 + 1 + R.takeover_floor
    (w,) = plan_writes([sa(oseq=5577, seq=3)], committed, R, held=held, live=live)
    assert w.oseq == 5577 and w.seq == 70  # inbound only
    assert plan_writes([sa(oseq=6000, seq=70)], committed, R, held=held, live=live) == []
    gone = {("192.0.2.9", 1, 50): rec(1)}  # its record gone from the journal: still past hi
    (w,) = plan_writes([sa(oseq=10)], gone, R, held=held, live=live)
    assert w.oseq > 9000
