"""Data-parallel training with two CPU processes (gloo) equals one process with the same
global batch, and a two-process run killed with -9 resumes.

On CPU, `accelerate launch --cpu` starts a single process unless MPI is set up; the
two-process launch is `accelerate launch --multi_gpu --num_processes 2` (or torchrun):
with no CUDA device trainers.api builds the Accelerator with cpu=True, so the processes
form one gloo group (a launch whose processes would not see each other is refused).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_dryrun import dry_run_steps

from gsil_bench.core.io import read_json, read_jsonl

REPO = Path(__file__).resolve().parents[1]


def _cli_module() -> list[str]:
    """`-m gsil_bench.harness.cli train`: the gsil-bench entry point."""
    return ["gsil_bench.harness.cli", "train"]


def _config(tmp_path: Path, model: Path, method: str = "- loss: gsil-logistic\n    params: {a: 0.5, b: 0.0}",
            lengths: str = "max_length: 96, max_prompt_length: 64") -> Path:
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(f"""name: dist
shared:
  model: {model}
  train_data: {{path: gsm8k/train.jsonl, format: gsm8k, limit: 8}}
  optimizer: {{name: adamw, lr: 1.0e-3}}
  schedule: {{name: constant, warmup_ratio: 0.0}}
  train: {{batch_size: 2, {lengths}, logprob_chunk: 32, save_every: 1}}
  generation: {{max_new_tokens: 6, batch_size: 2}}
  iterations: 2
methods:
  {method}
""")
    return cfg


def _env(data_dir: Path, kill: str | None = None) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GSIL_DATA_DIR": str(data_dir)}
    env.pop("GSIL_TEST_KILL", None)
    if kill:
        env["GSIL_TEST_KILL"] = kill
    return env


def _launch(cfg: Path, out: Path, data_dir: Path, kill: str | None = None,
            method: str = "gsil-logistic") -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           "-m", *_cli_module(), str(cfg), "--method", method, "--output", str(out)]
    return subprocess.run(cmd, cwd=REPO, env=_env(data_dir, kill), capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_two_processes_equal_one_with_the_same_global_batch_and_resume(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    cfg = _config(tmp_path, tiny_model_dir)
    one = subprocess.run([sys.executable, "-m", "gsil_bench.harness.cli", "train", str(cfg), "--method", "gsil-logistic",
                          "--output", str(tmp_path / "one"), "shared.train.batch_size=4"],
                         cwd=REPO, env=_env(data_dir), capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]

    killed = _launch(cfg, tmp_path / "two", data_dir, kill="step@2:1")
    assert killed.returncode != 0
    root = tmp_path / "two" / "gsil-logistic" / "seed-0"
    assert (root / "iter-1" / "DONE").is_file() and not (root / "iter-2" / "DONE").exists()
    assert read_json(root / "iter-2" / "state" / "info.json")["step"] == 1
    two = _launch(cfg, tmp_path / "two", data_dir)
    assert two.returncode == 0, two.stderr[-3000:]

    # `run --dry-run` under the same launch plans the steps the two processes took (tests/test_dryrun.py: one)
    assert dry_run_steps(cfg, tmp_path / "fresh", data_dir, 2, monkeypatch) == {
        ("gsil-logistic", k): read_json(root / f"iter-{k}" / "summary.json")["steps"] for k in (1, 2)}
    for k in (1, 2):
        a = tmp_path / "one" / "gsil-logistic" / "seed-0" / f"iter-{k}"
        b = root / f"iter-{k}"
        assert read_json(b / "summary.json")["processes"] == 2 and read_json(a / "summary.json")["processes"] == 1
        # greedy generation sharded over two processes = one process
        assert (a / "generations.jsonl").read_text() == (b / "generations.jsonl").read_text()
        assert torch.allclose(torch.load(a / "ref_logps.pt")["gen"], torch.load(b / "ref_logps.pt")["gen"], atol=1e-4)
        ma, mb = read_jsonl(a / "metrics.jsonl"), read_jsonl(b / "metrics.jsonl")
        assert [m["step"] for m in mb] == [1, 2]  # one line per step, written by the main process only
        for x, y in zip(ma, mb):
            assert x["tokens"] == y["tokens"]
            assert x["loss"] == pytest.approx(y["loss"], rel=1e-4)
            assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-3)
        assert not list(b.glob("**/*.partial.jsonl")) and not (b / "state").exists()
    from safetensors.torch import load_file

    wa = load_file(tmp_path / "one" / "gsil-logistic" / "seed-0" / "iter-2" / "checkpoint" / "model.safetensors")
    wb = load_file(root / "iter-2" / "checkpoint" / "model.safetensors")
    w0 = load_file(tiny_model_dir / "model.safetensors")
    for key in w0:
        assert (wa[key] - wb[key]).norm() <= 1e-3 * (wa[key] - w0[key]).norm() + 1e-6, key


@pytest.mark.slow
def test_sft_over_two_processes_equals_one_process(tiny_model_dir, data_dir, tmp_path):
    """SFT's token mean is over the optimizer step's global batch: the two processes' halves hold
    different numbers of response tokens (GSM8K answers differ in length), so a mean of per-process
    token means would train differently (before the fix this test failed)."""
    cfg = _config(tmp_path, tiny_model_dir, "- loss: sft", lengths="max_length: 512, max_prompt_length: 256")
    one = subprocess.run([sys.executable, "-m", "gsil_bench.harness.cli", "train", str(cfg), "--method", "sft",
                          "--output", str(tmp_path / "one"), "shared.train.batch_size=4"],
                         cwd=REPO, env=_env(data_dir), capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _launch(cfg, tmp_path / "two", data_dir, method="sft")
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (tmp_path / x / "sft" / "seed-0" / "iter-1" for x in ("one", "two"))
    ma, mb = read_jsonl(a / "metrics.jsonl"), read_jsonl(b / "metrics.jsonl")
    assert len(ma) == len(mb) == 2
    for x, y in zip(ma, mb):
        assert x["tokens"] == y["tokens"]
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-4)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-3)


@pytest.mark.slow  # 48 s (an accelerate launch)
def test_accelerate_cpu_launch_of_several_processes_is_refused_with_the_working_command(tiny_model_dir, data_dir, tmp_path):
    """`accelerate launch --cpu --num_processes 2` runs ONE process (accelerate's multi-CPU path
    needs MPI): gsil-bench says so and names the launch that works, instead of training alone."""
    cfg = _config(tmp_path, tiny_model_dir)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", *_cli_module(), str(cfg),
           "--method", "gsil-logistic", "--output", str(tmp_path / "out")]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(data_dir), capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "starts a single process" in proc.stderr and "--multi_gpu --num_processes N" in proc.stderr
    assert not (tmp_path / "out" / "gsil-logistic" / "seed-0" / "iter-1" / "DONE").exists()
