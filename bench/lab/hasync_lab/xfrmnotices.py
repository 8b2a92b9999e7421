"""Capture the kernel's XFRM SA notices for tests/data/xfrm/vm_kernel_6.1_notices.txt (D273).

Run as root where the SAs of the network namespace may be changed (it adds, updates,
deletes, expires and flushes them), with ESP in the kernel: the lab VM, e.g.
  vng --run /boot/vmlinuz-6.1.0-57-amd64 --disable-kvm --memory 1G --rwdir /tmp/cap --exec \
    "PYTHONPATH=$PWD:$PWD/bench/lab .venv/bin/python -m hasync_lab.xfrmnotices /tmp/cap/n.json"
It writes {"kernel": release, "datagrams": [[name, hex], ...]}, each datagram as
`hasync.guard.watch.open_notices()` read it after one step.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

from hasync.guard.watch import open_notices

KEY = "0x5ec7e75ec7e75ec7e75ec7e75ec7e75ec7e7a11e"  # made up
AEAD = ["aead", "rfc4106(gcm(aes))", KEY, "128"]
NATT = ["encap", "espinudp", "4500", "4500", "0.0.0.0"]


def ip(*args: str) -> None:
    """Run `ip`; stop on its error."""
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"ip {' '.join(args)}: {r.stderr}")


def state(verb: str, src: str, dst: str, spi: str, reqid: int, *extra: str) -> list[str]:
    """`ip xfrm state add|update` of one tunnel-mode ESP SA."""
    return ["xfrm", "state", verb, "src", src, "dst", dst, "proto", "esp", "spi", spi,
            "reqid", str(reqid), "mode", "tunnel", *AEAD, *extra]


def delete(spi: str, *extra: str) -> list[str]:
    """`ip xfrm state delete` of one 192.0.2.1 -> 198.51.100.4 SA."""
    return ["xfrm", "state", "delete", "src", "192.0.2.1", "dst", "198.51.100.4",
            "proto", "esp", "spi", spi, *extra]


def take(sock: socket.socket, name: str, out: list[list[str]], wait: float = 0.2) -> None:
    """After `wait`, every queued datagram, named `name.index`."""
    time.sleep(wait)
    k = 0
    while True:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        out.append([f"{name}.{k}", data.hex()])
        k += 1


STEPS: list[tuple[str, list[str], float]] = [
    ("newsa_esn", state("add", "192.0.2.1", "198.51.100.4", "0xc0ffee01", 1, "flag", "esn",
                        "replay-window", "128"), 0.2),
    ("newsa_natt", state("add", "198.51.100.4", "192.0.2.1", "0xc0ffee02", 1,
                         "replay-window", "32", *NATT), 0.2),
    ("newsa_v6", state("add", "2001:db8::1", "2001:db8::2", "0xc0ffee03", 2, "flag", "esn",
                       "replay-window", "64"), 0.2),
    ("newsa_mark", state("add", "192.0.2.1", "198.51.100.4", "0xc0ffee05", 5,
                         "replay-window", "32", "mark", "0x10", "mask", "0xff"), 0.2),
    ("updsa", state("update", "198.51.100.4", "192.0.2.1", "0xc0ffee02", 1,
                    "replay-window", "32", *NATT), 0.2),
    ("delsa", delete("0xc0ffee01"), 0.2),
    ("delsa_mark", delete("0xc0ffee05", "mark", "0x10", "mask", "0xff"), 0.2),
    ("newsa_soft", state("add", "192.0.2.1", "198.51.100.4", "0xc0ffee06", 6,
                         "replay-window", "32", "limit", "time-soft", "1", "limit",
                         "time-hard", "60"), 0.2),
    ("expire_soft", [], 2.5),
    ("newsa_hard", state("add", "192.0.2.1", "198.51.100.4", "0xc0ffee07", 7,
                         "replay-window", "32", "limit", "time-hard", "1"), 0.2),
    ("expire_hard", [], 2.5),
    ("flushsa", ["xfrm", "state", "flush"], 0.2),
]


def main() -> int:
    """Run the steps, save what the kernel said after each."""
    sock, out = open_notices(), []
    for name, args, wait in STEPS:
        if args:
            ip(*args)
        take(sock, name, out, wait)
    kernel = subprocess.run(["uname", "-r"], capture_output=True, text=True).stdout.strip()
    Path(sys.argv[1]).write_text(json.dumps({"kernel": kernel, "datagrams": out}, indent=1))
    print("captured", len(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
