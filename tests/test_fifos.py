"""Tests of hasync.fifos: keepalived's notify lines split, charon's commands written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hasync.fifos import KEEP, LineBuffer, open_notify_fifo, read_available, write_command


def test_lines_are_split_across_reads_and_a_runaway_line_is_cut() -> None:
    buf = LineBuffer()
    assert buf.feed(b'INSTANCE "VI_1" MAS') == []
    assert buf.feed(b'TER 100\nINSTANCE "VI_1" BACKUP 90\nINST') == [
        'INSTANCE "VI_1" MASTER 100', 'INSTANCE "VI_1" BACKUP 90']
    assert buf.feed(b"\xff" * (3 * KEEP)) == []
    [line] = buf.feed(b"\n")
    assert len(line) == KEEP  # only the last KEEP bytes of a line without newline are kept


def test_notify_fifo_is_made_and_read_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "run" / "vrrp.fifo"
    fd = open_notify_fifo(path)
    try:
        assert read_available(fd) == b""
        write_command(path, 'INSTANCE "VI_1" MASTER 100')
        assert read_available(fd) == b'INSTANCE "VI_1" MASTER 100\n'
    finally:
        os.close(fd)
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)


def test_a_file_that_is_no_fifo_is_refused(tmp_path: Path) -> None:
    (tmp_path / "vrrp.fifo").write_text("")
    with pytest.raises(RuntimeError, match="not a FIFO"):
        open_notify_fifo(tmp_path / "vrrp.fifo")


def test_a_command_without_a_reader_raises(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "charon.ha")
    with pytest.raises(OSError, match="No such device"):  # ENXIO: charon does not read it
        write_command(tmp_path / "charon.ha", "-1")
