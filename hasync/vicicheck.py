"""Is charon answering over vici? One `version` request on charon's vici socket.

Rules: blocking, for a worker thread or a short-lived command; the vici package's reads block
without a timeout once an answer has begun, so callers bound it with `check()`'s thread
(strongswan/strongswan src/libcharon/plugins/vici/README.md: `version`). Whatever fails is a
"no" with the reason, never an exception.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path


def _ask(path: Path, timeout: float, out: dict[str, tuple[bool, str | None]]) -> None:
    import vici
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            vici.Session(sock).version()
    except Exception as exc:  # whatever fails, charon is not usable over vici
        text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        out["vici"] = (False, f"{path}: {text or type(exc).__name__}")
    else:
        out["vici"] = (True, None)


def check(path: Path, timeout: float) -> tuple[bool, str | None]:
    """(True, None) if charon answered within `timeout` seconds, else (False, why)."""
    out: dict[str, tuple[bool, str | None]] = {}
    worker = threading.Thread(target=_ask, args=(path, timeout, out), daemon=True)
    worker.start()
    worker.join(timeout + 0.1)
    return out.get("vici", (False, f"{path}: no answer within {timeout} s"))
