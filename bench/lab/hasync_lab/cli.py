"""The lab's command line: `hasync-lab CMD ...`, also run as `hasync lab CMD ...`.

Rules: the only module (with its helpers in runner.py) that turns user input into a LabSpec;
every error is one line on stderr and exit 2, never a traceback; Ctrl-C exits 130 after the
lab was torn down. The product's `hasync lab` only hands its arguments to `main` here.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from hasync.journal.seal import KeyFileError

from . import confgen, inner6, leases, lswclients, mobike, report, runner, topology
from .inflight import KINDS as INFLIGHT_KINDS
from .prereq import LabError
from .routebased import KINDS as ROUTE_KINDS
from .scenario import FAULTS
from .session import LabSpec

MAX_TUNNELS = 1000  # the lab pool (topology.py POOL, a /22) holds 1022 virtual IPs
RUNNERS = ("auto", "vm", "native")


def _run_options(p: argparse.ArgumentParser, out: str, what: str = "logs",
                 json_help: str = "write the result here", json_required: bool = False) -> None:
    """--runner, --json and --out, which every command that runs the lab takes."""
    p.add_argument("--runner", choices=RUNNERS, default="auto")
    p.add_argument("--json", type=Path, required=json_required, help=json_help)
    p.add_argument("--out", type=Path, default=Path(out),
                   help=f"directory for {what} (default {out})")


def _size_options(p: argparse.ArgumentParser) -> None:
    """--gateways and --clients."""
    p.add_argument("--gateways", type=int, default=3, help="2 to 5 (default 3)")
    p.add_argument("--clients", type=int, default=3, help="road warriors (default 3)")


def _small_parsers(lsub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    chk = lsub.add_parser("check", help="say which runner the lab would use and what is missing")
    chk.add_argument("--runner", choices=RUNNERS, default="auto")
    cap = lsub.add_parser("capture-ha", help="record golden vectors from charon's ha plugin "
                          "(lab material: holds the lab's throwaway secrets in clear)")
    _run_options(cap, "out/capture", json_help="write the vectors here", json_required=True)
    mi = lsub.add_parser("mirror", help="hasync on every gateway: check that every backup's "
                         "charon and kernel mirror the master (one gateway starts late)")
    _size_options(mi)
    mi.add_argument("--late", type=int, default=1, help="gateways started after the clients")
    _run_options(mi, "out/mirror")
    xc = lsub.add_parser("xfrm-check", help="jump the master's outbound ESP sequence numbers "
                         "over XFRM netlink during traffic and check the clients")
    _run_options(xc, "out/xfrm")
    cmp = lsub.add_parser("compare", help="print a baseline and a hasync failover result "
                          "side by side")
    cmp.add_argument("baseline", type=Path, help="JSON of `lab failover --baseline --json`")
    cmp.add_argument("hasync", type=Path, help="JSON of `lab failover --json` (hasync mode)")


def _failover_parser(lsub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    fo = lsub.add_parser("failover", help="bring the lab up and fail the VRRP master over")
    fo.add_argument("--baseline", action="store_true",
                    help="keepalived alone, no state sync (the only mode until the daemon lands)")
    _size_options(fo)
    fo.add_argument("--nat-clients", type=int, default=1, help="of them behind NAT (default 1)")
    fo.add_argument("--failovers", type=int, default=1, help="failovers in a row (default 1)")
    fo.add_argument("--tunnels", type=int, default=0,
                    help="N tunnels dealt over the clients, each its own IKE_SA (pre-shared "
                         "key), virtual IP and probe flow (default 0: one per client)")
    fo.add_argument("--rate", type=float, default=20.0,
                    help="probe packets/s each way, per tunnel")
    fo.add_argument("--advert-int", type=float, default=confgen.LabTimers.advert_int_s,
                    help="VRRP advert interval, s (default %(default)s)")
    fo.add_argument("--fault", default="kill",
                    help=f"one of {', '.join(FAULTS)} (kill: links down and kill -9 of every "
                         "process; links: links down; stop: clean stop; charon: kill -9 of "
                         "charon alone; upgrade: the next master's charon restarted as a "
                         "package upgrade would, then kill; partition: the master cut off "
                         "from every other "
                         "cluster node; partition-backup: the last backup cut off; hasync: "
                         "kill -9 of the master's hasync; restart: that kill, then a start "
                         "1 s later, as systemd's Restart=always does; keepalived: the master's "
                         "keepalived stopped and started 1 s later), or a "
                         "comma-separated list, one per "
                         "failover")
    fo.add_argument("--heal-after", type=float, default=None, metavar="S",
                    help="partition faults: lift the cut S seconds after it (default: hold it "
                         "30 s)")
    fo.add_argument("--restart-after", type=float, default=3.0, metavar="S",
                    help="the hasync fault: start hasync again S seconds after the kill")
    fo.add_argument("--force-rate", type=float, default=300.0, metavar="PPS",
                    help="partition and hasync faults: packets/s the server sends the first "
                         "client through the struck node's own address (0: none)")
    fo.add_argument("--witness", action="store_true",
                    help="a witness (hasync alone, a Raft voter) on the protected network")
    fo.add_argument("--leases", action="store_true",
                    help="virtual IP lease rounds on the lease client before and after every "
                         "failover: "
                         "re-authenticate a kept tunnel, bring two up, one down; check that "
                         "no address is held twice and released ones are free on the next "
                         "master")
    fo.add_argument("--lease-client", default=leases.LEASE_CLIENT, metavar="CLIENT",
                    help="the client whose extra tunnels --leases' rounds move (default "
                         f"{leases.LEASE_CLIENT})")
    fo.add_argument("--inflight", choices=("", *INFLIGHT_KINDS), default="",
                    help="an IKE exchange of the first client in flight at the first fault: "
                         "its request processed by the master, the response lost (clients "
                         "then retransmit on strongSwan's default schedule)")
    fo.add_argument("--prometheus", action="store_true",
                    help="a real Prometheus (Debian's) on the server node scrapes every "
                         "gateway's metrics every 2 s; the result holds what it scraped "
                         "around each fault")
    fo.add_argument("--route-based", choices=("", *ROUTE_KINDS), default="",
                    help="gateways' tunnels through an XFRM interface (if_id) or a VTI device "
                         "(marks), the pool routed through it (default: policy-based)")
    fo.add_argument("--ipv6", action="store_true",
                    help="the first client reaches the VIP over IPv6 (the gateways hold an "
                         "IPv6 VIP too) and gets an IPv6 virtual IP beside its IPv4 one, with "
                         "an IPv6 probe flow (c1/v6) to the server's IPv6 address; the run "
                         "fails if that flow does not resume (not with --route-based vti)")
    fo.add_argument("--mobike", default="", metavar="CLIENTS",
                    help="comma-separated clients (not behind NAT) with MOBIKE on: each "
                         "changes its address before the first failover and after it, and "
                         "every gateway must follow; gateways advertise only the VIP")
    fo.add_argument("--matrix", action="store_true",
                    help="the lab's matrix run: " + " ".join(x for o in MATRIX for x in o)
                         + " (given options override it)")
    fo.add_argument("--proposals", default="",
                    help="ESP cipher of each client in order, comma-separated, from "
                         f"{', '.join(confgen.ESP_CIPHERS)} (default: aes256gcm for all; "
                         "c2 adds ESN)")
    fo.add_argument("--client-impl", default="", metavar="IMPLS",
                    help="IKE implementation of each client in order, comma-separated, from "
                         "strongswan, libreswan (default: strongswan for all); a libreswan "
                         "client (4.10, unpacked by `make setup`) runs its own DPD and "
                         "retransmission timers, and is not the --inflight, --mobike, --ipv6 "
                         "or --leases client")
    fo.add_argument("--timeout", type=float, default=90.0,
                    help="per failover, how long to wait for every client's traffic (s)")
    _run_options(fo, "out/lab", what="logs and captures")


def parser(prog: str = "hasync-lab") -> argparse.ArgumentParser:
    """The argument parser of the lab's commands."""
    p = argparse.ArgumentParser(prog=prog, description="the failover lab (real charon, "
                                "keepalived and kernel)")
    lsub = p.add_subparsers(dest="lab_cmd", required=True)
    _small_parsers(lsub)
    _failover_parser(lsub)
    return p


