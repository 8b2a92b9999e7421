"""A real Prometheus in the lab: Debian's prometheus on the server node scrapes every gateway's
hasync ([metrics] listen, hasync/metrics.py) every SCRAPE_S with deploy/'s alerting rules;
after the run, what it scraped around each fault is read back over its HTTP API.

Rules: the server node sits on the protected network with the gateways, as a monitoring host
would, so the scrapes cross the same links as Raft; Prometheus' own clock is the VM's, the
same as the fault times in the result. The queries run inside the server's namespace (the
API listens on its loopback) in one Python process per read.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from .procs import Lab

log = logging.getLogger(__name__)

NODE = "srv"
API = "http://127.0.0.1:9090"
METRICS_PORT = 9812  # each gateway's [metrics] listen: its protected address, this port
SCRAPE_S = 2  # each scrape builds a status answer: 2 s keeps it light under TCG
RULES = Path(__file__).resolve().parents[3] / "deploy" / "hasync-alerts.yml"
# What the failover lab reads around each fault: name -> PromQL
QUERIES = {
    "master": 'hasync_vrrp_state{state="master"}',
    "up": 'up{job="hasync"}',
    "quorum": "hasync_quorum",
    "raft_leader": "hasync_raft_leader",
    "promotions": "hasync_promotions_total",
    "promotion_s": "hasync_last_promotion_duration_seconds",
    "reachable": "hasync_member_reachable",
    "alerts": 'ALERTS{alertstate="firing"}',
}

_READ = r"""
import json, sys, urllib.parse, urllib.request
api, asks = sys.argv[1], json.loads(sys.argv[2])
out = {}
for name, (path, params) in asks.items():
    url = api + path + ("?" + urllib.parse.urlencode(params) if params else "")
    try:
        with urllib.request.urlopen(url, timeout=20) as r:
            out[name] = json.loads(r.read())
    except Exception as e:
        out[name] = {"status": "error", "error": repr(e)}
print(json.dumps(out))
"""


def config(targets: dict[str, str]) -> str:
    """prometheus.yml: job "hasync", one target per gateway labelled with its name."""
    statics = "\n".join(f"      - targets: ['{addr}']\n        labels: {{instance: {name}}}"
                        for name, addr in sorted(targets.items()))
    return (f"global:\n  scrape_interval: {SCRAPE_S}s\n  scrape_timeout: {SCRAPE_S}s\n"
            f"  evaluation_interval: {SCRAPE_S}s\n"
            f"rule_files:\n  - {RULES}\n"
            f"scrape_configs:\n  - job_name: hasync\n    static_configs:\n{statics}\n")


def start(lab: Lab, targets: dict[str, str]) -> None:
    """Write the config and start Prometheus on the server node (its log: srv-prometheus)."""
    home = lab.base / "prometheus"
    (home / "data").mkdir(parents=True, exist_ok=True)
    (home / "prometheus.yml").write_text(config(targets))
    lab.spawn(NODE, "prometheus", [
        "prometheus", f"--config.file={home / 'prometheus.yml'}",
        f"--storage.tsdb.path={home / 'data'}", "--web.listen-address=127.0.0.1:9090",
        "--storage.tsdb.retention.time=1d", "--log.level=warn"], private_run=False)


def read(lab: Lab, asks: dict[str, tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Ask the API (name -> (path, params)); each answer as JSON, or an error entry."""
    out = lab.run(NODE, [sys.executable, "-c", _READ, API, json.dumps(asks)], check=False,
                  timeout=90)
    try:
        answer = json.loads(out)
    except ValueError:
        return {name: {"status": "error", "error": f"no answer: {out[-200:]!r}"}
                for name in asks}
    return answer if isinstance(answer, dict) else {}


def wait_ready(lab: Lab, timeout: float = 120) -> bool:
    """Wait until every target was scraped up once (Prometheus ready, hasync answering)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = read(lab, {"up": ("/api/v1/query", {"query": 'min(up{job="hasync"})'})})
        result = (got.get("up") or {}).get("data", {}).get("result") or []
        if result and result[0]["value"][1] == "1":
            return True
        time.sleep(2)
    return False


def changes(values: list[list[Any]]) -> list[list[float]]:
    """A range query's samples reduced to where the value changes, and the last sample (so a
    series that ends, a target that died, shows when)."""
    out: list[list[float]] = []
    for t, v in values:
        if not out or out[-1][1] != float(v):
            out.append([round(float(t), 3), float(v)])
    if values and out[-1][0] != round(float(values[-1][0]), 3):
        out.append([round(float(values[-1][0]), 3), float(values[-1][1])])
    return out


def series(answer: dict[str, Any]) -> dict[str, list[list[float]]] | str:
    """One query_range answer: "instance[/member][/alertname]" -> its changes, or the error
    text."""
    if answer.get("status") != "success":
        return str(answer.get("error") or answer)
    out: dict[str, list[list[float]]] = {}
    for s in answer.get("data", {}).get("result", []):
        labels = s.get("metric", {})
        key = "/".join(x for x in (labels.get("instance"), labels.get("member"),
                                   labels.get("alertname")) if x)
        out[key or "_"] = changes(s.get("values", []))
    return out


def around(lab: Lab, spans: list[tuple[float, float]]) -> list[dict[str, Any]]:
    """Every query of QUERIES over each [start, end] at the scrape step (one read)."""
    asks = {f"{k}:{name}": ("/api/v1/query_range", {
        "query": q, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{SCRAPE_S}s"})
        for k, (start, end) in enumerate(spans) for name, q in QUERIES.items()}
    got = read(lab, asks) if asks else {}
    return [{"start": round(start, 3), "end": round(end, 3),
             **{name: series(got.get(f"{k}:{name}") or {}) for name in QUERIES}}
            for k, (start, end) in enumerate(spans)]
