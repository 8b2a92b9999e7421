"""Virtual IP leases across failovers (issue 18, item 1): a new master never hands out an
address a kept tunnel holds, and an address released on one master is free on the next.

Rules: the verdict is pure (IkeSa listings in, findings out); the driver runs swanctl on the
lease client (`--lease-client`, LEASE_CLIENT by default), whose extra connections
(confgen.swanctl_client `extra`, pre-shared key, `l<round><a|b>`) come and go while every
`home` tunnel stays. One round, on the master of
the moment: re-authenticate the lease tunnel kept through the failover (`l<round-1>b`: it
releases its address and asks for one again), bring up two new ones, take the first of them
down again (its address released on this master), wait until every running gateway lists the
master's leases, and judge. A gateway's leases are its IKE_SAs' remote virtual IPs (charon's
ha plugin reserves and frees pool addresses with the IKE_SAs it holds, ha_attribute.c).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from . import cluster
from .observe import IkeSa
from .procs import Lab

log = logging.getLogger("hasync_lab")
LEASE_CLIENT = "c2"  # the default lease client
HOLDING = ("ESTABLISHED", "PASSIVE")  # states whose virtual IPs count as leases
AGREE_TIMEOUT_S = 90.0  # a backup's listing follows the master's through Raft and a replay
UP_TIMEOUT_S = 60
T = TypeVar("T")


def conns(rounds: int) -> tuple[str, ...]:
    """The lease client's extra connections for `rounds` rounds."""
    return tuple(f"l{k}{x}" for k in range(rounds) for x in "ab")


# ---- judging (pure) ----

def leases(sas: Iterable[IkeSa], remote: bool) -> dict[str, tuple[str, ...]]:
    """{'conn/spis': virtual IPs} of the IKE_SAs holding leases (the peer's with `remote`)."""
    return {f"{s.name}/{s.spis}": (s.remote_vips if remote else s.local_vips)
            for s in sas if s.state in HOLDING}


