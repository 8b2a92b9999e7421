"""This node's role in the cluster, as keepalived (VRRP) decides it.

Rules: roles are an Enum with an explicit transition table; an illegal move raises
`IllegalTransition` naming the role and the event. Parsing keepalived's notify FIFO lines is
pure (`parse_vrrp_line`). Time is an argument (`now`), never read here.
Keepalived's vrrp_notify_fifo lines look like `INSTANCE "VI_1" MASTER 100` (keepalived
doc/man/man5/keepalived.conf.5, notify_fifo).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Role(Enum):
    """What this node is for the cluster's virtual IP."""

    JOINING = "joining"  # started; keepalived has not said yet
    BACKUP = "backup"  # another node holds the VIP: mirror into the local charon
    MASTER = "master"  # this node holds the VIP: its charon is the source of the stream
    FAULT = "fault"  # keepalived reports a fault: behave as a backup, never serve


class IllegalTransition(RuntimeError):
    """A role change the table does not allow (a local bug, not remote input)."""


# keepalived state word -> role it leads to
VRRP_STATES = {"MASTER": Role.MASTER, "BACKUP": Role.BACKUP, "FAULT": Role.FAULT,
               "STOP": Role.FAULT, "DELETED": Role.FAULT}

# What each role may become: JOINING is left on keepalived's first word and never re-entered;
# keepalived moves BACKUP <-> MASTER, goes to FAULT from either on a fault (or STOP, DELETED),
# and leaves FAULT for BACKUP or, wanting master (priority 255, a restart), straight for MASTER
# (keepalived vrrp/vrrp.c, vrrp_state_leave_fault). The node must follow every such word: the
# VIP moves whether hasync agrees or not.
TRANSITIONS: dict[Role, frozenset[Role]] = {
    Role.JOINING: frozenset({Role.BACKUP, Role.MASTER, Role.FAULT}),
    Role.BACKUP: frozenset({Role.MASTER, Role.FAULT}),
    Role.MASTER: frozenset({Role.BACKUP, Role.FAULT}),
    Role.FAULT: frozenset({Role.BACKUP, Role.MASTER}),
}
# Roles keepalived may announce again without a change (a reload re-notifies, STOP after
# FAULT): a no-op, not a transition. JOINING is not among them: nothing announces it.
REPEATS: frozenset[Role] = frozenset({Role.BACKUP, Role.MASTER, Role.FAULT})


@dataclass(frozen=True)
class VrrpEvent:
    """One keepalived notification for a VRRP instance."""

    instance: str
    state: str
    priority: int | None


def parse_vrrp_line(line: str) -> VrrpEvent | None:
    """Parse one notify FIFO line; None for lines that are not about a VRRP instance."""
    parts = line.strip().split()
    if len(parts) < 3 or parts[0] != "INSTANCE":
        return None
    prio = int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else None
    return VrrpEvent(parts[1].strip('"'), parts[2], prio)


@dataclass
class RoleState:
    """The current role, when it began, and the history of changes."""

    role: Role = Role.JOINING
    since: float = 0.0
    history: list[tuple[float, Role, Role]] = field(default_factory=list)
    waited_from: float | None = None  # a JOINING node's first `settle_silence` call

    def move(self, to: Role, now: float) -> bool:
        """Move to `to`: True if the role changed, False on a repeat; else IllegalTransition."""
        if to is self.role and to in REPEATS:
            return False
        if to not in TRANSITIONS[self.role]:
            raise IllegalTransition(f"role {self.role.value} cannot become {to.value}")
        self.history.append((now, self.role, to))
        del self.history[:-50]
        self.role, self.since = to, now
        return True

    def on_vrrp(self, event: VrrpEvent, instance: str, now: float) -> bool:
        """Apply a keepalived event for `instance`; True if the role changed."""
        if event.instance != instance or event.state not in VRRP_STATES:
            return False
        return self.move(VRRP_STATES[event.state], now)

    def settle_silence(self, now: float, limit_s: float) -> bool:
        """Move a JOINING node to FAULT once keepalived has said nothing for `limit_s` since the
        first call, and return True. A JOINING node fails health (node.py), and keepalived
        says FAULT within its check's fall x interval + timeout from BACKUP or MASTER; silence
        past that means it was in FAULT already, its word read by an earlier hasync."""
        if self.role is not Role.JOINING:
            return False
        if self.waited_from is None:
            self.waited_from = now
        return now - self.waited_from >= limit_s and self.move(Role.FAULT, now)

    @property
    def mirrors(self) -> bool:
        """Whether this node feeds committed state into its charon (every role but MASTER)."""
        return self.role != Role.MASTER
