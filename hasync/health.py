"""`hasync health`'s verdict: is this node fit to hold the VIP?

Rules: pure (no IO, no clock; imports only math, re and typing), so that the command keepalived
runs every second stays cheap; the daemon's answer to the control command "health" is
untrusted input: a missing or mistyped field is a failed check with its reason, never an
exception; one short reason per failed check, in a fixed order (vici, control, HA stream,
Raft, then the daemon's own `problems`: a lost Raft majority, the sequence guard, the fence,
VRRP master without being the sender); a witness has no charon, so only its problems and
Raft count; a *busy* charon (its vici socket there but
slow to answer) is not a failed check while its HA stream is fresh, which proves it alive and
working: only a dead or hung charon fails (docs/decisions.md, Health).

The daemon's answer:
    {"node": str, "role": "joining|backup|master|fault|witness", "ha_rx_age_s": float | None,
     "ha_timeout_s": float, "raft_joined": bool, "raft_leader": str | None,
     "problems": [str, ...]}
"""

from __future__ import annotations

import math
import re
from typing import Any

# The fixed reasons' causes, by their opening words; a problem named `word: ...` (or just
# `word`) is its own cause: the label set of `hasync_health_verdicts_total` stays small.
_CAUSES = (("charon does not answer over vici", "vici"),
           ("hasync does not answer on its control socket", "control"),
           ("no HA datagram", "ha_stream"), ("hasync's health answer", "bad_answer"),
           ("not yet caught up with the Raft journal", "raft_catchup"),
           ("no Raft majority", "quorum"))
_NAMED = re.compile(r"([a-z][a-z0-9_]{1,40})(?::|$)")


def _seconds(value: Any) -> float | None:
    """`value` as a finite, non-negative number of seconds, or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return float(value)


def _ha_reason(resp: dict[str, Any]) -> str | None:
    """Why the local charon's HA stream is unhealthy, or None."""
    limit = _seconds(resp.get("ha_timeout_s"))
    if limit is None:
        return "hasync's health answer has no valid ha_timeout_s"
    age = resp.get("ha_rx_age_s")
    if age is None:
        return "no HA datagram from charon since hasync started"
    seconds = _seconds(age)
    if seconds is None:
        return "hasync's health answer has no valid ha_rx_age_s"
    if seconds > limit:
        return f"no HA datagram from charon for {seconds:.1f} s (limit {limit:.1f} s)"
    return None


def verdict(resp: dict[str, Any] | None, vici_ok: bool, vici_error: str | None, *,
            vici_busy: bool = False, control_error: str | None = None) -> tuple[bool, list[str]]:
    """(healthy, reasons) from the daemon's "health" answer and the vici check."""
    reasons: list[str] = []
    if isinstance(resp, dict) and resp.get("role") == "witness":
        return _witness(resp)
    ha = _ha_reason(resp) if isinstance(resp, dict) else None
    if not vici_ok and not (vici_busy and isinstance(resp, dict) and ha is None):
        reasons.append(f"charon does not answer over vici ({vici_error or 'no reason given'})")
    if not isinstance(resp, dict):
        detail = f": {control_error}" if control_error else ""
        reasons.append(f"hasync does not answer on its control socket{detail}")
        return False, reasons
    if ha is not None:
        reasons.append(ha)
    if resp.get("raft_joined") is not True:
        reasons.append("not yet caught up with the Raft journal")
    reasons.extend(_problems(resp))
    return not reasons, reasons


def cause(reason: str) -> str:
    """A reason's cause, a short name for metrics ("other" when it names none)."""
    for opening, name in _CAUSES:
        if reason.startswith(opening):
            return name
    m = _NAMED.match(reason)
    return m[1] if m else "other"


def _problems(resp: dict[str, Any]) -> list[str]:
    """The daemon's own failed conditions (quorum, guard, fence, sender), as it names them."""
    problems = resp.get("problems", [])
    if not isinstance(problems, list) or not all(isinstance(p, str) for p in problems):
        return ["hasync's health answer has no valid problems list"]
    return [p[:200] for p in problems]


def _witness(resp: dict[str, Any]) -> tuple[bool, list[str]]:
    """A witness is healthy while it has caught up and hears a majority."""
    reasons = [] if resp.get("raft_joined") is True else [
        "not yet caught up with the Raft journal"]
    reasons.extend(_problems(resp))
    return not reasons, reasons
