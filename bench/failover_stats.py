"""Failover benchmark numbers: lab results in, per-failover records, a summary and checks out.

Rules: pure (documents in, documents out, no I/O, no clock); every field of a lab result is
read with .get, and a missing one stays missing (None, or [] for gaps_ms), never becomes 0;
percentiles are nearest-rank: the p-th of n sorted values is the ceil(p/100 x n)-th (1-based),
always a measured value; times are ms, relative to the fault; checks report pass (True),
fail (False) or no verdict (None), they never raise.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from hasync_lab.failover import master_down_ms  # RFC 5798 6.1, as the lab computes it

MODES = ("baseline", "hasync")
PHASES = ("wait_ms", "xfrm_ms", "activate_ms")
TUNNEL_FIELDS = ("outage_ms", "lost_to_client", "lost_from_client", "reestablished",
                 "replay_errors", "replay_errors_gw", "seq_reuse", "seq_skipped")
FALLBACK_PRIORITY = 190  # gw2, the lab's first new master (scenario.py: 200 - 10 x k + 10)
OUTAGE_FACTOR = 1.5  # hasync: p99 outage at most this many master-down intervals, as measured
#                     (median over the row: old master's last advert -> new MASTER; decisions.md)
RESOLUTION_SHARE = 0.25  # the outage check needs a probe interval of at most this x its limit
LINEAR_FACTOR = 1.5  # promotion: per-tunnel time at the largest N at most this x the smallest

Doc = dict[str, Any]


def nearest_rank(values: list[float], p: float) -> float | None:
    """The nearest-rank p-th percentile of `values` (None when empty)."""
    if not values:
        return None
    s = sorted(values)
    return s[max(1, math.ceil(p / 100 * len(s))) - 1]


def median(values: list[float]) -> float | None:
    """The median of `values` (None when empty)."""
    return statistics.median(values) if values else None


def advert_int_of(result: Doc) -> float | None:
    """The VRRP advertisement interval (s) of a lab result."""
    adv = result.get("advert_int")
    if adv is None:
        adv = (result.get("timers") or {}).get("advert_int_s")
    return float(adv) if adv is not None else None


def _master_down(fo: Doc, result: Doc) -> tuple[float | None, str]:
    """(master-down ms, where it came from) for one failover."""
    if fo.get("master_down_ms") is not None:
        return float(fo["master_down_ms"]), "lab"
    if fo.get("master_down_config_ms") is not None:
        return (float(fo["master_down_config_ms"]),
                "lab's configured interval (no advertisement heard before the fault)")
    adv = advert_int_of(result)
    if adv is None:
        return None, "unknown: the lab result has neither master_down_ms nor advert_int"
    return (master_down_ms(adv, FALLBACK_PRIORITY),
            f"computed from advert_int with priority {FALLBACK_PRIORITY} assumed "
            "(no master_down_ms in the lab result)")


def tunnel_record(c: Doc) -> Doc:
    """One tunnel's numbers in one failover (`canary`: probed fast, hasync_lab.canaries)."""
    out = {"name": c.get("name"), "canary": bool(c.get("canary")),
           "probe_pps": c.get("probe_pps"), **{k: c.get(k) for k in TUNNEL_FIELDS}}
    out["gaps_ms"] = [[float(a), float(b)] for a, b in (c.get("gaps_ms") or [])]
    return out


def promotion_record(p: object) -> Doc | None:
    """The promotion phases of a hasync failover (None in baseline or when absent)."""
    if not isinstance(p, dict):
        return None
    return {k: p.get(k) for k in (*PHASES, "total_ms")}


