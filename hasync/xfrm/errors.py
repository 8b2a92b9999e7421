"""Exceptions of the XFRM netlink codec and its socket adapter.

Rules: bytes from the kernel that are not valid netlink/XFRM raise `MalformedMessage` (with
the attribute and the byte offset) and nothing else; a caller's own mistake (a value out of
range, a missing argument) raises `XfrmUsageError`; an error the kernel answered, or no
answer at all, raises `XfrmError`, which names the operation and the SA (SPI, dst, proto).
The three never substitute for each other.
"""

from __future__ import annotations

import errno as _errno
import os

from hasync.wire import MalformedBytes


class MalformedMessage(MalformedBytes):
    """Kernel (or remote) bytes that do not decode; `offset` is where decoding failed."""


class XfrmUsageError(ValueError):
    """The caller asked for something that cannot be encoded or makes no sense locally."""


class XfrmError(OSError):
    """The kernel refused (or never answered) `op`; `sa` names the SA when there is one."""

    def __init__(
        self, code: int, op: str, *, sa: object | None = None, detail: str | None = None
    ) -> None:
        name = _errno.errorcode.get(code, str(code))
        text = f"{op}"
        if sa is not None:
            text += f" of SA {sa}"
        text += f" failed: {os.strerror(code)} ({name})"
        if detail:
            text += f": {detail}"
        super().__init__(code, text)
        self.op = op
        self.sa = sa
        self.detail = detail

    def __str__(self) -> str:
        return str(self.strerror)
