"""The failover benchmark's three plots: outage CDF, one failover's timeline, promotion scaling.

Rules: matplotlib Figures on the Agg canvas (no pyplot, no display, no global state); each
function takes the benchmark document's records/summary and a path, writes one PNG and
returns the path; a plot with nothing to show says so on its canvas rather than failing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

Doc = dict[str, Any]
FILES = {"cdf": "failover_outage_cdf.png", "timeline": "failover_timeline.png",
         "promotion": "failover_promotion.png"}
COLORS = {"baseline": "tab:red", "hasync": "tab:blue"}
STYLES = ("-", "--", ":", "-.")
PHASE_COLORS = {"wait_ms": "tab:orange", "xfrm_ms": "tab:green", "activate_ms": "tab:purple"}
MAX_ROWS = 40  # timeline: at most this many tunnels, one row each


def _figure(width: float = 8.0, height: float = 5.0) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight")
    return path


def _empty(fig: Figure, text: str) -> None:
    """Say on the canvas that there is nothing to plot."""
    fig.text(0.5, 0.5, text, ha="center", va="center")


def outage_cdf(records: list[Doc], path: Path) -> Path:
    """Empirical CDF of per-tunnel outage, one line per mode (color) and tunnel count (style)."""
    fig = _figure()
    ax = fig.add_subplot()
    ns = sorted({r["tunnels"] for r in records})
    drawn = False
    for mode, color in COLORS.items():
        for i, n in enumerate(ns):
            vals = sorted(t["outage_ms"] for r in records if r["mode"] == mode
                          and r["tunnels"] == n for t in r["clients"]
                          if t.get("outage_ms") is not None and t["outage_ms"] > 0)
            if not vals:
                continue
            ys = [0.0] + [(k + 1) / len(vals) for k in range(len(vals))]
            ax.step([vals[0], *vals], ys, where="post", color=color,
                    linestyle=STYLES[i % len(STYLES)], label=f"{mode}, N={n}")
            drawn = True
    downs = sorted(r["master_down_ms"] for r in records if r.get("master_down_ms"))
    if downs:
        mid = downs[(len(downs) - 1) // 2]
        ax.axvline(mid, color="gray", linestyle=":", label="VRRP master-down (median)")
        ax.axvline(1.5 * mid, color="black", linestyle="--", linewidth=0.8,
                   label="hasync's limit: 1.5 x master-down")
    if not drawn:
        _empty(fig, "no outage measurements")
    else:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.legend(loc="lower right", fontsize="small")
    ax.set_xlabel("outage per tunnel (ms, log scale)")
    ax.set_ylabel("fraction of tunnel failovers")
    ax.set_ylim(0, 1.02)
    ax.set_title("Outage per tunnel and failover: keepalived alone vs hasync")
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)


def pick_failover(records: list[Doc]) -> Doc | None:
    """The failover the timeline shows: hasync's first at its smallest tunnel count."""
    for mode in ("hasync", "baseline"):
        mine = [r for r in records if r["mode"] == mode and r["clients"]]
        if mine:
            return min(mine, key=lambda r: (r["tunnels"], r["index"]))
    return None


def _phase_spans(r: Doc) -> list[tuple[str, float, float]]:
    """(phase, start ms, length ms) of the promotion, back to back from its start."""
    p, t = r.get("promotion"), r.get("promotion_start_ms")
    if not p or t is None:
        return []
    spans = []
    for ph in PHASE_COLORS:
        if p.get(ph) is not None:
            spans.append((ph, float(t), float(p[ph])))
            t = float(t) + float(p[ph])
    return spans


def _events(ax: Any, r: Doc) -> None:
    """The fault, VRRP's new master, the master-down interval and the promotion phases."""
    ax.axvline(0, color="black", label="fault")
    if r.get("vrrp_detect_ms") is not None:
        ax.axvline(r["vrrp_detect_ms"], color="tab:red", linestyle="--", label="VRRP master")
    if r.get("master_down_ms") is not None and r.get("vrrp_detect_ms") is not None:
        # the measured interval ends at MASTER: it began at the old master's last advert
        ax.axvline(r["vrrp_detect_ms"] - r["master_down_ms"], color="gray", linestyle=":",
                   label="last advert heard (master-down to VRRP master)")
    note = "" if r.get("promotion_start_source") == "lab" else " (from VRRP master)"
    for ph, start, length in _phase_spans(r):
        ax.axvspan(start, start + max(length, 0.5), color=PHASE_COLORS[ph], alpha=0.25,
                   label=f"promotion {ph.removesuffix('_ms')}{note}")


