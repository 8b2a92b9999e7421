"""bench/failover.py without a lab: summary numbers, checks, markdown, and --from-json outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import failover  # noqa: E402
import failover_stats as stats  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _tunnel(name: str, outage: float, reest: bool = False, reuse: int = 0,
            skip: int | None = None) -> dict[str, Any]:
    return {"name": name, "nat": False, "outage_ms": outage, "lost_to_client": int(outage / 20),
            "lost_from_client": int(outage / 20), "reestablished": reest, "resumed": True,
            "replay_errors": 0, "seq_reuse": reuse, "seq_skipped": skip,
            "gaps_ms": [[-5.0, outage - 5.0]]}


def _result(mode: str, n: int, outages: list[list[float]], promo_ms: float = 0.0,
            with_master_down: bool = True, **tunnel: Any) -> dict[str, Any]:
    """A lab result: one failover per row of `outages`, one tunnel per value."""
    fos = []
    for k, row in enumerate(outages):
        fo: dict[str, Any] = {
            "from": "gw1", "to": "gw2", "fault": "kill", "vrrp_detect_ms": 1600.0 + k,
            "vip_moved": True,
            "clients": [_tunnel(f"c{i + 1}", o, **tunnel) for i, o in enumerate(row)],
            "promotion": None if mode == "baseline" else
            {"quorum": True, "wait_ms": promo_ms / 2, "xfrm_ms": promo_ms / 4,
             "activate_ms": promo_ms / 4, "total_ms": promo_ms}}
        if with_master_down:
            fo["master_down_ms"] = 1628.9
        fos.append(fo)
    return {"mode": mode, "runner": "vm", "kernel": "6.1.0-test", "advert_int": 0.5,
            "rate_pps": 50.0, "spec": {"fault": "kill", "tunnels": n}, "failovers": fos}


def _runs() -> list[dict[str, Any]]:
    """Two modes at N=3 and N=30 (only 3 tunnels reported at 30: it is a synthetic result)."""
    return [
        {"mode": "baseline", "tunnels": 3, "error": None, "result": _result(
            "baseline", 3, [[19000, 19100, 19200], [18000, 18100, 18200]], reest=True)},
        {"mode": "hasync", "tunnels": 3, "error": None, "result": _result(
            "hasync", 3, [[1700, 1720, 1740], [1650, 1660, 1800]], 30.0, skip=400)},
        {"mode": "baseline", "tunnels": 30, "error": None, "result": _result(
            "baseline", 30, [[19500, 19600, 19700]], with_master_down=False, reest=True)},
        {"mode": "hasync", "tunnels": 30, "error": None, "result": _result(
            "hasync", 30, [[1700, 1750, 2600], [1690, 1710, 1730]], 240.0, skip=900)},
    ]


def _group(summary: dict[str, Any], mode: str, n: int) -> dict[str, Any]:
    return next(g for g in summary["groups"] if g["mode"] == mode and g["tunnels"] == n)


def test_nearest_rank_percentile_is_a_measured_value() -> None:
    vals = [float(v) for v in range(1, 101)]
    assert stats.nearest_rank(vals, 99) == 99.0
    assert stats.nearest_rank(vals, 50) == 50.0
    assert stats.nearest_rank([5.0, 1.0, 3.0], 99) == 5.0
    assert stats.nearest_rank([7.0], 0) == 7.0
    assert stats.nearest_rank([], 99) is None


def test_master_down_interval() -> None:
    assert stats.master_down_ms(0.5, 190) == pytest.approx(1628.9, abs=0.05)
    assert stats.master_down_ms(1.0, 255) == pytest.approx(3003.9, abs=0.05)


def test_summary_numbers_per_mode_and_tunnel_count() -> None:
    s = stats.summarize(_runs())
    assert [(g["mode"], g["tunnels"]) for g in s["groups"]] == [
        ("baseline", 3), ("hasync", 3), ("baseline", 30), ("hasync", 30)]
    h30 = _group(s, "hasync", 30)
    assert h30["failovers"] == 2 and h30["samples"] == 6
    assert h30["outage_ms"] == {"median": 1720.0, "p99": 2600.0, "max": 2600.0}
    assert h30["reestablished"] == 0 and h30["seq_reuse"] == 0 and h30["seq_skipped_max"] == 900
    assert h30["promotion_total_ms"] == {"median": 240.0, "max": 240.0}
    assert h30["promotion_phases_median_ms"] == {"wait_ms": 120.0, "xfrm_ms": 60.0,
                                                 "activate_ms": 60.0}
    assert h30["vrrp_detect_ms"]["median"] == 1600.5
    assert h30["master_down_ms"]["max"] == 1628.9 and h30["master_down_source"] == ["lab"]
    b3 = _group(s, "baseline", 3)
    assert b3["reestablished"] == 6 and b3["promotion_total_ms"] is None
    assert b3["outage_ms"]["median"] == 18600.0 and b3["seq_skipped_max"] is None
    assert b3["lost_to_client"] == sum(int(o / 20) for o in
                                       (19000, 19100, 19200, 18000, 18100, 18200))


def test_master_down_falls_back_to_advert_int_and_says_so() -> None:
    b30 = _group(stats.summarize(_runs()), "baseline", 30)
    assert b30["master_down_ms"]["max"] == stats.master_down_ms(0.5, 190)
    assert "priority 190 assumed" in b30["master_down_source"][0]


def test_checks_pass_and_fail() -> None:
    s = stats.summarize(_runs())
    by = {(c["name"], c["tunnels"]): c for c in s["checks"]["items"]}
    assert by[("no re-establishment", 3)]["pass"] is True
    assert by[("no sequence-number reuse", 30)]["pass"] is True
    p99 = by[("p99 outage <= 1.5 x measured master-down", 3)]
    assert p99["pass"] is True and p99["limit"] == pytest.approx(2443.35, abs=0.1)
    assert by[("p99 outage <= 1.5 x measured master-down", 30)]["pass"] is False  # 2600 > 2443.4
    assert not any(c["mode"] == "baseline" for c in s["checks"]["items"])
    assert s["checks"]["pass"] is False


def test_promotion_scaling_fit_and_linear_check() -> None:
    sc = stats.summarize(_runs())["promotion_scaling"]
    assert sc["fit"]["slope_ms_per_tunnel"] == pytest.approx(210 / 27)
    assert sc["fit"]["intercept_ms"] == pytest.approx(30 - 3 * 210 / 27)
    assert sc["fit"]["r2"] == pytest.approx(1.0)
    assert sc["ratio"] == pytest.approx((240 / 30) / (30 / 3))  # 0.8: sublinear
    assert sc["pass"] is True and sc["exponent"] == pytest.approx(0.903, abs=0.001)
    quad = _runs()
    quad[3]["result"] = _result("hasync", 30, [[1700]], 3000.0)  # 10x N, 100x time
    sc = stats.summarize(quad)["promotion_scaling"]
    assert sc["ratio"] == pytest.approx(10.0) and sc["pass"] is False


def test_missing_fields_and_failed_runs_give_no_verdict() -> None:
    runs = _runs()[:2]
    for fo in runs[1]["result"]["failovers"]:
        for c in fo["clients"]:
            del c["gaps_ms"], c["seq_reuse"]
    runs.append({"mode": "hasync", "tunnels": 30, "error": "LabError: boom", "result": None})
    s = stats.summarize(runs)
    assert all(t["gaps_ms"] == [] for r in stats.run_records(runs[1]) for t in r["clients"])
    by = {(c["name"], c["tunnels"]): c["pass"] for c in s["checks"]["items"]}
    assert by[("no sequence-number reuse", 3)] is None
    assert by[("no re-establishment", 30)] is None
    assert by[("promotion grows at most linearly", None)] is None
    assert _group(s, "hasync", 30)["error"] == "LabError: boom"
    assert s["checks"]["pass"] is False


def test_markdown_rendering_and_section_replacement() -> None:
    s = stats.summarize(_runs(), {"cpus": 2, "cpu_model": "Test CPU", "memory": "24 GiB",
                                  "platform": "Linux-test", "vm": {"cpus": 2, "memory": "3G"}})
    md = failover.render_markdown(s)
    rows = [line for line in md.splitlines() if line.startswith("| hasync |")]
    assert len(rows) == 2 and rows[1].startswith(
        "| hasync | 30 | 2 | 6 | 1720 | 2600 | - | 0 | 0 |")  # no canaries: "-"
    assert "runner vm" in md and "kernel 6.1.0-test" in md and "advert_int 0.5 s" in md
    assert "VM 2 vCPUs, 3G" in md and "Test CPU" in md
    assert "FAIL  hasync N=30: p99 outage" in md
    assert "](../bench/results/failover_outage_cdf.png)" in md
    doc = f"intro\n{failover.BEGIN}\nold table\n{failover.END}\nafter\n"
    new = failover.replace_results(doc, md)
    assert "old table" not in new and new.startswith("intro\n") and new.endswith("after\n")
    assert failover.replace_results(new, md) == new
    with pytest.raises(ValueError):
        failover.replace_results("no markers", md)


def test_progress_line() -> None:
    line = failover.progress_line(2, 8, "hasync N=100", 600.0)
    assert line == "[#####...............] 2/8 hasync N=100  elapsed 10m00s  ETA 30m00s"
    assert "ETA ?" in failover.progress_line(0, 8, "baseline N=10", 3.0)


def test_from_json_writes_json_plots_and_markdown(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    saved = tmp_path / "in.json"
    saved.write_text(json.dumps({"params": {"tunnels": [3, 30]}, "machine": {"cpus": 2},
                                 "runs": _runs()}))
    doc = tmp_path / "docs" / "benchmarks.md"
    doc.parent.mkdir()
    doc.write_text(f"# B\n{failover.BEGIN}\n{failover.END}\n")
    out, plots = tmp_path / "out.json", tmp_path / "plots"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "failover.py"), "--from-json",
                           str(saved), "--json", str(out), "--plots", str(plots),
                           "--markdown", str(doc)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "overall: FAIL" in proc.stdout
    res = json.loads(out.read_text())
    assert len(res["runs"]) == 4 and len(res["records"]) == 7
    assert res["runs"][1]["result"]["failovers"][0]["clients"][0]["gaps_ms"] == [[-5.0, 1695.0]]
    for name in ("failover_outage_cdf.png", "failover_timeline.png", "failover_promotion.png"):
        data = (plots / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000
        assert f"](../plots/{name})" in doc.read_text()


def test_dpd_keeps_the_lab_s_delay_until_the_tunnels_would_exceed_its_budget() -> None:
    assert [failover.dpd_for(n) for n in (1, 10, 100, 101, 1000)] == [10, 10, 10, 11, 100]
    spec = failover.lab_spec("hasync", 1000, 1, None)
    assert spec.timers.dpd_delay_s == 100 and spec.timers.advert_int_s == 0.5


def test_default_rate_shares_a_budget_and_an_explicit_rate_wins() -> None:
    assert failover.rate_for(10, None) == 20.0
    assert failover.rate_for(100, None) == 2.0
    assert failover.rate_for(1000, None) == 0.2
    assert failover.rate_for(1000, 5.0) == 5.0
    a = failover.parse_args(["--tunnels", "100,10", "--modes", "hasync"])
    assert a.tunnels == [10, 100] and a.modes == ["hasync"] and a.rate is None


def test_canaries_take_their_rate_out_of_the_budget_first() -> None:
    assert failover.rate_for(10, None, 3) == 20.0  # 140 left for 7: capped at 20
    assert failover.rate_for(100, None, 3) == round(140 / 97, 2)
    assert failover.rate_for(1000, None, 3) == round(140 / 997, 2)
    assert failover.rate_for(3, None, 3) == 20.0  # every tunnel a canary
    spec = failover.lab_spec("hasync", 1000, 1, None, 3)
    assert (spec.canaries, spec.canary_rate, spec.rate) == (3, 20.0, 0.14)
    assert failover.lab_spec("hasync", 2, 1, None, 3).canaries == 2
    assert failover.parse_args([]).canaries == failover.CANARIES == 3
    with pytest.raises(SystemExit):
        failover.parse_args(["--canaries", "10"])  # 10 x 20 leaves nothing for the rest


def test_the_canaries_give_the_outage_a_verdict_where_the_slow_probes_cannot() -> None:
    runs = _runs()
    res = runs[3]["result"]
    res["rate_pps"] = 0.2  # the slow tunnels: one probe every 5 s against a 2443 ms limit
    for fo in res["failovers"]:
        fo["clients"][0].update(canary=True, probe_pps=20.0)  # one canary per failover
        for t in fo["clients"][1:]:
            t["probe_pps"] = 0.2
    s = stats.summarize(runs)
    g = _group(s, "hasync", 30)
    assert g["canaries"]["samples"] == 2 and g["canaries"]["probe_interval_ms"] == 50.0
    assert g["canaries"]["outage_ms"]["p99"] == 1700.0  # the canaries' worst: 1700, 1690
    by = {(c["name"], c["tunnels"]): c for c in s["checks"]["items"]}
    check = by[("p99 outage (canaries) <= 1.5 x measured master-down", 30)]
    assert check["pass"] is True and check["value"] == 1700.0
    res["failovers"][1]["clients"][0]["outage_ms"] = 2500.0  # a canary over the 2443 ms limit
    by = {(c["name"], c["tunnels"]): c for c in stats.summarize(runs)["checks"]["items"]}
    assert by[("p99 outage (canaries) <= 1.5 x measured master-down", 30)]["pass"] is False
    md = failover.render_markdown(stats.summarize(runs))
    assert "| hasync | 30 | 2 | 6 | 1740 | 2600 | 2500 |" in md


def test_the_work_after_the_barrier_is_fitted_apart() -> None:
    sc = stats.summarize(_runs())["promotion_scaling"]
    after = sc["after_barrier"]["fit"]  # xfrm + activate: half of the total in _result
    assert after["slope_ms_per_tunnel"] == pytest.approx(105 / 27)
    assert after["points"] == 4
    assert any(line.startswith("after the barrier (xfrm + activate): ")
               for line in failover.check_lines(stats.summarize(_runs())))


def test_outage_check_has_no_verdict_when_probes_are_too_sparse() -> None:
    runs = _runs()
    runs[3]["result"]["rate_pps"] = 0.2  # one probe every 5 s against a 2443 ms limit
    s = stats.summarize(runs)
    g = _group(s, "hasync", 30)
    assert g["probe_interval_ms"] == 5000.0
    by = {(c["name"], c["tunnels"]): c["pass"] for c in s["checks"]["items"]}
    assert by[("p99 outage <= 1.5 x measured master-down", 30)] is None
    assert s["checks"]["no_verdict"] == 1 and s["checks"]["pass"] is True
    assert "1 check without verdict" in failover.check_lines(s)[-1]


def test_a_failed_lab_run_fails_the_benchmark_and_configured_interval_is_a_fallback() -> None:
    runs = _runs()
    for fo in runs[1]["result"]["failovers"]:
        fo["master_down_config_ms"], fo["master_down_ms"] = 1650.0, None
    runs[2]["error"] = "LabError: the VM did not finish"
    s = stats.summarize(runs)
    assert _group(s, "hasync", 3)["master_down_ms"]["median"] == 1650.0
    assert "configured" in _group(s, "hasync", 3)["master_down_source"][0]
    failed = [c for c in s["checks"]["items"] if c["name"] == "lab run completed"]
    assert [(c["mode"], c["tunnels"], c["pass"]) for c in failed] == [("baseline", 30, False)]
    assert s["checks"]["pass"] is False

def test_merge_keeps_the_saved_runs_not_run_again(tmp_path: Path) -> None:
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps({"runs": _runs()}))
    kept = failover.kept_runs(saved, [("hasync", 30), ("hasync", 1000)])
    assert [(r["mode"], r["tunnels"]) for r in kept] == [
        ("baseline", 3), ("hasync", 3), ("baseline", 30)]
    assert failover.kept_runs(None, [("hasync", 3)]) == []

# ---- the smallest case on the real lab (conftest.bench_smoke): shape and outputs, no timings
# (make test-lab-extended since issue 18: `make test` gave its time to the matrix lab runs)

@pytest.mark.lab
@pytest.mark.lab_extended
def test_smoke_json_has_every_raw_number_and_a_summary(bench_smoke: dict[str, Any]) -> None:
    doc = bench_smoke["doc"]
    assert [(r["mode"], r["tunnels"], r["error"]) for r in doc["runs"]] == [
        ("baseline", 3, None), ("hasync", 3, None)]
    recs = doc["records"]
    assert [(r["mode"], r["index"]) for r in recs] == [("baseline", 0), ("hasync", 0)]
    for r in recs:
        assert r["vrrp_detect_ms"] > 0 and r["master_down_ms"] > 0
        assert r["master_down_source"] == "lab"
        assert [t["name"] for t in r["clients"]] == ["t0001", "t0002", "t0003"]
        for t in r["clients"]:
            for key in ("outage_ms", "lost_to_client", "lost_from_client", "replay_errors",
                        "seq_reuse"):
                assert isinstance(t[key], int | float), (key, t)
            assert t["outage_ms"] > 0, t  # the master was killed with traffic flowing
            assert t["seq_reuse"] == 0, t  # neither mode sends a sequence number twice
            # a packet the client dropped as a replay is a packet lost
            assert t["replay_errors"] <= t["lost_to_client"] + t["lost_from_client"], t
            assert isinstance(t["reestablished"], bool) and isinstance(t["gaps_ms"], list)
    hasync = recs[1]
    assert set(hasync["promotion"]) == {"wait_ms", "xfrm_ms", "activate_ms", "total_ms"}
    assert hasync["promotion"]["total_ms"] > 0 and hasync["promotion_start_source"] == "lab"
    assert all(t["seq_skipped"] is not None for t in hasync["clients"])
    groups = doc["summary"]["groups"]
    assert [(g["mode"], g["tunnels"], g["samples"]) for g in groups] == [
        ("baseline", 3, 3), ("hasync", 3, 3)]
    for g in groups:
        assert g["outage_ms"]["median"] is not None and g["outage_ms"]["p99"] is not None
    assert {c["name"] for c in doc["summary"]["checks"]["items"]} >= {
        "no re-establishment", "no sequence-number reuse"}
    assert doc["params"]["tunnels"] == [3] and doc["summary"]["conditions"]["kernel"]


@pytest.mark.lab
@pytest.mark.lab_extended
def test_smoke_prints_a_table_and_draws_three_plots(bench_smoke: dict[str, Any]) -> None:
    out = bench_smoke["stdout"]
    assert "outage p50" in out and "overall:" in out
    for name in ("failover_outage_cdf.png", "failover_timeline.png",
                 "failover_promotion.png"):
        png = bench_smoke["plots"] / name
        assert png.read_bytes()[:8] == PNG_MAGIC, png
        assert f"plot: {png}" in out
    assert "[" in bench_smoke["stderr"] and "ETA" in bench_smoke["stderr"]  # the progress bar


@pytest.mark.parametrize(("error", "traceback_shown"), [
    (KeyError("spec"), True),  # a bug: its traceback is printed, the other runs still run
    ("lab", False),  # the lab's own one-line error: the message is enough
])
def test_a_failed_run_is_recorded_and_a_bug_shows_its_traceback(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path,
        error: Exception | str, traceback_shown: bool) -> None:
    from hasync_lab import prereq, runner
    exc = prereq.LabError("charon did not start") if error == "lab" else error

    def fail(*args: Any) -> dict[str, object]:
        raise exc  # type: ignore[misc]

    monkeypatch.setattr(runner, "run_task", fail)
    a = failover.parse_args(["--lab-out", str(tmp_path)])
    doc = failover.one_run("hasync", 3, a)
    assert doc["result"] is None and doc["error"] == f"{type(exc).__name__}: {exc}"
    assert ("Traceback" in capsys.readouterr().err) is traceback_shown
