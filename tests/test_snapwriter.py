"""hasync.snapwriter: a snapshot job runs on a worker, lands only through the checker, reports
its end once, and the cyclic collector stays off exactly while someone needs it off."""

from __future__ import annotations

import gc
import threading
from pathlib import Path

from hasync.snapwriter import TMP_SUFFIX, SerializerState, SnapshotWriter, paused_gc


def _done(w: SnapshotWriter) -> None:
    w.wait(10)


def test_a_job_lands_only_through_the_checker_and_reports_success_once(tmp_path: Path) -> None:
    errors: list[tuple[str, BaseException]] = []
    w, final = SnapshotWriter(lambda n, e: errors.append((n, e))), tmp_path / "snap"
    (tmp_path / "snap.tmp").write_bytes(b"stale")  # pysyncobj's own temporary, from a crash
    gate = threading.Event()
    w.start(str(final), lambda: gate.wait(10) and b"sealed")
    assert not (tmp_path / "snap.tmp").exists()  # so pysyncobj's rename cannot move it
    assert w.check() is SerializerState.SERIALIZING and not final.exists()
    gate.set()
    _done(w)
    assert w.check() is SerializerState.SUCCESS and final.read_bytes() == b"sealed"
    assert w.check() is SerializerState.NOT_SERIALIZING and errors == []


def test_a_job_that_raises_is_reported_failed_counted_and_leaves_nothing(tmp_path: Path) -> None:
    errors: list[tuple[str, BaseException]] = []
    w, final = SnapshotWriter(lambda n, e: errors.append((n, e))), tmp_path / "snap"
    final.write_bytes(b"previous")
    w.start(str(final), lambda: 1 // 0)  # type: ignore[arg-type,return-value]
    _done(w)
    assert w.check() is SerializerState.FAILED and final.read_bytes() == b"previous"
    assert [n for n, _ in errors] == ["snapshot_save_error"]
    assert not (tmp_path / ("snap" + TMP_SUFFIX)).exists()


def test_paused_gc_keeps_the_collector_off_until_the_last_user_leaves() -> None:
    assert gc.isenabled()
    a, b = paused_gc(), paused_gc()
    a.__enter__()
    b.__enter__()
    a.__exit__(None, None, None)
    assert not gc.isenabled()  # b still needs it off
    b.__exit__(None, None, None)
    assert gc.isenabled()
    gc.disable()
    try:
        with paused_gc():
            pass
        assert not gc.isenabled()  # whoever turned it off before keeps it off
    finally:
        gc.enable()