def timeline(records: list[Doc], path: Path) -> Path:
    """One failover: per tunnel, its probe gaps as bars, with the fault and VRRP events."""
    r = pick_failover(records)
    rows = (r or {}).get("clients", [])[:MAX_ROWS]
    fig = _figure(9.0, max(3.0, 1.5 + 0.25 * len(rows)))
    ax = fig.add_subplot()
    if r is None:
        _empty(fig, "no failover to show")
        return _save(fig, path)
    for i, t in enumerate(rows):
        bars = [(a, b - a) for a, b in t["gaps_ms"]]
        ax.broken_barh(bars, (i - 0.35, 0.7), color=COLORS.get(r["mode"], "tab:gray"))
    _events(ax, r)
    ax.set_yticks(range(len(rows)), [str(t.get("name") or i) for i, t in enumerate(rows)],
                  fontsize="x-small")
    ax.set_ylim(-1, len(rows))
    ax.invert_yaxis()
    shown = "" if len(r["clients"]) <= MAX_ROWS else f", first {MAX_ROWS}"
    nogaps = "" if any(t["gaps_ms"] for t in rows) else " (no gaps_ms in the result)"
    ax.set_title(f"{r['mode']} failover {r['index'] + 1} at N={r['tunnels']} "
                 f"({r.get('from')}->{r.get('to')}){shown}: probe gaps per tunnel{nogaps}")
    ax.set_xlabel("ms since the fault")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="x-small")
    ax.grid(True, axis="x", alpha=0.3)
    return _save(fig, path)


def promotion(scaling: Doc, path: Path, records: list[Doc] | None = None) -> Path:
    """hasync's promotion time against the tunnel count (linear axes: a line is linear);
    beside each total, the part after the Raft barrier (XFRM writes and charon's segments)."""
    fig = _figure()
    ax = fig.add_subplot()
    pts = scaling.get("points") or []
    if not pts:
        _empty(fig, "no promotion measurements (hasync)")
        return _save(fig, path)
    ax.scatter([x for x, _ in pts], [y for _, y in pts], color="tab:blue", alpha=0.5,
               label="one failover: total")
    work = [(r["tunnels"], (r["promotion"].get("xfrm_ms") or 0)
             + (r["promotion"].get("activate_ms") or 0)) for r in records or []
            if r["mode"] == "hasync" and r.get("promotion")]
    if work:
        ax.scatter([x for x, _ in work], [y for _, y in work], color="tab:green", marker="x",
                   label="one failover: after the Raft barrier (XFRM + activate)")
    med = scaling.get("per_n") or []
    ax.plot([m["tunnels"] for m in med], [m["median_total_ms"] for m in med], "D",
            color="black", label="median")
    fit = scaling.get("fit")
    if fit:
        lo, hi = min(x for x, _ in pts), max(x for x, _ in pts)
        xs = [lo + (hi - lo) * k / 100 for k in range(101)]
        ax.plot(xs, [fit["intercept_ms"] + fit["slope_ms_per_tunnel"] * x for x in xs],
                color="tab:gray", label=f"fit: {fit['intercept_ms']:.1f} ms + "
                f"{fit['slope_ms_per_tunnel']:.3f} ms x N (r² {fit['r2']:.2f})")
    ax.set_xlabel("tunnels (N)")
    ax.set_ylabel("promotion total (ms)")
    ax.set_title("hasync promotion time against tunnel count")
    ax.legend(fontsize="small")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def plot_all(doc: Doc, out_dir: Path) -> list[Path]:
    """Write the three plots of a benchmark document into `out_dir`."""
    records, scaling = doc["records"], doc["summary"]["promotion_scaling"]
    return [outage_cdf(records, out_dir / FILES["cdf"]),
            timeline(records, out_dir / FILES["timeline"]),
            promotion(scaling, out_dir / FILES["promotion"], records)]
