"""Tests of hasync.healthfile: the verdict file keepalived's check reads."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from hasync.healthfile import HealthWriter
from hasync.vicicheck import ViciAnswer

GOOD = {"node": "gw1", "role": "backup", "ha_rx_age_s": 0.5, "ha_timeout_s": 3.0,
        "raft_joined": True, "raft_leader": "gw2"}


def _writer(tmp_path: Path, answer: dict[str, Any]) -> HealthWriter:
    return HealthWriter(tmp_path / "health", tmp_path / "vici", lambda: answer)


def test_the_verdict_is_written_with_its_boottime_and_removed(tmp_path: Path) -> None:
    w = _writer(tmp_path, GOOD)
    w.judge(ViciAnswer(True))
    w.write(1234)
    assert (tmp_path / "health").read_text() == "ok 1234\n"
    w.judge(ViciAnswer(False, "gone"))
    w.write(1235)
    assert (tmp_path / "health").read_text().startswith("fail 1235 charon does not answer")
    w.remove()
    w.remove()  # already gone: fine
    assert not (tmp_path / "health").exists()


def test_a_failed_write_is_logged_and_counted(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    w = HealthWriter(tmp_path / "missing" / "health", tmp_path / "vici", lambda: GOOD)
    w.write(1)
    assert w.counters["health_write_errors"] == 1 and "cannot write" in caplog.text


def test_a_busy_charon_is_counted_and_logged_on_change(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    w = _writer(tmp_path, GOOD)
    with caplog.at_level(logging.INFO):
        w.judge(ViciAnswer(False, "slow", busy=True))
        w.judge(ViciAnswer(False, "slow", busy=True))
        assert w.healthy == (True, []) and w.vici_busy and w.counters["vici_busy"] == 2
        assert caplog.text.count("slow to answer") == 1
        w.judge(ViciAnswer(True))
    assert not w.vici_busy and "answers over vici again" in caplog.text
