"""The lab's printed table: one row per client and failover.

Rules: pure (a result document in, text out).
"""

from __future__ import annotations

COLUMNS = (("failover", 12), ("client", 6), ("nat", 4), ("re-est", 6), ("resumed", 7),
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
        lines.append(f"{label}: VRRP master after {fo['vrrp_detect_ms']:.0f} ms, "
                     f"VIP moved: {fo['vip_moved']}")
        for c in fo["clients"]:
            lines.append(_row([label, c["name"], "yes" if c["nat"] else "no",
                               "yes" if c["reestablished"] else "no",
                               "yes" if c["resumed"] else "NO", f"{c['outage_ms']:.0f}",
                               str(c["lost_to_client"]), str(c["lost_from_client"]),
                               str(c["replay_errors"]), str(c["seq_reuse"])]))
    return "\n".join(lines)


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