def failover_record(mode: str, n: int, k: int, fo: Doc, result: Doc) -> Doc:
    """Everything the benchmark reads from failover `k` of a lab run at `n` tunnels."""
    md, md_src = _master_down(fo, result)
    start, start_src = fo.get("promotion_start_ms"), "lab"
    if start is None:
        start, start_src = fo.get("vrrp_detect_ms"), "vrrp_detect_ms (no promotion_start_ms)"
    return {"mode": mode, "tunnels": n, "index": k, "from": fo.get("from"), "to": fo.get("to"),
            "rate_pps": result.get("rate_pps"), "vrrp_detect_ms": fo.get("vrrp_detect_ms"),
            "master_down_ms": md, "master_down_config_ms": fo.get("master_down_config_ms"),
            "master_down_source": md_src, "promotion": promotion_record(fo.get("promotion")),
            "promotion_start_ms": start, "promotion_start_source": start_src,
            "clients": [tunnel_record(c) for c in fo.get("clients") or []
                        if isinstance(c, dict)]}


def run_records(run: Doc) -> list[Doc]:
    """The failover records of one benchmark run ({mode, tunnels, result, error})."""
    result = run.get("result")
    if not isinstance(result, dict):
        return []
    return [failover_record(run["mode"], run["tunnels"], k, fo, result)
            for k, fo in enumerate(result.get("failovers") or []) if isinstance(fo, dict)]


def _values(tunnels: list[Doc], key: str) -> list[Any]:
    """The present values of `key` over `tunnels`."""
    return [t[key] for t in tunnels if t.get(key) is not None]


def _stat(values: list[float]) -> Doc:
    """Median and max of `values`."""
    return {"median": median(values), "max": max(values) if values else None}



def group_summary(mode: str, n: int, records: list[Doc], error: str | None = None) -> Doc:
    """The summary of every failover of one mode at one tunnel count."""
    tunnels = [t for r in records for t in r["clients"]]
    outages = _values(tunnels, "outage_ms")
    fast = [t for t in tunnels if t.get("canary")]
    fast_outages, fast_rates = _values(fast, "outage_ms"), _values(fast, "probe_pps")
    skips = _values(tunnels, "seq_skipped")
    promos = [r["promotion"] for r in records if r["promotion"]]
    totals = [p["total_ms"] for p in promos if p.get("total_ms") is not None]
    downs = [r["master_down_ms"] for r in records if r["master_down_ms"] is not None]
    rates = [float(r["rate_pps"]) for r in records if r.get("rate_pps")]
    return {
        "mode": mode, "tunnels": n, "error": error, "failovers": len(records),
        "samples": len(tunnels), "tunnels_measured": sorted({len(r["clients"]) for r in records}),
        "outage_ms": {"median": median(outages), "p99": nearest_rank(outages, 99),
                      "max": max(outages) if outages else None},
        "reestablished": sum(1 for t in tunnels if t.get("reestablished")),
        "seq_reuse": sum(_values(tunnels, "seq_reuse")),
        "replay_errors": sum(_values(tunnels, "replay_errors")),  # on the clients (downstream)
        "replay_errors_gw": sum(_values(tunnels, "replay_errors_gw")),  # on the new master
        "lost_to_client": sum(_values(tunnels, "lost_to_client")),
        "lost_from_client": sum(_values(tunnels, "lost_from_client")),
        "missing": {k: sum(1 for t in tunnels if t.get(k) is None) for k in TUNNEL_FIELDS},
        "seq_skipped_max": max(skips) if skips else None,
        "promotion_total_ms": _stat(totals) if promos else None,
        "promotion_phases_median_ms": {ph: median([p[ph] for p in promos
                                                   if p.get(ph) is not None])
                                       for ph in PHASES} if promos else None,
        "vrrp_detect_ms": _stat(_values(records, "vrrp_detect_ms")),
        "probe_interval_ms": round(1000 / min(rates), 1) if rates else None,
        "canaries": {"samples": len(fast),
                     "outage_ms": {"median": median(fast_outages),
                                   "p99": nearest_rank(fast_outages, 99),
                                   "max": max(fast_outages) if fast_outages else None},
                     "probe_interval_ms": round(1000 / min(fast_rates), 1) if fast_rates
                     else None},
        "master_down_ms": _stat(downs),
        "master_down_source": sorted({r["master_down_source"] for r in records}),
    }


