"""Roles and keepalived's FIFO lines."""

from __future__ import annotations

import pytest

from hasync.role import (
    REPEATS,
    TRANSITIONS,
    VRRP_STATES,
    IllegalTransition,
    Role,
    RoleState,
    VrrpEvent,
    parse_vrrp_line,
)


def test_parse_vrrp_lines() -> None:
    assert parse_vrrp_line('INSTANCE "VI_1" MASTER 180\n') == VrrpEvent("VI_1", "MASTER", 180)
    assert parse_vrrp_line('INSTANCE "VI_1" BACKUP') == VrrpEvent("VI_1", "BACKUP", None)
    assert parse_vrrp_line('GROUP "G" MASTER 1') is None
    assert parse_vrrp_line("") is None and parse_vrrp_line("garbage") is None


def test_role_follows_keepalived_for_its_instance_only() -> None:
    st = RoleState()
    assert st.mirrors
    assert not st.on_vrrp(VrrpEvent("OTHER", "MASTER", 1), "VI_1", 1.0)
    assert st.on_vrrp(VrrpEvent("VI_1", "MASTER", 1), "VI_1", 2.0)
    assert st.role is Role.MASTER and st.since == 2.0 and not st.mirrors
    assert not st.on_vrrp(VrrpEvent("VI_1", "MASTER", 1), "VI_1", 3.0)  # no change
    assert st.on_vrrp(VrrpEvent("VI_1", "FAULT", 1), "VI_1", 4.0)
    assert st.history[-1] == (4.0, Role.MASTER, Role.FAULT)
    assert not st.on_vrrp(VrrpEvent("VI_1", "WEIRD", 1), "VI_1", 5.0)


def test_illegal_transition_names_role_and_target() -> None:
    st = RoleState(role=Role.MASTER)
    with pytest.raises(IllegalTransition, match="master cannot become joining"):
        st.move(Role.JOINING, 1.0)
    assert all(Role.JOINING not in targets for targets in TRANSITIONS.values())


@pytest.mark.parametrize("start", list(Role))
def test_no_role_returns_to_joining(start: Role) -> None:
    st = RoleState(role=start, since=1.0)
    with pytest.raises(IllegalTransition, match=f"role {start.value} cannot become joining"):
        st.move(Role.JOINING, 2.0)
    assert st.role is start and st.since == 1.0 and not st.history


@pytest.mark.parametrize("role", sorted(REPEATS, key=lambda r: r.value))
def test_keepalived_repeating_a_role_is_a_no_op(role: Role) -> None:
    st = RoleState(role=role, since=1.0)
    assert not st.move(role, 2.0) and st.since == 1.0 and not st.history
    assert role not in TRANSITIONS[role]  # a repeat is not a transition


def test_every_keepalived_word_is_followed_from_every_role() -> None:
    """The VIP moves whether hasync agrees or not: each word keepalived sends is allowed."""
    words = ("MASTER", "BACKUP", "FAULT", "STOP", "DELETED")
    for start in Role:
        for word in words:
            st = RoleState(role=start)
            st.on_vrrp(VrrpEvent("VI_1", word, 100), "VI_1", 1.0)
            assert st.role is VRRP_STATES[word]


def test_a_joining_node_keepalived_leaves_silent_past_the_limit_is_in_fault() -> None:
    st = RoleState()
    assert not st.settle_silence(100.0, 10.0) and st.waited_from == 100.0
    assert not st.settle_silence(109.9, 10.0) and st.role is Role.JOINING
    assert st.settle_silence(110.0, 10.0) and st.role is Role.FAULT and st.since == 110.0
    assert not st.settle_silence(200.0, 10.0) and st.role is Role.FAULT
    assert st.on_vrrp(VrrpEvent("VI_1", "BACKUP", 1), "VI_1", 201.0)  # keepalived goes on


@pytest.mark.parametrize("word", ["BACKUP", "MASTER", "FAULT"])
def test_a_word_before_the_limit_ends_the_wait(word: str) -> None:
    st = RoleState()
    st.settle_silence(100.0, 10.0)
    assert st.on_vrrp(VrrpEvent("VI_1", word, 1), "VI_1", 105.0)
    assert not st.settle_silence(120.0, 10.0) and st.role is VRRP_STATES[word]
