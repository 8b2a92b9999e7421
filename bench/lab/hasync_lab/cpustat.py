"""Where the lab's CPU goes: CPU time of each process the lab started, from /proc.

Rules: parsing and arithmetic are pure; `sample()` reads /proc once. A lab process is named
`node/what` (procs.Lab.spawn) and owns its session (start_new_session), so every descendant
counts toward it, the reaped ones through their parent's cutime and cstime. Fields: proc(5),
/proc/[pid]/stat: session is field 6, utime, stime, cutime and cstime are fields 14 to 17, in
clock ticks.
"""

from __future__ import annotations

import os
from pathlib import Path

from .procs import Lab

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def parse_stat(text: str) -> tuple[int, int]:
    """(session, utime + stime + cutime + cstime in ticks) of one /proc/[pid]/stat line."""
    rest = text[text.rindex(")") + 2:].split()  # comm may hold spaces and parentheses
    return int(rest[3]), sum(int(v) for v in rest[11:15])


def by_session(proc: Path = Path("/proc")) -> dict[int, int]:
    """CPU ticks of every live process, summed per session."""
    out: dict[int, int] = {}
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            sid, ticks = parse_stat((d / "stat").read_text())
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        out[sid] = out.get(sid, 0) + ticks
    return out


def sample(lab: Lab) -> dict[str, float]:
    """CPU seconds so far of each lab process (`node/what`), its children included."""
    sessions = by_session()
    out: dict[str, float] = {}
    for node, what, p in lab.procs:
        label = f"{node}/{what}"
        out[label] = out.get(label, 0.0) + sessions.get(p.pid, 0) / TICKS_PER_S
    return out


def shares(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    """Each process's share of one CPU between two samples `seconds` apart."""
    if seconds <= 0:
        return {}
    return {k: max(0.0, v - before.get(k, 0.0)) / seconds for k, v in after.items()}


def summary(share: dict[str, float], top: int = 8) -> str:
    """The busiest processes, e.g. "gw1/hasync 85%, c1/charon 40%"."""
    busy = sorted(share.items(), key=lambda kv: -kv[1])[:top]
    return ", ".join(f"{k} {v:.0%}" for k, v in busy if v >= 0.005) or "idle"
