"""`pip wheel .`: the product wheel holds hasync's modules and no lab module; the lab's own
wheel (bench/lab) holds hasync_lab alone.

Rules: each wheel is built from a copy of the checkout, so no build/ directory (whose stale
files setuptools would pack) is read from or left in the source tree. With setuptools and
wheel in the venv (`make setup` installs both) the build needs no network.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SKIP = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "out", "__pycache__",
                              ".pytest_cache", ".ruff_cache", ".hypothesis")
LAB_ONLY = ("lab", "harecord", "pki", "xfrmjump", "hasync_lab")  # never in the product


def _backend_here() -> bool:
    """True if this venv can run the build backend itself (setuptools, and wheel or >= 70.1)."""
    if importlib.util.find_spec("setuptools") is None:
        return False
    import setuptools
    major, minor = (int(x) for x in setuptools.__version__.split(".")[:2])
    return importlib.util.find_spec("wheel") is not None or (major, minor) >= (70, 1)


def _wheel(project: Path, out: Path) -> list[str]:
    """Build `project`'s wheel into `out`; return the names of the files it holds."""
    # a venv made before `make setup` installed wheel: pip fetches the backend from its index
    isolation = ["--no-build-isolation"] if _backend_here() else []
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", str(project), "--no-deps",
                          *isolation, "-w", str(out), "-q"], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        return z.namelist()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the checkout, without build leftovers."""
    src = tmp_path_factory.mktemp("wheel") / "src"
    shutil.copytree(ROOT, src, ignore=SKIP)
    return src


def test_product_wheel_holds_every_product_module_and_nothing_of_the_lab(
        source: Path, tmp_path: Path) -> None:
    names = _wheel(source, tmp_path)
    meta = [n for n in names if n.startswith("hasync-0.1.0.dist-info/")]
    modules = {n for n in names if n not in meta}
    want = {f"hasync/{p.relative_to(source / 'hasync').as_posix()}"
            for p in (source / "hasync").rglob("*.py")}
    assert modules == want  # every product module, and no other file
    assert "hasync/cli.py" in modules and "hasync/ha/codec.py" in modules
    leaked = [n for n in names if any(word in n.lower() for word in LAB_ONLY)]
    assert leaked == []
    with zipfile.ZipFile(next(tmp_path.glob("*.whl"))) as z:
        top = z.read("hasync-0.1.0.dist-info/top_level.txt").decode().split()
        scripts = z.read("hasync-0.1.0.dist-info/entry_points.txt").decode()
        meta_lines = z.read("hasync-0.1.0.dist-info/METADATA").decode().splitlines()
    assert top == ["hasync"]
    assert "hasync = hasync.cli:main" in scripts and "hasync_lab" not in scripts
    requires = [n for n in meta_lines if n.startswith(("Requires-Dist:", "Provides-Extra:"))]
    assert any("pysyncobj" in r for r in requires)  # the product's own requirements are there
    assert not any("virtme" in r or r == "Provides-Extra: lab" for r in requires)


def test_lab_wheel_holds_the_lab_alone(source: Path, tmp_path: Path) -> None:
    names = _wheel(source / "bench" / "lab", tmp_path)
    modules = {n for n in names if not n.startswith("hasync_lab-0.1.0.dist-info/")}
    assert modules and all(n.startswith("hasync_lab/") for n in modules)
    for tool in ("harecord", "pki", "xfrmjump", "cli"):  # the lab material lives here
        assert f"hasync_lab/{tool}.py" in modules
