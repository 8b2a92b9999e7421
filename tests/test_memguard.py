"""Tests of hasync.memguard: core dumps off and memory locked at start; failures are logged
and counted, never fatal; the systemd units allow both."""

from __future__ import annotations

import errno
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from hasync.memguard import (
    MCL_CURRENT,
    MCL_FUTURE,
    MCL_ONFAULT,
    PR_SET_DUMPABLE,
    has_ipc_lock,
    protect,
)

ROOT = Path(__file__).resolve().parent.parent
UNLIMITED = -1  # resource.RLIM_INFINITY on Linux

PROBE = """
import ctypes, json, resource
from hasync.memguard import PR_GET_DUMPABLE, protect
p = protect()
libc = ctypes.CDLL(None, use_errno=True)
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(json.dumps({"dumpable": libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0),
                  "locked_kb": int(status["VmLck"].split()[0]), "counters": p.counters,
                  "memory_locked": p.memory_locked, "dumpable_off": p.dumpable_off}))
"""


class FakeLibc:
    """Answers prctl and mlockall with the given errno values; records the calls."""

    def __init__(self, prctl: int = 0, mlockall: tuple[int, ...] = (0,)) -> None:
        self._prctl, self._mlock = prctl, list(mlockall)
        self.calls: list[tuple[str, int, ...]] = []

    def prctl(self, option: int, arg: int) -> int:
        self.calls.append(("prctl", option, arg))
        return self._prctl

    def mlockall(self, flags: int) -> int:
        self.calls.append(("mlockall", flags))
        return self._mlock.pop(0) if len(self._mlock) > 1 else self._mlock[0]


def test_finding8_the_process_is_not_dumpable_and_its_memory_is_locked() -> None:
    """In a child process (the locks would hold the test runner too)."""
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         check=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT)}, timeout=60)
    got = json.loads(out.stdout)
    assert got["dumpable"] == 0 and got["dumpable_off"]
    if not has_ipc_lock():
        pytest.skip("no CAP_IPC_LOCK here: mlockall is not tried (see the skip test)")
    assert got["memory_locked"] and got["locked_kb"] > 0
    assert not any(got["counters"].values())


def test_finding8_failures_are_logged_and_counted_not_fatal(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="hasync")
    libc = FakeLibc(prctl=errno.EPERM, mlockall=(errno.ENOMEM,))
    p = protect(libc, memlock_limit=lambda: UNLIMITED, ipc_lock=lambda: True)
    assert (p.dumpable_off, p.memory_locked) == (False, False)
    assert p.counters == {"memguard_dumpable_failed": 1, "memguard_mlock_failed": 1,
                          "memguard_mlock_skipped": 0}
    assert libc.calls == [("prctl", PR_SET_DUMPABLE, 0),
                          ("mlockall", MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)]
    text = caplog.text
    assert "PR_SET_DUMPABLE" in text and "EPERM" in text and "mlockall failed: ENOMEM" in text


def test_finding8_no_future_lock_under_a_finite_limit_without_cap_ipc_lock() -> None:
    """MCL_FUTURE bound by RLIMIT_MEMLOCK would fail later allocations: skipped, counted."""
    libc = FakeLibc()
    p = protect(libc, memlock_limit=lambda: 8192, ipc_lock=lambda: False)
    assert p.dumpable_off and not p.memory_locked
    assert p.counters["memguard_mlock_skipped"] == 1
    assert [c[0] for c in libc.calls] == ["prctl"]
    p = protect(FakeLibc(), memlock_limit=lambda: 8192, ipc_lock=lambda: True)
    assert p.memory_locked  # CAP_IPC_LOCK: the limit does not apply (mlock(2))


def test_a_kernel_without_mcl_onfault_locks_without_it() -> None:
    libc = FakeLibc(mlockall=(errno.EINVAL, 0))
    assert protect(libc, memlock_limit=lambda: UNLIMITED, ipc_lock=lambda: True).memory_locked
    assert libc.calls[1:] == [("mlockall", MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT),
                              ("mlockall", MCL_CURRENT | MCL_FUTURE)]


def test_has_ipc_lock_reads_capeff(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapEff:\t0000000000004000\n")
    assert has_ipc_lock(status)
    status.write_text("CapEff:\t000001ffffffbfff\n")
    assert not has_ipc_lock(status)
    assert not has_ipc_lock(tmp_path / "absent")


@pytest.mark.parametrize("unit", ["hasync.service", "hasync-witness.service"])
def test_finding8_units_forbid_core_dumps_and_allow_locking(unit: str) -> None:
    lines = [ln.strip() for ln in (ROOT / "deploy" / unit).read_text().splitlines()]
    assert "LimitCORE=0" in lines and "LimitMEMLOCK=infinity" in lines
    (bounding,) = [ln for ln in lines if ln.startswith("CapabilityBoundingSet=")]
    assert "CAP_IPC_LOCK" in bounding.split("=", 1)[1].split()
