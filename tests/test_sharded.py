"""Sharded training (FSDP2 through accelerate) with two CPU processes over gloo: the run is
killed with -9 after a saved state, resumes under sharding, and its checkpoint loads with
`from_pretrained` and equals the unsharded data-parallel run of the same steps; full
fine-tuning, and LoRA with packed batches.

The launch is `accelerate launch --use_fsdp --fsdp_version 2 --num_processes 2`;
without CUDA, trainers.sharding switches accelerate's CPU data parallel to FSDP2 (accelerate
alone would silently train unsharded). DeepSpeed ZeRO-3 is not tested here: the `deepspeed`
package is not installed on the CPU test machine.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gsil_bench.core.io import read_json, read_jsonl

REPO = Path(__file__).resolve().parents[1]
FSDP = ["--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP"]


def _config(tmp_path: Path, model: Path, lora: bool) -> Path:
    cfg = tmp_path / "exp.yaml"
    # the LoRA case also packs: LoRA + packing + FSDP against LoRA + packing + data parallel
    lora_line = ("    lora: {r: 4, alpha: 8, dropout: 0.0, target_modules: [q_proj, v_proj]}\n    packing: true\n"
                 if lora else "")
    cfg.write_text(f"""name: sharded
shared:
  model: {model}
  train_data: {{path: gsm8k/train.jsonl, format: gsm8k, limit: 12}}
  optimizer: {{name: adamw, lr: 1.0e-3}}
  schedule: {{name: linear, warmup_ratio: 0.0}}
  train:
    batch_size: 2
    max_length: 96
    max_prompt_length: 64
    logprob_chunk: 8
    save_every: 1
{lora_line}methods:
  - loss: sft
""")
    return cfg


def _launch(cfg: Path, out: Path, extra: list[str], kill: str | None = None) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("GSIL_TEST_KILL", None)
    if kill:
        env["GSIL_TEST_KILL"] = kill
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           *extra, "-m", "gsil_bench.harness.cli", "train", str(cfg), "--method", "sft", "--output", str(out)]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_fsdp_checkpoint_resumes_and_equals_unsharded(tiny_model_dir, data_dir, tmp_path, lora):
    from transformers import AutoModelForCausalLM

    cfg = _config(tmp_path, tiny_model_dir, lora)
    ddp = _launch(cfg, tmp_path / "ddp", ["--multi_gpu"])
    assert ddp.returncode == 0, ddp.stderr[-3000:]

    killed = _launch(cfg, tmp_path / "fsdp", FSDP, kill="step:2")
    assert killed.returncode != 0
    it = tmp_path / "fsdp" / "sft" / "seed-0" / "iter-1"
    state = read_json(it / "state" / "info.json")
    assert state["step"] == 2 and state["sharded"] is True and not (it / "DONE").exists()
    resumed = _launch(cfg, tmp_path / "fsdp", FSDP)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stderr and (it / "DONE").is_file() and not (it / "state").exists()

    ref = tmp_path / "ddp" / "sft" / "seed-0" / "iter-1"
    ma, mb = read_jsonl(ref / "metrics.jsonl"), read_jsonl(it / "metrics.jsonl")
    assert [m["step"] for m in mb] == [1, 2, 3]
    for x, y in zip(ma, mb, strict=True):
        assert x["tokens"] == y["tokens"]
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-4)

    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).state_dict()
    a = AutoModelForCausalLM.from_pretrained(ref / "checkpoint", dtype=torch.float32).state_dict()
    b = AutoModelForCausalLM.from_pretrained(it / "checkpoint", dtype=torch.float32).state_dict()
    assert set(a) == set(b) == set(start)  # LoRA merged: a plain model
    moved = 0
    for key in start:
        update = (a[key] - start[key]).norm()
        assert (a[key] - b[key]).norm() <= 1e-3 * update + 1e-6, key
        moved += int(update > 0)
    assert moved >= (2 if lora else len(start) - 1)  # training changed the weights it trains
