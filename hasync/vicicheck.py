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

import os
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple


class ViciAnswer(NamedTuple):
    """One check's outcome: answered, or why not and whether charon was only slow (busy)."""

    ok: bool
    error: str | None = None
    busy: bool = False
    value: Any = None  # what the request's reader returned (`ask`)


def _failures() -> tuple[type[BaseException], ...]:
    """A socket error (missing, refused, reset, timed out) or an answer that is not vici
    (vici/protocol.py decodes with struct and UTF-8): charon is not usable over vici."""
    from vici.exception import CommandException, DeserializationException, SessionException
    return (OSError, struct.error, UnicodeDecodeError, SessionException, CommandException,
            DeserializationException)


def _ask(path: Path, timeout: float, out: dict[str, ViciAnswer | BaseException],
         read: Callable[[Any], Any]) -> None:
    import vici
    failures = _failures()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            value = read(vici.Session(sock))
    except failures as exc:
        text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        out["vici"] = ViciAnswer(False, f"{path}: {text or type(exc).__name__}",
                                 busy=isinstance(exc, TimeoutError))
    except BaseException as exc:  # a bug: handed to check()'s caller, which raises it
        out["bug"] = exc
    else:
        out["vici"] = ViciAnswer(True, value=value)


def check(path: Path, timeout: float) -> ViciAnswer:
    """Whether charon answered `version` within `timeout` seconds, and if not, why."""
    return ask(path, timeout, lambda session: session.version())._replace(value=None)


def ike_total(stats: dict[str, Any]) -> int | None:
    """ikesas.total of a `stats` answer (vici_query.c), None if absent or not a number."""
    total = stats.get("ikesas", {}).get("total")
    try:
        return int(total)
    except (TypeError, ValueError):
        return None


def stats(session: Any) -> int | None:
    """The IKE_SA count of one `stats` request (passive IKE_SAs included)."""
    return ike_total(session.stats())


def socket_id(path: Path) -> str | None:
    """Which vici socket is at `path` (device, inode, change time): charon unlinks and binds it
    anew at every start, so it names charon's incarnation (`stats`' uptime.since does not: it
    is computed from two clocks and moves by a second between answers)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{st.st_dev}:{st.st_ino}:{st.st_ctime_ns}"


def incarnation(path: Path, timeout: float) -> ViciAnswer:
    """charon's incarnation and IKE_SA count, as value (socket_id, count); not ok if charon
    did not answer or its socket changed while it did."""
    before = socket_id(path)
    answer = ask(path, timeout, stats)
    if answer.ok and (before is None or socket_id(path) != before):
        return ViciAnswer(False, f"{path}: replaced while asked", busy=False)
    return answer._replace(value=(before, answer.value)) if answer.ok else answer


def conn_names(session: Any) -> set[str]:
    """The names of the connections charon has loaded (`list-conns`: one event per conn)."""
    names: set[str] = set()
    for conn in session.list_conns():
        names.update(k.decode(errors="replace") if isinstance(k, bytes) else str(k)
                     for k in conn)
    return names


def ask(path: Path, timeout: float, read: Callable[[Any], Any]) -> ViciAnswer:
    """Run `read(session)` on a fresh vici session, bounded by `timeout` seconds."""
    out: dict[str, ViciAnswer | BaseException] = {}
    worker = threading.Thread(target=_ask, args=(path, timeout, out, read), daemon=True)
    worker.start()
    worker.join(timeout + 0.1)
    bug = out.get("bug")
    if isinstance(bug, BaseException):
        raise bug
    answer = out.get("vici")
    if isinstance(answer, ViciAnswer):
        return answer
    return ViciAnswer(False, f"{path}: no answer within {timeout} s", busy=True)
