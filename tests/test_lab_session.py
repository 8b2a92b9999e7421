"""hasync_lab.session.lab_run: one lifecycle for every scenario, torn down whatever happens."""

from __future__ import annotations

import subprocess
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


class _SlowLab:
    """A Lab whose every command times out, writing logs under `base`."""

    def __init__(self, base: Path, topo: object) -> None:
        self.base, self.topo = base, topo
        (base / "log").mkdir(parents=True, exist_ok=True)

    def run(self, node: str | None, argv: list[str], **kw: object) -> str:
        raise subprocess.TimeoutExpired(argv, 120)

    def log_path(self, node: str, what: str) -> Path:
        return self.base / "log" / f"{node}-{what}.log"


def test_a_failed_process_snapshot_is_logged(tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    run = Run(LabSpec(), _SlowLab(tmp_path, None), tmp_path)  # type: ignore[arg-type]
    session.ps_snapshot(run, "ps.txt")
    assert "no process snapshot ps.txt" in caplog.text and "timed out" in caplog.text


def test_a_failed_dataplane_dump_is_logged_per_node(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    from hasync_lab import failover, topology
    topo = topology.plan(2, 1, 0)
    run = Run(LabSpec(), _SlowLab(tmp_path, topo), tmp_path)  # type: ignore[arg-type]
    failover.dataplane_dump(run)
    logged = [r.getMessage() for r in caplog.records if "no dataplane dump" in r.getMessage()]
    assert len(logged) == len(topo.nodes) + 1 and logged[-1].startswith("no dataplane dump of root")