def linear_fit(points: list[tuple[float, float]]) -> Doc | None:
    """Least-squares y = intercept + slope x, with r^2 (None below two distinct x)."""
    if len({x for x, _ in points}) < 2:
        return None
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    sxy = sum((x - mx) * (y - my) for x, y in points)
    slope = sxy / sxx
    intercept = my - slope * mx
    ss_tot = sum((y - my) ** 2 for _, y in points)
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in points)
    return {"slope_ms_per_tunnel": slope, "intercept_ms": intercept,
            "r2": 1 - ss_res / ss_tot if ss_tot else 1.0, "points": n}


def promotion_scaling(records: list[Doc]) -> Doc:
    """hasync's promotion time against the tunnel count: a linear fit and the growth check."""
    pts = [(float(r["tunnels"]), float(r["promotion"]["total_ms"])) for r in records
           if r["mode"] == "hasync" and r["promotion"]
           and r["promotion"].get("total_ms") is not None]
    ns = sorted({int(x) for x, _ in pts})
    per_n = [{"tunnels": n, "median_total_ms": median([y for x, y in pts if x == n])}
             for n in ns]
    for row in per_n:
        row["per_tunnel_ms"] = row["median_total_ms"] / row["tunnels"]
    after = [(float(r["tunnels"]), float(r["promotion"]["xfrm_ms"])
              + float(r["promotion"].get("activate_ms") or 0.0)) for r in records
             if r["mode"] == "hasync" and r["promotion"]
             and r["promotion"].get("xfrm_ms") is not None]
    out: Doc = {"points": [list(p) for p in pts], "per_n": per_n, "fit": linear_fit(pts),
                # the work after the barrier (kernel, charon): issue 19 asks it flat in N
                "after_barrier": {"points": [list(p) for p in after],
                                  "fit": linear_fit(after)},
                "factor": LINEAR_FACTOR, "ratio": None, "exponent": None, "pass": None}
    if len(ns) < 2:
        out["detail"] = "needs promotions at two tunnel counts at least"
        return out
    lo, hi = per_n[0], per_n[-1]
    if lo["per_tunnel_ms"] > 0:
        out["ratio"] = hi["per_tunnel_ms"] / lo["per_tunnel_ms"]
        out["pass"] = out["ratio"] <= LINEAR_FACTOR
    if lo["median_total_ms"] > 0 and hi["median_total_ms"] > 0:
        out["exponent"] = (math.log(hi["median_total_ms"] / lo["median_total_ms"])
                           / math.log(hi["tunnels"] / lo["tunnels"]))
    out["detail"] = (f"per-tunnel promotion time (median total / N) at N={hi['tunnels']} "
                     f"at most {LINEAR_FACTOR} x that at N={lo['tunnels']}")
    return out


def _check(name: str, group: Doc, ok: bool | None, value: object, limit: object) -> Doc:
    return {"name": name, "mode": group["mode"], "tunnels": group["tunnels"], "pass": ok,
            "value": value, "limit": limit}


def _outage_verdict(g: Doc, limit: float | None) -> tuple[str, float | None, bool]:
    """(whose outages, their p99, resolved): every tunnel's where their probe interval
    resolves the limit, else the canaries' (probed fast beside the slow ones) where theirs
    does."""
    def resolves(step: float | None) -> bool:
        return limit is not None and (step is None or step <= RESOLUTION_SHARE * limit)
    if resolves(g.get("probe_interval_ms")):
        return "", g["outage_ms"]["p99"], True
    fast = g.get("canaries") or {}
    if fast.get("samples") and resolves(fast.get("probe_interval_ms")):
        return " (canaries)", fast["outage_ms"]["p99"], True
    return "", g["outage_ms"]["p99"], False


