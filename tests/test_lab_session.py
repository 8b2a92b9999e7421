"""hasync_lab.session.lab_run: one lifecycle for every scenario, torn down whatever happens."""

from __future__ import annotations

from pathlib import Path

import pytest

from hasync_lab import session
from hasync_lab.session import LabSpec, Run, lab_run


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """Record the lifecycle's steps instead of mounting and tearing down for real."""
    seen: list[str] = []
    monkeypatch.setattr(session, "cleanup_stale", lambda topo: seen.append(
        "clean " + ",".join(n.name for n in topo.nodes)))
    monkeypatch.setattr(session, "mount_base", lambda: seen.append("mount") or tmp_path)
    monkeypatch.setattr(session, "teardown", lambda run: seen.append(f"teardown {run.out_dir}"))
    return seen


def test_a_run_is_planned_cleaned_mounted_then_torn_down(calls: list[str],
                                                         tmp_path: Path) -> None:
    spec = LabSpec(gateways=2, clients=1, nat_clients=0)
    with lab_run(spec, tmp_path / "out") as run:
        assert isinstance(run, Run) and run.spec is spec and run.lab.base == tmp_path
        assert [n.name for n in run.lab.topo.nodes if n.name.startswith("gw")] == ["gw1", "gw2"]
        clean = "clean " + ",".join(n.name for n in run.lab.topo.nodes)  # the run's own plan
        assert calls == [clean, "mount"]
    assert calls == [clean, "mount", f"teardown {tmp_path / 'out'}"]


def test_an_error_in_the_run_still_tears_down(calls: list[str], tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), lab_run(LabSpec(), tmp_path):
        raise RuntimeError("boom")
    assert calls[-1] == f"teardown {tmp_path}"


def test_a_bad_plan_mounts_nothing(calls: list[str], tmp_path: Path) -> None:
    with pytest.raises(ValueError), lab_run(LabSpec(gateways=9), tmp_path):
        pass
    assert calls == []
