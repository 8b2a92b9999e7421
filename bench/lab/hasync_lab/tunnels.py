"""The lab's tunnels: one certificate tunnel per client (the classic lab), or the benchmark's N
tunnels dealt over the clients, each its own IKE_SA, identity, virtual IP and probe flow.

Rules: `plan()` and the per-SPI tallies are pure; `initiate()` and `follow_vips()` talk to the
clients' charons over vici. A tunnel is named by its probe flow, which is unique in the lab: the
client's name in the classic lab, tNNNN for the benchmark's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import vici

from . import cluster, cpustat, observe
from .pcap import EspPacket, addresses
from .prereq import LabError
from .probeflows import parse_flow_specs
from .procs import Lab

log = logging.getLogger("hasync_lab")
INIT_WINDOW = 6  # benchmark tunnels being set up at once per client: 16 (charon's threads)
#                 kept 48 IKE_SA_INITs waiting on the gateway, longer than a client retransmits
POLL_S = 1.0
GIVEN_UP_S = 20.0  # a started tunnel charon has not listed for this long is started again
#                   (a client gives an IKE_SA up after about 7 s of retransmits: LabTimers)
REPORT_EVERY_S = 30.0


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


def _up(sas: Iterable[observe.IkeSa]) -> dict[str, observe.IkeSa]:
    """The ESTABLISHED IKE_SAs with an installed CHILD_SA, by connection name."""
    return {s.name: s for s in sas if s.state == "ESTABLISHED" and s.child_spis}


def established(lab: Lab, client: str) -> dict[str, observe.IkeSa]:
    """`client`'s ESTABLISHED IKE_SAs with an installed CHILD_SA, by connection name."""
    return _up(observe.list_sas(str(cluster.vici_path(lab, client))))


@dataclass
class Bringup:
    """One client's set-up: which connections to initiate next. At most INIT_WINDOW are under
    way; one that charon stopped listing for GIVEN_UP_S (its IKE_SA gave up after its
    retransmits, or was deleted) is started again, so a loaded gateway that dropped some
    IKE_SA_INITs cannot fill the window with dead attempts. Pure: time is `now`."""

    conns: list[str]
    started: set[str] = field(default_factory=set)
    up: set[str] = field(default_factory=set)
    absent_since: dict[str, float] = field(default_factory=dict)
    restarts: int = 0

    def in_flight(self) -> list[str]:
        """Started and not yet up: what to ask charon about."""
        return sorted(self.started - self.up)

    def update(self, up: set[str], listed: set[str], now: float) -> list[str]:
        """Take what charon said of the tunnels in flight (names up, names listed at all);
        return what to start. A tunnel once up stays counted."""
        self.up |= up & set(self.conns)
        for conn in sorted(self.started - self.up):
            if conn in listed:
                self.absent_since.pop(conn, None)
            elif now - self.absent_since.setdefault(conn, now) >= GIVEN_UP_S:
                self.started.discard(conn)
                del self.absent_since[conn]
                self.restarts += 1
        for conn in up:  # only what just came up can still be waited on
            self.absent_since.pop(conn, None)
        room = INIT_WINDOW - len(self.started - self.up)
        todo = [c for c in self.conns if c not in self.started and c not in self.up][:room]
        self.started.update(todo)
        return todo

    @property
    def done(self) -> bool:
        """Every connection is up."""
        return len(self.up) == len(self.conns)


def initiate(lab: Lab, tunnels: list[Tunnel], timeout: float | None = None) -> None:
    """Bring up every benchmark tunnel, at most INIT_WINDOW per client under way at a time
    (by default within 120 s + 1.5 s per tunnel: 100 took 43 s under TCG); where it stands
    is logged every REPORT_EVERY_S. Each poll asks charon about the tunnels in flight only:
    listing every IKE_SA of a client made a poll take 20 s at 600 tunnels under TCG."""
    timeout = 120 + 1.5 * len(tunnels) if timeout is None else timeout
    children = {t.conn: t.child for t in tunnels}
    todo = {c: Bringup([t.conn for t in ts]) for c, ts in by_client(tunnels).items()}
    t0, busy = time.monotonic(), 0
    deadline, report = t0 + timeout, t0 + REPORT_EVERY_S
    cpu = (t0, cpustat.sample(lab))
    while not all(b.done for b in todo.values()):
        now = time.monotonic()
        if now > deadline:
            short = {c: len(b.conns) - len(b.up) for c, b in todo.items() if not b.done}
            raise LabError(f"tunnels not up within {timeout:.0f} s, missing per client: {short}")
        if now >= report:
            report = now + REPORT_EVERY_S
            log.info("tunnels: %d of %d up after %.0f s (%d started again, %d polls found "
                     "vici busy)", sum(len(b.up) for b in todo.values()), len(tunnels),
                     now - t0, sum(b.restarts for b in todo.values()), busy)
            cpu = _log_cpu(lab, *cpu)
        for c, b in todo.items():
            try:
                _advance(str(cluster.vici_path(lab, c)), b, children)
            except OSError as e:  # a charon busy with hundreds of IKE_SAs: ask again later
                busy += 1
                log.warning("%s: vici did not answer (%s); polling it again", c, e)
        time.sleep(POLL_S)
    log.info("%d tunnels up after %.1f s (%d started again)", len(tunnels),
             time.monotonic() - t0, sum(b.restarts for b in todo.values()))


def _log_cpu(lab: Lab, since: float, before: dict[str, float]) -> tuple[float, dict[str, float]]:
    """Log where the CPU went since the last report; return this sample."""
    now, after = time.monotonic(), cpustat.sample(lab)
    log.info("cpu (share of one CPU): %s", cpustat.summary(cpustat.shares(before, after,
                                                                           now - since)))
    return now, after


def _advance(path: str, b: Bringup, children: dict[str, str]) -> None:
    """One poll of one client: what its tunnels in flight became, then the next initiates.
    An initiate that times out counts as started: Bringup starts it again if it never shows."""
    sas = [sa for conn in b.in_flight() for sa in observe.list_sas(path, ike=conn)]
    for conn in b.update(set(_up(sas)), {s.name for s in sas}, time.monotonic()):
        _session_call(path, "initiate", {"ike": conn, "child": children[conn], "timeout": -1})


def flows_text(tunnels: list[Tunnel], vips: dict[str, str]) -> str:
    """A probeflows flows file: NAME@VIP for each tunnel with a virtual IP."""
    return "".join(f"{t.name}@{vips[t.conn]}\n" for t in tunnels if t.conn in vips)


def all_vips(lab: Lab, client: str, tunnels: list[Tunnel], tries: int = 10) -> dict[str, str]:
    """The virtual IP of each of `client`'s tunnels, asking again while some are missing (a
    busy IKE_SA is not listed); what is known after `tries`, else."""
    vips: dict[str, str] = {}
    for _ in range(tries):
        with contextlib.suppress(OSError):  # a busy vici: ask again
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


def by_spi(packets: Iterable[EspPacket], dst: str | Iterable[str]) -> dict[int, list[EspPacket]]:
    """The ESP packets to `dst` (one address, or every address a roaming client had: an SA
    keeps its keys and numbers across a move), by SPI, each list in capture order."""
    out: dict[int, list[EspPacket]] = {}
    want = addresses(dst)
    for p in sorted((p for p in packets if p.dst in want), key=lambda p: p.ts):
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
