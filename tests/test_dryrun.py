"""`run --dry-run` plans the optimizer steps the loop takes: one plan (trainers.loop.StepPlan through
trainers.api.planned_steps) with the method's overrides, each iteration's schedule and self-play
history, the data the method trains on, and the processes of the launch (WORLD_SIZE). The dry run is
pinned here to a real one-process training, and in tests/test_distributed.py to a real two-process
launch (slow)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gsil_bench.core.io import read_json
from gsil_bench.core.loading import load_experiment
from gsil_bench.harness.dryrun import describe
from gsil_bench.trainers.api import train_method

CONFIG = """name: plan
shared:
  model: {model}
  train_data: {{path: gsm8k/train.jsonl, format: gsm8k, limit: 4}}
  optimizer: {{name: adamw, lr: 1.0e-4}}
  schedule: {{name: constant, warmup_ratio: 0.0}}
  train: {{batch_size: 2, max_length: 64, max_prompt_length: 48, logprob_chunk: 32}}
  generation: {{max_new_tokens: 4, batch_size: 4}}
  iterations: 2
  self_play:
    history: 2                      # iteration 2 trains on iteration 1's pairs too: 8 items
    schedule: [{{iteration: 2, epochs: 2}}]
  eval: {{tasks: [scorer_canaries]}}
methods:
  - loss: sft
  - loss: gsil-logistic
    params: {{a: 0.5, b: 0.0}}
    overrides: {{train.batch_size: 4}}
"""


def dry_run_steps(cfg_path: Path, out: Path, data_dir: Path, processes: int,
                  monkeypatch: pytest.MonkeyPatch) -> dict[tuple[str, int], int]:
    """(method, iteration) -> the optimizer steps `run --dry-run` prints under WORLD_SIZE=processes."""
    monkeypatch.setenv("WORLD_SIZE", str(processes))
    lines = describe(load_experiment(cfg_path), out, str(data_dir))
    monkeypatch.delenv("WORLD_SIZE")
    steps = {}
    for line in lines:
        if m := re.match(r"\[todo\] train (\S+) \(loss", line):
            for k, n in re.findall(r"iter (\d+): (\d+) steps", line):
                steps[(m.group(1), int(k))] = int(n)
    return steps


@pytest.fixture
def config(tmp_path, tiny_model_dir) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(CONFIG.format(model=tiny_model_dir))
    return path


def test_the_dry_run_plans_the_steps_the_loop_takes(config, tmp_path, data_dir, monkeypatch):
    """One process: the dry run's steps are those every iteration's summary.json records after training
    (a method override of the batch size, a per-iteration epoch count, self-play history)."""
    planned = dry_run_steps(config, tmp_path / "run", data_dir, 1, monkeypatch)
    assert planned == {("sft", 1): 2, ("gsil-logistic", 1): 1, ("gsil-logistic", 2): 4}
    cfg = load_experiment(config)
    trained = {}
    for method in ("sft", "gsil-logistic"):
        for result in train_method(cfg, method, 0, tmp_path / "run", data_dir=str(data_dir)):
            trained[(method, result.iteration)] = read_json(result.folder / "summary.json")["steps"]
    assert trained == planned


def test_the_dry_run_plans_with_the_launchs_processes(config, tmp_path, data_dir, monkeypatch):
    """Two processes double the global batch: half the steps (the dry run used to ignore WORLD_SIZE and
    print one process's steps where the loop plans half as many)."""
    assert dry_run_steps(config, tmp_path / "run", data_dir, 2, monkeypatch) == {
        ("sft", 1): 1, ("gsil-logistic", 1): 1, ("gsil-logistic", 2): 2}
    monkeypatch.setenv("WORLD_SIZE", "2")
    head = describe(load_experiment(config), tmp_path / "run", str(data_dir))[0]
    assert "4 training examples, global batch 4 (2 x 1 accumulation x 2 processes)" in head
