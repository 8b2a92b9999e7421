"""Raft snapshots written off pysyncobj's tick thread (issue 17 finding 6).

Rules:
- pysyncobj 0.3.17 runs a custom serializer on its tick thread and never forks for it
  (pysyncobj/serializer.py, Serializer.__init__: `tryUseFork and ... serializer is None`), so a
  serializer that pickles, seals and fsyncs stalls heartbeats and elections. With
  `SyncObjConf.serializeChecker` set (pysyncobj/config.py, "for async serializer"),
  Serializer.checkSerializing reports the checker's state instead, and SyncObj.__tryLogCompaction
  deletes log entries only after it returns SUCCESS (once).
- The serializer (`start`) only takes a copy the caller made under its lock and hands it to a
  worker thread, which packs, seals and writes `<final>.hasync.tmp` and fsyncs it. The worker
  never touches the final file: `check()`, called by pysyncobj on its tick thread, renames the
  finished file into place there, so the rename is ordered with pysyncobj's own tick-thread
  work (an incoming snapshot from the leader: Serializer.setTransmissionData renames
  `<final>.1.tmp` into place, then SyncObj.__loadDumpFile reads it).
- A snapshot installed meanwhile (`installed()`, from the deserializer) makes the running job
  stale: its file is discarded, never renamed over the newer one; the checker reports FAILED.
- Serializer.serialize renames `<final>.tmp` to the final file right after the serializer
  returns; `start` removes any such file first, so that rename fails (caught there: the state
  comes from the checker) and never moves stale bytes into place.
- The worker never raises out of its thread: an error is kept and reported by `check()` as
  FAILED, and the caller counts it.
- The copy and the packing allocate a few container objects per SA, which makes CPython run
  full collections of the whole heap (0.1 s at 20k tunnels, holding the GIL: every thread
  stalls). `paused_gc()` turns the cyclic collector off while they run (process-wide,
  counted, so overlapping users keep it off until the last leaves); what they build is freed by
  reference counting, and cycles made meanwhile elsewhere wait for the next collection.
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
from collections.abc import Callable, Iterator
from enum import IntEnum

from .journal.durable import fsync_dir

TMP_SUFFIX = ".hasync.tmp"


_gc_lock = threading.Lock()
_gc_users = 0
_gc_was_enabled = False  # as the first user found it


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Keep CPython's cyclic collector off while the block runs (see the rules)."""
    global _gc_users, _gc_was_enabled
    with _gc_lock:
        if _gc_users == 0:
            _gc_was_enabled = gc.isenabled()
        _gc_users += 1
        gc.disable()
    try:
        yield
    finally:
        with _gc_lock:
            _gc_users -= 1
            if _gc_users == 0 and _gc_was_enabled:
                gc.enable()


class SerializerState(IntEnum):
    """pysyncobj/config.py SERIALIZER_STATE, by name."""

    NOT_SERIALIZING = 0
    SERIALIZING = 1
    SUCCESS = 2  # returned once per finished job
    FAILED = 3  # likewise


class SnapshotWriter:
    """One snapshot job at a time: built and written by a worker, put in place by `check()`."""

    def __init__(self, on_error: Callable[[str, BaseException], None]) -> None:
        self._on_error = on_error
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._final = ""
        self._error: BaseException | None = None
        self._generation = 0  # bumped by installed()
        self._job_generation = 0

    def start(self, final: str, build: Callable[[], bytes]) -> None:
        """Write `build()`'s bytes as the snapshot `final` on a worker thread."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(final + ".tmp")  # pysyncobj's own temporary: see the rules
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("a snapshot is already being written")
            self._final, self._error = final, None
            self._job_generation = self._generation
            self._thread = threading.Thread(target=self._run, args=(final + TMP_SUFFIX, build),
                                            name="hasync-snapshot", daemon=True)
            self._thread.start()

    def _run(self, tmp: str, build: Callable[[], bytes]) -> None:
        """Worker: build, write and fsync the temporary file; keep any error for check()."""
        try:
            with paused_gc():
                data = build()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException as exc:  # reported by check(): the thread must not die loudly
            self._error = exc

    @property
    def busy(self) -> bool:
        """A job runs or waits for check() to finish it."""
        return self._thread is not None

    def installed(self) -> None:
        """A snapshot from elsewhere is now the final file: a running job is stale."""
        with self._lock:
            self._generation += 1

    def check(self) -> SerializerState:
        """pysyncobj's serializeChecker (tick thread): finish a done job in place."""
        with self._lock:
            thread = self._thread
            if thread is None:
                return SerializerState.NOT_SERIALIZING
            if thread.is_alive():
                return SerializerState.SERIALIZING
            self._thread = None
            stale = self._job_generation != self._generation
        tmp = self._final + TMP_SUFFIX
        if self._error is not None or stale:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if self._error is not None:
                self._on_error("snapshot_save_error", self._error)
            return SerializerState.FAILED
        try:
            os.replace(tmp, self._final)
            fsync_dir(os.path.dirname(os.path.abspath(self._final)))
        except OSError as exc:
            self._on_error("snapshot_save_error", exc)
            return SerializerState.FAILED
        return SerializerState.SUCCESS

    def wait(self, timeout: float | None = None) -> None:
        """Block until the worker is done (tests, bench, shutdown)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
