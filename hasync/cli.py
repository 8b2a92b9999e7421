"""The `hasync` command line: argument parsing and dispatch.

Rules: the only module (with its helpers in hasync/lab/runner.py) that turns user input into
specs; every error is one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from . import __version__
from .lab import confgen, report, runner
from .lab.prereq import LabError
from .lab.scenario import FAULTS, LabSpec


def _lab_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    lab = sub.add_parser("lab", help="the failover lab (real charon, keepalived and kernel)")
    lsub = lab.add_subparsers(dest="lab_cmd", required=True)
    chk = lsub.add_parser("check", help="say which runner the lab would use and what is missing")
    chk.add_argument("--runner", choices=("auto", "vm", "native"), default="auto")
    fo = lsub.add_parser("failover", help="bring the lab up and fail the VRRP master over")
    fo.add_argument("--baseline", action="store_true",
                    help="keepalived alone, no state sync (the only mode until the daemon lands)")
    fo.add_argument("--gateways", type=int, default=3, help="2 to 5 (default 3)")
    fo.add_argument("--clients", type=int, default=3, help="road warriors (default 3)")
    fo.add_argument("--nat-clients", type=int, default=1, help="of them behind NAT (default 1)")
    fo.add_argument("--failovers", type=int, default=1, help="failovers in a row (default 1)")
    fo.add_argument("--rate", type=float, default=50.0, help="probe packets/s each way")
    fo.add_argument("--advert-int", type=float, default=confgen.LabTimers.advert_int_s,
                    help="VRRP advert interval, s (default %(default)s)")
    fo.add_argument("--fault", choices=FAULTS, default="kill",
                    help="kill: kill -9 every process and take links down; links: links "
                         "down; stop: clean stop")
    fo.add_argument("--timeout", type=float, default=90.0,
                    help="per failover, how long to wait for every client's traffic (s)")
    fo.add_argument("--runner", choices=("auto", "vm", "native"), default="auto")
    fo.add_argument("--json", type=Path, help="write the result here")
    fo.add_argument("--out", type=Path, default=Path("out/lab"),
                    help="directory for logs and captures (default out/lab)")


def parser() -> argparse.ArgumentParser:
    """The argument parser of `hasync`."""
    p = argparse.ArgumentParser(prog="hasync", description="stateful IPsec failover")
    p.add_argument("--version", action="version", version=f"hasync {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)
    _lab_parser(sub)
    return p


def _spec(a: argparse.Namespace) -> LabSpec:
    if not a.baseline:
        raise LabError("only --baseline runs today: the hasync mode needs the daemon "
                       "(issues 3 and 4)")
    if not 0.01 <= a.advert_int <= 40.95:
        raise LabError(f"--advert-int must be 0.01 to 40.95 s (VRRPv3), not {a.advert_int}")
    if not 1 <= a.failovers <= 10 or a.rate <= 0:
        raise LabError("--failovers must be 1 to 10 and --rate positive")
    timers = confgen.LabTimers(advert_int_s=a.advert_int)
    return LabSpec(mode="baseline", gateways=a.gateways, clients=a.clients,
                   nat_clients=a.nat_clients, failovers=a.failovers, rate=a.rate,
                   fault=a.fault, timeout_s=a.timeout, timers=timers)


def lab_failover(a: argparse.Namespace) -> int:
    """`hasync lab failover`."""
    from .lab import topology
    spec = _spec(a)
    try:
        topology.plan(spec.gateways, spec.clients, spec.nat_clients)
    except ValueError as e:
        raise LabError(str(e)) from e
    which = runner.choose(a.runner) if a.runner != "auto" else None
    runner.check(which or "vm")  # root and tools first: probing ESP needs root too
    which = which or runner.choose("auto")
    out = a.out.resolve()
    if which == "vm":
        result = runner.run_in_vm(spec, out)
    else:
        from .lab.failover import run_lab
        result = run_lab(spec, out)
        result["runner"] = "native"
    print(report.table(result))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=1) + "\n")
        print(f"result written to {a.json}")
    return 0


def lab_check(a: argparse.Namespace) -> int:
    """`hasync lab check`."""
    runner.check("vm" if a.runner == "auto" else a.runner)
    print(f"runner: {runner.choose(a.runner)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `hasync` command."""
    a = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        if a.cmd == "lab":
            return lab_check(a) if a.lab_cmd == "check" else lab_failover(a)
    except LabError as e:
        print(f"hasync: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hasync: interrupted; the lab was torn down", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
