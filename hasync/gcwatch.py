"""The daemon's cyclic garbage collector: tuned for a journal of 100k tunnels, and watched.

Rules:
- CPython's collector (Modules/gcmodule.c, Python 3.11) scans the young generation every 700
  net allocations of container objects, and the whole heap whenever ten middle collections
  passed and the objects promoted since the last full scan reach a quarter of the old ones.
  A journal that grows to 100k tunnels is millions of objects, none of them in a cycle the
  journal made: the full scans took 1.0 to 2.1 s of each daemon's 10k-to-100k ramp (12 to 14%
  of its CPU), each one a pause that holds the GIL, the Raft thread's as well (D284). `tune`
  raises the young threshold, which keeps the same quarter rule for full scans but meets it
  far less often, and freezes what the start-up built (gc.freeze: never scanned again).
- Cycles are still collected: every generation keeps running, only less often.
- `GcWatch` times every collection through `gc.callbacks` (count, total and longest pause per
  generation, objects collected, uncollectable): `hasync status` shows it as "gc" and the
  metrics endpoint exports it. The callback only does arithmetic and never raises.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

YOUNG_THRESHOLD = 10_000  # net allocations between young collections (CPython's default: 700)
GENERATIONS = 3


def tune(young: int = YOUNG_THRESHOLD) -> tuple[int, int, int]:
    """Freeze the start-up's objects and raise the young threshold (the older two are kept);
    return the thresholds before."""
    before = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(young, before[1], before[2])
    return before


class GcWatch:
    """Every collection's pause, per generation, while installed."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._started = 0.0
        self.collections = [0] * GENERATIONS
        self.pause_s = [0.0] * GENERATIONS
        self.max_pause_s = [0.0] * GENERATIONS
        self.collected = [0] * GENERATIONS
        self.uncollectable = 0

    def install(self) -> None:
        """Start timing collections."""
        if self._on not in gc.callbacks:
            gc.callbacks.append(self._on)

    def remove(self) -> None:
        """Stop timing collections."""
        if self._on in gc.callbacks:
            gc.callbacks.remove(self._on)

    def _on(self, phase: str, info: dict[str, int]) -> None:
        """gc.callbacks: "start" and "stop" of one collection, `info` as the gc module gives."""
        if phase == "start":
            self._started = self._clock()
            return
        gen = info.get("generation") if isinstance(info, dict) else None
        if not isinstance(gen, int) or not 0 <= gen < GENERATIONS:
            return
        pause = max(0.0, self._clock() - self._started)
        self.collections[gen] += 1
        self.pause_s[gen] += pause
        self.max_pause_s[gen] = max(self.max_pause_s[gen], pause)
        self.collected[gen] += int(info.get("collected", 0))
        self.uncollectable += int(info.get("uncollectable", 0))

    def as_dict(self) -> dict[str, Any]:
        """The "gc" section of `hasync status`."""
        return {"threshold": list(gc.get_threshold()), "frozen": gc.get_freeze_count(),
                "collections": list(self.collections),
                "pause_s": [round(p, 4) for p in self.pause_s],
                "max_pause_ms": [round(p * 1000, 2) for p in self.max_pause_s],
                "collected": list(self.collected), "uncollectable": self.uncollectable}
