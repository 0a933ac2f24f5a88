"""The dry run's cost estimate (harness/estimate.py): the parameter count it reads from config.json
is the loaded model's, the memory follows precision and sharding, the dry run prints one cost line
per step, and (slow) the estimate of configs/smoke.yaml is within 2x of the main job's measured run."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from gsil_bench.core.loading import load_experiment
from gsil_bench.harness.estimate import known_examples, model_shape, peak_memory, shape_of
from gsil_bench.harness.validate import load_and_validate

REPO = Path(__file__).resolve().parents[1]


def test_the_parameter_count_is_the_loaded_models(tiny_model_dir):
    """From config.json alone: the count torch gives for the loaded weights (tied embeddings counted once).
    A count that forgot grouped-query attention (k/v as wide as q) or counted tied embeddings twice fails."""
    from transformers import AutoModelForCausalLM

    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    real = sum(p.numel() for p in model.parameters())
    assert model_shape(str(tiny_model_dir)).params == real
    untied = shape_of({**cfg, "tie_word_embeddings": not cfg.get("tie_word_embeddings", False)}, "x").params
    assert untied != real


def test_memory_follows_precision_and_sharding():
    cfg = load_experiment(REPO / "configs" / "paper-zephyr.yaml")
    shape = model_shape("alignment-handbook/zephyr-7b-sft-full")
    assert 7.2e9 < shape.params < 7.3e9  # Mistral-7B: 7.24B
    one = peak_memory(cfg, shape, 1, False, 1024)
    four = peak_memory(cfg, shape, 4, True, 1024)
    assert four["gradients"] == one["gradients"] / 4 and four["activations (one micro-batch)"] == one["activations (one micro-batch)"]
    # bf16-weights (trainers/precision.py): one device keeps bf16 weights (two bytes each) beside an fp32 master
    # copy; FSDP2 keeps only fp32 shards (the master), gathered in bf16 per layer
    assert one["weights"] == shape.params * 2 and one["fp32 master copy"] == shape.params * 4
    assert "weights" not in four and four["weights: fp32 shards (the master copy)"] == shape.params * 4 / 4
    assert len(known_examples(cfg, "offline")) == 61135  # UltraFeedback-binarized train_prefs, as its card counts


def test_a_launchs_processes_share_the_training_flops():
    """The same training over 4 processes: the same FLOPs (the launch's optimizer steps are over the global
    batch, trainers.loop.StepPlan), a quarter of the time. Counting the per-process batch over the launch's steps
    (a 4-process launch's FLOPs a quarter of one process's) is the wrong implementation this rejects."""
    from gsil_bench.harness.estimate import gpu, step_costs
    from gsil_bench.harness.plan import plan_steps
    from gsil_bench.trainers.loop import StepPlan

    cfg = load_experiment(REPO / "configs" / "paper-zephyr.yaml")
    shape = model_shape("alignment-handbook/zephyr-7b-sft-full")
    examples = known_examples(cfg, "offline")
    steps = [s for s in plan_steps(cfg) if s.kind == "train"]
    costs = {}
    for n in (1, 4):
        plan = StepPlan.of(len(examples), cfg.shared.train, n).total
        costs[n] = {c.step: c for c in step_costs(cfg, steps, examples, plan, shape, gpu("H100"), n)}
    sft = next(s.id for s in steps if s.method == "sft")
    one, four = costs[1][sft], costs[4][sft]
    assert four.flops == pytest.approx(one.flops, rel=0.01)  # 1911 and 478 steps: rounding up apart
    assert four.seconds == pytest.approx(one.seconds / 4, rel=0.02)
    # SFT: 6 N per trained token, every demonstration at max_length, one epoch
    assert one.flops == pytest.approx(6 * shape.body * len(examples) * cfg.shared.train.max_length, rel=0.01)


def test_the_dry_run_prints_a_cost_per_step(tmp_path, data_dir, capsys):
    from gsil_bench.harness.cli import main

    assert main(["run", "smoke", "--dry-run", "--output", str(tmp_path / "r"), "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    cfg, _, _ = load_and_validate("smoke", [], data_dir=str(data_dir), hub=False)
    lines = [line for line in out.splitlines() if line.startswith("  train/") or line.startswith("  eval/")]
    assert len(lines) == 27 and all("model FLOPs, ~" in line for line in lines)  # every step of the plan
    assert "cost estimate (this machine" in out and "peak memory per device" in out and "disk: 16 checkpoint(s) written (538 MB each, train dtype); shared.train.keep_checkpoints=none keeps 0 at the end (0.00 GB), at most 2 at once (1.08 GB" in out
    assert not (tmp_path / "r").exists()  # a dry run writes nothing
    out_gpu = subprocess.run([sys.executable, "-m", "gsil_bench.harness.cli", "run", "smoke", "--dry-run", "--gpu", "H100",
                              "--output", str(tmp_path / "r")], capture_output=True, text=True, timeout=300)
    assert "one H100 per process at 40% MFU" in out_gpu.stdout, out_gpu.stderr[-2000:]


def _estimate_seconds(text: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith("  total:"))
    value, unit = line.split("~", 1)[1].split()[:2]
    return float(value) * {"s": 1, "min": 60, "h": 3600}[unit]


@pytest.mark.slow
def test_the_smoke_estimate_is_within_2x_of_its_measured_run(tmp_path, data_dir):
    """The estimate and the run under the same conditions (one torch thread, as the slow suite runs):
    the run's CPU time (user + sys of the whole process; on a machine shared with other jobs the wall
    time grows with their load, the CPU time does not) is within a factor of 2 of the estimate."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GSIL_DATA_DIR": str(data_dir)}
    cmd = [sys.executable, "-m", "gsil_bench.harness.cli", "run", "smoke", "--output", str(tmp_path / "smoke")]
    dry = subprocess.run([*cmd, "--dry-run"], capture_output=True, text=True, env=env, timeout=600)
    estimate = _estimate_seconds(dry.stdout)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=7200)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert estimate / 2 <= cpu <= estimate * 2, (estimate, cpu)


