"""An IKE exchange in flight at the fault (issue 18, item 2): the first client starts it, the
master processes the request (journaled) but its response never reaches the client, and the
master fails. The client must keep its IKE_SA: its retransmission reaches the new master,
which processes the request again (hasync's midsync.py) and answers.

Rules: the lab's part only. The response is dropped by an nftables table in the master's
namespace (IKE from port 500, or from 4500 with the zero non-ESP marker, RFC 3948 2.2, to the
client's address as the master sees it); the fault strikes as soon as the table's counter shows
the response was sent, then the table goes. Kinds: `child-rekey` (CREATE_CHILD_SA rekeying the
CHILD_SA), `ike-rekey` (CREATE_CHILD_SA rekeying the IKE_SA), `dpd` (an empty INFORMATIONAL:
the table also drops the master's ESP to the client, so after dpd_delay without inbound
traffic the client's charon sends a DPD, whose response the table drops too). The verdict
reads the client's charon log (strongSwan 5.9.8's lines: "giving up after N retransmits",
"CHILD_SA net{N} established", "IKE_SA home[N] rekeyed", a DPD answered as aftercheck.py
reads it) and its IKE_SAs.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from . import aftercheck, cluster, hasyncd, mobike, topology
from .session import Run

log = logging.getLogger("hasync_lab")
KINDS = ("child-rekey", "ike-rekey", "dpd")
TABLE = "hasync_lab_inflight"
SENT_TIMEOUT_S = 20.0  # the master processes the request and answers within this
OUTCOME_TIMEOUT_S = 120.0  # the client's retransmissions (IN_FLIGHT_TIMERS) end within this
_RETRANSMIT = re.compile(r"retransmit (\d+) of request with message ID (\d+)$")
_GAVE_UP = re.compile(r"giving up after \d+ retransmits$")
_CHILD_UP = re.compile(r"CHILD_SA net\{\d+\} established")
_IKE_REKEYED = re.compile(r"IKE_SA home\[\d+\] rekeyed between")


def rules(client_addr: str, esp: bool = False) -> str:
    """nft script: drop (and count) IKE the gateway sends to `client_addr`; with `esp`, drop
    its ESP to the client as well (not counted: the count is the IKE responses dropped)."""
    ip = "ip6" if ":" in client_addr else "ip"
    quiet = (f"    {ip} daddr {client_addr} meta l4proto esp drop\n"
             f"    {ip} daddr {client_addr} udp sport 4500 @th,64,32 != 0 drop\n") if esp else ""
    return f"""table inet {TABLE} {{
  chain out {{
    type filter hook output priority 0; policy accept;
    {ip} daddr {client_addr} udp sport 500 counter drop
    {ip} daddr {client_addr} udp sport 4500 @th,64,32 0 counter drop
{quiet}  }}
}}
"""


def dropped(listing: str) -> int:
    """Packets the table's rules dropped, from `nft list table` output."""
    return sum(int(m) for m in re.findall(r"counter packets (\d+)", listing))


def verdict(log_text: str, kind: str) -> dict[str, Any]:
    """What the client's log says happened to the exchange after the fault."""
    lines = aftercheck.log_lines(log_text)
    retransmits = [m.groups() for line in lines if (m := _RETRANSMIT.search(line))]
    if kind == "dpd":
        completed = any(d.answered for d in aftercheck.dpd_exchanges(log_text))
    else:
        done = _CHILD_UP if kind == "child-rekey" else _IKE_REKEYED
        completed = any(done.search(line) for line in lines)
    return {"retransmits": len(retransmits),
            "gave_up": any(_GAVE_UP.search(line) for line in lines), "completed": completed}


def client_address(run: Run, client: str) -> str:
    """The address the gateways see for `client` (the NAT router's outside one behind NAT)."""
    node = run.lab.topo.node(client)
    return topology.NAT_OUTSIDE if node.behind_nat else mobike.current(run, client)


def start(run: Run, master: str, kind: str) -> dict[str, Any]:
    """Start `kind` on the first client with its response dropped at `master`; return once
    the master sent (and lost) the response."""
    lab = run.lab
    client = lab.topo.by_role("client")[0].name
    offset = aftercheck.log_offset(lab, client)
    lab.run(master, ["nft", "-f", "-"], stdin=rules(client_address(run, client), kind == "dpd"))
    t0 = time.monotonic()
    wait_s = SENT_TIMEOUT_S
    if kind == "dpd":  # the client's charon starts it after dpd_delay without inbound packets
        wait_s += run.spec.timers.dpd_delay_s
    else:
        args = ["--child", aftercheck.CHILD] if kind == "child-rekey" else \
            ["--ike", aftercheck.CONNECTION]
        cluster.swanctl(lab, client, ["--rekey", *args], check=False)
    sent = 0
    while time.monotonic() < t0 + wait_s and not sent:
        time.sleep(0.05)
        sent = dropped(lab.run(master, ["nft", "list", "table", "inet", TABLE], check=False))
    log.info("%s in flight on %s: %d responses dropped at %s after %.2f s", kind, client, sent,
             master, time.monotonic() - t0)
    return {"kind": kind, "client": client, "offset": offset, "responses_dropped": sent,
            "response_after_s": round(time.monotonic() - t0, 2)}


def finish(run: Run, master: str, new_master: str | None, info: dict[str, Any]
           ) -> dict[str, Any]:
    """After the failover: drop the table at the struck node, wait until the client's log
    tells how the exchange ended (up to OUTCOME_TIMEOUT_S), and judge; with what the new
    master's hasync counted (midsync.py)."""
    run.lab.run(master, ["nft", "delete", "table", "inet", TABLE], check=False)
    offset = info.pop("offset")
    deadline = time.monotonic() + OUTCOME_TIMEOUT_S
    while True:
        seen = verdict(aftercheck.read_log(run.lab, info["client"], offset), info["kind"])
        if seen["completed"] or seen["gave_up"] or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    st = (hasyncd.status(run.lab, new_master) if new_master else None) or {}
    counted = {k: v for k, v in (st.get("counters") or {}).items() if k.startswith("mid_sync:")}
    return {**info, **seen, "mid_sync": counted}
