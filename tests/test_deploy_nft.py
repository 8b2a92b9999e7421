"""deploy/hasync-ha-link.nft in a network namespace of its own: a socket not owned by root
cannot send to or from UDP 4510 on loopback; root's sockets can (issue 17, finding 1)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

RULES = Path(__file__).resolve().parent.parent / "deploy" / "hasync-ha-link.nft"
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nft"),
                                reason="needs root and nft (Debian: nftables)")
# In a fresh namespace: load the rules, then try each send as root and as nobody.
PROBE = """
import os, socket, subprocess, sys
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
subprocess.run(["nft", "-f", sys.argv[1]], check=True)
def attempt(uid, src, dst):
    pid = os.fork()
    if pid == 0:
        if uid:
            os.setgid(uid); os.setuid(uid)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", src))
        try:
            s.sendto(b"x", ("127.0.0.2", dst))
            os._exit(0)
        except PermissionError:
            os._exit(1)
    return os.waitpid(pid, 0)[1] >> 8 == 0
print(attempt(0, 4510, 4510), attempt(65534, 4510, 4510), attempt(65534, 5000, 4510),
      attempt(65534, 5000, 5001))
"""


def test_finding1_the_deployed_rules_drop_the_ha_port_for_sockets_not_owned_by_root() -> None:
    out = subprocess.run(["unshare", "--net", sys.executable, "-c", PROBE, str(RULES)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    # root from 4510; nobody from 4510; nobody to 4510; nobody on other ports
    assert out.stdout.split() == ["True", "False", "False", "True"]