def duplicates(held: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """{vip: holders} of every virtual IP more than one holder has."""
    by_vip: dict[str, set[str]] = {}
    for holder, vips in held.items():
        for vip in vips:
            by_vip.setdefault(vip, set()).add(holder)
    return {vip: sorted(h) for vip, h in sorted(by_vip.items()) if len(h) > 1}


def by_conn(held: Mapping[str, Sequence[str]]) -> dict[str, tuple[str, ...]]:
    """{'client/conn': vips} from client leases keyed 'client/conn/spis'."""
    return {k.rsplit("/", 1)[0]: tuple(v) for k, v in held.items()}


def changed(before: Mapping[str, Sequence[str]], after: Mapping[str, Sequence[str]],
            skip: Iterable[str] = ()) -> dict[str, list[list[str]]]:
    """{conn: [before, after]} of the tunnels in both whose virtual IPs differ."""
    gone = set(skip)
    return {k: [list(before[k]), list(after[k])] for k in sorted(before)
            if k in after and k not in gone and tuple(before[k]) != tuple(after[k])}


# ---- driving ----

@dataclass
class Book:
    """What the rounds remember: the lease client, the client leases after the last round,
    what it released."""

    client: str = LEASE_CLIENT

    clients: dict[str, tuple[str, ...]] = field(default_factory=dict)  # 'client/conn': vips
    released: set[str] = field(default_factory=set)
    rounds: int = 0


def _sas(lab: Lab, node: str) -> list[IkeSa]:
    """`node`'s IKE_SAs; none while its vici does not answer."""
    try:
        return cluster.client_sas(lab, node)
    except OSError:
        return []


def client_leases(lab: Lab) -> dict[str, tuple[str, ...]]:
    """{'client/conn/spis': local virtual IPs} over every client."""
    out: dict[str, tuple[str, ...]] = {}
    for c in lab.topo.by_role("client"):
        out.update({f"{c.name}/{k}": v for k, v in leases(_sas(lab, c.name), False).items()})
    return out


def _vip_of(lab: Lab, client: str, conn: str) -> tuple[str, tuple[str, ...]] | None:
    """(spis, vips) of the lease client's ESTABLISHED IKE_SA `conn`, or None."""
    for s in _sas(lab, client):
        if s.name == conn and s.state == "ESTABLISHED":
            return s.spis, s.local_vips
    return None


def _wait(probe: Callable[[], T], timeout: float) -> T:
    """Call `probe` every half second until it returns something true, or time out."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got or time.monotonic() >= deadline:
            return got
        time.sleep(0.5)


def reauth(lab: Lab, client: str, conn: str) -> dict[str, object]:
    """Re-authenticate lease tunnel `conn` (a new IKE_SA); wait for it."""
    old = _vip_of(lab, client, conn)
    if old is None:
        return {"ok": False, "error": f"{conn} not ESTABLISHED"}
    cluster.swanctl(lab, client, ["--rekey", "--ike", conn, "--reauth"], check=False)
    new = _wait(lambda: (v := _vip_of(lab, client, conn)) and v[0] != old[0] and v, UP_TIMEOUT_S)
    if not new:
        return {"ok": False, "error": f"{conn} not re-authenticated in {UP_TIMEOUT_S} s",
                "vips_before": list(old[1])}
    assert isinstance(new, tuple)
    return {"ok": True, "vips_before": list(old[1]), "vips_after": list(new[1])}


def bring_up(lab: Lab, client: str, conn: str) -> list[str] | None:
    """Initiate lease tunnel `conn`; its virtual IPs, or None if it did not come up."""
    cluster.swanctl(lab, client, ["--initiate", "--ike", conn, "--child", conn,
                                  "--timeout", str(UP_TIMEOUT_S)], check=False,
                    timeout=UP_TIMEOUT_S + 30)
    got = _wait(lambda: _vip_of(lab, client, conn), 10)
    return list(got[1]) if isinstance(got, tuple) else None


def take_down(lab: Lab, client: str, conn: str) -> bool:
    """Terminate lease tunnel `conn`; whether it is gone."""
    cluster.swanctl(lab, client, ["--terminate", "--ike", conn, "--timeout", "30"],
                    check=False, timeout=60)
    return bool(_wait(lambda: _vip_of(lab, client, conn) is None, 10))


def gateways_agree(lab: Lab, master: str, running: list[str]
                   ) -> tuple[dict[str, dict[str, tuple[str, ...]]], bool]:
    """Every running gateway's leases, polled until they equal the master's (or time out)."""
    views: dict[str, dict[str, tuple[str, ...]]] = {}

    def same() -> bool:
        views.clear()
        views.update({g: leases(_sas(lab, g), True) for g in running})
        return all(views[g] == views[master] for g in running)

    return views, bool(_wait(same, AGREE_TIMEOUT_S))


def census(lab: Lab, running: list[str]) -> dict[str, object]:
    """Every virtual IP held now, on each running gateway (its IKE_SAs' leases) and on the
    clients (theirs), and any held twice: the check every failover of a run makes."""
    views = {g: leases(_sas(lab, g), True) for g in running}
    clients = client_leases(lab)
    return {"gateway_leases": {g: len(v) for g, v in views.items()},
            "gateway_duplicates": {g: duplicates(v) for g, v in views.items()},
            "client_vips": sorted(v for vips in clients.values() for v in vips),
            "client_duplicates": duplicates(clients)}


def one_round(lab: Lab, book: Book, master: str, running: list[str]) -> dict[str, object]:
    """One round of lease changes on `master`, judged on every running gateway and client."""
    k = book.rounds
    now = by_conn(client_leases(lab))
    kept = changed(book.clients, now)  # across the failover: nothing may move
    result: dict[str, object] = {"round": k, "master": master, "kept_changed": kept}
    released: set[str] = set()
    allocated: set[str] = set()
    if k > 0:
        ra = reauth(lab, book.client, f"l{k - 1}b")
        result["reauth"] = ra
        if ra["ok"]:
            released |= set(ra["vips_before"]) - set(ra["vips_after"])  # type: ignore[arg-type]
            allocated |= set(ra["vips_after"])  # type: ignore[arg-type]
    new = {c: bring_up(lab, book.client, c) for c in (f"l{k}a", f"l{k}b")}
    result["new"] = new
    allocated |= {v for vips in new.values() for v in vips or []}
    if new[f"l{k}a"] and take_down(lab, book.client, f"l{k}a"):
        released |= set(new[f"l{k}a"] or [])
    views, agree = gateways_agree(lab, master, running)
    clients = client_leases(lab)
    result.update({
        "gateways_agree": agree,
        "gateway_leases": {g: len(v) for g, v in views.items()},
        "gateway_duplicates": {g: duplicates(v) for g, v in views.items()},
        "client_duplicates": duplicates(clients),
        "released_before": sorted(book.released), "allocated": sorted(allocated),
        "released_reused": sorted(book.released & allocated), "released": sorted(released)})
    book.clients, book.released, book.rounds = by_conn(clients), released, k + 1
    log.info("leases round %d on %s: %s", k, master, result)
    return result
