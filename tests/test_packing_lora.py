"""Packing with LoRA: `train.packing: true` trains the same LoRA adapters as the padded path
(losses, rewards, grad norms step by step, and the merged checkpoint), for a pairwise
self-play loss (real + generated in one packed row) and SFT. Packing under FSDP with LoRA is
covered by tests/test_sharded.py."""

from __future__ import annotations

import pytest

from gsil_bench.core.io import read_json, read_jsonl
from gsil_bench.core.loading import experiment_from_dict
from gsil_bench.trainers.api import train_method

LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def _cfg(model, method: dict, packing: bool):
    return experiment_from_dict({"name": "t", "methods": [method], "shared": {
        "model": str(model),
        "train_data": {"path": "gsm8k/train.jsonl", "format": "gsm8k", "limit": 6},
        "optimizer": {"name": "adamw", "lr": 1e-2},
        "schedule": {"name": "constant", "warmup_ratio": 0.0},
        "train": {"batch_size": 2, "max_length": 96, "max_prompt_length": 64, "logprob_chunk": 16, "max_steps": 3,
                  "packing": packing, "lora": LORA},
        "generation": {"max_new_tokens": 6, "batch_size": 4},
        "iterations": 1}})


@pytest.mark.parametrize("method", [  # gsil-logistic (50 s) in the slow suite; packed = padded for it: test_training
    pytest.param({"loss": "gsil-logistic", "params": {"a": 0.5, "b": 0.0}}, marks=pytest.mark.slow), {"loss": "sft"}],
                         ids=["gsil-logistic", "sft"])
def test_packed_lora_training_matches_padded(tiny_model_dir, data_dir, tmp_path, method):
    from transformers import AutoModelForCausalLM

    runs = {}
    for packing in (False, True):
        cfg = _cfg(tiny_model_dir, method, packing)
        (res,) = train_method(cfg, cfg.methods[0].label, 0, tmp_path / f"packing-{packing}")
        assert read_json(res.folder / "summary.json")["steps"] == 3
        runs[packing] = (read_jsonl(res.folder / "metrics.jsonl"),
                         AutoModelForCausalLM.from_pretrained(res.checkpoint).state_dict())
    (padded, w_padded), (packed, w_packed) = runs[False], runs[True]
    assert [m["step"] for m in packed] == [1, 2, 3]
    for a, b in zip(padded, packed, strict=True):
        assert a["tokens"] == b["tokens"]
        for key in ("loss", "grad_norm", "rewards/real", "rewards/generated", "logps/real"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-4), key
    w0 = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    changed = [k for k in w0 if (w_padded[k] - w0[k]).norm() > 0]
    # LoRA on the attention projections, merged: exactly those weights moved
    assert changed and all(k.split(".")[-2] in ("q_proj", "k_proj", "v_proj", "o_proj") for k in changed)
    for k in changed:
        assert (w_padded[k] - w_packed[k]).norm() <= 1e-3 * (w_padded[k] - w0[k]).norm() + 1e-7, k
