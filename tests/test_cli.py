"""`hasync lab ...`: handed to the hasync-lab package when installed, a one-line refusal if not."""

from __future__ import annotations

import ast
import dataclasses
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


@dataclasses.dataclass
class Named:
    config_name: str


def test_finding6_hasync_sas_follows_every_page(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`hasync sas` asks page after page until "next" is None and prints every SA."""
    from hasync import control
    from hasync.status import sas_answer
    names = [Named(f"c{i}") for i in range(7)]
    asked: list[dict[str, Any]] = []

    def fake_request(path: Any, cmd: str, timeout: float, **args: Any) -> dict[str, Any]:
        asked.append({"cmd": cmd, **args})
        start, limit = args["after"], args.get("limit", 3)
        page = names[start:start + limit]
        return sas_answer(page, start, len(names))

    monkeypatch.setattr(control, "request", fake_request)
    pages = list(cli.sas_pages("/nowhere", limit=3))
    assert [a["after"] for a in asked] == [0, 3, 6] and len(pages) == 3
    assert [s["config_name"] for p in pages for s in p["ike_sas"]] == [f"c{i}" for i in range(7)]
    asked.clear()
    assert cli._sas_cmd("/nowhere", as_json=False) == 0
    out = capsys.readouterr().out
    assert all(f"c{i}:" in out for i in range(7)) and len(asked) == 3


def test_finding6_a_sas_page_that_points_back_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from hasync import control
    monkeypatch.setattr(control, "request", lambda *a, **k: {"ike_sas": [], "next": 0})
    with pytest.raises(control.ControlError, match="points back"):
        list(cli.sas_pages("/nowhere"))
