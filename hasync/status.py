"""The daemon's answers to `hasync status`, `hasync health` and `hasync sas`, built from
snapshots.

Rules: the `*_answer` functions are pure: plain values in (journal copies taken under its lock,
Raft's status, counters, `now` and `wall`), a JSON-ready dict out, no secret (`hasync sas`
gets summaries, which hold none). `Answers` is the control socket's side: it reads the clock
once per request and takes the snapshots (the journal's under its lock), then calls them. The
shapes are those the CLI (views.py, health.py) and the lab read.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .node import REPORT_S
from .snapwriter import paused_gc

if TYPE_CHECKING:
    from .config import Config
    from .effects import Effects
    from .healthfile import HealthWriter
    from .node import NodeCore
    from .raft import ClusterJournal


# `hasync sas` pages (issue 17 finding 6): ~80 us of lock and ~1 KB of answer per IKE_SA,
# so a page holds the lock ~40 ms and stays far below control.MAX_RESPONSE (16 MiB)
SAS_PAGE = 500
SAS_PAGE_MAX = 5000
# A member that has not reported for three report periods is unreachable (clocks in sync: NTP)
STALE_REPORT_S = 3 * REPORT_S


@dataclass(frozen=True)
class JournalView:
    """What `hasync status` shows of the journal, copied under its lock."""

    ike_sas: int
    child_sas: int
    anomalies: dict[str, int]
    digest: str

    def as_dict(self) -> dict[str, Any]:
        """The "journal" section."""
        return dataclasses.asdict(self)


def members_answer(members: dict[str, dict[str, Any]], commit: int, wall: float,
                   me: str | None = None) -> dict[str, dict[str, Any]]:
    """Every member's last report with its lag behind `commit`, the report's age, and whether
    it is reachable: a member other than `me` whose last report is older than STALE_REPORT_S
    is not (a dead node's last report says what it was, not what it is)."""
    out = {}
    for name, m in sorted(members.items()):
        age = round(wall - m.get("ts", 0), 1)
        out[name] = {**m, "lag": max(0, commit - (m.get("applied") or 0)),
                     "report_age_s": age, "reachable": name == me or age <= STALE_REPORT_S}
    return out


def health_section(healthy: tuple[bool, list[str]], vici_busy: bool,
                   counters: dict[str, int], verdicts: dict[str, int] | None = None,
                   age_s: float | None = None) -> dict[str, Any]:
    """The "health" section: the last verdict, its age, verdicts so far by cause ("ok" or
    health.cause of each failed check) and how the checks went."""
    return {"healthy": healthy[0], "reasons": healthy[1], "vici_busy": vici_busy,
            "vici_busy_checks": counters.get("vici_busy", 0),
            "late_verdicts": counters.get("health_late", 0),
            "verdicts": dict(sorted((verdicts or {}).items())),
            "verdict_age_s": None if age_s is None else round(age_s, 2)}


def status_answer(*, node: str, cluster: str, core: dict[str, Any], raft: dict[str, Any],
                  journal: JournalView, members: dict[str, dict[str, Any]],
                  sections: dict[str, Any], counters: dict[str, int], uptime_s: float,
                  wall: float) -> dict[str, Any]:
    """`hasync status`: the node core's snapshot, Raft, the journal, every counter.

    `sections` holds the adapter's parts as they go out: "feed", "ha", "raft_apply",
    "takeover" and "health".
    """
    commit = raft.get("commit_index") or 0
    return {"node": node, "cluster": cluster, **core, "raft": raft,
            "members": members_answer(members, commit, wall, node),
            "lag": max(0, commit - (raft.get("applied_index") or 0)),
            "journal": journal.as_dict(), **sections, "counters": dict(counters),
            "uptime_s": round(uptime_s, 1)}


def health_answer(*, node: str, role: str, ha_rx_age_s: float | None, ha_timeout_s: float,
                  raft_joined: bool, raft_leader: str | None,
                  problems: list[str] | None = None) -> dict[str, Any]:
    """`hasync health`: what this daemon knows (health.py's `verdict` judges it); `problems`
    are the daemon's own failed conditions (quorum, guard, fence, sender)."""
    return {"node": node, "role": role, "ha_rx_age_s": ha_rx_age_s,
            "ha_timeout_s": ha_timeout_s, "raft_joined": raft_joined, "raft_leader": raft_leader,
            "problems": list(problems or [])}


def _no_problems(now: float) -> list[str]:
    return []


def sas_answer(summaries: list[Any], start: int = 0, total: int | None = None) -> dict[str, Any]:
    """`hasync sas`: one page of the journaled SAs' summaries (dataclasses without secrets),
    from position `start` of `total`; "next" is where the next page starts, None at the end."""
    total = len(summaries) if total is None else total
    end = start + len(summaries)
    return {"ike_sas": [dataclasses.asdict(s) for s in summaries], "total": total,
            "start": start, "next": end if end < total and summaries else None}


def sas_page(args: dict[str, Any]) -> tuple[int, int]:
    """(start, limit) of a `sas` request: "after" (default 0) and "limit" (default SAS_PAGE,
    at most SAS_PAGE_MAX); raise BadRequest("bad_args") otherwise."""
    from .control import BadRequest
    start, limit = args.get("after", 0), args.get("limit", SAS_PAGE)
    for name, value, low, high in (("after", start, 0, 2**62), ("limit", limit, 1, SAS_PAGE_MAX)):
        if type(value) is not int or not low <= value <= high:
            raise BadRequest("bad_args", f"sas: {name} must be an integer in {low}..{high}")
    return start, limit


@dataclass
class Answers:
    """The control socket's handlers: `status`, `health`, `sas`."""

    cfg: Config
    core: NodeCore
    journal: ClusterJournal
    fx: Effects
    healthfile: HealthWriter
    takeover: Callable[[], dict[str, Any]]
    started: float
    control: Callable[[], dict[str, int]] = dict  # the control server's counters, once it runs
    metrics: Callable[[], dict[str, int]] = dict  # the metrics endpoint's, if it runs
    problems: Callable[[float], list[str]] = _no_problems  # quorum, guard, fence, sender
    quorum: Callable[[float], dict[str, Any]] = lambda now: {}  # the probe's status
    gc: Callable[[], dict[str, Any]] = dict  # the collector's pauses (gcwatch.py)

    def handlers(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
        """For ControlServer."""
        return {"status": self.status, "health": self.health, "sas": self.sas}

    def status(self, args: dict[str, Any]) -> dict[str, Any]:
        """`hasync status`: this node, its Raft view, the journal and the counters."""
        now, wall, j, h, fx = time.monotonic(), time.time(), self.journal, self.healthfile, self.fx
        raft = j.status()
        with j.lock:  # the digest hashes every SA: a scrape (metrics.py) asks without it
            journal = JournalView(*j.state.counts(), dict(j.state.anomalies),
                                  j.state.digest() if args.get("digest", True) else "")
        sections = {"feed": {**fx.feed.counters, "queued": fx.feed.queued},
                    "ha": dict(fx.endpoint.counters), "raft_apply": dict(j.counters),
                    "raft_port": j.raft_port.snapshot(), "raft_files": j.disk_bytes(),
                    "takeover": self.takeover(), "control": self.control(),
                    "metrics": self.metrics(),
                    "quorum": self.quorum(now), "gc": self.gc(),
                    "health": health_section(
                        h.healthy, h.vici_busy, h.counters, h.verdicts,
                        None if h.judged_at is None else now - h.judged_at)}
        return status_answer(node=self.cfg.node.name, cluster=self.cfg.cluster.name,
                             core=self.core.snapshot(now), raft=raft, journal=journal,
                             members=j.members_view(), sections=sections,
                             counters={**self.core.counters, **fx.counters, **h.counters},
                             uptime_s=now - self.started, wall=wall)

    def health(self, args: dict[str, Any]) -> dict[str, Any]:
        """`hasync health`: what this daemon knows (charon's vici is checked by the CLI)."""
        return health_answer(node=self.cfg.node.name, role=self.core.role.role.value,
                             ha_rx_age_s=self.core.ha_rx_age(time.monotonic()),
                             ha_timeout_s=self.cfg.takeover.ha_timeout_ms / 1000,
                             raft_joined=self.core.raft_joined,
                             raft_leader=self.journal.status()["leader"],
                             problems=self.problems(time.monotonic()))

    def sas(self, args: dict[str, Any]) -> dict[str, Any]:
        """`hasync sas`: one page of the journaled SAs, without any secret. Only the page is
        summarized under the journal's lock (issue 17 finding 6), with the cyclic collector
        paused (snapwriter.paused_gc); pages are positions in creation order, so an SA added
        or deleted between pages can shift the next page."""
        start, limit = sas_page(args)
        with paused_gc():  # a page's objects would start full collections of the heap
            with self.journal.lock:
                total = self.journal.state.counts()[0]
                page = self.journal.state.summaries(time.time(), start, limit)
            return sas_answer(page, start, total)
