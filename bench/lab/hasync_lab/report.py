"""The lab's printed tables: one row per client and failover; baseline and hasync side by side.

Rules: pure (result documents in, text out); compare_table reads every field with .get and
shows "-" for what a result lacks.
"""

from __future__ import annotations

COLUMNS = (("failover", 12), ("client", 6), ("nat", 4), ("mobike", 6), ("re-est", 6),
           ("resumed", 7),
           ("outage ms", 10), ("lost to", 8), ("lost from", 9), ("replay err", 10),
           ("seq reuse", 9))


def _row(values: list[str]) -> str:
    return "  ".join(v.rjust(w) for v, (_, w) in zip(values, COLUMNS, strict=True))


def table(result: dict[str, object]) -> str:
    """Render a failover result as a table with a header line."""
    lines = [f"mode={result.get('mode')} runner={result.get('runner')} "
             f"kernel={result.get('kernel')} advert_int={result.get('advert_int')} s "
             f"rate={result.get('rate_pps')} pkt/s"]
    lines.append(_row([name for name, _ in COLUMNS]))
    for fo in result.get("failovers", []):  # type: ignore[attr-defined]
        label = f"{fo['from']}->{fo['to']}"
        lines.append(f"{label}: VRRP master after {_cell(fo['vrrp_detect_ms'])} ms, "
                     f"VIP moved: {fo['vip_moved']}")
        if "vip_release_s" in fo:  # partfault.py's faults
            lines.append(f"{label}: {fo['fault']}: VIP released after "
                         f"{_cell(fo['vip_release_s'])} s (bound {fo['vip_release_bound_s']}), "
                         f"converged: {_cell(fo['converged'])}; fenced per client: "
                         + ", ".join(f"{c['name']}={_fenced(c)}" for c in fo["clients"]))
            forced = fo.get("forced") or {}
            if forced:
                lines.append(f"{label}: forced {forced.get('rate_pps')} pkt/s to "
                             f"{forced.get('client')} via {forced.get('via')}: sent "
                             f"{_cell(forced.get('sent'))}, answered "
                             f"{_cell(forced.get('answered'))}")
        for c in fo["clients"]:
            lines.append(_row([label, c["name"], "yes" if c["nat"] else "no",
                               "yes" if c.get("mobike") else "no",
                               "yes" if c["reestablished"] else "no",
                               "yes" if c["resumed"] else "NO", f"{c['outage_ms']:.0f}",
                               str(c["lost_to_client"]), str(c["lost_from_client"]),
                               str(c["replay_errors"]), str(c["seq_reuse"])]))
        lines.extend(roam_lines(label, fo.get("roams") or []))
    moved = result.get("mobike")
    if isinstance(moved, dict):
        lines.append("MOBIKE: " + ("ok" if moved.get("ok") else
                                   "FAILED: " + "; ".join(moved.get("errors") or [])))
    return "\n".join(lines)


def roam_lines(label: str, roams: list[dict[str, object]]) -> list[str]:
    """One line per roam (mobike.py): from -> to, and how long each gateway took to follow
    (backups: IKE_SA / kernel SAs, ms from the roam)."""
    out = []
    for r in roams:
        backups = r.get("backups") or {}
        assert isinstance(backups, dict)
        follow = ", ".join(f"{g} {_cell(b.get('ike_ms'))}/{_cell(b.get('xfrm_ms'))} ms"
                           + ("" if b.get("followed") else " NOT FOLLOWED")
                           for g, b in backups.items())
        out.append(f"{label}: roam {r.get('when')} of {r.get('client')}: {r.get('from')} -> "
                   f"{r.get('to')}; master {r.get('master')} after {_cell(r.get('master_ms'))} "
                   f"ms; backups (IKE_SA/kernel SAs) {follow or '-'}")
    return out


def _fenced(c: dict[str, object]) -> str:
    """A client's fenced count; a killed hasync's kernel count (before its restart) after it."""
    at_undo = c.get("fenced_at_undo")
    return _cell(c.get("fenced")) + (f" ({at_undo} before the restart)" if at_undo else "")


def mirror_table(result: dict[str, object]) -> str:
    """Render a mirror result: per gateway, its IKE_SAs by state and its ESP SAs."""
    lines = [f"mode=hasync scenario=mirror runner={result.get('runner')} "
             f"kernel={result.get('kernel')} master={result.get('master')} "
             f"late gateway caught up in {result.get('late_catchup_s')} s"]
    gws = result.get("gateways", {})
    assert isinstance(gws, dict)
    for gw, info in gws.items():
        states: dict[str, int] = {}
        for st in info["view"]["ike_sas"].values():
            states[st] = states.get(st, 0) + 1
        lines.append(f"  {gw}{' (late)' if info['late'] else ''}: IKE_SAs {states}, "
                     f"ESP SAs {len(info['view']['xfrm_spis'])}, mirrors master: "
                     f"{'yes' if info['mirrors_master'] else 'NO'}")
    return "\n".join(lines)


CMP_KEYS = ("fo", 3), ("client", 6), ("nat", 4)
CMP_SIDE = (("re-est", 6), ("outage ms", 10), ("lost to", 8), ("lost from", 9),
            ("replay err", 10), ("seq reuse", 9))
