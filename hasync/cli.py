"""The `hasync` command line: argument parsing and dispatch.

Rules: the only module (with its helpers in hasync/lab/runner.py) that turns user input into
specs; every error is one line on stderr and a non-zero exit, never a traceback; the daemon
commands never import the lab, and `health` (keepalived runs it every second) imports nothing
heavy (no cryptography, pysyncobj, pyroute2): lab and journal modules are imported inside the
functions that use them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .config import DEFAULT_PATH, ConfigError, load_config
from .control import ControlError

if TYPE_CHECKING:
    from .config import Config
    from .lab.scenario import LabSpec

DAEMON_CMDS = ("daemon", "status", "sas", "health", "keygen")
MAX_TUNNELS = 1000  # the lab pool (hasync/lab/topology.py POOL, a /22) holds 1022 virtual IPs


def _lab_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from .lab import confgen
    from .lab.scenario import FAULTS
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
    cmp = lsub.add_parser("compare", help="print a baseline and a hasync failover result "
                          "side by side")
    cmp.add_argument("baseline", type=Path, help="JSON of `lab failover --baseline --json`")
    cmp.add_argument("hasync", type=Path, help="JSON of `lab failover --json` (hasync mode)")
    fo = lsub.add_parser("failover", help="bring the lab up and fail the VRRP master over")
    fo.add_argument("--baseline", action="store_true",
                    help="keepalived alone, no state sync (the only mode until the daemon lands)")
    fo.add_argument("--gateways", type=int, default=3, help="2 to 5 (default 3)")
    fo.add_argument("--clients", type=int, default=3, help="road warriors (default 3)")
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
                         "charon alone), or a comma-separated list, one per failover")
    fo.add_argument("--timeout", type=float, default=90.0,
                    help="per failover, how long to wait for every client's traffic (s)")
    fo.add_argument("--runner", choices=("auto", "vm", "native"), default="auto")
    fo.add_argument("--json", type=Path, help="write the result here")
    fo.add_argument("--out", type=Path, default=Path("out/lab"),
                    help="directory for logs and captures (default out/lab)")


def _daemon_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    for name, text in (("daemon", "run the daemon in the foreground (systemd runs this)"),
                       ("status", "the cluster as this node sees it"),
                       ("sas", "the journaled IKE_SAs and CHILD_SAs (never a secret)"),
                       ("health", "exit 0 if this node may hold the VIP, 1 if not "
                        "(keepalived's track_script)")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", type=Path, default=DEFAULT_PATH,
                       help=f"configuration file (default {DEFAULT_PATH})")
        if name != "daemon":
            p.add_argument("--json", action="store_true", help="print JSON")
        if name == "health":
            p.add_argument("--timeout", type=_positive_seconds, default=2.0,
                           help="limit for each of the two checks, run at the same time "
                                "(s, default %(default)s)")
    kg = sub.add_parser("keygen", help="write a new cluster key file (mode 0600)")
    kg.add_argument("path", type=Path)


def _positive_seconds(text: str) -> float:
    """A --timeout value: a finite number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be above 0 s, not {text}")
    return value


