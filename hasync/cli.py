"""The `hasync` command line: argument parsing and dispatch.

Rules: every error is one line on stderr and a non-zero exit, never a traceback; `health`
(keepalived runs it every second) imports nothing heavy (no cryptography, pysyncobj, pyroute2):
journal modules are imported inside the functions that use them. The lab is a separate
distribution (hasync-lab, bench/lab/): `hasync lab ...` hands its arguments to `hasync_lab.cli`
when that is installed, and otherwise says how to install it; nothing else here imports it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .config import DEFAULT_PATH, ConfigError, load_config
from .control import ControlError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .config import Config

DAEMON_CMDS = ("daemon", "status", "sas", "health", "keygen")
LAB_MISSING = ("hasync: the lab is not installed: `hasync lab` needs the hasync-lab package "
               "from this repository (pip install -e bench/lab, or make setup)")


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


def parser() -> argparse.ArgumentParser:
    """The argument parser of `hasync`; `lab` is listed, but `main` hands it over unparsed."""
    p = argparse.ArgumentParser(prog="hasync", description="stateful IPsec failover")
    p.add_argument("--version", action="version", version=f"hasync {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)
    _daemon_parsers(sub)
    sub.add_parser("lab", add_help=False, help="the failover lab (real charon, keepalived and "
                   "kernel), when hasync-lab is installed: hasync lab --help")
    return p


def lab_main(args: list[str]) -> int:
    """`hasync lab ARGS`: run hasync_lab's command line, or say how to install it (exit 2)."""
    if importlib.util.find_spec("hasync_lab") is None:
        print(LAB_MISSING, file=sys.stderr)
        return 2
    lab_cli = importlib.import_module("hasync_lab.cli")
    return int(lab_cli.main(args, prog="hasync lab"))


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
    if a.cmd == "sas":
        return _sas_cmd(cfg.node.control_socket, a.json)
    result = control.request(cfg.node.control_socket, a.cmd)
    if a.json:
        print(json.dumps(result, indent=1))
    else:
        print(views.status_text(result) if a.cmd == "status" else views.sas_text(result))
    return 0


def sas_pages(path: Any, limit: int | None = None,
              timeout: float = 5.0) -> Iterator[dict[str, Any]]:
    """Every page of `hasync sas`, in order (status.py Answers.sas): one request per page,
    so no answer outgrows the control protocol and the daemon's lock is held per page."""
    from . import control
    after: int | None = 0
    while after is not None:
        args = {"after": after} if limit is None else {"after": after, "limit": limit}
        page = control.request(path, "sas", timeout, **args)
        yield page
        nxt = page.get("next")
        if nxt is not None and (not isinstance(nxt, int) or nxt <= after):
            raise control.ControlError(f"hasync sas: page after {after} points back to {nxt!r}")
        after = nxt


def _sas_cmd(path: Any, as_json: bool) -> int:
    """`hasync sas`: print each page as it comes (text), or one JSON object at the end."""
    from . import views
    if as_json:
        sas = [ike for page in sas_pages(path) for ike in page.get("ike_sas", [])]
        print(json.dumps({"ike_sas": sas, "total": len(sas)}, indent=1))
        return 0
    shown = 0
    for page in sas_pages(path):
        if page.get("ike_sas"):
            print(views.sas_text(page), flush=True)
            shown += len(page["ike_sas"])
    if not shown:
        print(views.sas_text({}))
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
    if cfg.node.role == "witness":  # no charon to ask
        out["vici"] = (True, None, False)
    else:
        checker.start()
    resp: dict[str, Any] | None = None
    control_error = None
    try:
        resp = request(cfg.node.control_socket, "health", timeout=timeout)
    except ControlError as exc:
        control_error = str(exc)
    if checker.is_alive():
        checker.join(timeout + 0.2)
    vici_ok, vici_error, vici_busy = out.get(
        "vici", (False, f"no answer within {timeout} s", True))[:3]
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


def _user_errors() -> tuple[type[Exception], ...]:
    """The errors told in one line (exit 2): a module never imported cannot have raised its own."""
    errors: list[type[Exception]] = [ConfigError, ControlError]
    if "hasync.journal.seal" in sys.modules:
        errors.append(sys.modules["hasync.journal.seal"].KeyFileError)
    if "hasync.ikesniff" in sys.modules:
        errors.append(sys.modules["hasync.ikesniff"].SnifferUnavailable)
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `hasync` command."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["lab"]:
        return lab_main(args[1:])
    a = parser().parse_args(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        if a.cmd in DAEMON_CMDS:
            return _daemon_cmd(a)
    except _user_errors() as e:
        print(f"hasync: {e}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