# what --matrix stands for (docs/operations.md): four clients, each on its own ESP proposal
# (c2 with ESN); c1 over IPv6 with an IPv6 virtual IP and a CHILD rekey in flight at the first
# fault, c2 roaming with MOBIKE, c3 carrying the lease rounds, c4 libreswan behind NAT;
# gateways route-based through an XFRM interface; three failovers (two kills, then charon
# alone); a real Prometheus scraping every gateway. VTI, IPv4 only, runs apart
# (tests/test_lab_leases.py).
MATRIX: tuple[tuple[str, ...], ...] = (
    ("--clients", "4"), ("--failovers", "3"), ("--fault", "kill,kill,charon"),
    ("--inflight", "child-rekey"), ("--proposals", "aes128gcm,aes256cbc,chacha20,aes256gcm"),
    ("--route-based", "xfrmi"), ("--ipv6",), ("--mobike", "c2"), ("--leases",),
    ("--lease-client", "c3"), ("--client-impl", ",,,libreswan"), ("--prometheus",))


def with_matrix(argv: list[str]) -> list[str]:
    """`failover` arguments with --matrix replaced by what it stands for (given ones win)."""
    if "--matrix" not in argv:
        return argv
    rest = [x for x in argv if x != "--matrix"]
    given = {x.split("=")[0] for x in rest if x.startswith("--")}
    return [*rest[:1], *(x for opt in MATRIX if opt[0] not in given for x in opt), *rest[1:]]


