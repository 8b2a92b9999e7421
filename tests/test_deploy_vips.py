"""The VIP lines of deploy/keepalived-hasync.conf and of the lab's keepalived.conf, added by
the kernel beside the node's own addresses: keepalived runs master without a VIP the kernel
refused and only logs a Netlink error, so the config must hold only addresses it accepts
(D274: a link-scoped /24 VIP in the node's own global /24 is refused, EINVAL)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from hasync_lab import confgen

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "keepalived-hasync.conf"
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                                reason="needs root and unshare (Debian: util-linux)")
VIP_LINE = re.compile(r"^\s+(\d+\.\d+\.\d+\.\d+/\d+) dev (\w+)((?: \w+ \S+)*)\s*(?:#.*)?$")


def _vip_lines(conf: str) -> list[tuple[str, str, list[str]]]:
    """(address, device, options) of each IPv4 line in virtual_ipaddress blocks."""
    block = conf.split("virtual_ipaddress {", 1)[1].split("}", 1)[0]
    out = []
    for line in block.splitlines():
        m = VIP_LINE.match(line)
        if m:
            out.append((m[1], m[2], m[3].split()))
    return out


def _added(own: dict[str, str], vips: list[tuple[str, str, list[str]]]) -> str:
    """In a fresh network namespace: a veth per device holding `own` address, then each VIP
    added as keepalived would; `ip -4 addr` after, or the error."""
    devs = sorted({*own, *(d for _, d, _ in vips)})
    script = ["set -e"]
    for i, dev in enumerate(devs):
        script += [f"ip link add {dev} type veth peer name p{i}", f"ip link set {dev} up"]
    script += [f"ip addr add {addr} dev {dev}" for dev, addr in own.items()]
    script += [f"ip addr add {addr} dev {dev} {' '.join(opts)}" for addr, dev, opts in vips]
    script.append("ip -4 -o addr show")
    out = subprocess.run(["unshare", "--net", "sh", "-c", "\n".join(script)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_deployed_vips_are_accepted_beside_the_nodes_own_addresses() -> None:
    vips = _vip_lines(DEPLOY.read_text())
    assert [v[0] for v in vips] == ["192.0.2.1/24", "10.1.0.1/32"]
    shown = _added({"eth0": "192.0.2.11/24", "eth1": "10.1.0.11/24"}, vips)
    assert re.search(r"eth1 +inet 10\.1\.0\.1/32 scope link", shown), shown


def test_the_labs_hidden_private_vip_is_accepted_and_the_old_form_is_not() -> None:
    vips = [("192.0.2.1/24", "e0"), ("10.1.0.1/24", "e1")]
    conf = confgen.keepalived_conf("gw1", 200, 0.5, "/f", vips, "e0",
                                   link_scope=("10.1.0.1/24",))
    lines = _vip_lines(conf)
    shown = _added({"e0": "192.0.2.11/24", "e1": "10.1.0.11/24"}, lines)
    assert re.search(r"e1 +inet 10\.1\.0\.1/32 scope link", shown), shown
    with pytest.raises(AssertionError, match="Invalid scope"):  # what the lab configured
        _added({"e1": "10.1.0.11/24"}, [("10.1.0.1/24", "e1", ["scope", "link"])])
