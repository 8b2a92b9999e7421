"""The side-by-side table of a baseline and a hasync failover result, and `hasync lab compare`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hasync import cli
from hasync_lab import report

CLIENT = {"name": "c1", "nat": False, "reestablished": True, "resumed": True,
          "outage_ms": 19385.2, "lost_to_client": 957, "lost_from_client": 881,
          "replay_errors": 0, "seq_reuse": 0}
HASYNC_CLIENT = {**CLIENT, "reestablished": False, "outage_ms": 1210.4, "lost_to_client": 61,
                 "lost_from_client": 55, "replay_errors": 2, "ike_sa_init": 0,
                 "seq_skipped": 99_873}


def doc(mode: str, failovers: list[tuple[str, str, float, list[dict[str, object]]]],
        ) -> dict[str, object]:
    """A failover result as run_failovers() returns it (the fields the table reads)."""
    return {"mode": mode, "runner": "vm", "kernel": "6.1.0-56-amd64", "advert_int": 0.5,
            "rate_pps": 50.0,
            "failovers": [{"from": a, "to": b, "vrrp_detect_ms": ms, "vip_moved": True,
                           "clients": clients} for a, b, ms, clients in failovers]}


BASELINE = doc("baseline", [("gw1", "gw2", 1053.0, [CLIENT, {**CLIENT, "name": "c3",
                                                             "nat": True}])])
HASYNC = doc("hasync", [
    ("gw1", "gw2", 1040.0, [HASYNC_CLIENT, {**HASYNC_CLIENT, "name": "c3", "nat": True}]),
    ("gw2", "gw3", 998.6, [{k: v for k, v in HASYNC_CLIENT.items() if k != "seq_skipped"}]),
])


def rows(text: str, fo: int) -> dict[str, list[str]]:
    """The table rows of failover `fo`, by client: the cells left of, between and after |."""
    out = {}
    for line in text.splitlines():
        cells = line.split("|")
        keys = cells[0].split()
        if len(cells) == 3 and keys and keys[0] == str(fo):
            out[keys[1]] = [keys[2], *cells[1].split(), "|", *cells[2].split()]
    return out


def test_compare_table_side_by_side() -> None:
    text = report.compare_table(BASELINE, HASYNC)
    lines = text.splitlines()
    assert lines[0].startswith("baseline: mode=baseline runner=vm")
    assert lines[1].startswith("hasync:   mode=hasync")
    assert ("failover 1: baseline #1 gw1->gw2: VRRP master after 1053 ms, VIP moved: yes | "
            "hasync #1 gw1->gw2: VRRP master after 1040 ms, VIP moved: yes") in lines
    assert "baseline" in lines[3] and "hasync" in lines[3] and "seq skip" in lines[4]
    first = rows(text, 1)
    assert first["c1"] == ["no", "yes", "19385", "957", "881", "0", "0", "|",
                           "no", "1210", "61", "55", "2", "0", "99873"]
    assert first["c3"][0] == "yes"


def test_more_hasync_failovers_than_baseline_reuse_its_first() -> None:
    text = report.compare_table(BASELINE, HASYNC)
    assert ("failover 2: baseline #1 gw1->gw2: VRRP master after 1053 ms, VIP moved: yes | "
            "hasync #2 gw2->gw3: VRRP master after 999 ms") in text
    second = rows(text, 2)
    assert second["c1"][-1] == "-"  # no seq_skipped in that result
    # c3 is only in the baseline's failover: its hasync cells are "-"
    assert second["c3"][1:8] == ["yes", "19385", "957", "881", "0", "0", "|"]
    assert set(second["c3"][8:]) == {"-"}


def test_compare_table_of_empty_results() -> None:
    text = report.compare_table({}, {"failovers": []})
    assert text.splitlines() == [
        "baseline: mode=None runner=None kernel=None advert_int=None rate_pps=None",
        "hasync:   mode=None runner=None kernel=None advert_int=None rate_pps=None"]
    only_base = report.compare_table(BASELINE, {})
    assert "| hasync -" in only_base and set(rows(only_base, 1)["c1"][8:]) == {"-"}


@pytest.mark.parametrize(("value", "problem"), [
    ([], "not a JSON object"),
    ({"mode": "baseline"}, 'no "failovers" list'),
    ({"failovers": [{"clients": {}}]}, 'failover 1 has no "clients" list of objects'),
    ({"failovers": [{"clients": [1]}]}, 'failover 1 has no "clients" list of objects'),
    ({"failovers": []}, None),
    (BASELINE, None),
])
def test_result_problem(value: object, problem: str | None) -> None:
    assert report.result_problem(value) == problem


def test_cli_compare_prints_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base, has = tmp_path / "baseline.json", tmp_path / "hasync.json"
    base.write_text(json.dumps(BASELINE))
    has.write_text(json.dumps(HASYNC))
    assert cli.main(["lab", "compare", str(base), str(has)]) == 0
    out = capsys.readouterr().out
    assert out == report.compare_table(BASELINE, HASYNC) + "\n"


@pytest.mark.parametrize(("content", "message"), [
    (None, "cannot read {path}: No such file or directory"),
    ("{not json", "{path} is not JSON: Expecting property name"),
    (b"\xff\xfe", "{path} is not JSON"),
    ("[1, 2]", "{path} is not a failover result: not a JSON object"),
])
def test_cli_compare_bad_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          content: str | bytes | None, message: str) -> None:
    good, bad = tmp_path / "baseline.json", tmp_path / "hasync.json"
    good.write_text(json.dumps(BASELINE))
    if isinstance(content, bytes):
        bad.write_bytes(content)
    elif content is not None:
        bad.write_text(content)
    assert cli.main(["lab", "compare", str(good), str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hasync: " + message.format(path=bad))
    assert err.count("\n") == 1 and "Traceback" not in err
