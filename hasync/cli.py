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
from .config import DEFAULT_PATH, ConfigError, load_config
from .control import ControlError
from .journal.seal import KeyFileError
from .lab import confgen, report, runner
from .lab.prereq import LabError
from .lab.scenario import FAULTS, LabSpec


def _lab_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    lab = sub.add_parser("lab", help="the failover lab (real charon, keepalived and kernel)")
    lsub = lab.add_subparsers(dest="lab_cmd", required=True)
    chk = lsub.add_parser("check", help="say which runner the lab would use and what is missing")
    chk.add_argument("--runner", choices=("auto", "vm", "native"), default="auto")
    cap = lsub.add_parser("capture-ha", help="record golden vectors from charon's ha plugin "
                          "(lab material: holds the lab's throwaway secrets in clear)")
    cap.add_argument("--json", type=Path, required=True, help="write the vectors here")
    cap.add_argument("--runner", choices=("auto", "vm", "native"), default="auto")
    cap.add_argument("--out", type=Path, default=Path("out/capture"),
                     help="directory for logs (default out/capture)")
    mi = lsub.add_parser("mirror", help="hasync on every gateway: check that every backup's "
                         "charon and kernel mirror the master (one gateway starts late)")
    mi.add_argument("--gateways", type=int, default=3, help="2 to 5 (default 3)")
    mi.add_argument("--clients", type=int, default=3, help="road warriors (default 3)")
    mi.add_argument("--late", type=int, default=1, help="gateways started after the clients")
    mi.add_argument("--runner", choices=("auto", "vm", "native"), default="auto")
    mi.add_argument("--json", type=Path, help="write the result here")
    mi.add_argument("--out", type=Path, default=Path("out/mirror"),
                    help="directory for logs (default out/mirror)")
    xc = lsub.add_parser("xfrm-check", help="jump the master's outbound ESP sequence numbers "
                         "over XFRM netlink during traffic and check the clients")
    xc.add_argument("--runner", choices=("auto", "vm", "native"), default="auto")
    xc.add_argument("--json", type=Path, help="write the result here")
    xc.add_argument("--out", type=Path, default=Path("out/xfrm"),
                    help="directory for logs (default out/xfrm)")
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


def _daemon_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    for name, text in (("daemon", "run the daemon in the foreground (systemd runs this)"),
                       ("status", "the cluster as this node sees it"),
                       ("sas", "the journaled IKE_SAs and CHILD_SAs (never a secret)")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", type=Path, default=DEFAULT_PATH,
                       help=f"configuration file (default {DEFAULT_PATH})")
        if name != "daemon":
            p.add_argument("--json", action="store_true", help="print JSON")
    kg = sub.add_parser("keygen", help="write a new cluster key file (mode 0600)")
    kg.add_argument("path", type=Path)


def parser() -> argparse.ArgumentParser:
    """The argument parser of `hasync`."""
    p = argparse.ArgumentParser(prog="hasync", description="stateful IPsec failover")
    p.add_argument("--version", action="version", version=f"hasync {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)
    _daemon_parsers(sub)
    _lab_parser(sub)
    return p


def _daemon_cmd(a: argparse.Namespace) -> int:
    """`hasync daemon|status|sas|keygen`."""
    from . import control, views
    from .journal.seal import generate_key_file
    if a.cmd == "keygen":
        generate_key_file(a.path)
        print(f"wrote {a.path} (mode 0600): copy it to every node of the cluster")
        return 0
    cfg = load_config(a.config)
    if a.cmd == "daemon":
        from .daemon import run_daemon
        run_daemon(cfg)
        return 0
    result = control.request(cfg.node.control_socket, a.cmd)
    if a.json:
        print(json.dumps(result, indent=1))
    else:
        print(views.status_text(result) if a.cmd == "status" else views.sas_text(result))
    return 0


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


def _plan_ok(spec: LabSpec) -> None:
    from .lab import topology
    try:
        topology.plan(spec.gateways, spec.clients, spec.nat_clients)
    except ValueError as e:
        raise LabError(str(e)) from e


def _write(result: dict[str, object], path: Path | None) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")
        print(f"result written to {path}")


def lab_failover(a: argparse.Namespace) -> int:
    """`hasync lab failover`."""
    spec = _spec(a)
    _plan_ok(spec)
    result = runner.run_task("failover", spec, a.out.resolve(), a.runner, runner.vm_budget(spec))
    print(report.table(result))
    _write(result, a.json)
    return 0


def lab_capture(a: argparse.Namespace) -> int:
    """`hasync lab capture-ha`: golden vectors from the real charon's ha plugin."""
    result = runner.run_task("capture", LabSpec(), a.out.resolve(), a.runner,
                             runner.BOOT_BUDGET_S + 120)
    vectors = result["vectors"]
    assert isinstance(vectors, list)
    print(f"{len(vectors)} datagrams recorded")
    _write(result, a.json)
    return 0


def lab_mirror(a: argparse.Namespace) -> int:
    """`hasync lab mirror`."""
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
    """`hasync lab xfrm-check`."""
    result = runner.run_task("xfrm-check", LabSpec(gateways=2, clients=2), a.out.resolve(),
                             a.runner, runner.BOOT_BUDGET_S + 120)
    for j in result["jumps"]:  # type: ignore[attr-defined]
        print(f"SA {j['spi']} to {j['dst']}: oseq {j['oseq_before']} -> {j['oseq_after']}")
    _write(result, a.json)
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
        if a.cmd in ("daemon", "status", "sas", "keygen"):
            return _daemon_cmd(a)
        if a.cmd == "lab":
            cmds = {"check": lab_check, "failover": lab_failover, "capture-ha": lab_capture,
                    "mirror": lab_mirror, "xfrm-check": lab_xfrm}
            return cmds[a.lab_cmd](a)
    except (LabError, ConfigError, ControlError, KeyFileError) as e:
        print(f"hasync: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hasync: interrupted; the lab was torn down", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