def group_checks(g: Doc) -> list[Doc]:
    """hasync's three promises at one tunnel count (no verdict without measurements)."""
    have = g["samples"] > 0
    down = g["master_down_ms"]["median"]
    limit = OUTAGE_FACTOR * down if down is not None else None
    whose, p99, resolved = _outage_verdict(g, limit)
    return [
        _check("no re-establishment", g, g["reestablished"] == 0 if have else None,
               g["reestablished"], 0),
        _check("no sequence-number reuse", g,
               g["seq_reuse"] == 0 if have and not g["missing"]["seq_reuse"] else None,
               g["seq_reuse"], 0),
        _check(f"p99 outage{whose} <= {OUTAGE_FACTOR} x measured master-down", g,
               p99 <= limit if p99 is not None and limit is not None and resolved else None,
               p99, round(limit, 1) if limit is not None else None),
    ]


def checks(groups: list[Doc], scaling: Doc) -> Doc:
    """Every check; `pass` overall when none failed and one passed at least (a check without
    verdict, e.g. outages at a probe interval too coarse for the limit, is counted apart)."""
    items = [_check("lab run completed", g, False, g["error"], None) for g in groups
             if g["error"]]
    items += [c for g in groups if g["mode"] == "hasync" for c in group_checks(g)]
    items.append({"name": "promotion grows at most linearly", "mode": "hasync",
                  "tunnels": None, "pass": scaling["pass"], "value": scaling["ratio"],
                  "limit": LINEAR_FACTOR})
    verdicts = [c["pass"] for c in items]
    return {"items": items, "pass": False not in verdicts and True in verdicts,
            "no_verdict": sum(v is None for v in verdicts)}


def _one(values: set[Any]) -> Any:
    """The value when all agree, else the sorted list of them (None when none)."""
    vals = sorted(v for v in values if v is not None)
    return vals[0] if len(vals) == 1 else (vals or None)


def conditions(runs: list[Doc], machine: Doc | None) -> Doc:
    """Under what the numbers were made: runner, kernel, VRRP interval, rate, the clients' DPD
    delay, machine."""
    res = [r["result"] for r in runs if isinstance(r.get("result"), dict)]
    return {"runner": _one({r.get("runner") for r in res}),
            "kernel": _one({r.get("kernel") for r in res}),
            "advert_int_s": _one({advert_int_of(r) for r in res}),
            "rate_pps": _one({r.get("rate_pps") for r in res}),
            "canaries": _one({len(r.get("canaries") or []) for r in res}),
            "canary_rate_pps": _one({r.get("canary_rate_pps") for r in res
                                     if r.get("canaries")}),
            "dpd_delay_s": _one({(r.get("timers") or {}).get("dpd_delay_s") for r in res}),
            "failovers_per_run": _one({len(r.get("failovers") or []) for r in res}),
            "fault": _one({(r.get("spec") or {}).get("fault") for r in res}),
            "machine": machine or {}}


def summarize(runs: list[Doc], machine: Doc | None = None) -> Doc:
    """The summary of a benchmark's runs: per mode and tunnel count, scaling, checks."""
    groups = []
    for n in sorted({r["tunnels"] for r in runs}):
        for mode in MODES:
            mine = [r for r in runs if r["mode"] == mode and r["tunnels"] == n]
            if mine:
                errors = "; ".join(r["error"] for r in mine if r.get("error")) or None
                recs = [x for r in mine for x in run_records(r)]
                groups.append(group_summary(mode, n, recs, errors))
    scaling = promotion_scaling([x for r in runs for x in run_records(r)])
    return {"percentile": "nearest-rank: the p-th of n sorted values is the ceil(p/100 x n)-th",
            "conditions": conditions(runs, machine), "groups": groups,
            "promotion_scaling": scaling, "checks": checks(groups, scaling)}


def document(params: Doc, machine: Doc, runs: list[Doc], extra: Doc | None = None) -> Doc:
    """The benchmark's JSON document: parameters, machine, raw runs, records, summary."""
    return {"benchmark": "failover", **(extra or {}), "params": params, "machine": machine,
            "runs": runs, "records": [x for r in runs for x in run_records(r)],
            "summary": summarize(runs, machine)}
