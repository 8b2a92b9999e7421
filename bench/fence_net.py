"""Two network namespaces joined by a veth pair, to send raw ESP and ESP-in-UDP through the
fence and see on the other side what arrived (tests/test_fence_nft.py, bench/fence_cost.py).

Rules: needs root and `ip`; every name carries this process's id so runs do not collide;
`close()` deletes both namespaces (the veth pair goes with them). The sender side runs the
fence (`NftFence(netns=net.sender)`); packets are built here (RFC 4303 section 2: SPI, then
sequence number; RFC 3948: ESP in UDP from port 4500, a zero marker for IKE, a 1-byte
keepalive) and sent by a raw or UDP socket inside the sender namespace.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

SENTINEL_PORT = 9999
V4 = ("10.77.0.1", "10.77.0.2")
V6 = ("fd77::1", "fd77::2")

# Runs in the sender namespace: argv[1] is a JSON list of packets; errors of a send (the fence
# dropped it: EPERM) are ignored; a sentinel datagram ends the receiver's wait.
SENDER = r"""
import json, socket, struct, sys, time
pkts, sentinel = json.loads(sys.argv[1]), sys.argv[2]
raw = {4: socket.socket(socket.AF_INET, socket.SOCK_RAW, 50),
       6: socket.socket(socket.AF_INET6, socket.SOCK_RAW, 50)}
udp = {4: socket.socket(socket.AF_INET, socket.SOCK_DGRAM),
       6: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)}
udp[4].setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
udp[4].bind(("0.0.0.0", 4500))
udp[6].setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
udp[6].bind(("::", 4500))
for p in pkts:
    fam = 6 if ":" in p["dst"] else 4
    body = bytes.fromhex(p["payload"]) if "payload" in p else (
        struct.pack("!II", p["spi"], p["seq"]) + bytes(16))
    try:
        if p["kind"] == "esp":
            raw[fam].sendto(body, (p["dst"], 0))
        else:
            udp[fam].sendto(body, (p["dst"], 4500))
    except OSError:
        pass
time.sleep(0.2)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(b"end", (sentinel, SENTINEL_PORT))
""".replace("SENTINEL_PORT", str(SENTINEL_PORT))

# Runs in the receiver namespace: prints "ready", then one JSON list of what arrived.
RECEIVER = r"""
import json, select, socket, struct, sys
socks = {}
r4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, 50); socks[r4] = "esp4"
r6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, 50); socks[r6] = "esp6"
u4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u4.bind(("0.0.0.0", 4500)); socks[u4] = "udp"
u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
u6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1); u6.bind(("::", 4500)); socks[u6] = "udp"
end = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
end.bind(("0.0.0.0", SENTINEL_PORT)); socks[end] = "end"
print("ready", flush=True)
got = []
while True:
    ready, _, _ = select.select(list(socks), [], [], 10.0)
    if not ready:
        break
    for s in ready:
        data = s.recv(65535)
        kind = socks[s]
        if kind == "end":
            print(json.dumps(got), flush=True)
            sys.exit(0)
        if kind == "esp4":
            data = data[(data[0] & 15) * 4:]
        if kind.startswith("esp"):
            got.append(["esp"] + list(struct.unpack("!II", data[:8])))
        else:
            got.append(["udp", data.hex()])