def spec_of(a: argparse.Namespace) -> LabSpec:
    """The LabSpec of `failover`'s arguments; LabError (one line) if they cannot make one."""
    if not 0.01 <= a.advert_int <= 40.95:
        raise LabError(f"--advert-int must be 0.01 to 40.95 s (VRRPv3), not {a.advert_int}")
    if not 1 <= a.failovers <= 10 or a.rate <= 0:
        raise LabError("--failovers must be 1 to 10 and --rate positive")
    if not 0 <= a.tunnels <= MAX_TUNNELS:
        raise LabError(f"--tunnels must be 0 to {MAX_TUNNELS} (the pool), not {a.tunnels}")
    faults = tuple(f.strip() for f in a.fault.split(","))
    bad = [f for f in faults if f not in FAULTS]
    if bad or len(faults) not in (1, a.failovers):
        raise LabError(f"--fault must be one of {', '.join(FAULTS)} or a list of "
                       f"{a.failovers} of them, not {a.fault!r}")
    if (a.heal_after is not None and a.heal_after <= 0) or a.restart_after < 0 or \
            a.force_rate < 0:
        raise LabError("--heal-after must be positive, --restart-after and --force-rate "
                       "not negative")
    if a.leases and (a.tunnels or a.lease_client not in
                     [f"c{k}" for k in range(1, a.clients + 1)]):
        raise LabError(f"--leases uses the classic client {a.lease_client} "
                       "(--lease-client): not with --tunnels, and it must be one of the "
                       "--clients")
    proposals = tuple(p.strip() for p in a.proposals.split(",") if p.strip())
    bad = [p for p in proposals if p not in confgen.ESP_CIPHERS]
    if bad or len(proposals) > a.clients:
        raise LabError(f"--proposals takes up to one of {', '.join(confgen.ESP_CIPHERS)} "
                       f"per client, not {a.proposals!r}")
    if a.witness and a.baseline:
        raise LabError("--witness runs hasync: not with --baseline")
    if a.prometheus and a.baseline:
        raise LabError("--prometheus scrapes hasync's metrics: not with --baseline")
    if a.inflight and a.baseline:
        raise LabError("--inflight measures hasync's takeover: not with --baseline")
    if a.ipv6 and a.route_based == "vti":
        raise LabError("--ipv6 puts IPv6 inside the tunnel, which a VTI device (ip_vti) "
                       "does not carry: use --route-based xfrmi")
    roaming = _mobike_of(a)
    impls = _impls_of(a, roaming)
    timers = confgen.LabTimers(advert_int_s=a.advert_int,
                               **(confgen.IN_FLIGHT_TIMERS if a.inflight else {}))
    return LabSpec(mode="baseline" if a.baseline else "hasync", gateways=a.gateways,
                   clients=a.clients, nat_clients=a.nat_clients, failovers=a.failovers, rate=a.rate,
                   fault=faults[0], faults=faults if len(faults) > 1 else (),
                   timeout_s=a.timeout, timers=timers, tunnels=a.tunnels, witness=a.witness,
                   heal_after_s=a.heal_after, restart_after_s=a.restart_after,
                   force_rate=a.force_rate, leases=a.leases, lease_client=a.lease_client,
                   proposals=proposals,
                   inflight=a.inflight, route_based=a.route_based, ipv6=a.ipv6,
                   mobike=roaming, client_impl=impls, prometheus=a.prometheus)


