"""Route-based tunnels on the lab's gateways (issue 18, item 4): an XFRM interface (`xfrmi`,
the SAs and policies carry XFRMA_IF_ID) or a VTI device (`vti`, they carry XFRMA_MARK), with
the clients' pool routed through it instead of policy-based lookups.

Rules: pure text and argument lists; scenario.py runs them in every gateway's namespace after
the network is built and before charon starts. One interface id / VTI key for all clients
(static values: every node must install the same ones, and charon's `%unique` would differ
between nodes). strongSwan's side: swanctl children `if_id_in/if_id_out` or `mark_in/mark_out`
(confgen.py); with VTI, charon must not install its own routes (`install_routes = no`): a
route to the client's virtual IP via the LAN would bypass the VTI (kernel_netlink_ipsec.c
install_route() skips only policies with an interface id).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .topology import POOL, POOL6

if TYPE_CHECKING:
    from .procs import Lab

KINDS = ("xfrmi", "vti")
IF_ID = 0x42  # XFRM interface id, and the VTI key = mark of its SAs and policies
DEVICE = {"xfrmi": "xfrm42", "vti": "vti42"}


def child_options(kind: str) -> str:
    """The swanctl child options that bind a gateway's CHILD_SAs to the interface."""
    if kind == "xfrmi":
        return f"if_id_in = {IF_ID:#x}\n                     if_id_out = {IF_ID:#x}"
    if kind == "vti":
        return f"mark_in = {IF_ID:#x}\n                     mark_out = {IF_ID:#x}"
    raise ValueError(f"route-based kind must be one of {', '.join(KINDS)}, not {kind!r}")


def setup(kind: str, local: str, lan_if: str = "e0", six: bool = False) -> list[list[str]]:
    """Commands that make the interface and route the pool through it (`local`: the VIP);
    with `six`, the IPv6 pool too (xfrmi only: ip_vti carries IPv4, cli.py refuses it)."""
    if six and kind != "xfrmi":
        raise ValueError(f"an IPv6 pool needs route-based kind xfrmi, not {kind!r}")
    dev = DEVICE[kind]
    if kind == "xfrmi":
        make = ["ip", "link", "add", dev, "type", "xfrm", "dev", lan_if, "if_id", f"{IF_ID:#x}"]
        extra: list[list[str]] = []
    else:  # any remote, the VIP as local: vti_rcv() finds it and marks what it decrypts
        make = ["ip", "link", "add", dev, "type", "vti", "local", local, "remote", "0.0.0.0",
                "key", f"{IF_ID:#x}"]
        extra = [["sysctl", "-qw", f"net.ipv4.conf.{dev}.disable_policy=1"]]
    return [make, *extra, ["ip", "link", "set", dev, "up"],
            ["ip", "route", "replace", POOL, "dev", dev],
            *([["ip", "-6", "route", "replace", POOL6, "dev", dev]] if six else [])]


def bound_sas(xfrm_state: str, kind: str, local: str) -> tuple[int, int, int]:
    """(SAs, SAs that must be bound, those bound) in `ip xfrm state` output: every SA carries
    the interface id (xfrmi); only outbound ones (source `local`) carry the mark (vti:
    strongSwan sets mark_in on the inbound policy only, not on the SA without `mark_in_sa`,
    and vti_rcv()'s marked lookup matches an unmarked SA)."""
    blocks = re.split(r"^src ", xfrm_state, flags=re.M)[1:]
    want = re.compile(rf"^\s+if_id {IF_ID:#x}[ \t]*$" if kind == "xfrmi" else
                      rf"^\s+mark {IF_ID:#x}/0xffffffff[ \t]*$", re.M)  # ip prints a blank
    must = [b for b in blocks if kind == "xfrmi" or b.startswith(f"{local} ")]
    return len(blocks), len(must), sum(1 for b in must if want.search(b))


def observe(lab: Lab, kind: str, local: str) -> dict[str, dict[str, int]]:
    """Per gateway: its ESP SAs, how many must be bound to the interface, how many are."""
    out = {}
    for gw in (n.name for n in lab.topo.by_role("gateway")):
        total, must, bound = bound_sas(lab.run(gw, ["ip", "xfrm", "state"], check=False), kind,
                                       local)
        out[gw] = {"sas": total, "to_bind": must, "bound": bound}
    return out
