"""Route-based gateways in the lab (issue 18, item 4): the interface each kind makes, the
swanctl options that bind CHILD_SAs to it, and charon's routes left off for VTI."""

from __future__ import annotations

import pytest

from hasync_lab import cli, confgen, routebased
from hasync_lab.topology import POOL


def test_xfrmi_makes_an_xfrm_interface_and_routes_the_pool_through_it() -> None:
    cmds = routebased.setup("xfrmi", "192.0.2.1")
    assert cmds[0] == ["ip", "link", "add", "xfrm42", "type", "xfrm", "dev", "e0", "if_id",
                       "0x42"]
    assert cmds[-1] == ["ip", "route", "replace", POOL, "dev", "xfrm42"]


def test_vti_keys_its_device_and_disables_policy_checks_on_it() -> None:
    cmds = routebased.setup("vti", "192.0.2.1")
    assert cmds[0][:4] == ["ip", "link", "add", "vti42"] and "key" in cmds[0]
    assert ["sysctl", "-qw", "net.ipv4.conf.vti42.disable_policy=1"] in cmds


@pytest.mark.parametrize(("kind", "option"), [("xfrmi", "if_id_in = 0x42"),
                                              ("vti", "mark_in = 0x42")])
def test_gateway_children_are_bound_to_the_interface(kind: str, option: str) -> None:
    text = confgen.swanctl_gateway("192.0.2.1", "10.1.0.0/24", kind)
    assert text.count(option) == 2  # rw and tunnels
    assert option.replace("_in", "_out") in text
    assert "if_id" not in confgen.swanctl_gateway("192.0.2.1", "10.1.0.0/24")


def test_only_vti_gateways_turn_charons_routes_off() -> None:
    on = confgen.strongswan_conf("/l", "/s", confgen.LabTimers(), ha=True)
    off = confgen.strongswan_conf("/l", "/s", confgen.LabTimers(), ha=True,
                                  install_routes=False)
    assert "install_routes" not in on and "install_routes = no" in off


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="route-based"):
        routebased.child_options("gre")
    spec = cli.spec_of(cli.parser().parse_args(["failover", "--route-based", "vti"]))
    assert spec.route_based == "vti"


XFRM_STATE = """src 192.0.2.1 dst 192.0.2.101
\tproto esp spi 0xc1234567 reqid 1 mode tunnel
\treplay-window 0 flag af-unspec
\taead rfc4106(gcm(aes)) 0x00 128
\tif_id 0x42
src 192.0.2.101 dst 192.0.2.1
\tproto esp spi 0xc7654321 reqid 1 mode tunnel
\tmark 0x42/0xffffffff \n""" + """src 192.0.2.102 dst 192.0.2.1
\tproto esp spi 0xc7654322 reqid 2 mode tunnel
"""


def test_bound_sas_are_counted_by_kind() -> None:
    assert routebased.bound_sas(XFRM_STATE, "xfrmi", "192.0.2.1") == (3, 3, 1)
    # VTI: only the outbound SA (from the VIP) must carry the mark, and it does not
    assert routebased.bound_sas(XFRM_STATE, "vti", "192.0.2.1") == (3, 1, 0)
    assert routebased.bound_sas(XFRM_STATE, "vti", "192.0.2.101") == (3, 1, 1)
    assert routebased.bound_sas("", "vti", "192.0.2.1") == (0, 0, 0)
