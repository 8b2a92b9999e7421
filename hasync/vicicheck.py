"""Is charon answering over vici? One `version` request on charon's vici socket.

Rules: blocking, for a worker thread or a short-lived command; the vici package's reads block
without a timeout once an answer has begun, so callers bound it with `check()`'s thread
(strongswan/strongswan src/libcharon/plugins/vici/README.md: `version`). What a socket or the
vici protocol can fail with (`_failures()`) is a "no" with the reason; anything else is a bug,
raised from `check()` in the caller's thread, never swallowed. A "no" is *busy* when charon's
socket is there but the answer did not come in time (a timed-out connect means its listen
backlog is full, the vici plugin's accepting thread being starved), and *down* otherwise: no
socket, refused, reset or a protocol error, which a live charon never gives.
"""

from __future__ import annotations

import socket
import struct
import threading
from pathlib import Path
from typing import NamedTuple


class ViciAnswer(NamedTuple):
    """One check's outcome: answered, or why not and whether charon was only slow (busy)."""

    ok: bool
    error: str | None = None
    busy: bool = False


def _failures() -> tuple[type[BaseException], ...]:
    """A socket error (missing, refused, reset, timed out) or an answer that is not vici
    (vici/protocol.py decodes with struct and UTF-8): charon is not usable over vici."""
    from vici.exception import CommandException, DeserializationException, SessionException
    return (OSError, struct.error, UnicodeDecodeError, SessionException, CommandException,
            DeserializationException)


def _ask(path: Path, timeout: float, out: dict[str, ViciAnswer | BaseException]) -> None:
    import vici
    failures = _failures()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            vici.Session(sock).version()
    except failures as exc:
        text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        out["vici"] = ViciAnswer(False, f"{path}: {text or type(exc).__name__}",
                                 busy=isinstance(exc, TimeoutError))
    except BaseException as exc:  # a bug: handed to check()'s caller, which raises it
        out["bug"] = exc
    else:
        out["vici"] = ViciAnswer(True)


def check(path: Path, timeout: float) -> ViciAnswer:
    """Whether charon answered within `timeout` seconds, and if not, why."""
    out: dict[str, ViciAnswer | BaseException] = {}
    worker = threading.Thread(target=_ask, args=(path, timeout, out), daemon=True)
    worker.start()
    worker.join(timeout + 0.1)
    bug = out.get("bug")
    if isinstance(bug, BaseException):
        raise bug
    answer = out.get("vici")
    if isinstance(answer, ViciAnswer):
        return answer
    return ViciAnswer(False, f"{path}: no answer within {timeout} s", busy=True)
