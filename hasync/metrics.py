"""Prometheus metrics: the numbers an operator alerts on, read from `hasync status`.

Rules:
- One source: every metric is computed from the status answer (status.py), the dict that
  `hasync status` prints, so the two never disagree; `families` is pure (a dict in, metric
  families out). `PromotionHistory` keeps the one thing a single answer cannot hold: the
  phases of every promotion this process saw, as histograms.
- Names follow Prometheus conventions (prometheus.io/docs/practices/naming): the `hasync_`
  prefix, base units (seconds, bytes), `_total` on counters, a state set as one gauge per
  state. Per-member labels are bounded by the cluster (2 to 7 nodes); reasons and causes by
  the code that names them.
- `MetricsServer` is the thin asyncio adapter: GET /metrics on the address [metrics] listen
  names (off by default); the scrape runs on the daemon's loop, so a stuck loop is a failed
  scrape, which Prometheus' own `up` shows.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

VRRP_STATES = ("joining", "backup", "master", "fault")  # role.Role values
PHASES = ("wait", "xfrm", "activate", "inbound", "total")  # promotion report: <phase>_ms
# Promotion phases run from ms (a backup already at its targets) to tens of seconds (a claim
# waiting for an election under load): buckets in seconds over that range
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# The classic text format, which every Prometheus 2 reads (hasync's names are plain ASCII, so
# prometheus_client's newer 1.0.0 text is the same bytes)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_REQUEST = 8192  # an HTTP request head longer than this is refused
REQUEST_TIMEOUT_S = 5.0


class PromotionHistory:
    """Every promotion seen in the status answers, its phases bucketed (histograms)."""

    def __init__(self) -> None:
        self.seen: float | None = None  # the last promotion's `started`, once observed
        self.counts = {p: [0] * len(BUCKETS) for p in PHASES}
        self.sums = dict.fromkeys(PHASES, 0.0)
        self.total = 0

    def observe(self, last: dict[str, Any] | None) -> None:
        """Take the guard's last promotion once it is done (each one once)."""
        if not last or not last.get("done") or last.get("started") == self.seen:
            return
        self.seen = last.get("started")
        self.total += 1
        for phase in PHASES:
            seconds = float(last.get(f"{phase}_ms") or 0.0) / 1000
            self.sums[phase] += seconds
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    self.counts[phase][i] += 1

    def family(self) -> HistogramMetricFamily:
        """hasync_promotion_phase_seconds{phase}."""
        h = HistogramMetricFamily("hasync_promotion_phase_seconds",
                                  "Promotions seen by this process: each phase's duration "
                                  "(wait: the claim and barrier; xfrm: the kernel's SAs; "
                                  "activate: charon's segments; total)", labels=["phase"])
        for phase in PHASES:
            buckets = [(str(b), c) for b, c in zip(BUCKETS, self.counts[phase], strict=True)]
            h.add_metric([phase], [*buckets, ("+Inf", self.total)], self.sums[phase])
        return h


