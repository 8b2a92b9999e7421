"""Tests of hasync.node, the sans-IO node core: golden charon datagrams and keepalived lines in,
commands out; no sockets, threads, sleeps or clock.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from hasync import role as role_mod
from hasync.ha import HaMessage, MessageType, decode, encode
from hasync.journal.machine import APPLIED, GAP
from hasync.mirror import HEARTBEAT_S, status_message
from hasync.node import (
    REPORT_S,
    SYNC_MOVES,
    CancelPromotion,
    CharonFifo,
    ClearFeed,
    FeedCharon,
    IllegalSyncMove,
    NodeCore,
    RaftView,
    Report,
    SendToCharon,
    Settings,
    StartPromotion,
    StartReplay,
    SubmitBatch,
    Sync,
    SyncEvent,
    SyncState,
    Wake,
)
from hasync.role import Role, RoleState
from hasync.syncobj_compat import FailReason

from hastream import golden

V3 = golden()
LIFECYCLE = [(name, bytes.fromhex(h)) for name, h in json.loads(
    (Path(__file__).parent / "data" / "ha" / "v3_lab_lifecycle.json").read_text())["vectors"]]
TUNNEL = [V3[n] for n in ("ike_add", "ike_mid_responder", "ike_update", "child_add")]
CAUGHT_UP = RaftView("follower", "127.0.0.1:7001", commit_index=5, applied_index=5)
BEHIND = RaftView("follower", "127.0.0.1:7001", commit_index=9, applied_index=5)


def _core(role: Role = Role.BACKUP, **kw: object) -> NodeCore:
    return NodeCore(Settings(**kw), RoleState(role=role))  # type: ignore[arg-type]


def _replays(commands: list[object]) -> bool:
    return any(isinstance(c, StartReplay) for c in commands)


def _ha(core: NodeCore, raw: bytes, now: float) -> list[object]:
    return list(core.on_ha(raw, decode(raw), now))


def _vrrp(core: NodeCore, state: str, now: float) -> list[object]:
    return list(core.on_vrrp(f'INSTANCE "VI_1" {state} 100\n', now))


def _submitted(cmds: list[object]) -> list[bytes]:
    return [d for c in cmds if isinstance(c, SubmitBatch) for d in c.datagrams]


def _applied(core: NodeCore, seq: int, now: float) -> list[object]:
    """Batch `seq` committed and applied (the machine expects seq + 1 next)."""
    return list(core.on_committed(seq, FailReason.SUCCESS, (APPLIED, seq + 1), now))


def test_a_masters_tunnel_is_submitted_in_order_once_the_delay_passed() -> None:
    core = _core(Role.MASTER, batch_max_delay_s=0.005)
    out = [c for raw in TUNNEL for c in _ha(core, raw, 1.0)]
    assert out == [Wake()]  # the first datagram wakes the loop; nothing is due yet
    assert _submitted(core.tick(1.001, 0.0, CAUGHT_UP)) == []
    assert _submitted(core.tick(1.006, 0.0, CAUGHT_UP)) == TUNNEL
    assert core.batcher.backlog == 4 and core.wake_at() is None  # in flight until committed
    assert _applied(core, 1, 1.012) == []
    assert core.counters["batches"] == 1 and core.counters["batch_messages"] == 4
    assert core.batcher.backlog == 0 and core.commit_ms == pytest.approx(0.6)


def test_a_recorded_lifecycle_is_journaled_in_charons_order_in_full_batches() -> None:
    core = _core(Role.MASTER, batch_max_messages=3)
    journaled = [raw for name, raw in LIFECYCLE if "status" not in name and "segment" not in name]
    batches: list[tuple[bytes, ...]] = []
    for i, (_, raw) in enumerate(LIFECYCLE):
        for c in core.on_ha(raw, decode(raw), float(i)):
            if isinstance(c, SubmitBatch):
                batches.append(c.datagrams)
                assert _applied(core, c.seq, float(i)) == []
    batches += [c.datagrams for c in core.tick(1e3, 0.0, CAUGHT_UP) if isinstance(c, SubmitBatch)]
    assert all(len(b) == 3 for b in batches[:-1]) and [d for b in batches for d in b] == journaled


def test_a_failed_commit_is_resent_first_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    core = _core(Role.MASTER, batch_max_messages=2)
    assert _submitted([c for raw in TUNNEL[:2] for c in _ha(core, raw, 1.0)]) == TUNNEL[:2]
    assert _submitted([c for raw in TUNNEL[2:] for c in _ha(core, raw, 1.0)]) == TUNNEL[2:]
    assert core.on_committed(1, FailReason.NOT_LEADER, None, 1.1) == []  # backs off 0.2 s
    assert core.counters["commit_retries"] == 1 and "NOT_LEADER" in caplog.text
    assert core.on_committed(2, FailReason.SUCCESS, (GAP, 1), 1.15) == []  # 2 skipped: 1 first
    assert core.counters["batches_resent:gap"] == 1
    assert _submitted(core.tick(1.2, 0.0, CAUGHT_UP)) == []
    assert _submitted(core.tick(1.3, 0.0, CAUGHT_UP)) == TUNNEL[:2]  # the same batch again
    assert _submitted(_applied(core, 1, 1.4)) == TUNNEL[2:]  # then the next, alone
    assert _applied(core, 2, 1.5) == [] and core.batcher.backlog == 0
    assert core.counters["batches"] == 2 and core.counters["batch_messages"] == 4


def test_a_batch_that_does_not_seal_is_dropped_and_counted() -> None:
    core = _core(Role.MASTER, batch_max_messages=2)
    assert _submitted([c for raw in TUNNEL[:2] for c in _ha(core, raw, 1.0)]) == TUNNEL[:2]
    assert core.on_submit_failed(1, 1.0) == []
    assert core.counters["batches_dropped"] == 1 and core.counters["messages_dropped"] == 2
    assert core.batcher.backlog == 0


def test_a_backups_charon_claiming_a_segment_is_told_to_drop_it() -> None:
    core = _core(Role.BACKUP)
    assert _ha(core, V3["status_segment"], 1.0) == [CharonFifo("-1")]
    assert core.charon_segments == {1} and core.ha_rx == 1.0
    assert _ha(core, V3["segment_take"], 2.0) == [CharonFifo("-1")]
    assert _ha(core, V3["status_empty"], 3.0) == [] and core.charon_segments == set()
    master = _core(Role.MASTER)
    assert _ha(master, V3["status_segment"], 1.0) == [] and master.charon_segments == {1}
    drop = next(raw for name, raw in LIFECYCLE if name.startswith("segment_drop_segment_drop"))
    assert _ha(master, drop, 2.0) == [] and master.charon_segments == set()


def test_vrrp_master_promotes_and_backup_after_master_cancels_and_deactivates() -> None:
    core = _core(Role.JOINING, segments=3)
    assert _vrrp(core, "BACKUP", 1.0) == []
    assert _vrrp(core, "MASTER", 2.0) == [StartPromotion()]
    assert _vrrp(core, "MASTER", 3.0) == []  # keepalived repeating itself: a no-op
    assert core.on_activate() == [CharonFifo("+1"), CharonFifo("+2"), CharonFifo("+3")]
    assert _vrrp(core, "BACKUP", 4.0) == [CancelPromotion(), CharonFifo("-1"), CharonFifo("-2"),
                                          CharonFifo("-3")]
    assert core.on_activate() == []  # a promotion that ends after the fall activates nothing
    assert core.role.role is Role.BACKUP and core.role.since == 4.0
    assert core.on_vrrp('INSTANCE "OTHER" MASTER 100', 5.0) == []
    assert core.on_vrrp("garbage", 5.0) == [] and core.role.role is Role.BACKUP


def test_a_role_change_is_reported_at_the_next_tick() -> None:
    core = _core(Role.JOINING)
    first = [c for c in core.tick(1.0, 100.0, BEHIND) if isinstance(c, Report)]
    assert first == [Report({"vrrp": "joining", "raft": "follower", "applied": 5, "ts": 100.0})]
    assert not [c for c in core.tick(2.0, 101.0, BEHIND) if isinstance(c, Report)]
    _vrrp(core, "MASTER", 2.5)
    assert [c.info["vrrp"] for c in core.tick(3.0, 102.0, BEHIND) if isinstance(c, Report)] == [
        "master"]
    assert [c for c in core.tick(3.0 + REPORT_S, 0.0, BEHIND) if isinstance(c, Report)]


def test_an_illegal_keepalived_word_is_logged_and_counted_not_raised(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(role_mod.VRRP_STATES, "INIT", Role.JOINING)  # no role returns there
    core = _core(Role.BACKUP)
    with caplog.at_level(logging.ERROR):
        assert _vrrp(core, "INIT", 1.0) == []
    assert core.counters["vrrp_illegal"] == 1 and core.role.role is Role.BACKUP
    assert "role backup cannot become joining" in caplog.text


def test_heartbeats_only_while_mirroring() -> None:
    core = _core(Role.BACKUP, segments=2)
    beat = SendToCharon(status_message(3, 2))
    assert beat in core.tick(1.0, 0.0, BEHIND)
    assert beat not in core.tick(1.0 + HEARTBEAT_S / 2, 0.0, BEHIND)
    assert beat in core.tick(1.0 + HEARTBEAT_S, 0.0, BEHIND)
    _vrrp(core, "MASTER", 3.0)
    assert not [c for c in core.tick(4.0, 0.0, BEHIND) if isinstance(c, SendToCharon)]


def test_the_replay_starts_only_once_caught_up_then_applied_datagrams_follow() -> None:
    core = _core(Role.BACKUP)
    assert core.on_applied(TUNNEL) == []  # not synced: the replay will carry them
    assert not _replays(core.tick(1.0, 0.0, BEHIND)) and not core.raft_joined
    assert not _replays(core.tick(1.1, 0.0, RaftView("follower", None, 5, 5)))
    assert _replays(core.tick(1.2, 0.0, CAUGHT_UP)) and core.raft_joined
    assert core.sync.state is SyncState.REPLAYING
    assert not _replays(core.tick(1.3, 0.0, CAUGHT_UP))
    assert core.on_applied(TUNNEL[:1]) == [FeedCharon(tuple(TUNNEL[:1]))]  # queued behind it
    assert core.on_replayed(40, 3.2) == [] and core.sync.state is SyncState.SYNCED
    assert core.counters["replays"] == 1 and core.counters["mirrored"] == 41
    assert core.snapshot(4.0)["synced"] is True


def test_a_master_does_not_replay_or_mirror() -> None:
    core = _core(Role.MASTER)
    assert not _replays(core.tick(1.0, 0.0, CAUGHT_UP)) and core.raft_joined
    assert core.sync.state is SyncState.UNSYNCED and core.on_applied(TUNNEL) == []


def test_resync_from_charon_on_a_backup_returns_to_unsynced_and_replays_again() -> None:
    resync = encode(HaMessage.build(3, MessageType.RESYNC))
    core = _core(Role.BACKUP)
    core.tick(1.0, 0.0, CAUGHT_UP)
    core.on_replayed(0, 1.5)
    assert _ha(core, resync, 2.0) == [] and core.sync.state is SyncState.UNSYNCED
    assert core.on_applied(TUNNEL) == []
    assert _replays(core.tick(2.1, 0.0, CAUGHT_UP))
    master = _core(Role.MASTER)
    master.sync.state = SyncState.SYNCED
    assert _ha(master, resync, 1.0) == [] and master.sync.state is SyncState.SYNCED


@pytest.mark.parametrize(("state", "event"), [
    (SyncState.UNSYNCED, SyncEvent.REPLAYED), (SyncState.SYNCED, SyncEvent.REPLAY),
    (SyncState.SYNCED, SyncEvent.REPLAYED), (SyncState.REPLAYING, SyncEvent.REPLAY)])
def test_an_illegal_sync_move_raises_naming_state_and_event(state: SyncState,
                                                             event: SyncEvent) -> None:
    assert (state, event) not in SYNC_MOVES
    with pytest.raises(IllegalSyncMove, match=f"sync state {state.value} cannot take "
                                              f"{event.value}"):
        Sync(state).move(event)


def test_a_replay_finishing_twice_is_a_bug_that_raises() -> None:
    core = _core(Role.BACKUP)
    core.tick(1.0, 0.0, CAUGHT_UP)
    core.on_replayed(1, 2.0)
    with pytest.raises(IllegalSyncMove, match="synced cannot take replayed"):
        core.on_replayed(1, 3.0)


def test_failed_reports_are_counted_by_reason() -> None:
    core = _core()
    assert core.on_reported(FailReason.SUCCESS) == [] and not any(core.counters.values())
    core.on_reported(FailReason.MISSING_LEADER)
    assert +core.counters == {"reports_failed:MISSING_LEADER": 1}


def test_health_fields() -> None:
    core = _core()
    assert core.ha_rx_age(5.0) is None
    _ha(core, V3["status_empty"], 2.0)
    assert core.ha_rx_age(5.25) == 3.25


def test_a_resync_during_a_replay_leaves_it_running() -> None:
    resync = encode(HaMessage.build(3, MessageType.RESYNC))
    core = _core(Role.BACKUP)
    assert _replays(core.tick(1.0, 0.0, CAUGHT_UP))
    assert _ha(core, resync, 1.5) == [] and core.sync.state is SyncState.REPLAYING
    core.on_replayed(3, 2.0)
    assert core.sync.state is SyncState.SYNCED


def test_finding3_a_charon_restart_replays_again_once_its_connections_are_loaded() -> None:
    core = _core(Role.BACKUP)
    core.tick(1.0, 0.0, CAUGHT_UP)
    first = core.sync.generation
    core.on_replayed(3, 2.0, first)
    assert core.sync.synced
    assert core.on_charon_restart(3.0) == [ClearFeed()] and not core.sync.synced
    assert core.on_applied(TUNNEL) == []  # a restarted charon gets the replay, not these
    assert not _replays(core.tick(3.1, 0.0, CAUGHT_UP))  # its connections are not loaded yet
    assert core.on_charon_ready(True) == []
    out = core.tick(3.2, 0.0, CAUGHT_UP)
    # charon holds nothing: no IKE_SA to delete first (a hasync's first replay does)
    assert out[-1] == StartReplay(first + 1, clean=False) and core.sync.state is SyncState.REPLAYING
    core.on_replayed(3, 4.0, first + 1)
    assert core.sync.synced and core.counters["replays"] == 2


def test_finding3_a_replay_that_a_charon_restart_abandoned_is_ignored() -> None:
    core = _core(Role.BACKUP)
    core.tick(1.0, 0.0, CAUGHT_UP)
    abandoned = core.sync.generation
    core.on_charon_restart(1.5)  # the feed is cleared: the old replay's answer comes anyway
    assert core.on_replayed(2, 1.6, abandoned) == [] and core.sync.state is SyncState.UNSYNCED
    assert core.counters["replays_abandoned"] == 1 and core.counters["replays"] == 0
    core.on_charon_ready(True)
    assert _replays(core.tick(2.0, 0.0, CAUGHT_UP))
    core.on_replayed(2, 2.5, abandoned + 1)
    assert core.sync.synced


def test_finding3_a_master_whose_charon_restarted_fails_health_until_it_is_not_master() -> None:
    core = _core(Role.MASTER)
    assert core.problems() == []
    core.on_charon_restart(1.0)
    assert core.problems() and "charon_restarted_on_master" in core.problems()[0]
    _vrrp(core, "FAULT", 2.0)
    assert core.problems() == []


def _resyncs(cmds: list[object]) -> list[HaMessage]:
    msgs = [decode(c.datagram) for c in cmds if isinstance(c, SendToCharon)]
    return [m for m in msgs if m.type == MessageType.RESYNC]


def test_finding7_the_batch_backlog_is_bounded_fails_health_then_resyncs(
        caplog: pytest.LogCaptureFixture) -> None:
    """While Raft commits nothing the backlog stops at its bound; what it drops is counted and
    fails health; once Raft drained it, charon is asked once for a RESYNC of every segment."""
    core = _core(Role.MASTER, batch_max_messages=4)
    core.batcher.max_backlog = 8
    for i in range(20):
        _ha(core, TUNNEL[i % 4], 1.0)
    assert core.batcher.backlog == 8  # before the fix: all 20 wait in memory
    assert core.counters["messages_dropped:backlog_full"] == 12
    (problem,) = core.problems()
    assert problem.startswith("journal_gap: 12 datagrams")
    assert "RESYNC" in caplog.text and _resyncs(core.tick(1.5, 0.0, CAUGHT_UP)) == []
    assert _submitted(_applied(core, 1, 2.0)) == []  # the second four are in flight already
    out = _applied(core, 2, 2.1)
    (resync,) = _resyncs(out)
    assert [a.value for a in resync.attributes] == [1]  # segment 1 (segments = 1)
    assert core.problems() == [] and core.counters["resyncs_requested"] == 1
    for i in range(9):  # a second overflow within RESYNC_MIN_S waits for it to pass
        _ha(core, TUNNEL[i % 4], 3.0)
    _applied(core, 3, 3.1)
    _applied(core, 4, 3.2)
    assert _resyncs(core.tick(3.3, 0.0, CAUGHT_UP)) == [] and core.problems()
    assert len(_resyncs(core.tick(62.2, 0.0, CAUGHT_UP))) == 1 and core.problems() == []


def test_a_moved_peer_s_update_is_journaled_on_the_master_only() -> None:
    """roam.py's confirmed moves go into the journal like charon's own datagrams; a node that
    is no longer master journals nothing (its charon's moves are not the cluster's)."""
    update = b"\x03\x02moved"
    master = _core(Role.MASTER, batch_max_messages=1)
    out = master.on_roamed([update], 1.0)
    assert SubmitBatch((update,), 0, 1) in out
    backup = _core(Role.BACKUP)
    assert backup.on_roamed([update], 1.0) == [] and not backup.batcher.pending
    master.roams.seen((2, 1, 2, False), *_hosts(), {7}, now=1.0)
    assert master.roams.pending
    _vrrp(master, "BACKUP", 2.0)
    assert not master.roams.pending  # demoted: nothing left to follow


def _hosts() -> tuple[object, object]:
    from ipaddress import IPv4Address

    from hasync.ha import Host
    return Host(IPv4Address("192.0.2.121"), 4500), Host(IPv4Address("192.0.2.101"), 4500)


def test_a_node_that_does_not_know_its_vrrp_state_fails_health_until_keepalived_says() -> None:
    core = _core(Role.JOINING)  # e.g. hasync restarted while keepalived holds the VIP here
    assert [p.split(":")[0] for p in core.problems()] == ["vrrp_unknown"]
    core.tick(1.0, 0.0, CAUGHT_UP)
    assert _vrrp(core, "FAULT", 3.0) == [] and core.problems() == []  # the VIP is given up
    core.tick(50.0, 0.0, CAUGHT_UP)
    assert core.role.role is Role.FAULT and core.counters["vrrp_assumed_fault"] == 0


def test_keepalived_silent_past_fault_within_means_fault_and_is_counted(
        caplog: pytest.LogCaptureFixture) -> None:
    core = _core(Role.JOINING, fault_within_s=10.0)
    assert core.counters["vrrp_assumed_fault"] == 0  # shown from the start
    core.tick(1.0, 0.0, BEHIND)
    core.tick(10.9, 0.0, BEHIND)
    assert core.role.role is Role.JOINING and core.problems()
    with caplog.at_level(logging.WARNING, logger="hasync"):
        out = core.tick(11.0, 0.0, BEHIND)
    assert core.role.role is Role.FAULT and core.problems() == []
    assert core.counters["vrrp_assumed_fault"] == 1 and "FAULT already" in caplog.text
    assert [c.info["vrrp"] for c in out if isinstance(c, Report)] == ["fault"]
    assert _vrrp(core, "BACKUP", 12.0) == [] and core.role.role is Role.BACKUP


def test_a_replay_deletes_each_ike_sa_first_unless_charon_restarted_since_the_last() -> None:
    """An earlier hasync (or this one, before the feed overflowed) may have fed charon: an
    IKE_ADD over a held IKE_SA makes a second one. A charon seen restarting holds nothing."""
    core = _core(Role.BACKUP)
    (first,) = [c for c in core.tick(1.0, 0.0, CAUGHT_UP) if isinstance(c, StartReplay)]
    assert first.clean  # this process's first replay: charon may hold an earlier feed
    core.on_replayed(3, 2.0, first.generation)
    core.on_feed_overflow(3.0)
    (again,) = [c for c in core.tick(3.1, 0.0, CAUGHT_UP) if isinstance(c, StartReplay)]
    assert again.clean
    core.on_charon_restart(4.0)
    core.on_charon_ready(True)  # its connections loaded again
    (fresh,) = [c for c in core.tick(4.1, 0.0, CAUGHT_UP) if isinstance(c, StartReplay)]
    assert not fresh.clean
    core.on_feed_overflow(5.0)  # part of that replay reached charon
    (last,) = [c for c in core.tick(5.1, 0.0, CAUGHT_UP) if isinstance(c, StartReplay)]
    assert last.clean
