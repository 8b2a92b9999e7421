"""Golden vectors from the real charon: one gateway's ha plugin recorded through a tunnel's
life (establish, CHILD rekey, IKE rekey, segment drop and take, terminate), with the key
material charon itself logs, so tests can check the codec and look for secrets.

Rules: runs in the lab (VM or native) like a failover; the recorder keeps secrets in clear,
so its output is lab material only (the lab's throwaway keys); each datagram is named after
the step that caused it.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

from . import cluster, confgen, topology
from .scenario import warm_kernel_crypto
from .session import LabSpec, Run, kernel_release, lab_run

HEXDUMP_HEAD = re.compile(r"\[(?:IKE|CHD)\] (.+?) => (\d+) bytes @ 0x[0-9a-f]+")
HEXDUMP_LINE = re.compile(r"\[(?:IKE|CHD)\]\s+\d+: ((?:[0-9A-Fa-f]{2} ?){1,16})")
# (step name, client swanctl arguments or a FIFO command for gw1's charon, wait after)
STEPS: tuple[tuple[str, list[str] | str, float], ...] = (
    ("establish", ["--initiate", "--child", "net", "--timeout", "30"], 3.0),
    ("child_rekey", ["--rekey", "--child", "net"], 3.0),
    ("ike_rekey", ["--rekey", "--ike", "home"], 3.0),
    ("segment_drop", "-1", 2.0),
    ("segment_take", "+1", 2.0),
    ("terminate", ["--terminate", "--ike", "home"], 3.0),
)


def parse_hexdumps(log_text: str) -> list[tuple[str, bytes]]:
    """Every `label => N bytes @ 0x...` hex dump in a charon log, as (label, bytes)."""
    out: list[tuple[str, bytes]] = []
    label, want, buf = "", 0, bytearray()
    for line in log_text.splitlines():
        head = HEXDUMP_HEAD.search(line)
        if head:
            label, want, buf = head.group(1), int(head.group(2)), bytearray()
            if want == 0:
                out.append((label, b""))
            continue
        body = HEXDUMP_LINE.search(line)
        if body and want:
            buf += bytes.fromhex(body.group(1).replace(" ", ""))
            if len(buf) >= want:
                out.append((label, bytes(buf[:want])))
                want = 0
    return out


def name_datagrams(records: list[tuple[float, bytes]],
                   marks: list[tuple[str, float]]) -> list[tuple[str, bytes]]:
    """Name each datagram `<step>_<type>_<n>` after the last step started before it."""
    from hasync.ha import MalformedMessage, MessageType, decode
    named, counts = [], {}  # type: ignore[var-annotated]
    for t, data in records:
        step = "startup"
        for name, t_mark in marks:
            if t >= t_mark:
                step = name
        try:
            kind = MessageType(decode(data).type).name.lower()
        except (MalformedMessage, ValueError):
            kind = f"type{data[1] if len(data) > 1 else 'x'}"
        key = f"{step}_{kind}"
        counts[key] = counts.get(key, 0) + 1
        named.append((f"{key}_{counts[key]}", data))
    return named


def _run_steps(run: Run) -> list[tuple[str, float]]:
    lab, marks = run.lab, []
    for step, action, wait in STEPS:
        marks.append((step, time.monotonic()))
        if isinstance(action, str):
            (lab.run_dir("gw1") / "charon.ha").write_text(action + "\n")
        else:
            cluster.swanctl(lab, "c1", action, timeout=60)
        time.sleep(wait)
    return marks


def run_capture(out_dir: Path) -> dict[str, object]:
    """Bring up gw1 with a recording HA peer and one client, run STEPS, return the vectors."""
    spec = LabSpec(gateways=2, clients=1, nat_clients=0)
    with lab_run(spec, out_dir) as run:
        lab, topo = run.lab, run.lab.topo
        rec = lab.base / "ha-record.log"
        warm_kernel_crypto()
        topology.build(topo, lambda argv, stdin: lab.run(None, argv, stdin=stdin) and None)
        lab.prepare_dirs()
        cluster.write_configs(lab, spec.timers, keys_in_log=True)
        lab.spawn("gw1", "harecord", [sys.executable, "-m", "hasync_lab.harecord", "127.0.0.2",
                                      "4510", str(rec)], private_run=False)
        for n in ("gw1", "c1"):
            cluster.start_charon(lab, n)
        for n in ("gw1", "c1"):
            cluster.wait_charon(lab, n)
            cluster.load_config(lab, n)
        for addr, dev in ((topology.PUBLIC_VIP, "e0"), (topology.PRIVATE_VIP, "e1")):
            lab.run("gw1", ["ip", "addr", "add", f"{addr}/24", "dev", dev])
        time.sleep(3.0)  # no heartbeat: charon takes its segment after 2.1 s (its default)
        marks = _run_steps(run)
        records = [(float(t), bytes.fromhex(h)) for t, h in
                   (line.split() for line in rec.read_text().splitlines() if line.strip())]
        keys = parse_hexdumps(lab.log_path("gw1", "charon-file").read_text(errors="replace"))
    return {"charon": "strongSwan 5.9.8 (Debian 12)", "kernel": kernel_release(),
            "ike_proposal": confgen.IKE_PROPOSAL, "esp_proposal": confgen.ESP_PROPOSAL,
            "vectors": [[n, d.hex()] for n, d in name_datagrams(records, marks)],
            "logged_keys": [[label, k.hex()] for label, k in keys]}