def _mobike_of(a: argparse.Namespace) -> tuple[str, ...]:
    """The --mobike clients; LabError if a name is not a client that can roam in the lab."""
    if not a.mobike.strip():
        return ()
    if a.baseline or a.tunnels:
        raise LabError("--mobike measures hasync following a roam of the classic clients: "
                       "not with --baseline or --tunnels")
    names = [f"c{k}" for k in range(1, a.clients + 1)]
    unable = {n: "is behind NAT" for n in names[max(0, a.clients - a.nat_clients):]}
    if a.ipv6 and names:
        unable.setdefault(names[0], "reaches the VIP over IPv6 (--ipv6): the lab roams "
                                    "IPv4 clients only")
    if a.leases:
        unable.setdefault(a.lease_client, "carries --leases' tunnels, which do not "
                                               "use MOBIKE")
    try:
        return mobike.parse_clients(a.mobike, names, unable)
    except ValueError as e:
        raise LabError(str(e)) from e


def _impls_of(a: argparse.Namespace, roaming: tuple[str, ...]) -> tuple[str, ...]:
    """The --client-impl list; LabError if it names an unknown implementation or gives
    libreswan to a client whose role drives charon (lswclients.py)."""
    impls = tuple(p.strip() or "strongswan" for p in a.client_impl.split(",")) \
        if a.client_impl.strip() else ()
    bad = [p for p in impls if p not in lswclients.IMPLS]
    if bad or len(impls) > a.clients:
        raise LabError(f"--client-impl takes up to one of {', '.join(lswclients.IMPLS)} per "
                       f"client, not {a.client_impl!r}")
    other = {f"c{k + 1}" for k, p in enumerate(impls) if p == "libreswan"}
    if other and a.tunnels:
        raise LabError("--client-impl libreswan runs the classic clients: not with --tunnels")
    roles = {"c1": "--inflight's and --ipv6's client"} if a.inflight or a.ipv6 else {}
    roles.update({c: "a --mobike client" for c in roaming})
    if a.leases:
        roles.setdefault(a.lease_client, "--leases' client")
    clash = sorted(c for c in other if c in roles)
    if clash:
        raise LabError(f"{clash[0]} is {roles[clash[0]]}, which drives charon: give "
                       "libreswan another client")
    return impls


def _plan_ok(spec: LabSpec) -> None:
    try:
        topology.plan(spec.gateways, spec.clients, spec.nat_clients, witness=spec.witness,
                      ipv6_clients=int(spec.ipv6))
    except ValueError as e:
        raise LabError(str(e)) from e


