"""Tests of hasync.metrics: the Prometheus exposition of a status answer, the promotion
histogram, and the endpoint over real TCP. tests/data/status-master.json is a master's
`hasync status` from the lab's matrix run (after three failovers), with one member made stale.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hasync.ha import decode
from hasync.journal.state import JournalState
from hasync.metrics import (
    BUCKETS,
    CHILD_LABELS,
    IKE_LABELS,
    MetricsServer,
    PromotionHistory,
    registry_for,
    response,
    sa_families,
)
from hasync.status import sas_answer

from hastream import tunnels

STATUS = json.loads((Path(__file__).parent / "data" / "status-master.json").read_text())


def _samples(st: dict[str, Any], history: PromotionHistory | None = None
             ) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """name, labels -> value, as a scraper would parse the exposition."""
    registry = registry_for(lambda: st)
    if history is not None:  # share one history between scrapes
        collector = next(iter(registry._collector_to_names))  # type: ignore[attr-defined]
        collector.history = history
    text = response(b"GET /metrics HTTP/1.1\r\n\r\n", registry).split(b"\r\n\r\n", 1)[1]
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text.decode()) for s in fam.samples}


def test_a_masters_status_reads_as_the_numbers_an_operator_alerts_on() -> None:
    got = _samples(STATUS)
    assert all(name.startswith("hasync_") for name, _ in got)
    assert got[("hasync_vrrp_state", (("state", "master"),))] == 1
    assert got[("hasync_vrrp_state", (("state", "backup"),))] == 0
    assert got[("hasync_raft_leader", ())] == 0 and got[("hasync_raft_has_leader", ())] == 1
    assert got[("hasync_quorum", ())] == 1
    assert got[("hasync_raft_commit_lag_entries", ())] == STATUS["lag"]
    assert got[("hasync_member_reachable", (("member", "gw3"),))] == 0
    assert got[("hasync_member_reachable", (("member", "gw2"),))] == 1
    assert got[("hasync_journal_ike_sas", ())] == STATUS["journal"]["ike_sas"] == 8
    assert got[("hasync_ha_datagrams_received_total", ())] == STATUS["ha"]["received"]
    assert got[("hasync_raft_file_bytes", (("file", "journal"),))] == 1048576
    assert got[("hasync_guard_sas_tracked", ())] == STATUS["takeover"]["tracker"]["tracked"]
    assert got[("hasync_guard_violations_total", ())] == 0
    assert got[("hasync_fence_dropped_packets_total", ())] == 0
    assert got[("hasync_health_verdicts_total", (("cause", "charon_drift"),))] == 2
    assert got[("hasync_healthy", ())] == 1
    assert got[("hasync_last_promotion_duration_seconds", ())] == pytest.approx(0.8586)
    assert got[("hasync_last_promotion_granted_seconds", ())] == -1  # a report before D257
    assert got[("hasync_journal_entries_applied_total", (("kind", "batches"),))] == 67
    assert got[("hasync_info", (("cluster", "lab"), ("node", "gw1")))] == 1


def test_each_promotion_is_observed_once_in_the_histogram() -> None:
    history = PromotionHistory()
    first = _samples(STATUS, history)
    count = ("hasync_promotion_phase_seconds_count", (("phase", "wait"),))
    assert first[count] == 1 and first[("hasync_promotions_total", ())] == 1
    wait = STATUS["takeover"]["last_promotion"]["wait_ms"] / 1000
    le = next(b for b in BUCKETS if wait <= b)
    bucket = ("hasync_promotion_phase_seconds_bucket", (("le", str(le)), ("phase", "wait")))
    assert first[bucket] == 1
    assert _samples(STATUS, history)[count] == 1  # the same promotion scraped again
    later = copy.deepcopy(STATUS)
    later["takeover"]["last_promotion"].update(started=2e9, wait_ms=12000.0, done=True)
    again = _samples(later, history)
    assert again[count] == 2
    assert again[("hasync_promotion_phase_seconds_bucket", (("le", "10.0"), ("phase", "wait")))
                 ] == first[("hasync_promotion_phase_seconds_bucket",
                             (("le", "10.0"), ("phase", "wait")))]  # 12 s lies above 10
    unfinished = copy.deepcopy(later)
    unfinished["takeover"]["last_promotion"].update(started=3e9, done=False)
    assert _samples(unfinished, history)[count] == 2  # counted when it is done


def test_a_sparse_or_odd_status_still_exposes() -> None:
    """A witness-like or half-started answer: missing sections read as zeros, never raise."""
    for st in ({}, {"raft": None, "takeover": {"fence": {"fenced": {"x": "y"}}},
                    "health": {"verdict_age_s": None}, "members": {"a": {}}}):
        got = _samples(st)
        assert got[("hasync_healthy", ())] == 0
        assert got[("hasync_health_verdict_age_seconds", ())] == -1


def test_http_answers_only_get_metrics() -> None:
    registry = registry_for(lambda: STATUS)
    assert response(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n", registry).startswith(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4")
    head = response(b"HEAD /metrics HTTP/1.0\r\n\r\n", registry)
    assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")
    assert response(b"GET / HTTP/1.1\r\n\r\n", registry).startswith(b"HTTP/1.1 404")
    assert response(b"POST /metrics HTTP/1.1\r\n\r\n", registry).startswith(b"HTTP/1.1 405")
    assert response(b"\x16\x03\x01 junk\r\n\r\n", registry).startswith(b"HTTP/1.1 400")


async def _get(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    writer.write_eof()  # a request cut short ends here, not at the server's timeout
    data = await reader.read()
    writer.close()
    return data


def test_the_endpoint_serves_scrapes_and_counts_what_fails(
        caplog: pytest.LogCaptureFixture) -> None:
    broken = {"fail": False}

    def status() -> dict[str, Any]:
        if broken["fail"]:
            raise RuntimeError("status bug")
        return STATUS

    async def main() -> dict[str, int]:
        server = MetricsServer("127.0.0.1", 0, registry_for(status))
        await server.start()
        assert server.server is not None
        port = server.server.sockets[0].getsockname()[1]
        try:
            ok = await _get(port, b"GET /metrics HTTP/1.1\r\n\r\n")
            assert ok.startswith(b"HTTP/1.1 200") and b"hasync_vrrp_state" in ok
            assert (await _get(port, b"GET /x HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404")
            assert await _get(port, b"GET /metrics") == b""  # no complete head: closed
            broken["fail"] = True
            assert await _get(port, b"GET /metrics HTTP/1.1\r\n\r\n") == b""
            return dict(server.counters)
        finally:
            await server.close()

    with caplog.at_level(logging.ERROR, logger="hasync.metrics"):
        counters = asyncio.run(main())
    assert counters == {"scrapes": 1, "refused": 2, "errors": 1}
    (record,) = [r for r in caplog.records if "scrape failed" in r.getMessage()]
    assert record.exc_info is not None and "status bug" in str(record.exc_info[1])


def test_per_sa_series_carry_the_exporters_labels_and_say_when_truncated() -> None:
    state = JournalState()
    for raw in tunnels(3).datagrams:
        state.apply(raw, decode(raw), 1000.0)
    page = sas_answer(state.summaries(1010.0, 0, 2), 0, state.counts()[0])
    registry = registry_for(lambda: STATUS, lambda: page)
    text = response(b"GET /metrics HTTP/1.1\r\n\r\n", registry).split(b"\r\n\r\n", 1)[1]
    fams = {f.name: f for f in text_string_to_metric_families(text.decode())}
    ikes = fams["hasync_ike_sa_journaled_seconds"].samples
    children = fams["hasync_child_sa_journaled_seconds"].samples
    assert len(ikes) == 2 and len(children) == 2 and all(s.value == 10.0 for s in ikes)
    assert set(ikes[0].labels) == set(IKE_LABELS) and set(children[0].labels) == set(CHILD_LABELS)
    first = page["ike_sas"][0]
    assert ikes[0].labels["name"] == first["config_name"] == children[0].labels["ike_sa_name"]
    assert children[0].labels["mode"] == "TUNNEL" and children[0].labels["protocol"] == "esp"
    assert children[0].labels["spi_in"] == first["children"][0]["inbound_spi"]
    assert fams["hasync_sa_series_truncated"].samples[0].value == 1.0  # 2 of 3
    whole = sas_answer(state.summaries(1010.0), 0, 3)
    assert dict(next(f for f in sa_families(whole)
                     if f.name == "hasync_sa_series_truncated").samples[0]._asdict())[
        "value"] == 0.0


def test_the_grant_after_a_promotion_is_a_gauge() -> None:
    st = copy.deepcopy(STATUS)
    st["takeover"]["last_promotion"]["granted_ms"] = 1250.0
    assert _samples(st)[("hasync_last_promotion_granted_seconds", ())] == 1.25


def test_the_collectors_pauses_are_exported_per_generation() -> None:
    st = copy.deepcopy(STATUS)
    st["gc"] = {"collections": [120, 11, 2], "pause_s": [0.05, 0.02, 0.31],
                "max_pause_ms": [1.5, 4.0, 180.0]}
    got = _samples(st)
    assert got[("hasync_gc_collections_total", (("generation", "2"),))] == 2
    assert got[("hasync_gc_pause_seconds_total", (("generation", "0"),))] == pytest.approx(0.05)
    assert got[("hasync_gc_pause_max_seconds", (("generation", "2"),))] == pytest.approx(0.18)
    assert not any(name.startswith("hasync_gc_") for name, _ in _samples(STATUS))  # no section
