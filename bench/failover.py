#!/usr/bin/env python3
"""Failover benchmark: keepalived alone (baseline) against hasync, on the lab, at N tunnels.

For each tunnel count and mode, one lab run with K failovers (`hasync_lab.runner.run_task`,
natively or in the VM). Saves every raw number (the full lab results too) and a summary to
--json, prints a table, draws three PNGs into --plots (outage CDF, one failover's timeline,
promotion time against N) and, with --markdown, rewrites the results section of a document.

Usage: .venv/bin/python bench/failover.py [--tunnels 10,100,1000] [--repeats 5] [--rate PPS]
           [--canaries 3]
           [--modes baseline,hasync] [--json PATH] [--plots DIR] [--runner auto|vm|native]
           [--lab-out DIR] [--merge PATH] [--from-json PATH] [--markdown docs/benchmarks.md]
--merge adds this run's (mode, N) lab runs to a saved JSON's (e.g. N=1000 in hasync alone).
--from-json re-makes the summary, table, plots (and markdown) from a saved JSON, no lab.

Rules: the lab runs one at a time (one VM); a failed lab run is recorded with its error and
the others still run; the JSON is rewritten after every lab run, so an interrupted benchmark
keeps what it measured; the numbers come from failover_stats (pure; nearest-rank
percentiles), the pictures from failover_plots; progress goes to stderr, results to stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import failover_stats as stats  # noqa: E402

DEFAULT_JSON = ROOT / "bench" / "results" / "failover.json"
DEFAULT_PLOTS = ROOT / "bench" / "results"
LAB_OUT = ROOT / "out" / "bench-failover"  # per lab run: spec, result, daemon logs, captures
MAX_TUNNELS = 1000  # the lab's pool of virtual IPs (bench/lab/hasync_lab/topology.py) holds 1022
RATE_BUDGET = 200.0  # default: probe packets/s each way, shared by every tunnel of a run
RATE_MAX = 20.0  # default: at most this per tunnel (the lab's own rate)
CANARIES = 3  # default: tunnels per run probed at RATE_MAX whatever N (one per client)
DPD_BUDGET = 10.0  # client DPD exchanges/s, shared by the tunnels, that the gateway must answer
BEGIN, END = "<!-- results -->", "<!-- /results -->"
COLUMNS = (("mode", 8), ("N", 5), ("fo", 3), ("samples", 7), ("outage p50", 10),
           ("p99", 8), ("canary p99", 10), ("re-est", 6), ("reuse", 5), ("replay c/g", 10),
           ("max skip", 8), ("promo p50", 9), ("promo max", 9), ("vrrp p50", 8), ("mdown", 6))
Doc = dict[str, Any]


def _cell(v: object) -> str:
    """A number as a cell: ms below 100 with one decimal, others whole; '-' for missing."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def row_cells(g: Doc) -> list[str]:
    """The table cells of one summary group (mode, tunnel count)."""
    promo = g["promotion_total_ms"] or {}
    return [g["mode"], str(g["tunnels"]), str(g["failovers"]), str(g["samples"]),
            _cell(g["outage_ms"]["median"]), _cell(g["outage_ms"]["p99"]),
            _cell(((g.get("canaries") or {}).get("outage_ms") or {}).get("p99")),
            _cell(g["reestablished"]), _cell(g["seq_reuse"]),
            f'{_cell(g.get("replay_errors"))}/{_cell(g.get("replay_errors_gw"))}',
            _cell(g["seq_skipped_max"]),
            _cell(promo.get("median")), _cell(promo.get("max")),
            _cell(g["vrrp_detect_ms"]["median"]), _cell(g["master_down_ms"]["max"])]


def _verdict(ok: bool | None) -> str:
    return {True: "pass", False: "FAIL", None: "n/a"}[ok]


def check_lines(summary: Doc) -> list[str]:
    """One line per check, then the promotion fit."""
    lines = [f"{_verdict(c['pass']):>4}  {c['mode']}"
             f"{'' if c['tunnels'] is None else ' N=' + str(c['tunnels'])}: {c['name']} "
             f"(value {_cell(c['value'])}, limit {_cell(c['limit'])})"
             for c in summary["checks"]["items"]]
    sc = summary["promotion_scaling"]
    fit = sc.get("fit")
    if fit:
        lines.append(f"promotion fit: {fit['intercept_ms']:.1f} ms + "
                     f"{fit['slope_ms_per_tunnel']:.4f} ms/tunnel x N (r^2 {fit['r2']:.2f}, "
                     f"{fit['points']} failovers); growth exponent {_cell(sc['exponent'])}")
    after = (sc.get("after_barrier") or {}).get("fit")
    if after:
        lines.append(f"after the barrier (xfrm + activate): {after['intercept_ms']:.1f} ms + "
                     f"{after['slope_ms_per_tunnel']:.4f} ms/tunnel x N (r^2 {after['r2']:.2f}, "
                     f"{after['points']} failovers)")
    ch = summary["checks"]
    nv = ch.get("no_verdict", 0)
    lines.append(f"overall: {'pass' if ch['pass'] else 'FAIL'}"
                 + (f" ({nv} check{'s' if nv != 1 else ''} without verdict)" if nv else ""))
    return lines


