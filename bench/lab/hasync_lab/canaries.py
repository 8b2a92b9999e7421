"""Canary tunnels: a few of the benchmark's tunnels probed fast beside the many slow ones, so
the outage is resolved at every tunnel count (issue 19, item 4).

Rules: pure (no IO). The canaries are the first `k` tunnels taken round robin over the
clients in plan order, so each client carries some. They are probed at `spec.canary_rate` by
a server of their own (its port is scenario.py's), the others at `spec.rate`; each client's
flows are split into two probeflows processes, one per rate, each with its flows file and
log (`stems`). Both servers log under the probe's one server name, into `srv.log` and
`srv-canary.log`: a tunnel talks to one server only, so read together they are one log.
"""

from __future__ import annotations

from collections.abc import Iterable

from .tunnels import Tunnel, by_client

SUFFIX = "-canary"  # a canary process's log and flows file: <client>-canary.*
SERVER_LOGS = ("srv", "srv" + SUFFIX)  # the two servers' log stems, read as one


def pick(tunnels: Iterable[Tunnel], k: int) -> frozenset[str]:
    """The names of the first `k` tunnels taken round robin over the clients."""
    lanes = list(by_client(tunnels).values())
    out: list[str] = []
    depth = 0
    while len(out) < k and any(depth < len(lane) for lane in lanes):
        out += [lane[depth].name for lane in lanes if depth < len(lane)][:k - len(out)]
        depth += 1
    return frozenset(out)


def stems(client: str, tunnels: list[Tunnel],
          canaries: frozenset[str]) -> list[tuple[str, bool, list[Tunnel]]]:
    """(log and flows stem, canary, its tunnels) of each probeflows process of `client`: the
    slow one, then the canaries' (a process only where it has tunnels)."""
    slow = [t for t in tunnels if t.name not in canaries]
    fast = [t for t in tunnels if t.name in canaries]
    return [(stem, canary, ts) for stem, canary, ts in
            ((client, False, slow), (client + SUFFIX, True, fast)) if ts]


def log_group(stem: str) -> str:
    """Which parsed log a probe log's lines go to: the servers' two are one."""
    return SERVER_LOGS[0] if stem in SERVER_LOGS else stem


def rate_of(name: str, canaries: frozenset[str], rate: float, canary_rate: float) -> float:
    """The probe rate of tunnel `name` (packets/s each way)."""
    return canary_rate if name in canaries else rate


__all__ = ["SERVER_LOGS", "SUFFIX", "log_group", "pick", "rate_of", "stems"]
