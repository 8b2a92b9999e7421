"""hasync_lab.mobike and --mobike (issue 18, item 3): the option, the configuration it writes,
the roam plan, the advertised-address verdict on client logs, the follow verdict on gateway
listings, and the captures keyed on every address a client had."""

from __future__ import annotations

import pytest

from hasync_lab import cli, confgen, mobike, pcap, report, topology, tunnels
from hasync_lab.observe import IkeSa, XfrmSa, parse_list_sas
from hasync_lab.pcap import EspPacket


def _spec(*argv: str) -> tuple[str, ...]:
    return cli.spec_of(cli.parser().parse_args(["failover", *argv])).mobike


def test_mobike_names_clients_not_behind_nat() -> None:
    assert _spec("--mobike", "c2") == ("c2",)
    assert _spec("--mobike", "c1, c2") == ("c1", "c2")
    assert _spec() == ()
    assert _spec("--mobike", "c3", "--nat-clients", "0") == ("c3",)


@pytest.mark.parametrize(("argv", "msg"), [
    (("--mobike", "c3"), "c3 is behind NAT"),
    (("--mobike", "c4"), "no client 'c4'"),
    (("--mobike", "c2,c2"), "twice"),
    (("--mobike", "c1", "--ipv6"), "over IPv6"),
    (("--mobike", "c2", "--leases"), "--leases"),
    (("--mobike", "c2", "--baseline"), "not with --baseline"),
    (("--mobike", "c2", "--tunnels", "4"), "--tunnels"),
])
def test_a_client_that_cannot_roam_is_refused_in_one_line(argv: tuple[str, ...],
                                                          msg: str) -> None:
    with pytest.raises(cli.LabError, match=msg):
        _spec(*argv)


def test_mobike_survives_the_trip_to_the_vm() -> None:
    import json

    from hasync_lab import runner
    from hasync_lab.session import spec_dict
    spec = cli.spec_of(cli.parser().parse_args(["failover", "--mobike", "c2"]))
    assert runner.spec_from_dict(json.loads(json.dumps(spec_dict(spec)))) == spec


def test_only_mobike_clients_and_then_the_gateways_say_mobike_yes() -> None:
    t = confgen.LabTimers()
    assert "mobike = yes" in confgen.swanctl_client("c2", "192.0.2.1", "10.1.0.0/24", t,
                                                    mobike=True)
    plain = confgen.swanctl_client("c2", "192.0.2.1", "10.1.0.0/24", t, ("l0a",))
    assert "mobike = yes" not in plain and plain.count("mobike = no") == 2
    gw = confgen.swanctl_gateway("192.0.2.1", "10.1.0.0/24", mobike=True)
    rw, psk = gw.split("  tunnels {")
    assert "mobike = yes" in rw and "mobike = no" in psk  # certificate clients only
    assert "mobike = yes" not in confgen.swanctl_gateway("192.0.2.1", "10.1.0.0/24")


def test_the_private_vip_gets_link_scope_only_when_hidden() -> None:
    vips = [("192.0.2.1/24", "e0"), ("10.1.0.1/24", "e1")]
    hidden = confgen.keepalived_conf("gw1", 200, 0.5, "/f", vips, "e0",
                                     link_scope=("10.1.0.1/24",))
    # a /32: a link-scoped secondary in the node's own global /24 is refused (D274)
    assert "    10.1.0.1/32 dev e1 scope link\n" in hidden
    assert "    192.0.2.1/24 dev e0\n" in hidden
    assert "scope" not in confgen.keepalived_conf("gw1", 200, 0.5, "/f", vips, "e0")


def test_every_gateway_address_is_deprecated_ipv6_without_dad() -> None:
    gw = topology.plan(3, 3, 1, ipv6_clients=1).node("gw2")
    assert mobike.deprecate_batch(gw).splitlines() == [
        "addr change 192.0.2.12/24 dev e0 preferred_lft 0",
        "addr change 2001:db8:2::12/64 dev e0 preferred_lft 0 nodad",
        "addr change 10.1.0.12/24 dev e1 preferred_lft 0",
        "addr change fd00:1::12/64 dev e1 preferred_lft 0 nodad"]  # --ipv6's inner (inner6.py)


