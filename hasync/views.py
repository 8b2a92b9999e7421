"""Text views of the daemon's answers for `hasync status` and `hasync sas`.

Rules: pure (a JSON-ready dict in, text out); they print what the daemon sent and never
a secret, because the daemon sends none; a string a client chose is printed through
`safe_text` (no terminal escapes).
"""

from __future__ import annotations

from typing import Any

from .safetext import safe_text

# Counters of failures that were caught, logged with their traceback and survived:
# (status key, counter) -> shown on the `errors:` line whenever non-zero.
ERROR_COUNTERS = (("ha", "handler_error"), ("control", "internal"),
                  ("control", "handler_error"), ("control", "bad_result"),
                  ("counters", "fifo_errors"), ("counters", "batches_dropped"),
                  ("metrics", "errors"))


def status_text(st: dict[str, Any]) -> str:
    """Render `hasync status`."""
    raft, jr = st.get("raft", {}), st.get("journal", {})
    lines = [
        f"node {st.get('node')} of cluster {st.get('cluster')}: VRRP role {st.get('role')} "
        f"for {st.get('role_since_s')} s, charon segments {st.get('charon_segments')}",
        f"raft: {raft.get('role')} term {raft.get('term')} leader {raft.get('leader')} "
        f"commit {raft.get('commit_index')} applied {raft.get('applied_index')} "
        f"lag {st.get('lag')}",
    ]
    q = st.get("quorum") or {}
    if q:
        lines.append(f"quorum: a majority heard {q.get('age_s')} s ago (limit {q.get('limit_s')}"
                     f" s){'' if q.get('ok') else ': LOST, health fails'}")
    for peer, state in sorted((raft.get("peers") or {}).items()):
        lines.append(f"  peer {peer}: {state}")
    for node, m in sorted((st.get("members") or {}).items()):
        said = (f"VRRP {m.get('vrrp')}, raft {m.get('raft')}, applied {m.get('applied')} "
                f"(lag {m.get('lag')})")
        if m.get("reachable", True):
            lines.append(f"  member {node}: {said}, reported {m.get('report_age_s')} s ago")
        else:
            lines.append(f"  member {node}: UNREACHABLE, no report for {m.get('report_age_s')} "
                         f"s (it last said {said})")
    lines.append(f"journal: {jr.get('ike_sas')} IKE_SAs, {jr.get('child_sas')} CHILD_SAs; "
                 f"synced into charon: {st.get('synced')}; backlog {st.get('backlog')}")
    fd = st.get("feed") or {}
    if fd:
        lines.append(f"charon feed: {fd.get('fed')} sent, {fd.get('queued')} queued, "
                     f"{fd.get('stalls')} stalls")
    ha = st.get("ha", {})
    drops = {k: v for k, v in ha.items() if k.startswith(("dropped", "send_refused"))}
    lines.append(f"HA stream: {ha.get('accepted', 0)} accepted, {ha.get('sent', 0)} sent, "
                 f"dropped {drops or 0}, kernel drops {ha.get('kernel_drops', 0)}")
    ch = (st.get("takeover") or {}).get("charon") or {}
    if ch:
        drift = ch.get("drift") or {}
        lines.append(f"charon: {'up' if ch.get('up') else 'down'}, connections "
                     f"{'loaded' if ch.get('ready') else 'missing ' + str(ch.get('missing_conns'))}"
                     f", {ch.get('restarts', 0)} restarts seen" + (
                         f"; holds {drift.get('charon_ikes')} of the journal's "
                         f"{drift.get('journal_ikes')} IKE_SAs, {drift.get('children_missing')}"
                         " CHILD_SAs missing in the kernel" if drift else ""))
    lines += _takeover_lines(st.get("takeover"), st.get("health"))
    if jr.get("anomalies"):
        lines.append(f"journal anomalies: {jr['anomalies']}")
    if st.get("raft_apply"):
        lines.append(f"raft apply: {st['raft_apply']}")
    if st.get("raft_port"):
        lines.append(f"raft port: {st['raft_port']}")
    if gc := st.get("gc"):
        lines.append(f"garbage collector: {gc.get('collections')} collections by generation, "
                     f"{gc.get('pause_s')} s paused, longest {gc.get('max_pause_ms')} ms, "
                     f"threshold {gc.get('threshold')}")
    errors = _errors(st)
    if errors:
        lines.append(f"errors: {errors}")
    counted = {k: v for k, v in sorted((st.get("counters") or {}).items()) if v}
    if counted:
        lines.append("counters: " + ", ".join(f"{k} {v}" for k, v in counted.items()))
    return "\n".join(lines)