def conditions_line(c: Doc) -> str:
    """Under what the numbers were made, on one line."""
    m = c.get("machine") or {}
    vm = m.get("vm")
    where = f"VM {vm['cpus']} vCPUs, {vm['memory']} under QEMU/TCG on " if vm and \
        c.get("runner") == "vm" else ""
    return (f"runner {_cell(c.get('runner'))}, kernel {_cell(c.get('kernel'))}, advert_int "
            f"{_cell(c.get('advert_int_s'))} s, rate {_cell(c.get('rate_pps'))} pkt/s each way, "
            f"canaries {_cell(c.get('canaries'))} at {_cell(c.get('canary_rate_pps'))} pkt/s, "
            f"client DPD {_cell(c.get('dpd_delay_s'))} s, "
            f"{_cell(c.get('failovers_per_run'))} failovers per lab run, fault "
            f"{_cell(c.get('fault'))}; machine: {where}{m.get('cpus', '?')} CPUs "
            f"({m.get('cpu_model', '?')}), {m.get('memory', '?')}, {m.get('platform', '?')}")


def table(summary: Doc) -> str:
    """The printed table: conditions, one row per mode and tunnel count, the checks."""
    lines = [conditions_line(summary["conditions"]),
             "  ".join(name.rjust(w) for name, w in COLUMNS)]
    for g in summary["groups"]:
        cells = row_cells(g)
        lines.append("  ".join(v.rjust(w) for v, (_, w) in zip(cells, COLUMNS, strict=True))
                     + (f"  error: {g['error']}" if g["error"] else ""))
    lines.append("times in ms; outage over every tunnel of every failover, nearest-rank p99")
    return "\n".join(lines + check_lines(summary))


MD_HEADER = ("mode", "tunnels", "failovers", "tunnel failovers", "outage median (ms)",
             "outage p99 (ms)", "canary outage p99 (ms)", "re-established", "seq reuse",
             "replay drops (client/gateway)", "max seq skipped",
             "promotion median (ms)", "promotion max (ms)", "VRRP detect median (ms)",
             "master-down (ms)")


def render_markdown(summary: Doc, plots: str = "../bench/results") -> str:
    """The results section of docs/benchmarks.md: conditions, table, checks, plots."""
    lines = [f"Conditions: {conditions_line(summary['conditions'])}.", "",
             "| " + " | ".join(MD_HEADER) + " |", "|" + " --- |" * len(MD_HEADER)]
    lines += ["| " + " | ".join(row_cells(g)) + " |" for g in summary["groups"]]
    errors = [f"- {g['mode']} N={g['tunnels']}: lab run failed: {g['error']}"
              for g in summary["groups"] if g["error"]]
    lines += ["", "Percentiles are nearest-rank over every tunnel of every failover of a row;"
              " master-down is the interval as measured (the old master's last advertisement"
              " to the new master's MASTER line), the largest of the row's failovers; the p99"
              " check holds the outage against the row's median of it, over every tunnel where"
              " their probe interval resolves it, else over the canary tunnels (probed at the"
              " canary rate beside the others).",
              *errors, "",
              "Checks:", ""]
    lines += [f"- {line}" for line in check_lines(summary)]
    lines += ["", f"![outage CDF, baseline vs hasync]({plots}/failover_outage_cdf.png)",
              f"![one failover, probe gaps per tunnel]({plots}/failover_timeline.png)",
              f"![promotion time against tunnel count]({plots}/failover_promotion.png)"]
    return "\n".join(lines)