def _num(value: Any) -> float:
    """A status value as a sample: numbers as they are, booleans 1/0, anything else 0."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    return float(value) if isinstance(value, int | float) else 0.0


GAUGE, COUNTER = GaugeMetricFamily, CounterMetricFamily
Kind = type[GaugeMetricFamily] | type[CounterMetricFamily]
# Metrics read straight from the status answer: (kind, name, help, path of keys, scale)
PLAIN: tuple[tuple[Kind, str, str, tuple[str, ...], float], ...] = (
    (GAUGE, "hasync_vrrp_state_seconds", "Time in the current VRRP state", ("role_since_s",), 1),
    (GAUGE, "hasync_charon_synced", "1 when the local charon holds the whole journal and "
     "follows it", ("synced",), 1),
    (GAUGE, "hasync_uptime_seconds", "Time since this hasync started", ("uptime_s",), 1),
    (GAUGE, "hasync_raft_term", "Raft term", ("raft", "term"), 1),
    (GAUGE, "hasync_raft_commit_index", "Raft commit index", ("raft", "commit_index"), 1),
    (GAUGE, "hasync_raft_applied_index", "Raft index applied here", ("raft", "applied_index"), 1),
    (GAUGE, "hasync_raft_commit_lag_entries", "Committed entries not yet applied here",
     ("lag",), 1),
    (GAUGE, "hasync_raft_log_entries", "Entries in the Raft log", ("raft", "log_len"), 1),
    (GAUGE, "hasync_commit_latency_seconds", "Latency of this node's HA batches into Raft "
     "(moving average)", ("commit_ms",), 1e-3),
    (COUNTER, "hasync_ha_datagrams_received", "HA datagrams received from charon",
     ("ha", "received"), 1),
    (COUNTER, "hasync_ha_datagrams_accepted", "HA datagrams accepted from charon",
     ("ha", "accepted"), 1),
    (COUNTER, "hasync_ha_datagrams_sent", "HA datagrams sent to charon", ("ha", "sent"), 1),
    (COUNTER, "hasync_ha_kernel_drops", "HA datagrams the kernel dropped (socket full)",
     ("ha", "kernel_drops"), 1),
    (COUNTER, "hasync_ha_datagrams_journaled", "HA datagrams committed into Raft",
     ("counters", "batch_messages"), 1),
    (COUNTER, "hasync_ha_datagrams_mirrored", "Journaled datagrams fed to the local charon",
     ("counters", "mirrored"), 1),
    (COUNTER, "hasync_replays", "Whole-journal replays into the local charon",
     ("counters", "replays"), 1),
    (GAUGE, "hasync_journal_ike_sas", "IKE_SAs in the journal", ("journal", "ike_sas"), 1),
    (GAUGE, "hasync_journal_child_sas", "CHILD_SAs in the journal", ("journal", "child_sas"), 1),
    (GAUGE, "hasync_guard_sas_tracked", "Outbound SAs the guard tracks",
     ("takeover", "tracker", "tracked"), 1),
    (COUNTER, "hasync_guard_mark_renewals", "Marks renewed (journaled) by the guard",
     ("takeover", "tracker", "renewals"), 1),
    (COUNTER, "hasync_guard_violations", "Times an SA's sequence number passed its mark",
     ("takeover", "tracker", "violations"), 1),
    (GAUGE, "hasync_fence_permits", "SAs the fence lets send", ("takeover", "fence", "permits"),
     1),
    (GAUGE, "hasync_fence_failing", "1 while the fence cannot be programmed",
     ("takeover", "fence", "failing"), 1),
    (GAUGE, "hasync_healthy", "1 when the last health verdict was ok", ("health", "healthy"), 1),
)
# Per member, from its last report: (name, help, value of the report)
MEMBER: tuple[tuple[str, str, Callable[[dict[str, Any]], Any]], ...] = (
    ("hasync_member_reachable", "1 when the member's last report is fresh",
     lambda r: r.get("reachable", True)),
    ("hasync_member_lag_entries", "Entries the member's last report lags behind the commit "
     "index", lambda r: r.get("lag")),
    ("hasync_member_report_age_seconds", "Age of the member's last report",
     lambda r: r.get("report_age_s")),
    ("hasync_member_vrrp_master", "1 when the member's last report said VRRP master",
     lambda r: r.get("vrrp") == "master"),
)


def _at(st: dict[str, Any], path: tuple[str, ...]) -> Any:
    """The value at `path` in the status answer (None where a section is missing)."""
    value: Any = st
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _one(kind: Kind, name: str, doc: str, value: Any) -> Metric:
    return kind(name, doc, value=_num(value))


def _labelled(kind: Kind, name: str, doc: str, label: str,
              values: Iterable[tuple[str, Any]]) -> Metric:
    family = kind(name, doc, labels=[label])
    for key, value in values:
        family.add_metric([str(key)], _num(value))
    return family


def node_families(st: dict[str, Any]) -> Iterator[Metric]:
    """Identity, VRRP state, Raft role and quorum, peers, members and files: the values that
    are not a plain read (PLAIN has those)."""
    info = GAUGE("hasync_info", "This hasync node (always 1)", labels=["node", "cluster"])
    info.add_metric([str(st.get("node")), str(st.get("cluster"))], 1.0)
    yield info
    role, raft = st.get("role"), st.get("raft") or {}
    yield _labelled(GAUGE, "hasync_vrrp_state", "keepalived's VRRP state for this node (1 for "
                    "the current one)", "state", ((s, s == role) for s in VRRP_STATES))
    yield _one(GAUGE, "hasync_raft_leader", "1 when this node leads Raft",
               raft.get("role") == "leader")
    yield _one(GAUGE, "hasync_raft_has_leader", "1 when this node knows a Raft leader",
               raft.get("leader") is not None)
    quorum = st.get("quorum") or {}
    if quorum:  # a half-started daemon has no probe yet: no sample rather than a false 0
        yield _one(GAUGE, "hasync_quorum", "1 while a Raft majority was heard within the limit",
                   quorum.get("ok"))
        yield _one(GAUGE, "hasync_quorum_heard_age_seconds",
                   "Time since a Raft majority was heard", quorum.get("age_s"))
    yield _labelled(GAUGE, "hasync_raft_peer_up", "1 when the Raft connection to the peer is up",
                    "peer", ((p, s == "connected")
                             for p, s in sorted((raft.get("peers") or {}).items())))
    members = sorted((st.get("members") or {}).items())
    for name, doc, value in MEMBER:
        yield _labelled(GAUGE, name, doc, "member", ((m, value(r)) for m, r in members))
    files = st.get("raft_files") or {}
    yield _labelled(GAUGE, "hasync_raft_file_bytes", "Raft's files on disk", "file",
                    (("journal", files.get("journal_bytes")),
                     ("snapshot", files.get("snapshot_bytes"))))


def counted_families(st: dict[str, Any]) -> Iterator[Metric]:
    """Counters by reason, kind or cause: drops, applied entries, health verdicts; fenced
    packets; the health verdict's age."""
    ha, counters = st.get("ha") or {}, st.get("counters") or {}
    drops = sorted((k.partition(":")[2] or k, v) for k, v in ha.items()
                   if k.startswith(("dropped", "send_refused")))
    drops += sorted((k.partition(":")[2] or "other", v) for k, v in counters.items()
                    if k.startswith("messages_dropped:"))
    yield _labelled(COUNTER, "hasync_ha_datagrams_dropped", "HA datagrams dropped, by reason",
                    "reason", drops)
    yield _labelled(COUNTER, "hasync_journal_entries_applied",
                    "Journal entries applied here, by kind", "kind",
                    sorted((k.removesuffix("_applied"), v)
                           for k, v in (st.get("raft_apply") or {}).items()
                           if k.endswith("_applied")))
    fenced = _at(st, ("takeover", "fence", "fenced")) or {}
    yield _one(COUNTER, "hasync_fence_dropped_packets", "ESP packets the kernel fence dropped",
               sum(v for v in fenced.values() if isinstance(v, int)))
    health = st.get("health") or {}
    age = health.get("verdict_age_s")
    yield _one(GAUGE, "hasync_health_verdict_age_seconds", "Age of the last health verdict",
               -1 if age is None else age)
    yield _labelled(COUNTER, "hasync_health_verdicts", "Health verdicts judged, by cause (ok, "
                    "or each failed check's cause)", "cause",
                    sorted((health.get("verdicts") or {}).items()))


