"""The health verdict file keepalived's check reads, refreshed every second by the daemon.

Rules: keepalived runs its track_script every second; a Python start per run costs 0.15 s on
hardware and seconds under emulation, so the daemon judges (the same `health.verdict()` as the
command) and deploy/hasync-health-check only reads the file and its age: a dead or hung
daemon stops refreshing it, and the daemon removes it on exit (docs/decisions.md, Health).
Verdict changes are logged, not every second's; a slow vici answer or a late verdict is
counted under the names `hasync status` shows (`vici_busy`, `health_late`). An error other
than OSError on the file escapes `run()`, which stops the daemon (its TaskGroup).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import vicicheck
from .health import cause, verdict

log = logging.getLogger("hasync")
VERDICT_PERIOD_S = 1.0  # the verdict is judged and written this often
HEALTH_LATE_S = 3.0  # a verdict judged slower than this is logged (deploy/'s check: 3 s old)
VICI_TIMEOUT_S = 2.0


def shape(healthy: bool, reasons: list[str]) -> tuple[bool, tuple[str, ...]]:
    """A verdict without its numbers (ages, counts), to log changes rather than every tick."""
    return healthy, tuple(re.sub(r"\d+(\.\d+)?", "#", r) for r in reasons)


class HealthWriter:
    """Judges this node every second and writes `ok|fail <boottime> <reasons>` to `path`."""

    def __init__(self, path: Path, vici_socket: Path, answer: Callable[[], dict[str, Any]],
                 check: Callable[[Path, float], vicicheck.ViciAnswer] = vicicheck.check) -> None:
        self.path, self.vici_socket, self.answer, self.check = path, vici_socket, answer, check
        self.counters: Counter[str] = Counter(vici_busy=0, health_late=0, health_write_errors=0)
        self.healthy: tuple[bool, list[str]] = (False, ["not checked yet"])
        self.verdicts: Counter[str] = Counter()  # verdicts judged: "ok", or each failed cause
        self.judged_at: float | None = None  # time.monotonic() of the last verdict
        self.vici_busy = False  # the last vici check found charon slow, not dead

    async def run(self) -> None:
        """Judge and write every second, forever."""
        loop = asyncio.get_running_loop()
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        while True:
            started = time.monotonic()
            vici = await loop.run_in_executor(None, self.check, self.vici_socket,
                                              VICI_TIMEOUT_S)
            self.judge(vici)
            # seconds since boot, as /proc/uptime gives them to the check without a `date`
            # fork (that fork and exec, every second, cost each gateway 15% of an emulated CPU)
            self.write(int(time.clock_gettime(time.CLOCK_BOOTTIME)))
            self.note_late_verdict(time.monotonic() - started)
            await asyncio.sleep(VERDICT_PERIOD_S)

    def judge(self, vici: vicicheck.ViciAnswer) -> None:
        """The verdict from the daemon's answer and this vici check; changes are logged."""
        healthy, reasons = verdict(self.answer(), vici.ok, vici.error, vici_busy=vici.busy)
        self.note_vici_busy(vici, healthy)
        if shape(healthy, reasons) != shape(*self.healthy):
            log.log(logging.INFO if healthy else logging.WARNING, "health: %s",
                    "ok" if healthy else "; ".join(reasons))
        self.healthy = (healthy, reasons)
        self.verdicts.update([cause(r) for r in reasons] if not healthy else ["ok"])
        self.judged_at = time.monotonic()

    def write(self, boottime: int) -> None:
        """Replace the file with the current verdict; a failed write is logged and counted."""
        healthy, reasons = self.healthy
        line = f"{'ok' if healthy else 'fail'} {boottime} {'; '.join(reasons)}"
        try:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(line.strip() + "\n")
            os.replace(tmp, self.path)
        except OSError as e:
            self.counters["health_write_errors"] += 1
            log.warning("cannot write %s: %s", self.path, e)

    def remove(self) -> None:
        """Remove the file (the daemon is stopping): keepalived's check fails at once."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def note_late_verdict(self, took_s: float) -> None:
        """Count and log a verdict that took longer than HEALTH_LATE_S to judge: the check ages
        it from the last one, so a starved loop or CPU looks like a dead daemon."""
        if took_s > HEALTH_LATE_S:
            self.counters["health_late"] += 1
            log.warning("the health verdict took %.1f s to judge (vici at most 2.1 s): this "
                        "daemon's loop or CPU is starved; keepalived's check fails a verdict "
                        "older than its limit", took_s)

    def note_vici_busy(self, vici: vicicheck.ViciAnswer, healthy: bool) -> None:
        """Count and log (on change) a charon slow over vici that the verdict let pass."""
        busy = vici.busy and not vici.ok
        if busy:
            self.counters["vici_busy"] += 1
        if busy != self.vici_busy:
            self.vici_busy = busy
            if busy and healthy:
                log.info("charon is slow to answer over vici (%s); its HA stream is alive, so "
                         "the node stays healthy", vici.error)
            elif not busy:
                log.info("charon answers over vici again")
