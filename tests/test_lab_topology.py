"""The lab's plan, configuration text and PKI: pure parts, no root needed."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from hasync_lab import confgen, pki, topology


def test_plan_default_has_three_gateways_three_clients_one_nat() -> None:
    topo = topology.plan(3, 3)
    assert [n.name for n in topo.by_role("gateway")] == ["gw1", "gw2", "gw3"]
    clients = topo.by_role("client")
    assert [c.behind_nat for c in clients] == [False, False, True]
    assert topo.by_role("nat") and topo.by_role("server")
    assert clients[2].routes == ("default via 198.51.100.1",)


def test_plan_addresses_and_macs_are_unique() -> None:
    topo = topology.plan(5, 20, nat_clients=4)
    addrs = [a for n in topo.nodes for i in n.ifaces for a in i.addrs]
    macs = [i.mac for n in topo.nodes for i in n.ifaces]
    assert len(addrs) == len(set(addrs))
    assert len(macs) == len(set(macs))
    assert all(len(topo.ns(n.name)) <= 15 for n in topo.nodes)


def test_plan_without_nat_has_no_nat_router() -> None:
    topo = topology.plan(2, 2, nat_clients=0)
    assert not topo.by_role("nat") and not topo.nat_rules
    assert len(topo.bridges) == 2


@pytest.mark.parametrize(("gws", "clients", "nat"), [(1, 3, 1), (6, 3, 1), (3, 0, 0), (3, 2, 3)])
def test_plan_rejects_out_of_range(gws: int, clients: int, nat: int) -> None:
    with pytest.raises(ValueError):
        topology.plan(gws, clients, nat)


def test_build_and_teardown_commands_cover_every_node() -> None:
    topo = topology.plan(2, 2)
    steps: list[tuple[list[str], str | None]] = []
    topology.build(topo, lambda argv, stdin: steps.append((argv, stdin)))
    assert steps == topology.build_steps(topo)
    made = {c[3] for c, _ in steps if c[:3] == ["ip", "netns", "add"]}
    removed = {c[3] for c in topology.teardown_commands(topo) if c[:3] == ["ip", "netns", "del"]}
    assert made == removed == {topo.ns(n.name) for n in topo.nodes}
    first_batch = next(i for i, (c, _) in enumerate(steps) if "-batch" in c)
    assert all(c[:3] == ["ip", "netns", "add"] for c, _ in steps[:first_batch])  # before use
    host = steps[first_batch][1] or ""
    assert host.count(" type veth ") == sum(len(n.ifaces) for n in topo.nodes)
    batches = {c[2]: text or "" for c, text in steps if c[:2] == ["ip", "-n"]}
    assert set(batches) == made and all(b.endswith("\n") for b in batches.values())
    assert "addr add 127.0.0.2/8 dev lo" in batches["hl-gw1"]
    assert "127.0.0.2" not in batches["hl-c1"]
    nft = [text for c, text in steps if "nft" in c]
    assert len(nft) == 1 and "masquerade" in (nft[0] or "")


def test_strongswan_conf_loads_ha_only_on_gateways() -> None:
    t = confgen.LabTimers()
    gw = confgen.strongswan_conf("/l", "/s", t, ha=True)
    cl = confgen.strongswan_conf("/l", "/s", t, ha=False)
    assert " ha\n" in gw and "remote = 127.0.0.2" in gw
    assert " ha\n" not in cl and "plugins { ha" not in cl
    assert f"retransmit_tries = {t.retransmit_tries}" in cl
    assert "heartbeat_timeout" not in gw  # keepalived alone (baseline): charon's default


def test_with_hasync_as_peer_charon_waits_as_deploy_does() -> None:
    gw = confgen.strongswan_conf("/l", "/s", confgen.LabTimers(), ha=True, hasync_peer=True)
    deploy = (Path(__file__).resolve().parent.parent / "deploy" / "strongswan-ha.conf")
    line = f"heartbeat_timeout = {confgen.HA_HEARTBEAT_TIMEOUT_MS}"
    assert line in gw and line in deploy.read_text()


def test_client_conf_carries_dpd_and_virtual_ip() -> None:
    text = confgen.swanctl_client("c1", "192.0.2.1", "10.1.0.0/24", confgen.LabTimers())
    assert "dpd_delay = 10s" in text and "dpd_action = restart" in text
    assert "vips = 0.0.0.0" in text and f"id = {pki.GATEWAY_ID}" in text


def test_keepalived_conf_is_vrrpv3_nopreempt_with_fifo() -> None:
    text = confgen.keepalived_conf("gw2", 190, 0.5, "/r/f", [("192.0.2.1/24", "e0")], "e0")
    for want in ("vrrp_version 3", "nopreempt", "priority 190", "advert_int 0.5",
                 "notify_fifo /r/f", "192.0.2.1/24 dev e0"):
        assert want in text


def test_pki_certificates_chain_to_the_ca_and_carry_ids() -> None:
    now = datetime.datetime.now(datetime.UTC)
    creds = pki.make_lab_pki(["c1"], now)
    ca = x509.load_pem_x509_certificate(creds["ca"].cert_pem)
    for name, want in (("gateway", pki.GATEWAY_ID), ("c1", pki.client_id("c1"))):
        cert = x509.load_pem_x509_certificate(creds[name].cert_pem)
        cert.verify_directly_issued_by(ca)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == [want]
        assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)


def test_ipv6_clients_and_the_gateways_get_a_public_ipv6_address() -> None:
    topo = topology.plan(3, 3, 1, ipv6_clients=1)
    assert topo.node("gw1").address6 == "2001:db8:2::11"
    assert topo.node("c1").address6 == "2001:db8:2::101" and topo.node("c1").address == \
        "192.0.2.101"
    assert topo.node("c2").address6 is None and topo.node("c3").address6 is None
    inside = "".join(stdin or "" for _, stdin in topology.build_steps(topo))
    assert "addr add 2001:db8:2::101/64 dev e0 nodad" in inside
    with pytest.raises(ValueError, match="ipv6 clients"):
        topology.plan(3, 3, 1, ipv6_clients=3)  # c3 is behind the NAT
    assert topology.plan(3, 3, 1).node("gw1").address6 is None


def test_gateways_of_an_ipv6_lab_hold_the_ipv6_vip_beside_the_others() -> None:
    text = confgen.keepalived_conf("gw1", 190, 0.5, "/r/f", [("192.0.2.1/24", "e0")], "e0",
                                   excluded=[("2001:db8:2::1/64", "e0")])
    assert "virtual_ipaddress_excluded {\n    2001:db8:2::1/64 dev e0\n  }" in text
    assert "excluded" not in confgen.keepalived_conf("gw1", 190, 0.5, "/r/f",
                                                     [("192.0.2.1/24", "e0")], "e0")
