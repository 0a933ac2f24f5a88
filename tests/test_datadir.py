"""A relative data directory means the same from any working folder (core.datadir, core.config):
$GSIL_DATA_DIR and --data-dir against the folder where they are given (the CLI hands its children
the absolute path), a config's shared.data_dir against the config file's folder. The README's test
command gives `GSIL_DATA_DIR=../shared/data` and tests run the command line in other folders
(test_packaging's installed wheel, test_validate's `eval --config`). Wrong implementations these
reject: a path left relative (read again from another folder it names nothing, or another folder),
a config's relative path taken from the working folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gsil_bench.core.datadir import absolute_env, data_dir
from gsil_bench.core.loading import load_experiment

CONFIG = "name: x\nshared:\n  data_dir: {where}\nmethods:\n  - loss: sft\n"


def test_a_configs_relative_data_dir_is_the_config_files_folders(tmp_path, monkeypatch):
    (tmp_path / "exp").mkdir()
    (tmp_path / "data").mkdir()
    path = tmp_path / "exp" / "x.yaml"
    path.write_text(CONFIG.format(where="../data"))
    for cwd in (tmp_path, tmp_path / "exp", Path("/")):
        monkeypatch.chdir(cwd)
        cfg = load_experiment(path)
        assert Path(cfg.shared.data_dir) == tmp_path / "exp" / ".." / "data"
        assert data_dir(None, cfg.shared.data_dir) == (tmp_path / "exp" / ".." / "data")
    monkeypatch.chdir(tmp_path)  # given on the command line: the working folder's
    assert load_experiment(path, ["shared.data_dir=data"]).shared.data_dir == str(tmp_path / "data")


def test_a_relative_environment_variable_is_made_absolute_for_every_child(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GSIL_DATA_DIR", "data")
    assert data_dir() == tmp_path / "data"
    absolute_env()  # what `gsil-bench` does first
    assert os.environ["GSIL_DATA_DIR"] == str(tmp_path / "data")
    code = "from gsil_bench.core.datadir import data_dir; print(data_dir())"
    child = subprocess.run([sys.executable, "-c", code], cwd=tmp_path / "elsewhere", capture_output=True, text=True,
                           timeout=120)
    assert child.stdout.strip() == str(tmp_path / "data"), child.stderr[-2000:]


def test_a_missing_relative_directory_names_the_variable_and_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GSIL_DATA_DIR", "../nowhere")
    with pytest.raises(FileNotFoundError) as err:
        data_dir()
    assert str(err.value) == (f"$GSIL_DATA_DIR=../nowhere: data directory {tmp_path / '../nowhere'} does not exist "
                              f"(relative to the working folder {tmp_path})")
