"""When the guard reads the kernel and how long it rests."""

from __future__ import annotations

import pytest

from hasync.guard.pacing import BackupPace, ReadCosts
from hasync.guard.rules import READS_KEPT


def test_an_idle_backup_reads_the_kernel_only_on_change_or_every_full_period() -> None:
    pace = BackupPace(full_s=10.0)
    assert pace.due((0, 0), 100.0)  # the first read
    assert not pace.due((0, 0), 101.0) and not pace.due((0, 0), 109.9)
    assert pace.due((1, 0), 110.0)  # an entry applied
    assert not pace.due((1, 0), 111.0)
    assert pace.due((1, 3), 112.0)  # CHILD_SAs mirrored into charon
    assert not pace.due((1, 3), 121.9)
    assert pace.due((1, 3), 122.0)  # the full period


def test_the_rest_follows_the_last_read() -> None:
    costs = ReadCosts(tick_s=0.1)
    assert costs.rest_s() == 0.0
    costs.note(0.6, 0.0)
    costs.note(0.1, 0.5)
    assert costs.rest_s() == pytest.approx(0.3)  # REST_K x the last read, writes apart
    for _ in range(READS_KEPT):
        costs.note(0.01, 0.0)
    assert costs.rest_s() == pytest.approx(0.03) and len(costs.reads) == READS_KEPT