def parser(lab: bool = True) -> argparse.ArgumentParser:
    """The argument parser of `hasync`; without `lab`, the lab commands are left out."""
    p = argparse.ArgumentParser(prog="hasync", description="stateful IPsec failover")
    p.add_argument("--version", action="version", version=f"hasync {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)
    _daemon_parsers(sub)
    if lab:
        _lab_parser(sub)
    return p


def _daemon_cmd(a: argparse.Namespace) -> int:
    """`hasync daemon|status|sas|health|keygen`."""
    if a.cmd == "keygen":
        from .journal.seal import generate_key_file
        generate_key_file(a.path)
        print(f"wrote {a.path} (mode 0600): copy it to every node of the cluster")
        return 0
    cfg = load_config(a.config)
    if a.cmd == "health":
        return _health_cmd(cfg, a.json, a.timeout)
    if a.cmd == "daemon":
        from .daemon import run_daemon
        run_daemon(cfg)
        return 0
    from . import control, views
    result = control.request(cfg.node.control_socket, a.cmd)
    if a.json:
        print(json.dumps(result, indent=1))
    else:
        print(views.status_text(result) if a.cmd == "status" else views.sas_text(result))
    return 0


def _health_cmd(cfg: Config, as_json: bool, timeout: float) -> int:
    """`hasync health`: ask charon (vici) and hasync (control) at once; 0 healthy, 1 not."""
    import threading

    from .control import request
    from .health import verdict
    from .vicicheck import check
    out: dict[str, Any] = {}
    checker = threading.Thread(target=lambda: out.update(
        vici=check(cfg.charon.vici_socket, timeout)), daemon=True)
    checker.start()
    resp: dict[str, Any] | None = None
    control_error = None
    try:
        resp = request(cfg.node.control_socket, "health", timeout=timeout)
    except ControlError as exc:
        control_error = str(exc)
    checker.join(timeout + 0.2)
    vici_ok, vici_error, vici_busy = out.get(
        "vici", (False, f"no answer within {timeout} s", True))
    healthy, reasons = verdict(resp, vici_ok, vici_error, vici_busy=vici_busy,
                               control_error=control_error)
    if as_json:
        print(json.dumps({"healthy": healthy, "reasons": reasons, "daemon": resp,
                          "vici_ok": vici_ok, "vici_error": vici_error, "vici_busy": vici_busy,
                          "control_error": control_error}, indent=1))
    elif healthy and resp is not None:
        print(f"healthy: node {resp.get('node')} ({resp.get('role')})")
    else:
        print("unhealthy: " + "; ".join(reasons))
    return 0 if healthy else 1


def _spec(a: argparse.Namespace) -> LabSpec:
    from .lab import confgen
    from .lab.prereq import LabError
    from .lab.scenario import LabSpec
    if not 0.01 <= a.advert_int <= 40.95:
        raise LabError(f"--advert-int must be 0.01 to 40.95 s (VRRPv3), not {a.advert_int}")
    if not 1 <= a.failovers <= 10 or a.rate <= 0:
        raise LabError("--failovers must be 1 to 10 and --rate positive")
    if not 0 <= a.tunnels <= MAX_TUNNELS:
        raise LabError(f"--tunnels must be 0 to {MAX_TUNNELS} (the pool), not {a.tunnels}")
    from .lab.scenario import FAULTS
    faults = tuple(f.strip() for f in a.fault.split(","))
    bad = [f for f in faults if f not in FAULTS]
    if bad or len(faults) not in (1, a.failovers):
        raise LabError(f"--fault must be one of {', '.join(FAULTS)} or a list of "
                       f"{a.failovers} of them, not {a.fault!r}")
    timers = confgen.LabTimers(advert_int_s=a.advert_int)
    return LabSpec(mode="baseline" if a.baseline else "hasync", gateways=a.gateways,
                   clients=a.clients, nat_clients=a.nat_clients, failovers=a.failovers, rate=a.rate,
                   fault=faults[0], faults=faults if len(faults) > 1 else (),
                   timeout_s=a.timeout, timers=timers, tunnels=a.tunnels)


def _plan_ok(spec: LabSpec) -> None:
    from .lab import topology
    from .lab.prereq import LabError
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
    from .lab import report, runner
    spec = _spec(a)
    _plan_ok(spec)
    result = runner.run_task("failover", spec, a.out.resolve(), a.runner, runner.vm_budget(spec))
    print(report.table(result))
    _write(result, a.json)
    return 0


def lab_capture(a: argparse.Namespace) -> int:
    """`hasync lab capture-ha`: golden vectors from the real charon's ha plugin."""
    from .lab import runner
    from .lab.scenario import LabSpec
    result = runner.run_task("capture", LabSpec(), a.out.resolve(), a.runner,
                             runner.BOOT_BUDGET_S + 120)
    vectors = result["vectors"]
    assert isinstance(vectors, list)
    print(f"{len(vectors)} datagrams recorded")
    _write(result, a.json)
    return 0


def lab_mirror(a: argparse.Namespace) -> int:
    """`hasync lab mirror`."""
    from .lab import report, runner
    from .lab.prereq import LabError
    from .lab.scenario import LabSpec
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
    from .lab import runner
    from .lab.scenario import LabSpec
    result = runner.run_task("xfrm-check", LabSpec(gateways=2, clients=2), a.out.resolve(),
                             a.runner, runner.BOOT_BUDGET_S + 120)
    for j in result["jumps"]:  # type: ignore[attr-defined]
        print(f"SA {j['spi']} to {j['dst']}: oseq {j['oseq_before']} -> {j['oseq_after']}")
    _write(result, a.json)
    return 0


def _read_result(path: Path) -> dict[str, object]:
    """Load a failover result document; LabError (one line) if it cannot be one."""
    from .lab import report
    from .lab.prereq import LabError
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
    """`hasync lab compare BASELINE.json HASYNC.json`."""
    from .lab import report
    baseline, hasync = _read_result(a.baseline), _read_result(a.hasync)
    print(report.compare_table(baseline, hasync))
    return 0


def lab_check(a: argparse.Namespace) -> int:
    """`hasync lab check`."""
    from .lab import runner
    runner.check("vm" if a.runner == "auto" else a.runner)
    print(f"runner: {runner.choose(a.runner)}")
    return 0


def _user_errors() -> tuple[type[Exception], ...]:
    """The errors told in one line (exit 2): a module never imported cannot have raised its own."""
    errors: list[type[Exception]] = [ConfigError, ControlError]
    for module, name in (("hasync.lab.prereq", "LabError"),
                         ("hasync.journal.seal", "KeyFileError")):
        if module in sys.modules:
            errors.append(getattr(sys.modules[module], name))
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `hasync` command."""
    args = sys.argv[1:] if argv is None else argv
    # the lab's parser imports the lab (cryptography among others): daemon commands skip it
    a = parser(lab=not args or args[0] not in DAEMON_CMDS).parse_args(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        if a.cmd in DAEMON_CMDS:
            return _daemon_cmd(a)
        if a.cmd == "lab":
            cmds = {"check": lab_check, "failover": lab_failover, "capture-ha": lab_capture,
                    "mirror": lab_mirror, "xfrm-check": lab_xfrm, "compare": lab_compare}
            return cmds[a.lab_cmd](a)
    except _user_errors() as e:
        print(f"hasync: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hasync: interrupted; the lab was torn down", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
