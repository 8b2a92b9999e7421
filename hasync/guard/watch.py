"""The guard's watch on the kernel's SA notices: what changed since the last read began, so a
promotion reads only that, not every SA (D273).

Rules: one non-blocking NETLINK_XFRM socket joined to XFRMNLGRP_SA, _EXPIRE and _MIGRATE,
read only when asked (`drain`, on the event loop; it never blocks). The kernel queues a notice
before the change it tells of returns to whoever made it (net/xfrm/xfrm_state.c
km_state_notify()), so a drain sees every change made before it. `changes()` covers the
notices since the start of the last read that succeeded (`begin`, `end`): per SA key, the new
instance's row or GONE (`xfrm.events`). It is None, and a promotion reads every SA as before,
when the socket could not be opened, its queue overflowed (ENOBUFS: notices were lost;
netlink(7)) or a notice may have touched SAs it does not name; a later read that begins after
that starts a fresh account. Every such case is counted (`counters`, in `hasync status`).
"""

from __future__ import annotations

import errno
import logging
import socket
from collections import Counter
from collections.abc import Callable

from ..sockbuf import grow_rcvbuf
from ..xfrm.enums import (
    NETLINK_ADD_MEMBERSHIP,
    NETLINK_XFRM,
    SOL_NETLINK,
    XFRMNLGRP_EXPIRE,
    XFRMNLGRP_MIGRATE,
    XFRMNLGRP_SA,
)
from ..xfrm.events import SaEvents, sa_events
from ..xfrm.replayrows import ReplayRow
from .records import SaKey

log = logging.getLogger("hasync.guard")
GROUPS = (XFRMNLGRP_SA, XFRMNLGRP_EXPIRE, XFRMNLGRP_MIGRATE)
RCVBUF = 4 << 20  # notices of a mass install (about 700 bytes each) before the next drain
RECV_SIZE = 1 << 16
Changes = dict[SaKey, ReplayRow | None]  # per SA key: its new instance's row, or GONE


def open_notices() -> socket.socket:
    """A non-blocking NETLINK_XFRM socket joined to the SA notice groups."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK
                         | socket.SOCK_CLOEXEC, NETLINK_XFRM)
    try:
        sock.bind((0, 0))
        for group in GROUPS:
            sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
        grow_rcvbuf(sock, RCVBUF)
    except OSError:
        sock.close()
        raise
    return sock


def _merge(a: Changes | None, b: Changes | None) -> Changes | None:
    """`a`, then `b` after it; unknown if either is."""
    return None if a is None or b is None else {**a, **b}


class SaWatch:
    """SA notices since the last read that succeeded began."""

    def __init__(self, opener: Callable[[], socket.socket] = open_notices) -> None:
        self.counters: Counter[str] = Counter()
        self._since: Changes | None = None  # unknown until a read begins
        self._before: Changes | None = None  # the account a read under way may restore
        try:
            self._sock: socket.socket | None = opener()
        except OSError as e:
            self._sock = None
            self.counters["open_failed"] += 1
            log.warning("cannot watch the kernel's SA notices (%s): a promotion reads every "
                        "SA", e)

    def close(self) -> None:
        """Close the socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def begin(self) -> None:
        """A read of every SA starts: what it finds supersedes every notice so far."""
        self.drain()
        self._before, self._since = self._since, ({} if self._sock is not None else None)

    def end(self, ok: bool) -> None:
        """The read begun last has ended; if not `ok`, the account goes on from before it."""
        if not ok:
            self._since = _merge(self._before, self._since)
        self._before = None

    def changes(self) -> Changes | None:
        """The SAs changed since the last good read began (None: unknown)."""
        self.drain()
        return None if self._since is None else dict(self._since)

    def drain(self) -> None:
        """Take every notice queued now."""
        while self._sock is not None:
            try:
                data = self._sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self._unknown("overflow" if e.errno == errno.ENOBUFS else "recv_error")
                if e.errno != errno.ENOBUFS:
                    log.warning("reading the kernel's SA notices failed: %s", e)
                    return
                continue
            self._note(sa_events(data))

    def _note(self, events: SaEvents) -> None:
        self.counters["notices"] += 1
        if events.every:
            self._unknown("every")
        elif self._since is not None:
            self._since.update(events.sas)

    def _unknown(self, why: str) -> None:
        """Notices were lost or say too little: no account until the next read begins."""
        self.counters[f"unknown:{why}"] += 1
        self._since = self._before = None


__all__ = ["Changes", "SaWatch", "open_notices"]
