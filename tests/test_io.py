"""core.io's one temporary-name-then-rename (`atomic_path`, `recover_path`) and one file lock
(`file_lock`, `folder_lock`): what every writer and every lock of the package relies on."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gsil_bench.core.io import FolderBusy, atomic_path, busy_ancestor, file_lock, folder_lock, recover_path


def test_a_file_appears_whole_or_not_at_all(tmp_path):
    dest = tmp_path / "a" / "result.json"
    with atomic_path(dest) as tmp:
        tmp.write_text("new")
        assert not dest.exists() and tmp.parent == dest.parent and tmp.name.startswith(".result.json.tmp")
    assert dest.read_text() == "new"
    with pytest.raises(RuntimeError), atomic_path(dest) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed while writing")
    assert dest.read_text() == "new" and sorted(p.name for p in dest.parent.iterdir()) == ["result.json"]


def test_a_folder_is_swapped_and_a_crash_between_the_renames_is_recovered(tmp_path, monkeypatch):
    dest = tmp_path / "checkpoint"
    with atomic_path(dest, folder=True) as tmp:
        (tmp / "w").write_text("1")
    with atomic_path(dest, folder=True) as tmp:
        (tmp / "w").write_text("2")
    assert (dest / "w").read_text() == "2" and not (tmp_path / "checkpoint.old").exists()

    def crash(src, dst):  # killed after the old copy moved aside, before the new one took its place
        raise KeyboardInterrupt

    monkeypatch.setattr("os.replace", crash)
    with pytest.raises(KeyboardInterrupt), atomic_path(dest, folder=True) as tmp:
        (tmp / "w").write_text("3")
    monkeypatch.undo()
    assert not dest.exists() and (tmp_path / "checkpoint.old" / "w").read_text() == "2"
    recover_path(dest)
    assert (dest / "w").read_text() == "2" and sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


HOLD = ("import sys, time\nfrom gsil_bench.core.io import file_lock\n"
        "with file_lock(sys.argv[1], shared=sys.argv[2] == 'shared'):\n    print('held', flush=True)\n    time.sleep(60)")


def _holder(path, mode):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path), mode], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_one_lock_exclusive_or_shared_and_the_folder_busy_error(tmp_path):
    folder = tmp_path / "run"
    proc = _holder(folder / ".lock", "shared")  # a `run` process
    try:
        with folder_lock(folder, shared=True):  # another `run` process shares the folder
            pass
        with pytest.raises(FolderBusy, match="another gsil-bench run or eval is using this folder"):
            with folder_lock(folder):  # `eval` wants it alone
                pass
        assert busy_ancestor(folder / "eval" / "base") == folder.resolve()
    finally:
        proc.kill()
        proc.wait()
    with file_lock(folder / ".lock", wait=False) as held:
        assert held  # the kernel released it with the process
    assert busy_ancestor(folder / "eval") is None
