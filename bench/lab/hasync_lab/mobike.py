"""MOBIKE clients (issue 18, item 3): clients with `mobike = yes` change their public address
once before the first failover and once after it, and every gateway must follow.

Rules: planning and judging are pure (names, log text and listings in, values out); the
drivers run `ip` in the client's namespace and read the gateways over vici and `ip xfrm`.
A roam is: a new address on the client's e0 (`promote_secondaries` on, so deleting the
primary keeps the secondary), then the old one deleted, in one `ip -batch`. The client's
charon sees the addresses go (kernel-netlink roam events) and sends UPDATE_SA_ADDRESSES from
the new one (strongSwan 5.9.8 ike_sa.c roam(), ike_mobike.c build_i()). A roam is followed
by the master when its charon lists the client's IKE_SA at the new remote host, and by a
backup when its charon lists the IKE_SA PASSIVE at the new remote host and the kernel holds
every outbound SA of the client's CHILD_SAs with the new destination, within FOLLOW_BOUND_S
of the master (hasync's part: charon's ha plugin never syncs a peer's new address, ha_ike.c).

Gateways never advertise their own addresses, only the VIP: charon lists its local addresses
in ADDITIONAL_IP4/6_ADDRESS notifies (ike_mobike.c build_address_list(), ADDR_TYPE_REGULAR),
and kernel-netlink's enumerator skips addresses that are deprecated or of link scope
(kernel_netlink_net.c filter_addresses()); so with --mobike every address a gateway owns is
deprecated (`preferred_lft 0`) and the private VIP has `scope link` (keepalived). The client
logs each address it is offered ("got additional MOBIKE peer address", DBG2 IKE: the lab's
charons log IKE at level 2) and the parsed notifies (ENC, level 1): `N(NO_ADD_ADDR)`.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Sequence
from typing import Any

from . import aftercheck, cluster, observe, topology
from .observe import IkeSa, XfrmSa
from .prereq import LabError
from .procs import Lab
from .session import Run

log = logging.getLogger("hasync_lab")
ROAM_HOSTS = (120, 140)  # roam k of client cN moves it to 192.0.2.(ROAM_HOSTS[k] + N)
WHEN = ("before", "after")  # roam k: before the first failover, after its takeover
FOLLOW_BOUND_S = 30.0  # a backup must follow within this of the master (under TCG: 2 to 8 s
#                        with three clients, 11 to 12 s after the master with four)
MASTER_TIMEOUT_S = 30.0  # the master's charon moves the IKE_SA within this
POLL_S = 0.5
VIPS = (topology.PUBLIC_VIP, topology.PUBLIC_VIP6)  # what a gateway may advertise
_ADDITIONAL = re.compile(r"got additional MOBIKE peer address: (\S+)$")
_PARSED = re.compile(r"parsed (\S+) (request|response) (\d+) \[(.*)\]$")
_SUPPORTS = re.compile(r"peer supports MOBIKE$")


# ---- planning (pure) ----

def parse_clients(text: str, clients: Sequence[str], unable: dict[str, str]) -> tuple[str, ...]:
    """The client names of a --mobike list, in order; ValueError naming the first bad one.
    `unable`: client -> why it cannot use MOBIKE in the lab."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    for n in names:
        if n not in clients:
            raise ValueError(f"--mobike: no client {n!r} (clients: {', '.join(clients)})")
        if n in unable:
            raise ValueError(f"--mobike: {n} {unable[n]}")
    if len(set(names)) != len(names):
        raise ValueError(f"--mobike names a client twice: {text!r}")
    return names


def roam_address(client: str, k: int) -> str:
    """The address client `cN` moves to in roam `k` (0: before the first failover)."""
    n = int(client.removeprefix("c"))
    if not 1 <= n <= 20 or not 0 <= k < len(ROAM_HOSTS):
        raise ValueError(f"no roam {k} for client {client!r}")
    return f"192.0.2.{ROAM_HOSTS[k] + n}"


def roam_batch(old: str, new: str, dev: str = "e0", prefix: int = 24) -> str:
    """`ip -batch` input: the new address beside the old one, then the old one gone."""
    return f"addr add {new}/{prefix} dev {dev}\naddr del {old}/{prefix} dev {dev}\n"