def gc_families(st: dict[str, Any]) -> Iterator[Metric]:
    """The cyclic collector's work, per generation (gcwatch.py): a long pause holds the Raft
    thread too, and Raft's election timeout is counted in hundreds of milliseconds."""
    gc = st.get("gc") or {}
    for kind, name, doc, key, scale in (
            (COUNTER, "hasync_gc_collections", "Garbage collections, by generation",
             "collections", 1),
            (COUNTER, "hasync_gc_pause_seconds", "Time in garbage collections, by generation",
             "pause_s", 1),
            (GAUGE, "hasync_gc_pause_max_seconds", "The longest garbage collection pause so far, "
             "by generation", "max_pause_ms", 1e-3)):
        values = gc.get(key) or []
        yield _labelled(kind, name, doc, "generation",
                        ((str(g), _num(v) * scale) for g, v in enumerate(values)))


def promotion_families(st: dict[str, Any], history: PromotionHistory) -> Iterator[Metric]:
    """The last promotion and the histogram of every promotion's phases."""
    last = _at(st, ("takeover", "last_promotion"))
    history.observe(last)
    yield _one(COUNTER, "hasync_promotions", "Promotions this process completed", history.total)
    if last:
        yield _one(GAUGE, "hasync_last_promotion_timestamp_seconds",
                   "When the last promotion started (Unix time)", last.get("started"))
        yield _one(GAUGE, "hasync_last_promotion_duration_seconds",
                   "The last promotion's duration", _num(last.get("total_ms")) / 1000)
        yield _one(GAUGE, "hasync_last_promotion_claimed",
                   "1 when the last promotion's sender claim committed", last.get("claimed"))
        granted = last.get("granted_ms")
        yield _one(GAUGE, "hasync_last_promotion_granted_seconds",
                   "From the last promotion's start until the fence granted its term's first "
                   "marks, when outbound traffic flows again (-1: not yet)",
                   -1 if granted is None else _num(granted) / 1000)
    yield history.family()


# The label sets of the common strongSwan exporters' SA metrics (sergeymakinen/ipsec_exporter
# ipsec_ike_sa_*, ipsec_child_sa_*), less charon's `uid` (not in the HA stream), plus the
# SPIs, which keep two SAs of one connection and peer apart.
IKE_LABELS = ("name", "version", "local_host", "local_id", "remote_host", "remote_id", "vips",
              "ike_spis")
CHILD_LABELS = ("ike_sa_name", "name", "mode", "protocol", "spi_in", "spi_out", "ike_spis")
MODES = {1: "TRANSPORT", 2: "TUNNEL", 3: "BEET", 4: "PASS", 5: "DROP"}  # ipsec_types.h


