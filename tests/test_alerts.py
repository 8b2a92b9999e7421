"""deploy/hasync-alerts.yml: valid for Prometheus (`promtool check rules`), each alert's story
passes `promtool test rules` (tests/data/hasync-alerts.test.yml), and every metric a rule
reads is one hasync exposes (a renamed metric would silence its alert)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from test_metrics import STATUS, _samples

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "hasync-alerts.yml"
TESTS = ROOT / "tests" / "data" / "hasync-alerts.test.yml"


def _promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: apt-get install prometheus (make setup installs it)"
    return found


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_promtool(), *args], capture_output=True, text=True, timeout=120,
                          check=False)


def test_the_rules_are_valid() -> None:
    done = _run("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 10 rules found" in done.stdout, done.stdout


def test_every_alert_fires_in_its_story_and_only_then() -> None:
    done = _run("test", "rules", str(TESTS))
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_is_tested() -> None:
    alerts = set(re.findall(r"^\s+- alert: (\w+)$", RULES.read_text(), re.M))
    tested = set(re.findall(r"^\s+alertname: (\w+)$", TESTS.read_text(), re.M))
    assert alerts == tested, alerts ^ tested


def test_the_rules_read_only_metrics_hasync_exposes() -> None:
    exposed = {name for name, _ in _samples(STATUS)} | {"up"}
    exprs = re.findall(r"^\s+expr: (.+)$", RULES.read_text(), re.M)
    used = {m for e in exprs for m in re.findall(r"\b(hasync_\w+|up)\b(?=\s*[{\[=<>!)]|\s*$)", e)}
    assert used and used <= exposed, used - exposed
