"""A power-loss model for one directory, for tests: what fsync/fdatasync/msync made durable.

Rules: test helper only. In the process under test, `Recorder.install()` wraps os.fsync,
os.fdatasync and pysyncobj's mmap (pysyncobj/journal.py, ResizableFile maps the journal with
`mmap.mmap` and flushes with `mmap.flush`): each sync of a file in the directory copies its
whole content to the shadow directory (by inode), each fsync of the directory records its
listing (name -> inode). What existed when the recorder started counts as durable. After the
process is killed, `power_loss()` cuts the directory back to that: names only as last synced
in the directory, contents only as last synced per inode (a name whose content was never synced
comes back empty). Nothing else is durable, which is what POSIX promises.
"""

from __future__ import annotations

import json
import mmap
import os
import stat
import types
from pathlib import Path
from typing import Any

_REAL_FSYNC, _REAL_FDATASYNC = os.fsync, os.fdatasync


def _save(path: Path, data: bytes) -> None:
    """Write a shadow file atomically (the process may be killed at any instant)."""
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class Recorder:
    """Records, in `shadow`, what the syncs of this process made durable in `root`."""

    def __init__(self, root: Path, shadow: Path) -> None:
        self.root, self.shadow = root.resolve(), shadow
        shadow.mkdir(parents=True, exist_ok=True)
        self._dev = os.stat(self.root).st_dev
        for entry in os.scandir(self.root):
            if entry.is_file(follow_symlinks=False):
                self._content(entry.inode(), Path(entry.path).read_bytes())
        self._listing()

    def _content(self, ino: int, data: bytes) -> None:
        _save(self.shadow / f"ino-{ino}", data)

    def _listing(self) -> None:
        names = {e.name: e.inode() for e in os.scandir(self.root)
                 if e.is_file(follow_symlinks=False)}
        _save(self.shadow / "dir.json", json.dumps(names).encode())

    def record_fd(self, fd: int) -> None:
        """A sync of `fd` returned: record what it made durable."""
        st = os.fstat(fd)
        if st.st_dev != self._dev:
            return
        if stat.S_ISDIR(st.st_mode):
            if os.path.samestat(st, os.stat(self.root)):
                self._listing()
        elif stat.S_ISREG(st.st_mode):
            with open(f"/proc/self/fd/{fd}", "rb") as f:
                self._content(st.st_ino, f.read())

    def install(self) -> None:
        """Wrap this process's sync calls (see the module rules)."""
        rec = self

        def fsync(fd: Any) -> None:
            fd = fd if isinstance(fd, int) else fd.fileno()
            _REAL_FSYNC(fd)
            rec.record_fd(fd)

        def fdatasync(fd: Any) -> None:
            fd = fd if isinstance(fd, int) else fd.fileno()
            _REAL_FDATASYNC(fd)
            rec.record_fd(fd)

        class RecordingMmap(mmap.mmap):
            """mmap whose flush (msync) records the mapped file's content."""

            def __new__(cls, fileno: int, length: int, *a: Any, **kw: Any) -> Any:
                obj = super().__new__(cls, fileno, length, *a, **kw)
                st = os.fstat(fileno)
                obj.rec_ino = st.st_ino if st.st_dev == rec._dev else None
                return obj

            def flush(self, *a: Any) -> Any:
                out = super().flush(*a)
                if self.rec_ino is not None:
                    rec._content(self.rec_ino, bytes(self[:]))
                return out

        import pysyncobj.journal as pj

        os.fsync, os.fdatasync = fsync, fdatasync
        shim = types.ModuleType("mmap")
        shim.__dict__.update(mmap.__dict__)
        shim.mmap = RecordingMmap  # type: ignore[attr-defined]
        pj.mmap = shim  # type: ignore[attr-defined]

    @staticmethod
    def uninstall() -> None:
        """Put the real sync calls back (for a recorder installed inside pytest)."""
        import pysyncobj.journal as pj

        os.fsync, os.fdatasync = _REAL_FSYNC, _REAL_FDATASYNC
        pj.mmap = mmap  # type: ignore[attr-defined]


def power_loss(root: Path, shadow: Path) -> dict[str, int]:
    """Cut `root` back to what was durable (the process must be dead); name -> bytes kept."""
    names: dict[str, int] = json.loads((shadow / "dir.json").read_text())
    for entry in os.scandir(root):
        if entry.is_file(follow_symlinks=False):
            os.unlink(entry.path)
    kept = {}
    for name, ino in names.items():
        src = shadow / f"ino-{ino}"
        data = src.read_bytes() if src.exists() else b""
        (root / name).write_bytes(data)
        kept[name] = len(data)
    return kept