def replace_results(text: str, block: str) -> str:
    """`text` with what lies between the results markers replaced by `block`."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"no {BEGIN} ... {END} markers")
    return text[:start + len(BEGIN)] + "\n" + block.rstrip("\n") + "\n" + text[end:]


def progress_line(done: int, total: int, now: str, elapsed_s: float, width: int = 20) -> str:
    """`[####......] 3/8 hasync N=100  elapsed 12m04s  ETA 16m05s` (ETA: mean run so far)."""
    bar = "#" * (width * done // total) + "." * (width - width * done // total)
    eta = _dur(elapsed_s / done * (total - done)) if done else "?"
    return f"[{bar}] {done}/{total} {now}  elapsed {_dur(elapsed_s)}  ETA {eta}"


def _dur(s: float) -> str:
    h, rest = divmod(int(s), 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


def machine_info() -> Doc:
    """The host: CPUs, CPU model, memory, platform, Python (and the VM's size)."""
    model, mem = "?", "?"
    for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem = f"{int(line.split()[1]) / 2**20:.0f} GiB"
    from hasync_lab import runner
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory": mem,
            "platform": platform.platform(), "python": platform.python_version(),
            "vm": {"cpus": runner.VM_CPUS, "memory": runner.VM_MEMORY}}


def rate_for(tunnels: int, rate: float | None, canaries: int = 0) -> float:
    """The probe rate per tunnel: `rate` if given, else RATE_BUDGET packets/s each way shared
    by the tunnels, at most RATE_MAX per tunnel (an emulated CPU carries a few hundred); the
    canaries take RATE_MAX each out of the budget first."""
    if rate is not None:
        return rate
    fast = min(canaries, tunnels)
    if fast == tunnels:
        return RATE_MAX
    return round(min(RATE_MAX, (RATE_BUDGET - fast * RATE_MAX) / (tunnels - fast)), 2)


def dpd_for(tunnels: int) -> int:
    """The clients' DPD delay: the lab's 10 s, or longer so that idle tunnels ask the gateways
    at most DPD_BUDGET times a second in all. 1000 tunnels at 10 s made 100 exchanges/s while
    they came up, each synced through hasync, more than the emulated CPUs carry."""
    from hasync_lab.confgen import LabTimers
    return max(LabTimers().dpd_delay_s, math.ceil(tunnels / DPD_BUDGET))


def lab_spec(mode: str, tunnels: int, repeats: int, rate: float | None,
             canaries: int = 0) -> Any:
    """The LabSpec of one lab run: N tunnels (`canaries` of them probed at RATE_MAX), K
    failovers, the DPD delay of `dpd_for`, no after-checks (the lab tests run those)."""
    from hasync_lab.confgen import LabTimers
    from hasync_lab.session import LabSpec
    return LabSpec(mode=mode, failovers=repeats, rate=rate_for(tunnels, rate, canaries),
                   tunnels=tunnels, rekey_checks=False, canaries=min(canaries, tunnels),
                   canary_rate=RATE_MAX, timers=LabTimers(dpd_delay_s=dpd_for(tunnels)))


def preflight(which: str) -> None:
    """Root and the runner's tools, as run_task checks them first; SystemExit if missing."""
    from hasync_lab import prereq, runner
    try:
        runner.check(which if which != "auto" else "vm")
    except prereq.LabError as e:
        raise SystemExit(f"the lab cannot run here: {e}") from e


def one_run(mode: str, n: int, a: argparse.Namespace) -> Doc:
    """One lab run; a failure is recorded, not raised (Ctrl-C still stops everything)."""
    from hasync_lab import prereq, runner
    spec = lab_spec(mode, n, a.repeats, a.rate, a.canaries)
    t0 = time.monotonic()
    try:
        res, err = runner.run_task("failover", spec, a.lab_out / f"{mode}-n{n}", a.runner,
                                   runner.vm_budget(spec)), None
    except Exception as e:  # a failed run is a result (its "error"); the others still run
        if not isinstance(e, prereq.LabError):  # not the lab's own one-line error: a bug
            traceback.print_exc()
        res, err = None, f"{type(e).__name__}: {e}"
    return {"mode": mode, "tunnels": n, "elapsed_s": round(time.monotonic() - t0, 1),
            "error": err, "result": res}


def run_all(a: argparse.Namespace) -> Doc:
    """Every lab run, saving the document after each; returns the final document."""
    plan = [(mode, n) for n in a.tunnels for mode in stats.MODES if mode in a.modes]
    preflight(a.runner)
    params = {"tunnels": a.tunnels, "repeats": a.repeats, "modes": a.modes,
              "rate_pps": {n: rate_for(n, a.rate, a.canaries) for n in a.tunnels},
              "canaries": a.canaries, "canary_rate_pps": RATE_MAX, "runner": a.runner}
    machine, runs, t0 = machine_info(), kept_runs(a.merge, plan), time.monotonic()
    extra = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if a.merge:
        extra["merged_from"] = str(a.merge)
    doc = stats.document(params, machine, runs, extra)
    for k, (mode, n) in enumerate(plan):
        print(progress_line(k, len(plan), f"{mode} N={n}", time.monotonic() - t0),
              file=sys.stderr, flush=True)
        runs.append(one_run(mode, n, a))
        extra["duration_s"] = round(time.monotonic() - t0, 1)
        doc = stats.document(params, machine, runs, extra)
        save_json(doc, a.json)
    print(progress_line(len(plan), len(plan), "done", time.monotonic() - t0),
          file=sys.stderr, flush=True)
    return doc