def deprecate_batch(node: topology.Node) -> str:
    """`ip -batch` input: every address of `node` deprecated (preferred_lft 0), so charon
    never advertises it (IPv6 ones keep nodad: they were added without DAD)."""
    return "".join(f"addr change {a} dev {ifc.name} preferred_lft 0"
                   + (" nodad" if ":" in a else "") + "\n"
                   for ifc in node.ifaces for a in ifc.addrs)


# ---- judging (pure) ----

def advertised(text: str) -> dict[str, Any]:
    """What a client's charon log says the gateways offered it: MOBIKE agreed, additional
    addresses, and how many parsed messages carried NO_ADDITIONAL_ADDRESSES."""
    extra: list[str] = []
    no_add = supports = 0
    for msg in aftercheck.log_lines(text):
        if m := _ADDITIONAL.search(msg):
            extra.append(m.group(1))
        elif (m := _PARSED.search(msg)) and "N(NO_ADD_ADDR)" in m.group(4):
            no_add += 1
        elif _SUPPORTS.search(msg):
            supports += 1
    return {"mobike_agreed": supports > 0, "additional": extra, "no_additional": no_add}


def advert_error(seen: dict[str, Any], allowed: Iterable[str] = VIPS) -> str | None:
    """Why a client's view of the gateways' addresses fails the check (None: it passes)."""
    if not seen["mobike_agreed"]:
        return "MOBIKE was not agreed (no 'peer supports MOBIKE' in the client's log)"
    bad = sorted(set(seen["additional"]) - set(allowed))
    if bad:
        return f"gateways advertised their own addresses: {', '.join(bad)}"
    if not seen["no_additional"] and not seen["additional"]:
        return "no NO_ADDITIONAL_ADDRESSES and no address list seen"
    return None


def find_sa(sas: Iterable[IkeSa], spis: str) -> IkeSa | None:
    """The IKE_SA with IKE SPIs `spis` ('i_r')."""
    return next((s for s in sas if s.spis == spis), None)


def gateway_view(sa: IkeSa | None, states: Iterable[XfrmSa], out_spis: set[int]
                 ) -> dict[str, Any]:
    """A gateway's view of one client's IKE_SA: its state and remote host, and the
    destinations of the client's outbound SAs in the kernel (SPI hex: destination)."""
    return {"state": sa.state if sa else None, "remote_host": sa.remote_host if sa else None,
            "xfrm_dst": {f"{x.spi:08x}": x.dst for x in states if x.spi in out_spis}}


def ike_followed(view: dict[str, Any], new: str, state: str) -> bool:
    """The IKE_SA is listed in `state` at the new remote host."""
    return bool(view["state"] == state and view["remote_host"] == new)


def xfrm_followed(view: dict[str, Any], new: str, out_spis: set[int]) -> bool:
    """Every outbound SA of the client is in the kernel with destination `new`."""
    dst = view["xfrm_dst"]
    return bool(out_spis) and len(dst) == len(out_spis) and set(dst.values()) == {new}


# ---- driving the lab ----

def addresses(run: Run, client: str) -> tuple[str, ...]:
    """Every outer address `client` had in this run, oldest first (its tunnel's: --ipv6
    makes it IPv6)."""
    node = run.lab.topo.node(client)
    return tuple(run.roamed.get(client) or (node.address6 or node.address,))


def current(run: Run, client: str) -> str:
    """`client`'s outer address now."""
    return addresses(run, client)[-1]


def _sas(lab: Lab, node: str) -> list[IkeSa]:
    try:
        return observe.list_sas(str(cluster.vici_path(lab, node)))
    except OSError:
        return []


def _view(lab: Lab, gw: str, spis: str, out_spis: set[int]) -> dict[str, Any]:
    states = observe.parse_xfrm_states(lab.run(gw, ["ip", "xfrm", "state"], check=False))
    return gateway_view(find_sa(_sas(lab, gw), spis), states, out_spis)