def sa_families(page: dict[str, Any]) -> Iterator[Metric]:
    """Per-SA series from one `hasync sas` page (status.py sas_answer): each journaled IKE_SA
    and CHILD_SA with its age in the journal; whether the page left SAs out."""
    ike = GAUGE("hasync_ike_sa_journaled_seconds", "Age of a journaled IKE_SA",
                labels=list(IKE_LABELS))
    child = GAUGE("hasync_child_sa_journaled_seconds", "Age of a journaled CHILD_SA",
                  labels=list(CHILD_LABELS))
    sas = page.get("ike_sas") or []
    for sa in sas:
        spis = f"{sa.get('initiator_spi')}_i {sa.get('responder_spi')}_r"
        name = sa.get("config_name") or ""
        ike.add_metric([name, str(sa.get("ike_version")), sa.get("local_addr") or "",
                        sa.get("local_id") or "", sa.get("remote_addr") or "",
                        sa.get("remote_id") or "", ",".join(sa.get("remote_vips") or ()),
                        spis], _num(sa.get("age")))
        for c in sa.get("children") or ():
            child.add_metric([name, c.get("name") or "", MODES.get(c.get("mode"), ""), "esp",
                              c.get("inbound_spi") or "", c.get("outbound_spi") or "", spis],
                             _num(c.get("age")))
    yield ike
    yield child
    yield _one(GAUGE, "hasync_sa_series_truncated", "1 when [metrics] sas left journaled IKE_SAs "
               "out of the per-SA series", _num(page.get("total")) > len(sas))


def families(st: dict[str, Any], history: PromotionHistory) -> Iterator[Metric]:
    """Every metric of one status answer."""
    for kind, name, doc, path, scale in PLAIN:
        yield _one(kind, name, doc, _num(_at(st, path)) * scale)
    yield from node_families(st)
    yield from counted_families(st)
    yield from gc_families(st)
    yield from promotion_families(st, history)


class StatusCollector(Collector):
    """A prometheus_client collector over `status()` (the control answer) and, if given,
    `sas()` (a `hasync sas` page: the per-SA series)."""

    def __init__(self, status: Callable[[], dict[str, Any]],
                 sas: Callable[[], dict[str, Any]] | None = None) -> None:
        self.status, self.sas, self.history = status, sas, PromotionHistory()

    def collect(self) -> Iterator[Metric]:
        """One scrape: one status answer (and one page of SAs)."""
        yield from families(self.status(), self.history)
        if self.sas is not None:
            yield from sa_families(self.sas())


def registry_for(status: Callable[[], dict[str, Any]],
                 sas: Callable[[], dict[str, Any]] | None = None) -> CollectorRegistry:
    """A registry holding only hasync's collector (no process or platform collectors)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(status, sas))
    return registry


def response(request_head: bytes, registry: CollectorRegistry) -> bytes:
    """The HTTP/1.1 response to one request head (the request line and headers)."""
    line = request_head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return _http(400, "Bad Request", b"bad request\n")
    method, target = parts[0], parts[1].split("?", 1)[0]
    if target != "/metrics":
        return _http(404, "Not Found", b"hasync serves /metrics only\n")
    if method not in ("GET", "HEAD"):
        return _http(405, "Method Not Allowed", b"GET /metrics\n")
    body = generate_latest(registry)
    return _http(200, "OK", b"" if method == "HEAD" else body, CONTENT_TYPE, len(body))


def _http(code: int, reason: str, body: bytes, ctype: str = "text/plain; charset=utf-8",
          length: int | None = None) -> bytes:
    head = (f"HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\n"
            f"Connection: close\r\n\r\n")
    return head.encode("latin-1") + body


class MetricsServer:
    """GET /metrics over TCP on the daemon's loop; one request per connection."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry) -> None:
        self.host, self.port, self.registry = host, port, registry
        self.counters = {"scrapes": 0, "refused": 0, "errors": 0}
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        """Listen (an address in use is an OSError the daemon reports at startup)."""
        self.server = await asyncio.start_server(self._serve, self.host, self.port,
                                                 limit=MAX_REQUEST)

    async def close(self) -> None:
        """Stop listening."""
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
            out = response(head, self.registry)
            self.counters["scrapes" if out.startswith(b"HTTP/1.1 200") else "refused"] += 1
            writer.write(out)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ConnectionError):
            self.counters["refused"] += 1  # a client that sent no complete head, or left
        except Exception:
            self.counters["errors"] += 1
            log.exception("metrics: a scrape failed (counted under metrics.errors)")
        finally:
            writer.close()