def _errors(st: dict[str, Any]) -> str:
    """The non-zero error counters of ERROR_COUNTERS, as `section.name N` pairs."""
    found = [f"{section}.{name} {(st.get(section) or {}).get(name)}"
             for section, name in ERROR_COUNTERS if (st.get(section) or {}).get(name)]
    return ", ".join(found)


def _takeover_lines(tk: dict[str, Any] | None, health: dict[str, Any] | None) -> list[str]:
    """The sequence guard, the last promotion and the health verdict."""
    lines = []
    if health:
        busy = (f" (charon slow over vici in {health['vici_busy_checks']} checks; now "
                f"{'slow' if health.get('vici_busy') else 'answering'})"
                if health.get("vici_busy_checks") else "")
        late = (f" ({health['late_verdicts']} verdicts judged over 3 s late: a starved "
                f"daemon)" if health.get("late_verdicts") else "")
        lines.append("health: " + ("ok" if health.get("healthy") else
                                   "FAILING: " + "; ".join(health.get("reasons") or []))
                     + busy + late)
    if not tk:
        return lines
    tr, lp = tk.get("tracker") or {}, tk.get("last_promotion")
    lines.append(f"sequence guard: {tk.get('records')} SA records, {tr.get('tracked')} SAs "
                 f"tracked, {tr.get('renewals')} marks journaled, {tr.get('violations')} "
                 f"violations (max overrun {tr.get('max_overrun')})")
    fence = tk.get("fence") or {}
    if fence:
        fenced = sum((fence.get("fenced") or {}).values())
        lines.append(f"fence: {fence.get('permits')} SAs permitted, {fenced} packets fenced "
                     f"(+{fence.get('unknown')} of unknown SAs), sender epoch "
                     f"{tk.get('epoch')}, {fence.get('errors')} fence errors")
    if lp and not lp.get("claimed", lp.get("quorum")):
        lines.append(f"last promotion NOT CLAIMED after {lp.get('claim_attempts')} attempts "
                     f"({lp.get('wait_ms')} ms): charon not activated, nothing sent")
    elif lp:
        read = {"notices": f"planned from the last read and {lp.get('changed')} SA "
                           "notices; ", "dump": "every SA read; "}.get(lp.get("read"), "")
        lines.append(f"last promotion claimed epoch {lp.get('epoch')}: claim "
                     f"{lp.get('wait_ms')} ms, XFRM "
                     f"{lp.get('xfrm_ms')} ms ({read}{lp.get('writes')} of {lp.get('sas')} "
                     f"SAs written, largest jump {lp.get('max_jump')}), charon activated in "
                     f"{lp.get('activate_ms')} ms, {lp.get('total_ms')} ms in all")
        for err in lp.get("errors") or []:
            lines.append(f"  promotion error: {err}")
    notices = tk.get("notices")
    if notices and any(k != "notices" for k in notices):  # open_failed, unknown:*
        lines.append(f"SA notices: {notices}")
    return lines


def sas_text(res: dict[str, Any]) -> str:
    """Render `hasync sas`; every field is escaped (safetext.py): identities are chosen by
    clients, and a field could carry terminal escapes."""
    lines = []
    for ike in res.get("ike_sas", []):
        f = {k: safe_text(ike.get(k)) for k in ("config_name", "initiator_spi", "responder_spi",
                                                "local_addr", "remote_addr", "remote_id",
                                                "mid_initiator", "mid_responder")}
        lines.append(f"{f['config_name']}: {f['initiator_spi']}_i {f['responder_spi']}_r "
                     f"{f['local_addr']} <-> {f['remote_addr']} [{f['remote_id']}] mid i/r "
                     f"{f['mid_initiator']}/{f['mid_responder']} "
                     f"age {ike.get('age', 0):.0f} s")
        for c in ike.get("children", []):
            lines.append(f"  {safe_text(c.get('name'))}: {safe_text(c.get('inbound_spi'))}_i "
                         f"{safe_text(c.get('outbound_spi'))}_o age {c.get('age', 0):.0f} s")
    return "\n".join(lines) or "no journaled IKE_SAs"