print(json.dumps(got), flush=True)
""".replace("SENTINEL_PORT", str(SENTINEL_PORT))


def run(*argv: str) -> str:
    """Run a command; its stdout, or CalledProcessError with stderr."""
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


@dataclass
class FenceNet:
    """Sender and receiver namespaces, 10.77.0.1 -> .2 and fd77::1 -> ::2 over a veth pair."""

    sender: str = field(default_factory=lambda: f"hsf-s{os.getpid()}")
    receiver: str = field(default_factory=lambda: f"hsf-r{os.getpid()}")

    def open(self) -> FenceNet:
        """Create the namespaces, the veth pair and the addresses."""
        s, r = self.sender, self.receiver
        run("ip", "netns", "add", s)
        run("ip", "netns", "add", r)
        run("ip", "link", "add", "hsf0", "netns", s, "type", "veth", "peer", "hsf1", "netns", r)
        for ns, dev, a4, a6 in ((s, "hsf0", V4[0], V6[0]), (r, "hsf1", V4[1], V6[1])):
            run("ip", "-n", ns, "link", "set", "lo", "up")
            run("ip", "-n", ns, "addr", "add", f"{a4}/24", "dev", dev)
            run("ip", "-n", ns, "addr", "add", f"{a6}/64", "dev", dev, "nodad")
            run("ip", "-n", ns, "link", "set", dev, "up")
        return self

    def close(self) -> None:
        """Delete both namespaces (and the veth pair with them)."""
        for ns in (self.sender, self.receiver):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def exchange(self, packets: list[dict[str, object]]) -> list[list[object]]:
        """Send `packets` from the sender; what the receiver got, in order."""
        rx = subprocess.Popen(["ip", "netns", "exec", self.receiver, sys.executable, "-c",
                               RECEIVER], stdout=subprocess.PIPE, text=True)
        try:
            assert rx.stdout is not None
            if rx.stdout.readline().strip() != "ready":
                raise RuntimeError("the receiver did not start")
            run("ip", "netns", "exec", self.sender, sys.executable, "-c", SENDER,
                json.dumps(packets), V4[1])
            out, _ = rx.communicate(timeout=15)
        finally:
            if rx.poll() is None:
                rx.kill()
                rx.wait()
        return json.loads(out.strip().splitlines()[-1])

    def blast(self, dst: str, spi: int, first_seq: int, count: int) -> float:
        """Send `count` ESP packets of one SA as fast as one process can; packets/s sent."""
        code = r"""
import socket, struct, sys, time
dst, spi, seq, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_RAW, 50)
pad, pack, send, addr = bytes(16), struct.pack, s.sendto, (dst, 0)
t = time.perf_counter()
for k in range(seq, seq + n):
    try:
        send(pack("!II", spi, k) + pad, addr)
    except OSError:
        pass
print(time.perf_counter() - t)
"""
        out = run("ip", "netns", "exec", self.sender, sys.executable, "-c", code, dst,
                  str(spi), str(first_seq), str(count))
        return count / float(out.strip())

    def received_esp(self) -> int:
        """ESP packets the receiver's `inet hsf_count` table counted on input (see `count_esp`)."""
        out = run("ip", "netns", "exec", self.receiver, "nft", "-j", "list", "counter", "inet",
                  "hsf_count", "arrived")
        for item in json.loads(out)["nftables"]:
            if "counter" in item:
                return int(item["counter"]["packets"])
        raise RuntimeError("no counter arrived in the receiver")

    def count_esp(self) -> None:
        """(Re)create a receiver-side input counter of ESP packets, at zero."""
        subprocess.run(["ip", "netns", "exec", self.receiver, "nft", "-f", "-"], check=True,
                       text=True, input=(
                           "add table inet hsf_count\ndelete table inet hsf_count\n"
                           "table inet hsf_count {\n counter arrived { }\n chain in {\n"
                           "  type filter hook input priority filter; policy accept;\n"
                           "  meta l4proto esp counter name arrived\n }\n}\n"))
        time.sleep(0.01)


def esp(dst: str, spi: int, seq: int) -> dict[str, object]:
    """A raw ESP packet (SPI, seq, 16 bytes of zeros)."""
    return {"kind": "esp", "dst": dst, "spi": spi, "seq": seq}


def natt(dst: str, spi: int, seq: int) -> dict[str, object]:
    """ESP in UDP from port 4500 to 4500."""
    return {"kind": "udp", "dst": dst, "spi": spi, "seq": seq}


def udp_payload(dst: str, payload: bytes) -> dict[str, object]:
    """Any UDP datagram from port 4500 (IKE with its zero marker, a keepalive)."""
    return {"kind": "udp", "dst": dst, "payload": payload.hex()}
