"""`--ipv6`'s inner half (inner6.py): the IPv6 client gets an IPv6 virtual IP beside its IPv4
one and an IPv6 probe flow through its tunnel; the pure parts, no root needed."""

from __future__ import annotations

import re
import socket

import pytest

from hasync_lab import cli, confgen, inner6, leases, observe, probeflows, routebased, topology
from hasync_lab.prereq import LabError


def _priv(node: topology.Node) -> tuple[str, ...]:
    return next(i.addrs for i in node.ifaces if i.bridge.endswith("-priv"))


def test_an_ipv6_lab_has_a_dual_stack_protected_network() -> None:
    topo = topology.plan(3, 3, 1, ipv6_clients=1)
    assert topo.node("srv").ifaces[0].addrs == ("10.1.0.100/24", "fd00:1::100/64")
    assert topo.node("srv").routes == ("default via 10.1.0.1", "::/0 via fd00:1::1")
    for k, gw in enumerate(topo.by_role("gateway"), 1):
        assert _priv(gw) == (f"10.1.0.{10 + k}/24", f"fd00:1::{10 + k}/64")
        assert gw.routes == ("10.3.0.0/22 via 192.0.2.254 dev e0",
                             "fd00:3::/112 via 2001:db8:2::254 dev e0")


def test_an_ipv4_lab_has_no_ipv6_inside() -> None:
    topo = topology.plan(3, 3, 1)
    addrs = [a for n in topo.nodes for i in n.ifaces for a in i.addrs]
    assert not [a for a in addrs if ":" in a]
    assert all(len(gw.routes) == 1 for gw in topo.by_role("gateway"))
    assert topo.node("srv").routes == ("default via 10.1.0.1",)


def _sysctls(topo: topology.Topology) -> dict[str, list[str]]:
    return {argv[3]: argv[7:] for argv, _ in topology.build_steps(topo) if "sysctl" in argv}


def test_gateways_forward_ipv6_only_in_an_ipv6_lab_and_the_nat_never() -> None:
    six = _sysctls(topology.plan(3, 3, 1, ipv6_clients=1))
    assert six["hl-gw1"] == ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"]
    assert six["hl-nat"] == ["net.ipv4.ip_forward=1"]
    assert _sysctls(topology.plan(3, 3, 1))["hl-gw1"] == ["net.ipv4.ip_forward=1"]


def test_ipv6_protected_addresses_skip_dad() -> None:
    steps = {argv[2]: stdin for argv, stdin in topology.build_steps(
        topology.plan(3, 3, 1, ipv6_clients=1)) if argv[:2] == ["ip", "-n"]}
    assert "addr add fd00:1::100/64 dev e0 nodad\n" in steps["hl-srv"]
    assert "addr add fd00:1::12/64 dev e1 nodad\n" in steps["hl-gw2"]


def test_the_ipv6_client_asks_for_both_families() -> None:
    text = confgen.swanctl_client("c1", topology.PUBLIC_VIP6, topology.PROTECTED,
                                  confgen.LabTimers(), six=True)
    assert "vips = 0.0.0.0, ::\n" in text
    assert "remote_ts = 10.1.0.0/24, fd00:1::/64\n" in text
    plain = confgen.swanctl_client("c2", topology.PUBLIC_VIP, topology.PROTECTED,
                                   confgen.LabTimers(), extra=("l0a",))
    assert "::" not in plain and "fd00" not in plain


def test_an_ipv6_gateway_offers_both_pools_and_both_protected_networks() -> None:
    sw = confgen.swanctl_gateway("192.0.2.1, 2001:db8:2::1", topology.PROTECTED, "xfrmi",
                                 six=True)
    assert sw.count("pools = rw_pool, rw_pool6\n") == 2  # rw and tunnels
    assert sw.count("local_ts = 10.1.0.0/24, fd00:1::/64\n") == 2
    ss = confgen.strongswan_conf("/l", "/s", confgen.LabTimers(), ha=True, six=True)
    # each pool on a line of its own: a strongswan.conf value runs to the end of its line
    assert re.search(r"pools \{ rw_pool = 10\.3\.0\.0/22\n +rw_pool6 = fd00:3::/112 \}", ss), ss
    v4 = confgen.swanctl_gateway("192.0.2.1", topology.PROTECTED)
    assert "rw_pool6" not in v4 and "fd00" not in v4
    assert "rw_pool6" not in confgen.strongswan_conf("/l", "/s", confgen.LabTimers(), ha=True)