def roam(run: Run, client: str, k: int, master: str, gateways: list[str]) -> dict[str, Any]:
    """Roam `client` (k: 0 before the first failover, 1 after it) and measure how long the
    master and each other gateway in `gateways` took to follow."""
    lab = run.lab
    old, new = current(run, client), roam_address(client, k)
    home = next((s for s in _sas(lab, client) if s.name == aftercheck.CONNECTION
                 and s.state == "ESTABLISHED"), None)
    if home is None:
        raise LabError(f"{client} has no ESTABLISHED IKE_SA to roam with")
    out_spis = {int(i, 16) for i, _ in home.child_spis}  # the gateway's outbound SAs
    t0, at = time.monotonic(), time.time()
    lab.run(client, ["sh", "-c", "sysctl -qw net.ipv4.conf.e0.promote_secondaries=1 && "
                     "ip -batch -"], stdin=roam_batch(old, new))
    run.roamed[client] = [*addresses(run, client), new]
    result: dict[str, Any] = {"client": client, "when": WHEN[k], "at": round(at, 3),
                              "from": old, "to": new, "ike_spis": home.spis, "master": master}
    mview: dict[str, Any] = {}
    t_master = None
    while time.monotonic() < t0 + MASTER_TIMEOUT_S:
        mview = _view(lab, master, home.spis, out_spis)
        if ike_followed(mview, new, "ESTABLISHED"):
            t_master = time.monotonic()
            break
        time.sleep(POLL_S)
    result.update({"master_ms": _ms(t_master, t0), "master_view": mview,
                   "master_xfrm_moved": xfrm_followed(mview, new, out_spis)})
    backups = [g for g in gateways if g != master]
    result["backups"] = follow_backups(lab, backups, home.spis, new, out_spis, t0,
                                       (t_master or time.monotonic()) + FOLLOW_BOUND_S)
    after = next((s for s in _sas(lab, client) if s.spis == home.spis), None)
    result["client_kept_ike_sa"] = after is not None and after.state == "ESTABLISHED"
    result["ok"] = bool(t_master) and result["client_kept_ike_sa"] and all(
        b["followed"] for b in result["backups"].values())
    log.info("roam %s of %s: %s -> %s, master %s after %s ms, backups %s", WHEN[k], client,
             old, new, master, result["master_ms"],
             {g: (b["ike_ms"], b["xfrm_ms"]) for g, b in result["backups"].items()})
    return result


def follow_backups(lab: Lab, backups: list[str], spis: str, new: str, out_spis: set[int],
                   t0: float, deadline: float) -> dict[str, dict[str, Any]]:
    """Poll each backup until it follows (PASSIVE IKE_SA at `new`, outbound SAs at `new`) or
    `deadline`; ms from `t0` to the poll that saw each part."""
    out = {g: {"ike_ms": None, "xfrm_ms": None, "followed": False, "view": {}} for g in backups}
    while True:
        for g in backups:
            b = out[g]
            if b["followed"]:
                continue
            b["view"] = _view(lab, g, spis, out_spis)
            now = time.monotonic()
            if b["ike_ms"] is None and ike_followed(b["view"], new, "PASSIVE"):
                b["ike_ms"] = _ms(now, t0)
            if b["xfrm_ms"] is None and xfrm_followed(b["view"], new, out_spis):
                b["xfrm_ms"] = _ms(now, t0)
            b["followed"] = b["ike_ms"] is not None and b["xfrm_ms"] is not None
        if all(b["followed"] for b in out.values()) or time.monotonic() > deadline:
            return out
        time.sleep(POLL_S)


def _ms(t: float | None, t0: float) -> float | None:
    return round((t - t0) * 1000, 1) if t is not None else None


def check_adverts(run: Run) -> dict[str, dict[str, Any]]:
    """Per MOBIKE client: what its whole charon log says the gateways advertised, judged."""
    out = {}
    for c in run.spec.mobike:
        seen = advertised(aftercheck.read_log(run.lab, c, 0))
        out[c] = {**seen, "error": advert_error(seen)}
    return out


def gateway_addresses(run: Run) -> dict[str, str]:
    """Every gateway's addresses as `ip -o addr` shows them (flags and scope included)."""
    return {g.name: run.lab.run(g.name, ["ip", "-o", "addr", "show"], check=False)
            for g in run.lab.topo.by_role("gateway")}


def summary(run: Run, roams: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's MOBIKE section: clients, roams, the advertised-address check, verdict."""
    adverts = check_adverts(run)
    errors = [f"{c}: {v['error']}" for c, v in adverts.items() if v["error"]]
    errors += [f"{r['client']} roam {r['when']}: "
               + ("master did not follow" if r["master_ms"] is None else
                  "client lost its IKE_SA" if not r["client_kept_ike_sa"] else
                  "backups did not follow: " + ", ".join(
                      g for g, b in r["backups"].items() if not b["followed"]))
               for r in roams if not r["ok"]]
    return {"clients": list(run.spec.mobike), "roams": roams, "advertised": adverts,
            "gateway_addresses": gateway_addresses(run), "errors": errors,
            "ok": not errors}