def _write(result: dict[str, object], path: Path | None) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")
        print(f"result written to {path}")


def lab_failover(a: argparse.Namespace) -> int:
    """`failover`."""
    spec = spec_of(a)
    _plan_ok(spec)
    result = runner.run_task("failover", spec, a.out.resolve(), a.runner, runner.vm_budget(spec))
    print(report.table(result))
    _write(result, a.json)
    moved = result.get("mobike")
    if isinstance(moved, dict) and not moved.get("ok"):
        print(f"MOBIKE check failed: {'; '.join(moved.get('errors') or [])}", file=sys.stderr)
        return 1
    stalled = inner6.unresumed(result)
    if stalled:
        print(f"IPv6 inner flow did not resume: {'; '.join(stalled)}", file=sys.stderr)
        return 1
    return 0


def lab_capture(a: argparse.Namespace) -> int:
    """`capture-ha`: golden vectors from the real charon's ha plugin."""
    result = runner.run_task("capture", LabSpec(), a.out.resolve(), a.runner,
                             runner.BOOT_BUDGET_S + 120)
    vectors = result["vectors"]
    assert isinstance(vectors, list)
    print(f"{len(vectors)} datagrams recorded")
    _write(result, a.json)
    return 0


def lab_mirror(a: argparse.Namespace) -> int:
    """`mirror`."""
    if not 0 <= a.late < a.gateways - 1:
        raise LabError("--late must leave the master and one backup starting on time")
    spec = LabSpec(mode="hasync", gateways=a.gateways, clients=a.clients, late_gateways=a.late)
    _plan_ok(spec)
    result = runner.run_task("mirror", spec, a.out.resolve(), a.runner,
                             runner.BOOT_BUDGET_S + 600)
    print(report.mirror_table(result))
    _write(result, a.json)
    return 0


def lab_xfrm(a: argparse.Namespace) -> int:
    """`xfrm-check`."""
    result = runner.run_task("xfrm-check", LabSpec(gateways=2, clients=2), a.out.resolve(),
                             a.runner, runner.BOOT_BUDGET_S + 120)
    for j in result["jumps"]:  # type: ignore[attr-defined]
        print(f"SA {j['spi']} to {j['dst']}: oseq {j['oseq_before']} -> {j['oseq_after']}")
    _write(result, a.json)
    return 0


def read_result(path: Path) -> dict[str, object]:
    """Load a failover result document; LabError (one line) if it cannot be one."""
    try:
        doc = json.loads(path.read_text())
    except OSError as e:
        raise LabError(f"cannot read {path}: {e.strerror or e}") from e
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise LabError(f"{path} is not JSON: {str(e).splitlines()[0]}") from e
    problem = report.result_problem(doc)
    if problem:
        raise LabError(f"{path} is not a failover result: {problem}")
    return doc  # type: ignore[no-any-return]


def lab_compare(a: argparse.Namespace) -> int:
    """`compare BASELINE.json HASYNC.json`."""
    baseline, hasync = read_result(a.baseline), read_result(a.hasync)
    print(report.compare_table(baseline, hasync))
    return 0


def lab_check(a: argparse.Namespace) -> int:
    """`check`."""
    runner.check("vm" if a.runner == "auto" else a.runner)
    print(f"runner: {runner.choose(a.runner)}")
    return 0


COMMANDS = {"check": lab_check, "failover": lab_failover, "capture-ha": lab_capture,
            "mirror": lab_mirror, "xfrm-check": lab_xfrm, "compare": lab_compare}


def main(argv: list[str] | None = None, prog: str = "hasync-lab") -> int:
    """Entry point of `hasync-lab` (and of `hasync lab`, with prog "hasync lab")."""
    a = parser(prog).parse_args(with_matrix(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    command = prog.split()[0]  # errors say "hasync: ..." as they did before the lab moved out
    try:
        return COMMANDS[a.lab_cmd](a)
    except (LabError, KeyFileError) as e:
        print(f"{command}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{command}: interrupted; the lab was torn down", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
