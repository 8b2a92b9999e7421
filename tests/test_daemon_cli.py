"""`hasync daemon|status|sas|keygen` from the command line: clear errors, exit 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from nodeconf import write_config

ROOT = Path(__file__).resolve().parent.parent


def _hasync(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hasync", *argv], capture_output=True,
                          text=True, cwd=ROOT, stdin=subprocess.DEVNULL, timeout=60)


def _config(tmp: Path, key: Path, extra: str = "") -> Path:
    return write_config(tmp, key, extra)


def test_keygen_writes_a_private_key_and_refuses_to_overwrite(tmp_path: Path) -> None:
    key = tmp_path / "cluster.key"
    assert _hasync("keygen", str(key)).returncode == 0
    assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_text().strip()) == 64
    res = _hasync("keygen", str(key))
    assert res.returncode == 2 and str(key) in res.stderr and "Traceback" not in res.stderr


def test_daemon_refuses_a_key_file_others_can_read(tmp_path: Path) -> None:
    key = tmp_path / "cluster.key"
    assert _hasync("keygen", str(key)).returncode == 0
    os.chmod(key, 0o644)
    res = _hasync("daemon", "--config", str(_config(tmp_path, key)))
    assert res.returncode == 2, res.stderr
    assert str(key) in res.stderr and "Traceback" not in res.stderr


def test_config_errors_name_file_and_key(tmp_path: Path) -> None:
    cfg = _config(tmp_path, tmp_path / "k", extra="batch_max_messages = \"many\"")
    res = _hasync("status", "--config", str(cfg))
    assert res.returncode == 2
    assert str(cfg) in res.stderr and "cluster.batch_max_messages" in res.stderr


def test_status_without_a_daemon_says_so(tmp_path: Path) -> None:
    res = _hasync("status", "--config", str(_config(tmp_path, tmp_path / "k")))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "control.sock" in res.stderr
