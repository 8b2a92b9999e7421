"""The lab's tunnels: one certificate tunnel per client (the classic lab), or the benchmark's N
tunnels dealt over the clients, each its own IKE_SA, identity, virtual IP and probe flow.

Rules: `plan()` and the per-SPI tallies are pure; `initiate()` and `follow_vips()` talk to the
clients' charons over vici. A tunnel is named by its probe flow, which is unique in the lab: the
client's name in the classic lab, tNNNN for the benchmark's.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import vici

from . import cluster, observe
from .pcap import EspPacket
from .prereq import LabError
from .probeflows import parse_flow_specs
from .procs import Lab

log = logging.getLogger("hasync.lab")
INIT_WINDOW = 16  # benchmark tunnels being set up at once per client (charon's 16 threads)
POLL_S = 1.0


@dataclass(frozen=True)
class Tunnel:
    """One tunnel: its flow name, the client carrying it and its swanctl connection/child."""

    name: str
    client: str
    conn: str
    child: str


def plan(count: int, clients: list[str]) -> list[Tunnel]:
    """`count` benchmark tunnels t0001.. dealt round-robin over `clients`; with count 0, the
    classic lab's one tunnel per client (connection "home", child "net")."""
    if count < 0:
        raise ValueError(f"tunnels must be 0 or more, not {count}")
    if count == 0:
        return [Tunnel(c, c, "home", "net") for c in clients]
    width = max(4, len(str(count)))
    names = [f"t{k:0{width}d}" for k in range(1, count + 1)]
    return [Tunnel(n, clients[k % len(clients)], n, n) for k, n in enumerate(names)]


def by_client(tunnels: Iterable[Tunnel]) -> dict[str, list[Tunnel]]:
    """The tunnels of each client, in plan order."""
    out: dict[str, list[Tunnel]] = {}
    for t in tunnels:
        out.setdefault(t.client, []).append(t)
    return out


def _session_call(path: str, fn: str, arg: dict[str, object]) -> None:
    """One vici command whose streamed events are not needed."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(path)
        for _ in getattr(vici.Session(s), fn)(arg):
            pass


def established(lab: Lab, client: str) -> dict[str, observe.IkeSa]:
    """`client`'s ESTABLISHED IKE_SAs with an installed CHILD_SA, by connection name."""
    sas = observe.list_sas(str(cluster.vici_path(lab, client)))
    return {s.name: s for s in sas if s.state == "ESTABLISHED" and s.child_spis}


def initiate(lab: Lab, tunnels: list[Tunnel], timeout: float | None = None) -> None:
    """Bring up every benchmark tunnel, at most INIT_WINDOW per client under way at a time
    (by default within 120 s + 1.5 s per tunnel: 100 took 43 s under TCG)."""
    timeout = 120 + 1.5 * len(tunnels) if timeout is None else timeout
    todo = by_client(tunnels)
    started: dict[str, set[str]] = {c: set() for c in todo}
    up: dict[str, set[str]] = {c: set() for c in todo}
    deadline, t0 = time.monotonic() + timeout, time.monotonic()
    while any(len(up[c]) < len(ts) for c, ts in todo.items()):
        if time.monotonic() > deadline:
            short = {c: len(ts) - len(up[c]) for c, ts in todo.items() if len(up[c]) < len(ts)}
            raise LabError(f"tunnels not up within {timeout:.0f} s, missing per client: {short}")
        for c, ts in todo.items():
            up[c] = set(established(lab, c)) & {t.conn for t in ts}
            for t in ts:
                if len(started[c] - up[c]) >= INIT_WINDOW:
                    break
                if t.conn not in started[c]:
                    _session_call(str(cluster.vici_path(lab, c)), "initiate",
                                  {"ike": t.conn, "child": t.child, "timeout": -1})
                    started[c].add(t.conn)
        time.sleep(POLL_S)
    log.info("%d tunnels up after %.1f s", len(tunnels), time.monotonic() - t0)


def flows_text(tunnels: list[Tunnel], vips: dict[str, str]) -> str:
    """A probeflows flows file: NAME@VIP for each tunnel with a virtual IP."""
    return "".join(f"{t.name}@{vips[t.conn]}\n" for t in tunnels if t.conn in vips)


def all_vips(lab: Lab, client: str, tunnels: list[Tunnel], tries: int = 10) -> dict[str, str]:
    """The virtual IP of each of `client`'s tunnels, asking again while some are missing (a
    busy IKE_SA is not listed); what is known after `tries`, else."""
    vips: dict[str, str] = {}
    for _ in range(tries):
        vips.update(vips_of(established(lab, client)))
        if all(t.conn in vips for t in tunnels):
            break
        time.sleep(POLL_S)
    return vips


def vips_of(sas: dict[str, observe.IkeSa]) -> dict[str, str]:
    """The first virtual IP of each connection's IKE_SA."""
    return {name: sa.local_vips[0] for name, sa in sas.items() if sa.local_vips}


def follow_vips(lab: Lab, client: str, tunnels: list[Tunnel], path: Path, pid: int) -> int:
    """Rewrite `client`'s flows file if a tunnel's virtual IP changed (a re-established IKE_SA
    may get another from the new master's pool) and SIGHUP its probeflows; return how many
    flows moved."""
    current = path.read_text() if path.exists() else ""
    listed = {f.name: f.source for f in parse_flow_specs(current.splitlines())}
    # a busy IKE_SA is missing from list-sas (noblock): its flow keeps the VIP it had
    vips = {t.conn: listed[t.name] for t in tunnels if t.name in listed}
    new = flows_text(tunnels, {**vips, **vips_of(established(lab, client))})
    moved = len(set(new.splitlines()) - set(current.splitlines()))
    if moved:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(new)
        tmp.replace(path)
        os.killpg(pid, signal.SIGHUP)
        log.info("%s: %d probe flows follow their tunnel's new virtual IP", client, moved)
    return moved


def inbound_spis(sa: observe.IkeSa | None) -> set[int]:
    """The inbound ESP SPIs of an IKE_SA's installed CHILD_SAs (as seen by the client)."""
    return {int(spi_in, 16) for spi_in, _ in sa.child_spis} if sa else set()


def outbound_spis(sa: observe.IkeSa | None) -> set[int]:
    """The outbound ESP SPIs of an IKE_SA's installed CHILD_SAs: the gateway's inbound SAs."""
    return {int(spi_out, 16) for _, spi_out in sa.child_spis} if sa else set()


def by_spi(packets: Iterable[EspPacket], dst: str) -> dict[int, list[EspPacket]]:
    """The ESP packets to `dst`, by SPI, each list in capture order."""
    out: dict[int, list[EspPacket]] = {}
    for p in sorted((p for p in packets if p.dst == dst), key=lambda p: p.ts):
        out.setdefault(p.spi, []).append(p)
    return out


def reuse_by_spi(packets: dict[int, list[EspPacket]], start: float,
                 end: float) -> dict[int, int]:
    """Per SPI: packets in [start, end) whose (SPI, seq) was already seen before them."""
    out = {}
    for spi, ps in packets.items():
        seen: set[int] = set()
        reused = 0
        for p in ps:
            if p.ts >= end:
                break
            if p.seq in seen and p.ts >= start:
                reused += 1
            seen.add(p.seq)
        out[spi] = reused
    return out