def test_shared_prompts_take_the_pairs_second_prompt_out_of_the_training_flops(data_dir):
    """train.share_prompts: a pair's prompt runs once (trainers.packing), so DPO's training FLOPs per pair are the
    real sequence plus the generated response, not two whole sequences; SFT (no pairs) is unchanged."""
    from dataclasses import replace

    from gsil_bench.harness.estimate import Stand, _response_tokens, _tokens, gpu, step_costs
    from gsil_bench.harness.plan import plan_steps
    from gsil_bench.trainers.loop import StepPlan

    cfg, _, _ = load_and_validate("smoke", [], data_dir=str(data_dir), hub=False)
    shape = model_shape("embedded:smollm2-135m-instruct")
    examples = [Stand("q" * 240, "a" * 120)] * 8  # GSM8K-like: a prompt longer than the demonstration
    steps = [s for s in plan_steps(cfg) if s.kind == "train" and s.method in ("sft", "dpo")]
    costs = {}
    for share in (False, True):
        c = replace(cfg, shared=replace(cfg.shared, train=replace(cfg.shared.train, share_prompts=share)))
        plan = StepPlan.of(len(examples), c.shared.train, 1).total
        costs[share] = {x.step: x.flops for x in step_costs(c, steps, examples, plan, shape, gpu("H100"), 1)}
    sft, dpo = (next(s.id for s in steps if s.method == m) for m in ("sft", "dpo"))
    assert costs[True][sft] == costs[False][sft]
    prompt = _tokens(examples, cfg.shared.train.max_length) - _response_tokens(examples, 10**9)
    assert prompt > 0
    t = cfg.shared.train
    saved = 2 * shape.body * prompt * (3 * t.batch_size * StepPlan.of(len(examples), t, 1).total + len(examples))
    assert costs[False][dpo] - costs[True][dpo] == pytest.approx(saved, rel=1e-6)