CMP_HASYNC_EXTRA = (("seq skip", 9),)


def result_problem(doc: object) -> str | None:
    """Why `doc` is not a failover result document (None: it is one)."""
    if not isinstance(doc, dict):
        return "not a JSON object"
    fos = doc.get("failovers")
    if not isinstance(fos, list):
        return 'no "failovers" list'
    for k, fo in enumerate(fos, 1):
        if not isinstance(fo, dict) or not isinstance(fo.get("clients"), list) or not all(
                isinstance(c, dict) for c in fo["clients"]):
            return f'failover {k} has no "clients" list of objects'
    return None


def _cell(v: object) -> str:
    """A value as a table cell: yes/no, whole numbers, "-" for missing."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.0f}"
    return str(v)


def _cells(c: dict[str, object] | None, cols: tuple[tuple[str, int], ...],
           keys: tuple[str, ...]) -> str:
    """One side's cells for client `c` (all "-" when the side has no such client)."""
    return "  ".join(_cell(c.get(k) if c else None).rjust(w) for k, (_, w) in
                     zip(keys, cols, strict=True))


_SIDE_KEYS = ("reestablished", "outage_ms", "lost_to_client", "lost_from_client",
              "replay_errors", "seq_reuse")


def _cmp_header() -> list[str]:
    """The two header lines: the sides' names over their columns, then the column names."""
    keys = "  ".join(n.rjust(w) for n, w in CMP_KEYS)
    base = "  ".join(n.rjust(w) for n, w in CMP_SIDE)
    has = "  ".join(n.rjust(w) for n, w in CMP_SIDE + CMP_HASYNC_EXTRA)
    return [(" " * len(keys) + " | " + "baseline".center(len(base)) + " | "
             + "hasync".center(len(has))).rstrip(),
            f"{keys} | {base} | {has}"]


def _fo_line(k: int, bi: int | None, bfo: dict[str, object] | None,
             hfo: dict[str, object] | None) -> str:
    """The line naming failover k+1 of each side: who failed, when VRRP moved the master."""
    def side(name: str, i: int | None, fo: dict[str, object] | None) -> str:
        if fo is None or i is None:
            return f"{name} -"
        ms = fo.get("vrrp_detect_ms")
        return (f"{name} #{i + 1} {fo.get('from')}->{fo.get('to')}: VRRP master after "
                f"{_cell(ms)} ms, VIP moved: {_cell(fo.get('vip_moved'))}")
    return f"failover {k + 1}: {side('baseline', bi, bfo)} | {side('hasync', k, hfo)}"


def _dicts(v: object) -> list[dict[str, object]]:
    """The dicts of a JSON list (nothing if `v` is not a list)."""
    return [x for x in v if isinstance(x, dict)] if isinstance(v, list) else []


_HASYNC_KEYS = (*_SIDE_KEYS, "seq_skipped")  # the lab result's largest skip per client


def _client_rows(k: int, bfo: dict[str, object] | None,
                 hfo: dict[str, object] | None) -> list[str]:
    """Rows of failover k+1: hasync's clients in order, then any only the baseline has."""
    b_cl = {c.get("name"): c for c in _dicts((bfo or {}).get("clients"))}
    h_cl = {c.get("name"): c for c in _dicts((hfo or {}).get("clients"))}
    rows = []
    for name in [*h_cl, *(n for n in b_cl if n not in h_cl)]:
        b, h = b_cl.get(name), h_cl.get(name)
        nat = (h or b or {}).get("nat")
        keys = "  ".join(v.rjust(w) for v, (_, w) in
                         zip((str(k + 1), _cell(name), _cell(nat)), CMP_KEYS, strict=True))
        rows.append(f"{keys} | {_cells(b, CMP_SIDE, _SIDE_KEYS)} | "
                    f"{_cells(h, CMP_SIDE + CMP_HASYNC_EXTRA, _HASYNC_KEYS)}")
    return rows


def compare_table(baseline: dict[str, object], hasync: dict[str, object]) -> str:
    """Render a baseline and a hasync result side by side, one row per client and failover.

    Failover k of hasync is set against failover k of the baseline, or its first when the
    baseline ran fewer; clients are matched by name.
    """
    lines = [f"{name + ':':<9} " + " ".join(f"{k}={doc.get(k)}" for k in
                                    ("mode", "runner", "kernel", "advert_int", "rate_pps"))
             for name, doc in (("baseline", baseline), ("hasync", hasync))]
    b_fos, h_fos = _dicts(baseline.get("failovers")), _dicts(hasync.get("failovers"))
    for k in range(max(len(b_fos), len(h_fos))):
        bi = k if k < len(b_fos) else (0 if b_fos else None)
        bfo = b_fos[bi] if bi is not None else None
        hfo = h_fos[k] if k < len(h_fos) else None
        lines.append(_fo_line(k, bi, bfo, hfo))
        lines.extend(_cmp_header())
        lines.extend(_client_rows(k, bfo, hfo))
    return "\n".join(lines)
