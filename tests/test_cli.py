"""`hasync lab ...`: handed to the hasync-lab package when installed, a one-line refusal if not."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import types
from pathlib import Path
from typing import Any

import pytest

from hasync import cli


def test_lab_without_hasync_lab_names_what_to_install(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "hasync_lab" else real(name, *a))
    assert cli.main(["lab", "check"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install -e bench/lab" in err and "make setup" in err


def test_lab_hands_its_arguments_to_hasync_lab(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[list[str], str]] = []

    def fake_main(argv: list[str], prog: str) -> int:
        seen.append((argv, prog))
        return 7

    fake = types.SimpleNamespace(main=fake_main)
    real_find, real_import = importlib.util.find_spec, importlib.import_module
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "hasync_lab" else real_find(name, *a))

    def fake_import(name: str, *a: Any) -> Any:
        return fake if name == "hasync_lab.cli" else real_import(name, *a)

    monkeypatch.setattr(importlib, "import_module", fake_import)
    assert cli.main(["lab", "failover", "--baseline"]) == 7
    assert seen == [(["failover", "--baseline"], "hasync lab")]


def test_help_lists_lab_and_daemon_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "lab" in out and "hasync lab --help" in out and "keygen" in out


def test_no_product_module_imports_the_lab() -> None:
    product = Path(cli.__file__).resolve().parent
    importers = []
    for path in product.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n.split(".")[0] == "hasync_lab" for n in names):
                importers.append(str(path.relative_to(product)))
    assert importers == []
