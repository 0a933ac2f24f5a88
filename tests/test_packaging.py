"""One real package: the wheel and the sdist built from this checkout hold every module of the
top-level folders (core/, harness/, trainers/, tasks/, reports/) under `gsil_bench`, real files
at real paths, the configs the docs run by name, and nothing of benchmarks/ or tests/; an
installed wheel runs `gsil-bench run smoke --dry-run` and boots the code checker from its own
files, and so does this (editable) install. Built offline with the environment's setuptools."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from helpers import build, install_wheel

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("core", "harness", "trainers", "tasks", "reports")


def expected_files() -> set[str]:
    """Every file the package must hold, as its path inside the wheel."""
    out: set[str] = set()
    for layer in LAYERS:
        out |= {f"gsil_bench/{p.relative_to(REPO).as_posix()}" for p in (REPO / layer).rglob("*.py")
                if "__pycache__" not in p.parts}
    out |= {f"gsil_bench/{p.relative_to(REPO).as_posix()}" for p in (REPO / "configs").rglob("*.yaml")}
    return out


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    return {"wheel": build("wheel", out, REPO), "sdist": build("sdist", out, REPO)}


def test_the_repository_has_no_symbolic_links():
    files = subprocess.run(["git", "ls-files", "-s"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert [line for line in files.splitlines() if line.startswith("120000")] == []


def test_the_wheel_holds_every_module_and_config_and_nothing_else(dist):
    names = set(zipfile.ZipFile(dist["wheel"]).namelist())
    held = {n for n in names if not n.startswith("gsil_bench-")}  # less the .dist-info folder
    assert expected_files() - held == set(), "missing from the wheel"
    assert {n for n in held if not n.startswith("gsil_bench/")} == set(), "outside the package"
    assert not any("/benchmarks/" in n or "/tests/" in n for n in held)
    assert {n for n in held if not n.endswith((".py", ".yaml"))} == set(), "stray files"


def test_the_sdist_rebuilds_the_same_wheel(dist, tmp_path):
    """The sdist holds the top-level folders (real files) and builds a wheel with every module."""
    with tarfile.open(dist["sdist"]) as tf:
        members = {m.name.split("/", 1)[1]: m for m in tf.getmembers() if "/" in m.name}
        assert not any(m.issym() or m.islnk() for m in members.values())
        tf.extractall(tmp_path, filter="data")
    for rel in expected_files():
        assert rel.removeprefix("gsil_bench/") in members or rel in members, rel
    src = next(p for p in tmp_path.iterdir() if p.is_dir())
    wheel = build("wheel", tmp_path / "out", src)
    assert expected_files() <= set(zipfile.ZipFile(wheel).namelist())


def _from_wheel(target: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    """Run Python in a folder other than the checkout, with only the unpacked wheel as gsil_bench."""
    env = {**os.environ, "PYTHONPATH": str(target)}
    return subprocess.run([sys.executable, *args], cwd=target.parent, env=env, capture_output=True, text=True,
                          timeout=300, **kw)


def test_an_installed_wheel_imports_its_own_files_and_runs_a_packaged_config(dist, tmp_path):
    target = install_wheel(dist["wheel"], tmp_path / "site")
    proc = _from_wheel(target, "-c", "import gsil_bench.trainers.losses as m, gsil_bench.harness.cli as c; "
                                     "print(m.__file__); print(c.__file__)")
    assert proc.returncode == 0, proc.stderr
    assert all(Path(f).resolve().is_relative_to(target) for f in proc.stdout.split()), proc.stdout
    proc = _from_wheel(target, "-m", "gsil_bench.harness.cli", "run", "smoke", "--dry-run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "smoke" in proc.stdout


def test_the_code_checker_boots_from_the_installed_files(dist, tmp_path):
    """tasks.sandbox starts tasks.checker in an isolated interpreter: from a wheel it must find the
    wheel's files, and from this (editable) install the checkout's; the boot checks the file."""
    target = install_wheel(dist["wheel"], tmp_path / "site")
    code = ("import sys, gsil_bench.tasks.sandbox as s; "
            "r = s.check_many([{'kind': 'asserts', 'source': 'def f(x):\\n    return x + 1\\n', 'entry': 'f', "
            "'tests': 'assert f(1) == 2', 'header': '', 'setup': '', 'limits': s.Limits()}], "
            "mode='process', workers=1); print(r[0]['status'], r[0]['detail']); print(s.checker_boot())")
    for run in (lambda: _from_wheel(target, "-c", code),
                lambda: subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                                       timeout=300)):
        proc = run()
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.split()[0] == "passed", proc.stdout
    assert str(target / "gsil_bench" / "tasks" / "checker.py") in _from_wheel(target, "-c", code).stdout
