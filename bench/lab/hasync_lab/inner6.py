"""IPv6 inside the tunnel (issue 18, item 5, inner): with `--ipv6`, the IPv6 client asks for a
virtual IP of each family (swanctl `vips = 0.0.0.0, ::`) and reaches both protected networks
(PROTECTED, PROTECTED6) through its one CHILD_SA; a second probe flow, `<client>/v6`, runs
from its IPv6 virtual IP to the server's IPv6 address and is measured like any tunnel.

Rules: pure names and argument lists. The IPv6 flow is a `tunnels.Tunnel` of its own (its
client's connection and child, so every check of that tunnel applies to it) whose name ends in
FLOW_SUFFIX; tunnel_table lists IKE tunnels and leaves it out. The probe server on srv is
dual-stack when such a flow exists (`[::]:PORT`: IPv4 clients arrive as v4-mapped addresses,
net.ipv6.bindv6only = 0 as the kernel defaults). A run with an IPv6 flow that did not resume
after a failover fails (`unresumed`, cli.py). Route-based tunnels: an XFRM interface carries
both families (routebased.setup `six`); VTI (ip_vti) carries IPv4 only and is refused with
`--ipv6` (cli.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .topology import SERVER_IP6, Topology
from .tunnels import Tunnel

FLOW_SUFFIX = "/v6"  # c1/v6: the IPv6 flow of c1's tunnel
ANY_SOURCE6 = "::"  # the kernel picks the source: the tunnel's IPv6 virtual IP


def is_flow(name: str) -> bool:
    """Whether tunnel `name` is an IPv6 inner flow (not an IKE tunnel of its own)."""
    return name.endswith(FLOW_SUFFIX)


def flows(topo: Topology) -> list[Tunnel]:
    """The IPv6 flow of each client with an IPv6 address (on its `home` connection)."""
    return [Tunnel(f"{c.name}{FLOW_SUFFIX}", c.name, "home", "net")
            for c in topo.by_role("client") if c.address6 is not None]


def server_bind(port: int, six: bool) -> str:
    """The probe server's --bind: dual-stack with `six`, else IPv4 only."""
    return f"[::]:{port}" if six else f"0.0.0.0:{port}"


def log_name(flow: str) -> str:
    """The probe log file of `flow` (no slash in a file name)."""
    return flow.replace("/", "-") + ".log"


def client_argv(py: str, flow: str, port: int, rate: float, log: str) -> list[str]:
    """The probeflows client of one IPv6 flow, to the server's IPv6 address."""
    return [py, "-m", "hasync_lab.probeflows", "client", "--server", f"[{SERVER_IP6}]:{port}",
            "--rate", str(rate), "--flow", f"{flow}@{ANY_SOURCE6}", "--log", log]


def unresumed(result: dict[str, Any]) -> list[str]:
    """`failover k: name` for every IPv6 flow whose traffic did not resume after failover k."""
    out = []
    for k, fo in enumerate(result.get("failovers") or [], 1):
        rows: Iterable[dict[str, Any]] = fo.get("clients") or [] if isinstance(fo, dict) else []
        out += [f"failover {k}: {c.get('name')}" for c in rows
                if c.get("inner") == "ipv6" and not c.get("resumed")]
    return out
