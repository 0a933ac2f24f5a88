"""Resume after kill -9: the same command continues from the last saved state and ends
with exactly the result of an uninterrupted run.

The processes die through the GSIL_TEST_KILL hook (trainers.state.kill_hook), which
SIGKILLs the process at a known point: "step:N" after optimizer step N ("step@K:N": of iteration K), "generated:N"
after N self-play generations were written, "finished:K" after iteration K's checkpoint
and summary but before its DONE marker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gsil_bench.core.io import read_json, read_jsonl

REPO = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, model: Path, iterations: int = 1) -> Path:
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(f"""name: resume
shared:
  model: {model}
  train_data: {{path: gsm8k/train.jsonl, format: gsm8k, limit: 8}}
  optimizer: {{name: adamw, lr: 1.0e-3}}
  schedule: {{name: linear, warmup_ratio: 0.25}}
  train: {{batch_size: 2, max_length: 96, max_prompt_length: 64, logprob_chunk: 32, save_every: 2}}
  generation: {{max_new_tokens: 6, batch_size: 1}}
  iterations: {iterations}
methods:
  - loss: gsil-logistic
    params: {{a: 0.5, b: 0.0}}
""")
    return cfg


def _train(cfg: Path, out: Path, data_dir: Path, kill: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GSIL_DATA_DIR": str(data_dir)}
    env.pop("GSIL_TEST_KILL", None)
    if kill:
        env["GSIL_TEST_KILL"] = kill
    return subprocess.run([sys.executable, "-m", "gsil_bench.harness.cli", "train", str(cfg), "--method", "gsil-logistic",
                           "--output", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _trajectory(folder: Path) -> list[tuple[int, float, float]]:
    return [(m["step"], m["loss"], m["grad_norm"]) for m in read_jsonl(folder / "metrics.jsonl")]


def _same_weights(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def base_run(tiny_model_dir, data_dir, tmp_path_factory) -> tuple[Path, Path]:
    """One uninterrupted one-iteration run: (config file, its iter-1 folder)."""
    tmp = tmp_path_factory.mktemp("base")
    cfg = _config(tmp, tiny_model_dir)
    base = _train(cfg, tmp / "base", data_dir)
    assert base.returncode == 0, base.stderr[-3000:]
    return cfg, tmp / "base" / "gsil-logistic" / "seed-0" / "iter-1"


def _same_files(got: Path, want: Path) -> None:
    """The resumed iteration equals the uninterrupted one byte for byte (timings aside)."""
    assert (got / "DONE").is_file() and not (got / "state").exists() and not (got / "inputs").exists()
    assert _trajectory(got) == _trajectory(want)  # nothing duplicated or lost
    for name in ("metrics.jsonl", "generations.jsonl", "ref_logps.pt", "checkpoint/model.safetensors",
                 "checkpoint/gsil_meta.json"):
        assert (got / name).read_bytes() == (want / name).read_bytes(), name
    timing = {"wall_time_s"}
    summary, base = read_json(got / "summary.json"), read_json(want / "summary.json")
    assert {k: v for k, v in summary.items() if k not in timing} == {k: v for k, v in base.items() if k not in timing}


def test_kill9_mid_training_resumes_to_the_same_result(base_run, data_dir, tmp_path):
    cfg, want = base_run
    killed = _train(cfg, tmp_path / "run", data_dir, kill="step:3")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    folder = tmp_path / "run" / "gsil-logistic" / "seed-0" / "iter-1"
    assert not (folder / "DONE").exists() and not (folder / "checkpoint").exists()
    assert [s for s, _, _ in _trajectory(folder)] == [1, 2, 3]
    assert read_json(folder / "state" / "info.json")["step"] == 2  # saved every 2 steps

    again = _train(cfg, tmp_path / "run", data_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "from step 2/4" in again.stderr
    _same_files(folder, want)  # step 3 redone
    assert _same_weights(folder / "checkpoint", want / "checkpoint")


@pytest.mark.slow  # 69 s; the slow test_kill9_during_generation_training_and_before_done kills at the same stages
def test_kill9_during_generation_and_before_done(base_run, data_dir, tmp_path):
    """One iteration, killed after 4 of 8 self-play generations, then between the checkpoint
    and the DONE marker: the generations continue where they stopped, the finished checkpoint
    is not retrained, and everything equals the uninterrupted run byte for byte."""
    cfg, want = base_run
    folder = tmp_path / "run" / "gsil-logistic" / "seed-0" / "iter-1"
    r = _train(cfg, tmp_path / "run", data_dir, kill="generated:4")
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    (partial,) = (tmp_path / "run" / "shared").glob("*/generations.partial.jsonl")
    kept = read_jsonl(partial)
    assert [g["index"] for g in kept] == [0, 1, 2, 3]  # one chunk of 4 generations kept
    assert kept == read_jsonl(want / "generations.jsonl")[:4]
    assert not (folder / "metrics.jsonl").exists()

    r = _train(cfg, tmp_path / "run", data_dir, kill="finished:1")
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    assert not partial.exists() and (folder / "checkpoint" / "model.safetensors").is_file()
    assert (folder / "summary.json").is_file() and not (folder / "DONE").exists()
    stamp = (folder / "checkpoint" / "model.safetensors").stat().st_mtime_ns

    r = _train(cfg, tmp_path / "run", data_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (folder / "checkpoint" / "model.safetensors").stat().st_mtime_ns == stamp  # not retrained
    _same_files(folder, want)


@pytest.mark.slow
def test_kill9_during_generation_training_and_before_done(tiny_model_dir, data_dir, tmp_path):
    """Two self-play iterations, killed while iteration 1 generates, during iteration 2's
    training, and between iteration 2's checkpoint and its DONE marker."""
    cfg = _config(tmp_path, tiny_model_dir, iterations=2)
    assert _train(cfg, tmp_path / "base", data_dir).returncode == 0
    root = tmp_path / "run" / "gsil-logistic" / "seed-0"
    shared = tmp_path / "run" / "shared"

    r = _train(cfg, tmp_path / "run", data_dir, kill="generated:4")
    assert r.returncode == -signal.SIGKILL
    (partial,) = shared.glob("*/generations.partial.jsonl")
    assert len(read_jsonl(partial)) == 4  # one chunk of 4 generations kept
    r = _train(cfg, tmp_path / "run", data_dir, kill="step@2:3")
    assert r.returncode == -signal.SIGKILL and (root / "iter-1" / "DONE").is_file()
    assert not partial.exists()
    assert [s for s, _, _ in _trajectory(root / "iter-2")] == [1, 2, 3]
    r = _train(cfg, tmp_path / "run", data_dir, kill="finished:2")
    assert r.returncode == -signal.SIGKILL and not (root / "iter-2" / "DONE").exists()
    stamp = (root / "iter-2" / "checkpoint" / "model.safetensors").stat().st_mtime_ns
    r = _train(cfg, tmp_path / "run", data_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (root / "iter-2" / "checkpoint" / "model.safetensors").stat().st_mtime_ns == stamp  # not retrained
    for k in (1, 2):
        got, want = root / f"iter-{k}", tmp_path / "base" / "gsil-logistic" / "seed-0" / f"iter-{k}"
        assert (got / "DONE").is_file()
        assert _trajectory(got) == _trajectory(want)
        assert (got / "generations.jsonl").read_text() == (want / "generations.jsonl").read_text()
        assert _same_weights(got / "checkpoint", want / "checkpoint")