def kept_runs(path: Path | None, plan: list[tuple[str, int]]) -> list[Doc]:
    """The runs of a saved benchmark (--merge) that this one does not redo."""
    if path is None:
        return []
    saved = json.loads(path.read_text())
    return [r for r in saved.get("runs", []) if (r.get("mode"), r.get("tunnels")) not in plan]


def save_json(doc: Doc, path: Path) -> None:
    """Write the document (atomically: a reader never sees half of it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(path)


def redo(saved: Doc) -> Doc:
    """A saved document with its records and summary made anew from its raw runs."""
    extra = {k: saved[k] for k in ("started", "duration_s") if k in saved}
    return stats.document(saved.get("params", {}), saved.get("machine", {}),
                          saved.get("runs", []), extra)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--tunnels", default="10,100,1000",
                    type=lambda s: sorted({int(x) for x in s.split(",") if x.strip()}),
                    help="tunnel counts, comma-separated (default 10,100,1000)")
    ap.add_argument("--repeats", type=int, default=5, help="failovers per lab run")
    ap.add_argument("--rate", type=float, default=None,
                    help=f"probe packets/s each way per tunnel (default: {RATE_BUDGET:g} "
                    f"shared by the tunnels, at most {RATE_MAX:g} each)")
    ap.add_argument("--canaries", type=int, default=CANARIES,
                    help=f"tunnels per run probed at {RATE_MAX:g} packets/s each way whatever "
                    f"N, so the outage gets a verdict at every N (default {CANARIES})")
    ap.add_argument("--modes", default=",".join(stats.MODES),
                    type=lambda s: [m for m in stats.MODES if m in s.split(",")],
                    help="baseline,hasync (default both)")
    ap.add_argument("--lab-out", type=Path, default=LAB_OUT,
                    help="each lab run's spec, result, logs and captures go under here")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON, help="write the results here")
    ap.add_argument("--plots", type=Path, default=DEFAULT_PLOTS, help="write the PNGs here")
    ap.add_argument("--runner", choices=("auto", "vm", "native"), default="auto")
    ap.add_argument("--from-json", type=Path, help="no lab: redo the outputs from this JSON")
    ap.add_argument("--merge", type=Path,
                    help="keep this saved JSON's runs, except the (mode, N) run again")
    ap.add_argument("--markdown", type=Path, help="rewrite this document's results section")
    a = ap.parse_args(argv)
    if not a.tunnels or min(a.tunnels) < 1 or max(a.tunnels) > MAX_TUNNELS or a.repeats < 1:
        ap.error(f"--tunnels needs counts of 1 to {MAX_TUNNELS}, --repeats 1 or more")
    if not a.modes:
        ap.error("--modes needs baseline, hasync or both")
    if a.rate is not None and a.rate <= 0:
        ap.error("--rate must be above 0")
    if not 0 <= a.canaries * RATE_MAX < RATE_BUDGET:
        ap.error(f"--canaries takes 0 to {math.ceil(RATE_BUDGET / RATE_MAX) - 1} tunnels "
                 f"({RATE_MAX:g} packets/s each out of {RATE_BUDGET:g})")
    return a


def main(argv: list[str] | None = None) -> int:
    """Run (or reload), save, print, plot, and optionally rewrite the markdown."""
    a = parse_args(argv)
    if a.from_json:
        doc = redo(json.loads(a.from_json.read_text()))
    else:
        import logging
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
        doc = run_all(a)
    save_json(doc, a.json)
    print(table(doc["summary"]))
    import failover_plots
    for p in failover_plots.plot_all(doc, a.plots):
        print(f"plot: {p}")
    print(f"written to {a.json}")
    if a.markdown:
        rel = os.path.relpath(a.plots.resolve(), a.markdown.resolve().parent)
        text = replace_results(a.markdown.read_text(), render_markdown(doc["summary"], rel))
        a.markdown.write_text(text)
        print(f"results section of {a.markdown} rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
