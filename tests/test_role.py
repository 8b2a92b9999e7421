"""Roles and keepalived's FIFO lines."""

from __future__ import annotations

import pytest

from hasync.role import (
    TRANSITIONS,
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
