"""Is charon answering over vici? One `version` request on charon's vici socket.

Rules: blocking, for a worker thread or a short-lived command; the vici package's reads block
without a timeout once an answer has begun, so callers bound it with `check()`'s thread
(strongswan/strongswan src/libcharon/plugins/vici/README.md: `version`). Whatever fails is a
"no" with the reason, never an exception. A "no" is *busy* when charon's socket is there but
the answer did not come in time (a timed-out connect means its listen backlog is full, the
vici plugin's accepting thread being starved), and *down* otherwise: no socket, refused, reset
or a protocol error, which a live charon never gives.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import NamedTuple


class ViciAnswer(NamedTuple):
    """One check's outcome: answered, or why not and whether charon was only slow (busy)."""

    ok: bool
    error: str | None = None
    busy: bool = False


def _ask(path: Path, timeout: float, out: dict[str, ViciAnswer]) -> None:
    import vici
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            vici.Session(sock).version()
    except Exception as exc:  # whatever fails, charon is not usable over vici
        text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        out["vici"] = ViciAnswer(False, f"{path}: {text or type(exc).__name__}",
                                 busy=isinstance(exc, TimeoutError))
    else:
        out["vici"] = ViciAnswer(True)


def check(path: Path, timeout: float) -> ViciAnswer:
    """Whether charon answered within `timeout` seconds, and if not, why."""
    out: dict[str, ViciAnswer] = {}
    worker = threading.Thread(target=_ask, args=(path, timeout, out), daemon=True)
    worker.start()
    worker.join(timeout + 0.1)
    return out.get("vici", ViciAnswer(False, f"{path}: no answer within {timeout} s", busy=True))
