"""Keep the daemon's key material out of core dumps, other processes and swap (issue 17,
finding 8).

Rules: `protect()` runs once at start, before the cluster key is read (daemon.py
`run_daemon`); it turns core dumps and ptrace by non-root off (prctl PR_SET_DUMPABLE 0) and
locks the process's memory (mlockall), and never raises: what fails is logged and counted
under the names of `COUNTED`, and the daemon runs on. Why not fatal: the cluster key is
already on disk (root-only) and HA is the point of the daemon; a container or a kernel
without CAP_IPC_LOCK, or a small RLIMIT_MEMLOCK, must not turn a hardening step into an
outage, so the operator sees the counter in `hasync status` instead. The units
(deploy/hasync*.service) set LimitCORE=0, LimitMEMLOCK=infinity and keep CAP_IPC_LOCK, so
on a real gateway both steps succeed.

Python copies bytes freely (HKDF output, OpenSSL's key schedule inside cryptography), so
locking only "the key's pages" is not possible: the whole process is locked, current and
future pages (MCL_CURRENT | MCL_FUTURE), with MCL_ONFAULT (Linux 4.4) so that thread stacks
and arenas are locked as they are touched, not faulted in whole. MCL_FUTURE while bound by a
finite RLIMIT_MEMLOCK would make later allocations fail (mmap returns ENOMEM: mlockall(2)),
so without CAP_IPC_LOCK and with a finite limit the lock is skipped and counted.
Constants: linux/prctl.h PR_SET_DUMPABLE = 4, PR_GET_DUMPABLE = 3; asm-generic/mman-common.h
MCL_CURRENT = 1, MCL_FUTURE = 2, MCL_ONFAULT = 4 (x86 and arm64; powerpc, sparc and alpha use
other values and are not supported); linux/capability.h CAP_IPC_LOCK = 14.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import resource
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

log = logging.getLogger("hasync")

PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
MCL_CURRENT, MCL_FUTURE, MCL_ONFAULT = 1, 2, 4
CAP_IPC_LOCK = 14
COUNTED = ("memguard_dumpable_failed", "memguard_mlock_failed", "memguard_mlock_skipped")


class Libc(Protocol):
    """The two calls protect() makes; each returns 0 or an errno value."""

    def prctl(self, option: int, arg: int) -> int: ...

    def mlockall(self, flags: int) -> int: ...


class _RealLibc:
    """The C library through ctypes (errno read with use_errno, ctypes docs)."""

    def __init__(self) -> None:
        self._lib = ctypes.CDLL(None, use_errno=True)

    def _errno(self, result: int) -> int:
        return 0 if result == 0 else (ctypes.get_errno() or errno.EIO)

    def prctl(self, option: int, arg: int) -> int:
        return self._errno(self._lib.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(0),
                                           ctypes.c_ulong(0), ctypes.c_ulong(0)))

    def mlockall(self, flags: int) -> int:
        return self._errno(self._lib.mlockall(ctypes.c_int(flags)))


@dataclass
class Protection:
    """What protect() achieved: the counters (`hasync status` shows non-zero ones)."""

    dumpable_off: bool = False
    memory_locked: bool = False
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTED, 0))


def has_ipc_lock(status: Path = Path("/proc/self/status")) -> bool:
    """Whether CAP_IPC_LOCK is in this process's effective set (CapEff, proc(5))."""
    try:
        for line in status.read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_IPC_LOCK & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def _memlock_limit() -> int:
    """The soft RLIMIT_MEMLOCK (resource.RLIM_INFINITY if unlimited)."""
    return resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]


def _lock(libc: Libc) -> int:
    """mlockall(CURRENT | FUTURE | ONFAULT), then without ONFAULT on a kernel before 4.4."""
    err = libc.mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)
    if err == errno.EINVAL:
        err = libc.mlockall(MCL_CURRENT | MCL_FUTURE)
    return err


def protect(libc: Libc | None = None, memlock_limit: Callable[[], int] = _memlock_limit,
            ipc_lock: Callable[[], bool] = has_ipc_lock) -> Protection:
    """Turn core dumps off and lock memory; log and count what fails, never raise."""
    out = Protection()
    try:
        lib: Libc = libc if libc is not None else _RealLibc()
    except OSError as exc:
        log.warning("memguard: no C library (%s): core dumps stay as the unit sets them "
                    "(LimitCORE=0), memory is not locked", exc)
        out.counters["memguard_dumpable_failed"] += 1
        out.counters["memguard_mlock_failed"] += 1
        return out
    err = lib.prctl(PR_SET_DUMPABLE, 0)
    if err:
        out.counters["memguard_dumpable_failed"] += 1
        log.warning("memguard: prctl(PR_SET_DUMPABLE, 0) failed: %s; a core dump could hold "
                    "the cluster key (counted: memguard_dumpable_failed)", errno.errorcode.get(
                        err, err))
    out.dumpable_off = not err
    limit = memlock_limit()
    if limit != resource.RLIM_INFINITY and not ipc_lock():
        out.counters["memguard_mlock_skipped"] += 1
        log.warning("memguard: memory not locked: RLIMIT_MEMLOCK is %d bytes and there is no "
                    "CAP_IPC_LOCK, so MCL_FUTURE would fail later allocations; keys may be "
                    "swapped out (counted: memguard_mlock_skipped)", limit)
        return out
    err = _lock(lib)
    if err:
        out.counters["memguard_mlock_failed"] += 1
        log.warning("memguard: mlockall failed: %s; keys may be swapped out (counted: "
                    "memguard_mlock_failed)", errno.errorcode.get(err, err))
    out.memory_locked = not err
    return out
