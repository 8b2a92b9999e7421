"""Where the lab runs: natively when this kernel can hold an ESP SA, otherwise in a VM that
boots Debian's stock kernel under QEMU/TCG with virtme-ng, sharing this root filesystem.

Rules: the same scenario code runs either way; the VM gets the spec as a JSON file in a
writable shared directory and leaves its result there; the VM is always stopped (timeout,
Ctrl-C, error), and nothing is left on the host but the output directory.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import hasync

from . import confgen, prereq
from .session import LabSpec

log = logging.getLogger("hasync_lab")
VM_MEMORY = "3G"
VM_CPUS = 2
BOOT_BUDGET_S = 240  # boot, charon start-up and tunnel set-up under TCG, with margin
TUNNEL_BUDGET_S = 2.0  # per benchmark tunnel: 100 took 43 s to set up under TCG


def choose(runner: str) -> str:
    """Resolve 'auto' to 'native' or 'vm' by probing this kernel for ESP."""
    if runner != "auto":
        return runner
    return "native" if prereq.kernel_has_esp() else "vm"


def check(runner: str) -> None:
    """Raise LabError naming what is missing for `runner`."""
    prereq.require_root()
    needs = prereq.COMMON + (prereq.VM if runner == "vm" else ())
    missing = prereq.missing(needs)
    if missing:
        raise prereq.LabError(prereq.describe_missing(missing))


def spec_from_dict(d: dict[str, object]) -> LabSpec:
    """Rebuild a LabSpec from its JSON form."""
    timers = confgen.LabTimers(**d.pop("timers"))  # type: ignore[arg-type]
    for key in ("faults", "proposals", "mobike", "client_impl"):  # JSON made tuples lists
        if key in d:
            d[key] = tuple(d[key])  # type: ignore[call-overload]
    return LabSpec(**d, timers=timers)  # type: ignore[arg-type]


def run_native(task: str, spec: LabSpec, out_dir: Path) -> dict[str, object]:
    """Run `task` (failover, mirror, capture) on this kernel."""
    from .capture import run_capture
    from .failover import run_lab
    from .mirrorlab import run_mirror
    from .xfrmlab import run_xfrm_check
    if task == "capture":
        return run_capture(out_dir)
    if task == "xfrm-check":
        return run_xfrm_check(spec, out_dir)
    return (run_mirror if task == "mirror" else run_lab)(spec, out_dir)


def run_task(task: str, spec: LabSpec, out_dir: Path, runner: str,
             budget: float) -> dict[str, object]:
    """Check what the runner needs, run `task` natively or in the VM, say which ran."""
    which = choose(runner) if runner != "auto" else None
    check(which or "vm")  # root and tools first: probing ESP needs root too
    which = which or choose("auto")
    if which == "vm":
        result = run_in_vm(task, spec, out_dir, budget)
    else:
        result = run_native(task, spec, out_dir)
    result["runner"] = which
    return result


def vm_budget(spec: LabSpec) -> float:
    """How long the VM may run before it is stopped."""
    per = spec.timeout_s + (600 if spec.mode == "hasync" else 90)  # hasync: restore + sync
    per_tunnel = TUNNEL_BUDGET_S * spec.tunnels * (1 + spec.failovers)  # set up, restores
    return (BOOT_BUDGET_S + spec.failovers * per + (300 if spec.mode == "hasync" else 0)
            + per_tunnel)


def python_path() -> str:
    """PYTHONPATH for Python in the VM: the directories holding hasync and hasync_lab.

    Every process the lab starts inherits it, so `-m hasync daemon` and `-m hasync_lab.probe`
    find this checkout's code whether it was installed (pip install -e) or is only on the path.
    """
    roots = [Path(hasync.__file__).resolve().parents[1], Path(__file__).resolve().parents[1]]
    return os.pathsep.join(dict.fromkeys(str(r) for r in roots))


def run_in_vm(task: str, spec: LabSpec, out_dir: Path, budget: float) -> dict[str, object]:
    """Boot the VM, run `task` ("failover" or "capture") inside it, and return its result."""
    out_dir.mkdir(parents=True, exist_ok=True)
    spec_path, result_path = out_dir / "lab-spec.json", out_dir / "lab-result.json"
    spec_path.write_text(json.dumps({"task": task, "spec": asdict(spec)}))
    result_path.unlink(missing_ok=True)
    inner = (f"cd / && PYTHONDONTWRITEBYTECODE=1 PYTHONPATH={shlex.quote(python_path())} "
             f"{sys.executable} -m hasync_lab.inside {spec_path} {result_path}")
    vng = prereq.venv_which("vng") or "vng"
    argv = [vng, "--run", prereq.kernel_image(), "--disable-kvm", "--memory", VM_MEMORY,
            "--cpus", str(VM_CPUS), "--rwdir", str(out_dir), "--exec", inner]
    log.info("booting %s under QEMU/TCG (this kernel has no ESP)", argv[2])
    _run_vm(argv, budget)
    if not result_path.exists():
        raise prereq.LabError(f"the VM ended without a result; see the output above and "
                              f"{out_dir}/lab-artifacts")
    result = json.loads(result_path.read_text())
    if "error" in result:
        raise prereq.LabError(f"lab failed in the VM: {result['error']}")
    return result


def _run_vm(argv: list[str], budget: float) -> None:
    """Run vng (stdin closed: vng crashes without one), stopping the VM on timeout or Ctrl-C.

    The VM's console comes through a pipe and is copied to our stdout: given our stdout
    itself, vng truncated a file it was redirected to, losing what was written before.
    """
    # vng runs virtme-run by name: the virtualenv's bin must be on PATH
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + ":" + os.environ["PATH"]}
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True, env=env)
    threading.Thread(target=_copy_console, args=(proc,), daemon=True).start()
    deadline = time.monotonic() + budget
    try:
        while proc.poll() is None:
            if time.monotonic() > deadline:
                raise prereq.LabError(f"the VM did not finish within {budget:.0f} s; stopped it")
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            _kill_group(proc)


def _copy_console(proc: subprocess.Popen[bytes]) -> None:
    """Copy the VM's console to our stdout as it comes."""
    assert proc.stdout is not None
    for line in iter(proc.stdout.readline, b""):
        sys.stdout.write(line.decode(errors="replace"))
        sys.stdout.flush()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue
