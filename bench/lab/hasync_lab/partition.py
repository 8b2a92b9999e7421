"""The lab's network partition and forced traffic: cut one cluster node (a gateway or the
witness) off from every other, and send one client traffic through a gateway's own address.

Rules: the cut is one nftables table of the bridge family in the root namespace (where the
lab's bridges live): its forward chain drops every frame from the node's bridge ports to
another cluster node's ports and back (VRRP, Raft, ARP, everything, both directions), while
clients, the NAT router and the server still reach every node. The bridge hook sees each
egress port of a flooded frame (multicast VRRP included) on its own (net/bridge/br_forward.c,
NF_BR_FORWARD per port). Lifting the cut deletes the table. The forced traffic is ICMP from
the server to one client's inner address, policy-routed (rule on `ipproto icmp`, so the
probe flows still follow the VIP) through the gateway's protected-network address at a set
rate: that gateway's kernel encrypts it on its own SA whatever VRRP says. Script builders
are pure; `cut`, `heal`, `start_force` and `stop_force` act on the lab.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass

from .procs import Lab
from .topology import Topology, host_ifname

CUT_TABLE = "hasync_lab_cut"
FORCE_TABLE = 100  # the server's routing table for the forced traffic
FORCE_PREF = 100  # and its rule's preference (before `main`, 32766)
CLUSTER_ROLES = ("gateway", "witness")


def ports(topo: Topology, node: str) -> list[str]:
    """`node`'s bridge ports (the root-namespace ends of its veth pairs)."""
    return [host_ifname(topo, node, j) for j in range(len(topo.node(node).ifaces))]


def cluster_nodes(topo: Topology) -> list[str]:
    """Every node that runs hasync: the gateways and the witness, if any."""
    return [n.name for n in topo.nodes if n.role in CLUSTER_ROLES]


def cut_script(topo: Topology, node: str) -> str:
    """The nft script cutting `node` off from every other cluster node, both directions
    (replacing any earlier cut: `add` then `delete` leaves no table to fail on)."""
    mine = ", ".join(f'"{p}"' for p in ports(topo, node))
    others = ", ".join(f'"{p}"' for o in cluster_nodes(topo) if o != node
                       for p in ports(topo, o))
    if not others:
        raise ValueError(f"{node} has no other cluster node to be cut off from")
    return (f"add table bridge {CUT_TABLE}\ndelete table bridge {CUT_TABLE}\n"
            f"table bridge {CUT_TABLE} {{\n"
            f"  chain cut {{\n"
            f"    type filter hook forward priority -200; policy accept;\n"
            f"    iifname {{ {mine} }} oifname {{ {others} }} counter drop\n"
            f"    iifname {{ {others} }} oifname {{ {mine} }} counter drop\n"
            f"  }}\n}}\n")


def cut(lab: Lab, node: str) -> tuple[float, float]:
    """Cut `node` off; return (monotonic time before the command, after it): under TCG `nft`
    takes about a second to start, and the cut acts somewhere in between."""
    script = cut_script(lab.topo, node)
    t0 = time.monotonic()
    lab.run(None, ["nft", "-f", "-"], stdin=script)
    return t0, time.monotonic()


def heal(lab: Lab) -> tuple[float, float, list[int]]:
    """Lift the cut; return (time before, after) as `cut` does, and what each of its rules
    dropped (read and deleted by one shell: every process start costs a second under TCG)."""
    t0 = time.monotonic()
    out = lab.run(None, ["sh", "-c", f"nft -j list table bridge {CUT_TABLE} && "
                         f"nft delete table bridge {CUT_TABLE}"], check=False)
    return t0, time.monotonic(), cut_drops(out)


def cut_drops(nft_json: str) -> list[int]:
    """Packets each rule of the cut dropped, in rule order (node -> others, others -> node),
    from `nft -j list table bridge ...`."""
    try:
        doc = json.loads(nft_json)
    except ValueError:
        return []
    out = []
    for item in doc.get("nftables", []):
        for expr in (item.get("rule") or {}).get("expr", []):
            if isinstance(expr, dict) and "counter" in expr:
                out.append(int(expr["counter"].get("packets", 0)))
    return out


def read_cut_drops(lab: Lab) -> list[int]:
    """What the cut dropped so far (empty when there is no cut)."""
    return cut_drops(lab.run(None, ["nft", "-j", "list", "table", "bridge", CUT_TABLE],
                             check=False))


@dataclass(frozen=True)
class Forced:
    """Forced traffic in progress: to `vip` via `via`, at `rate` packets/s."""

    client: str
    vip: str
    via: str
    rate: float
    proc: subprocess.Popen[bytes] | None
    log_from: int = 0  # the ping log's size when this ping started (one log per lab run)


def force_batch(vip: str, via: str) -> str:
    """`ip -batch` lines on the server: ICMP to `vip` goes through `via`, nothing else does."""
    return (f"rule add to {vip}/32 ipproto icmp lookup {FORCE_TABLE} pref {FORCE_PREF}\n"
            f"route replace {vip}/32 via {via} dev e0 table {FORCE_TABLE}\n")


def ping_argv(vip: str, rate: float) -> list[str]:
    """iputils ping at `rate` packets/s (root may go below 0.2 s), quiet until it stops."""
    return ["ping", "-q", "-n", "-i", f"{1.0 / rate:.4f}", "-s", "32", vip]


def start_force(lab: Lab, client: str, vip: str, via: str, rate: float) -> Forced:
    """Route ICMP to `client`'s `vip` through `via` on the server and start sending."""
    if rate <= 0:
        return Forced(client, vip, via, rate, None)
    lab.run("srv", ["ip", "-batch", "-"], stdin=force_batch(vip, via))
    path = lab.log_path("srv", "force")
    start = path.stat().st_size if path.exists() else 0
    proc = lab.spawn("srv", "force", ping_argv(vip, rate), private_run=False)
    return Forced(client, vip, via, rate, proc, start)


PING_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) received")


def ping_summary(text: str) -> tuple[int, int] | None:
    """(transmitted, received) from the last summary iputils ping printed in `text`."""
    found = PING_SUMMARY.findall(text)
    return (int(found[-1][0]), int(found[-1][1])) if found else None


def stop_force(lab: Lab, f: Forced) -> dict[str, object]:
    """Stop the forced traffic; what ping says it sent and got back (its own summary: every
    fault of a run appends its ping's output to the same log)."""
    out: dict[str, object] = {"client": f.client, "vip": f.vip, "via": f.via,
                              "rate_pps": f.rate, "sent": None, "answered": None}
    if f.proc is None:
        return out
    with contextlib.suppress(ProcessLookupError):
        os.killpg(f.proc.pid, signal.SIGINT)  # ping prints its summary on SIGINT
    with contextlib.suppress(subprocess.TimeoutExpired):
        f.proc.wait(timeout=20)
    with open(lab.log_path("srv", "force"), "rb") as fh:
        fh.seek(f.log_from)
        summary = ping_summary(fh.read().decode(errors="replace"))
    if summary:
        out["sent"], out["answered"] = summary
    lab.run("srv", ["ip", "rule", "del", "pref", str(FORCE_PREF)], check=False)
    return out