def test_the_ipv6_protected_vip_moves_with_the_others_and_can_be_hidden_from_mobike() -> None:
    excluded = [("2001:db8:2::1/64", "e0"), ("fd00:1::1/64", "e1")]
    conf = confgen.keepalived_conf("gw1", 200, 0.5, "/f", [("192.0.2.1/24", "e0")], "e0",
                                   excluded=excluded, link_scope=("fd00:1::1/64",))
    block = conf.split("virtual_ipaddress_excluded {\n")[1].split("}")[0]
    assert block.splitlines() == ["    2001:db8:2::1/64 dev e0",
                                  "    fd00:1::1/64 dev e1 preferred_lft 0", "  "]


def test_an_xfrm_interface_routes_the_ipv6_pool_too_and_vti_refuses_it() -> None:
    assert routebased.setup("xfrmi", "192.0.2.1", six=True)[-1] == [
        "ip", "-6", "route", "replace", "fd00:3::/112", "dev", "xfrm42"]
    assert "fd00:3::/112" not in str(routebased.setup("xfrmi", "192.0.2.1"))
    with pytest.raises(ValueError, match="xfrmi"):
        routebased.setup("vti", "192.0.2.1", six=True)


def test_cli_refuses_ipv6_with_vti() -> None:
    a = cli.parser().parse_args(["failover", "--ipv6", "--route-based", "vti"])
    with pytest.raises(LabError, match="VTI"):
        cli.spec_of(a)
    ok = cli.spec_of(cli.parser().parse_args(["failover", "--ipv6", "--route-based", "xfrmi"]))
    assert ok.ipv6 and ok.route_based == "xfrmi"


def test_the_ipv6_client_has_one_ipv6_flow_on_its_home_tunnel() -> None:
    (flow,) = inner6.flows(topology.plan(3, 3, 1, ipv6_clients=1))
    assert (flow.name, flow.client, flow.conn, flow.child) == ("c1/v6", "c1", "home", "net")
    assert inner6.is_flow(flow.name) and not inner6.is_flow("c1")
    assert inner6.flows(topology.plan(3, 3, 1)) == []
    assert inner6.log_name(flow.name) == "c1-v6.log"


def test_the_ipv6_flow_command_is_one_probeflows_accepts() -> None:
    argv = inner6.client_argv("py", "c1/v6", 7000, 20.0, "/p/c1-v6.log")
    args = probeflows._parser().parse_args(argv[3:])
    assert args.server == (socket.AF_INET6, ("fd00:1::100", 7000))
    assert probeflows._checked_flows(probeflows._parser(), args) == [
        probeflows.FlowSpec("c1/v6", "::")]
    assert inner6.server_bind(7000, True) == "[::]:7000"
    assert inner6.server_bind(7000, False) == "0.0.0.0:7000"


def _result(*rows: dict[str, object]) -> dict[str, object]:
    return {"failovers": [{"clients": list(rows)}]}


def test_a_run_whose_ipv6_flow_did_not_resume_fails() -> None:
    v4 = {"name": "c2", "inner": "ipv4", "resumed": False}  # judged elsewhere, not here
    stalled = {"name": "c1/v6", "inner": "ipv6", "resumed": False}
    assert inner6.unresumed(_result(v4, stalled)) == ["failover 1: c1/v6"]
    assert inner6.unresumed(_result(v4, {**stalled, "resumed": True})) == []
    assert inner6.unresumed({"failovers": []}) == []


def test_ipv6_virtual_ips_count_as_leases_and_duplicates() -> None:
    sas = observe.parse_list_sas([{"rw": {
        "state": "ESTABLISHED", "initiator-spi": "1", "responder-spi": "2",
        "remote-vips": [b"10.3.0.1", b"fd00:3::1"]}}])
    assert leases.leases(sas, True) == {"rw/1_2": ("10.3.0.1", "fd00:3::1")}
    held = {"c1/home/a": ("10.3.0.1", "fd00:3::1"), "c2/l0a/b": ("10.3.0.2", "fd00:3::1")}
    assert leases.duplicates(held) == {"fd00:3::1": ["c1/home/a", "c2/l0a/b"]}