def test_roams_move_each_client_to_its_own_new_addresses() -> None:
    assert [mobike.roam_address("c2", k) for k in (0, 1)] == ["192.0.2.122", "192.0.2.142"]
    every = {mobike.roam_address(f"c{n}", k) for n in range(1, 21) for k in (0, 1)}
    homes = {n.address for n in topology.plan(5, 20, 1).nodes}
    assert len(every) == 40 and not every & homes and topology.NAT_OUTSIDE not in every
    with pytest.raises(ValueError):
        mobike.roam_address("c2", 2)
    assert mobike.roam_batch("192.0.2.102", "192.0.2.122") == (
        "addr add 192.0.2.122/24 dev e0\naddr del 192.0.2.102/24 dev e0\n")


AUTH = ("00:00:01 05[ENC] <home|1> parsed IKE_AUTH response 1 [ IDr CERT AUTH CPRP(ADDR) SA "
        "TSi TSr N(MOBIKE_SUP) {} ]\n00:00:01 05[IKE] <home|1> peer supports MOBIKE\n")


def test_a_client_offered_only_no_additional_addresses_passes() -> None:
    seen = mobike.advertised(AUTH.format("N(NO_ADD_ADDR)"))
    assert seen == {"mobike_agreed": True, "additional": [], "no_additional": 1}
    assert mobike.advert_error(seen) is None


def test_a_gateway_advertising_its_own_address_fails_the_check() -> None:
    log = AUTH.format("N(ADD_4_ADDR) N(ADD_4_ADDR)") + (
        "00:00:01 05[IKE] <home|1> got additional MOBIKE peer address: 10.1.0.11\n"
        "00:00:01 05[IKE] <home|1> got additional MOBIKE peer address: 192.0.2.11\n")
    seen = mobike.advertised(log)
    assert seen["additional"] == ["10.1.0.11", "192.0.2.11"] and not seen["no_additional"]
    assert mobike.advert_error(seen) == (
        "gateways advertised their own addresses: 10.1.0.11, 192.0.2.11")


def test_a_vip_of_the_other_family_may_be_advertised_but_mobike_must_be_agreed() -> None:
    log = AUTH.format("N(ADD_6_ADDR)") + (
        "00:00:01 05[IKE] <home|1> got additional MOBIKE peer address: 2001:db8:2::1\n")
    assert mobike.advert_error(mobike.advertised(log)) is None
    no_mobike = AUTH.format("N(NO_ADD_ADDR)").splitlines()[0]
    assert "not agreed" in str(mobike.advert_error(mobike.advertised(no_mobike)))
    assert "no NO_ADDITIONAL" in str(mobike.advert_error(mobike.advertised(
        AUTH.format(""))))


def _sa(state: str, host: str) -> IkeSa:
    return IkeSa("rw", state, "aa", "bb", (("c1", "c2"),), False, (), ("10.3.0.2",), host)


def _x(spi: int, dst: str) -> XfrmSa:
    return XfrmSa("192.0.2.1", dst, spi, False, 0, 5, 0, 0)


def test_a_backup_follows_only_with_its_ike_sa_and_every_outbound_sa_moved() -> None:
    out = {0xc1, 0xc3}
    new = "192.0.2.122"
    moved = mobike.gateway_view(_sa("PASSIVE", new), [_x(0xc1, new), _x(0xc3, new),
                                                      _x(0xc2, "192.0.2.1")], out)
    assert moved["xfrm_dst"] == {"000000c1": new, "000000c3": new}
    assert mobike.ike_followed(moved, new, "PASSIVE") and mobike.xfrm_followed(moved, new, out)
    assert not mobike.ike_followed(moved, new, "ESTABLISHED")
    half = mobike.gateway_view(_sa("PASSIVE", new), [_x(0xc1, new), _x(0xc3, "192.0.2.102")],
                               out)
    assert mobike.ike_followed(half, new, "PASSIVE") and not mobike.xfrm_followed(half, new, out)
    stale = mobike.gateway_view(_sa("PASSIVE", "192.0.2.102"), [_x(0xc1, new)], out)
    assert not mobike.ike_followed(stale, new, "PASSIVE")
    assert not mobike.xfrm_followed(stale, new, out)  # one of two outbound SAs missing
    gone = mobike.gateway_view(None, [], out)
    assert gone["state"] is None and not mobike.xfrm_followed(gone, new, set())
    assert mobike.find_sa([_sa("PASSIVE", new)], "aa_bb") and not mobike.find_sa([], "aa_bb")


