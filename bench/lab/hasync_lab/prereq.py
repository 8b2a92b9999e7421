"""What the lab needs on the machine, and whether the running kernel can hold an ESP SA.

Rules: checks only look (they install nothing); every missing piece is reported with the
Debian or PyPI package that provides it; the ESP probe works in a scratch network namespace
that is always removed.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass


class LabError(RuntimeError):
    """The lab cannot run here; the message says why and what to do."""


@dataclass(frozen=True)
class Need:
    """One command or file the lab needs, and the package that provides it."""

    what: str
    package: str
    kind: str = "command"  # "command" (looked up on PATH), "file" (a glob), or "pypi"


# Both runners build the same namespaces and run the same daemons.
COMMON: tuple[Need, ...] = (
    Need("ip", "iproute2"),
    Need("unshare", "util-linux"),
    Need("mount", "mount"),
    Need("swanctl", "strongswan-swanctl"),
    Need("keepalived", "keepalived"),
    Need("tcpdump", "tcpdump"),
    Need("nft", "nftables"),
    Need("arping", "arping"),
    Need("ping", "iputils-ping"),
    Need("modprobe", "kmod"),
    Need("/usr/lib/ipsec/charon", "strongswan-charon", "file"),
    Need("/usr/lib/ipsec/plugins/libstrongswan-ha.so", "libcharon-extra-plugins", "file"),
    Need("/usr/lib/ipsec/plugins/libstrongswan-openssl.so", "libstrongswan-standard-plugins",
         "file"),
    Need("prometheus", "prometheus"),  # --prometheus (monitor.py)
)
# The VM runner boots Debian's stock kernel under QEMU with virtme-ng.
VM: tuple[Need, ...] = (
    Need("qemu-system-x86_64", "qemu-system-x86"),
    Need("/boot/vmlinuz-*", "linux-image-amd64", "file"),
    Need("vng", "virtme-ng", "pypi"),
)


def venv_which(name: str) -> str | None:
    """Find a command on PATH or beside the running interpreter (a virtualenv's bin)."""
    found = shutil.which(name)
    if found:
        return found
    beside = os.path.join(os.path.dirname(sys.executable), name)
    return beside if os.access(beside, os.X_OK) else None


def missing(needs: tuple[Need, ...], which: Callable[[str], str | None] = venv_which,
            exists: Callable[[str], bool] = lambda p: bool(glob.glob(p))) -> list[Need]:
    """Return the needs that this machine does not meet."""
    out = []
    for need in needs:
        ok = exists(need.what) if need.kind == "file" else which(need.what) is not None
        if not ok:
            out.append(need)
    return out


def describe_missing(needs: list[Need]) -> str:
    """One message naming what is missing and the install commands for it."""
    lines = [f"  {n.what}: from {(n.kind == 'pypi' and 'PyPI') or 'Debian'} package {n.package}"
             for n in needs]
    debs = sorted({n.package for n in needs if n.kind != "pypi"})
    pips = sorted({n.package for n in needs if n.kind == "pypi"})
    fix = []
    if debs:
        fix.append("apt-get install " + " ".join(debs))
    if pips:
        fix.append("pip install " + " ".join(pips) + "   (or: make setup)")
    return "the lab needs what this machine lacks:\n" + "\n".join(lines) + \
        "\ninstall with:\n  " + "\n  ".join(fix)


def require_root() -> None:
    """Raise LabError unless running as root (namespaces, XFRM and mounts need it)."""
    if os.geteuid() != 0:
        raise LabError("the lab needs root: it creates network and mount namespaces, "
                       "installs XFRM state and runs charon and keepalived (run it with sudo)")


def kernel_image() -> str:
    """Return the newest installed Debian kernel image, for the VM runner."""
    images = sorted(glob.glob("/boot/vmlinuz-*"), key=_version_key)
    if not images:
        raise LabError("no kernel image in /boot: apt-get install linux-image-amd64")
    return images[-1]


def _version_key(path: str) -> list[int | str]:
    """Sort key for kernel image names like vmlinuz-6.1.0-56-amd64."""
    parts = os.path.basename(path).split("-", 1)[-1].replace(".", "-").split("-")
    return [int(p) if p.isdigit() else p for p in parts]


# A throwaway SA in a scratch namespace: the kernel either accepts it (esp4 and gcm are
# there) or answers "Requested type not found" (our hosts: CONFIG_INET_ESP unset).
def _probe_sa(key_bytes: int) -> list[str]:
    return ("xfrm state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x1000 mode tunnel "
            f"aead rfc4106(gcm(aes)) 0x{'11' * key_bytes} 128").split()


def kernel_has_esp(key_bytes: int = 20) -> bool:
    """Probe whether the running kernel can install an AES-GCM ESP SA (key and 4-byte salt).

    The first such SA also instantiates and self-tests the kernel's GCM transform, which
    under QEMU/TCG takes seconds: the lab calls this once before charon needs it.
    """
    ns = f"hasync-probe-{uuid.uuid4().hex[:8]}"
    subprocess.run(["modprobe", "-q", "-a", "esp4", "xfrm_user", "gcm"], check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    made = subprocess.run(["ip", "netns", "add", ns], capture_output=True, check=False)
    if made.returncode != 0:
        raise LabError(f"cannot create a network namespace: {made.stderr.decode().strip()}")
    try:
        res = subprocess.run(["ip", "-n", ns, *_probe_sa(key_bytes)], capture_output=True,
                             check=False)
        return res.returncode == 0
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
