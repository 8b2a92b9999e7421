"""pysyncobj, imported so that it leaves the socket module alone.

Rules: every hasync import of pysyncobj goes through here. pysyncobj 0.3.17
(pysyncobj/win_inet_pton.py, imported by tcp_connection.py) assigns its ctypes Windows
`inet_ntop` to `socket.inet_ntop` on every OS, which breaks `socket.inet_ntop` for the whole
process on Linux ("not_windows() takes 0 positional arguments"); the original is put back.
"""

from __future__ import annotations

import socket
from enum import IntEnum
from typing import Any

_inet_ntop, _inet_pton = socket.inet_ntop, socket.inet_pton

from pysyncobj import SyncObj, SyncObjConf, SyncObjConsumer, replicated  # noqa: E402

socket.inet_ntop, socket.inet_pton = _inet_ntop, _inet_pton



class FailReason(IntEnum):
    """What a pysyncobj callback's `error` means (pysyncobj/syncobj.py FAIL_REASON, in order)."""

    SUCCESS = 0  # the command was committed and applied
    QUEUE_FULL = 1  # the leader's command queue is full
    MISSING_LEADER = 2  # no leader (election in progress, or no connection to it)
    DISCARDED = 3  # a new leader applied another command in its place
    NOT_LEADER = 4  # the leader changed before it committed the command
    LEADER_CHANGED = 5  # likewise, seen from the follower that forwarded it
    REQUEST_DENIED = 6  # the leader refused the command
    UNKNOWN_OUTCOME = 7  # an older command was applied: the outcome cannot be known


def outcome(error: Any) -> FailReason:
    """A callback's `error` by name; pysyncobj passes None or 0 on success."""
    if error is None:
        return FailReason.SUCCESS
    try:
        return FailReason(error)
    except ValueError:
        return FailReason.UNKNOWN_OUTCOME


__all__ = ["FailReason", "SyncObj", "SyncObjConf", "SyncObjConsumer", "outcome", "replicated"]