def test_list_sas_carries_the_peers_outer_address() -> None:
    (sa,) = parse_list_sas([{"home": {"state": b"ESTABLISHED", "remote-host": b"192.0.2.1"}}])
    assert sa.remote_host == "192.0.2.1"


def test_a_sequence_number_reused_across_a_roam_is_still_a_reuse() -> None:
    old, new = "192.0.2.102", "192.0.2.122"
    pkts = [EspPacket(1.0, "192.0.2.1", old, 7, 1, False),
            EspPacket(2.0, "192.0.2.1", old, 7, 2, False),
            EspPacket(3.0, "192.0.2.1", new, 7, 2, False),  # the same SA at the new address
            EspPacket(4.0, "192.0.2.1", new, 7, 3, False)]
    assert tunnels.reuse_by_spi(tunnels.by_spi(pkts, new), 0, 10) == {7: 0}  # one address: 0
    both = tunnels.by_spi(pkts, (old, new))
    assert tunnels.reuse_by_spi(both, 0, 10) == {7: 1}
    (jump,) = pcap.seq_jumps(pkts, (old, new), 2.5)
    assert (jump.last_before, jump.first_after, jump.seq_skipped) == (2, 2, -1)
    # at the new address alone the step back is not seen
    assert [j.seq_skipped for j in pcap.seq_jumps(pkts, new, 2.5)] == [0]


def test_a_roam_shows_in_the_table() -> None:
    client = {"name": "c2", "nat": False, "mobike": True, "reestablished": False,
              "resumed": True, "outage_ms": 900.0, "lost_to_client": 1, "lost_from_client": 2,
              "replay_errors": 0, "seq_reuse": 0}
    roam = {"when": "after", "client": "c2", "from": "192.0.2.122", "to": "192.0.2.142",
            "master": "gw2", "master_ms": 812.4,
            "backups": {"gw3": {"ike_ms": 1500.0, "xfrm_ms": None, "followed": False}}}
    fo = {"from": "gw1", "to": "gw2", "vrrp_detect_ms": 2040.0, "vip_moved": True,
          "clients": [client, {**client, "name": "c1", "mobike": False}], "roams": [roam]}
    text = report.table({"failovers": [fo], "mobike": {"ok": False, "errors": ["x"]}})
    header = text.splitlines()[1]
    assert "mobike" in header
    rows = [line.split() for line in text.splitlines() if line.strip().startswith("gw1->gw2 ")]
    assert [r[3] for r in rows] == ["yes", "no"]
    assert ("gw1->gw2: roam after of c2: 192.0.2.122 -> 192.0.2.142; master gw2 after 812 "
            "ms; backups (IKE_SA/kernel SAs) gw3 1500/- ms NOT FOLLOWED") in text
    assert text.endswith("MOBIKE: FAILED: x")


def test_roams_are_attached_to_the_failover_and_to_each_roaming_clients_rows() -> None:
    from hasync_lab.failover import attach_roams
    fo: dict[str, object] = {"clients": [{"client": "c1"}, {"client": "c2"}]}
    roams = [{"client": "c2", "when": "before"}, {"client": "c2", "when": "after"}]
    attach_roams(fo, roams)
    assert fo["roams"] == roams
    assert [c["roams"] for c in fo["clients"]] == [[], roams]  # type: ignore[attr-defined]
