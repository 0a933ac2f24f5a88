"""CLI conveniences and checkpoint publishing: `run --dry-run` (the plan, nothing done),
`--log-level` / `-q`, TRL and alignment-handbook key names answered with ours, the checks
of report_to / fp16 / push_to_hub, and the model card written beside a checkpoint."""

from __future__ import annotations

import logging

import pytest
import yaml

from gsil_bench.core.io import read_json
from gsil_bench.harness.cli import main

CONFIG = """name: eco
shared:
  model: {model}
  train_data: {{path: gsm8k/train.jsonl, format: gsm8k, limit: 6}}
  train: {{batch_size: 2, max_length: 64, max_prompt_length: 48, max_steps: 2}}
  generation: {{max_new_tokens: 4}}
  iterations: 2
  eval: {{tasks: [humaneval], limit: 2}}
methods:
  - loss: sft
  - loss: gsil-logistic
"""


@pytest.fixture()
def config(tiny_model_dir, data_dir, tmp_path):
    path = tmp_path / "eco.yaml"
    path.write_text(CONFIG.format(model=tiny_model_dir))
    return path


def test_dry_run_prints_the_plan_and_does_nothing(config, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(config), "--output", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert not out.exists()
    assert "6 training examples, global batch 2 (2 x 1 accumulation x 1 process)" in text
    assert "[todo] train sft (loss sft) seed 0: iter 1: 2 steps\n" in text
    assert ("[todo] train gsil-logistic (loss gsil-logistic) seed 0: iter 1: 2 steps, the starting model's responses "
            "(shared across methods: 6, generated once); iter 2: 2 steps, generates 6 responses") in text
    assert "[todo] evaluate gsil-logistic seed 0 iter 2" in text and "6 of 6 steps to do" in text
    # train sft for real: the plan now skips it and says what is reused
    assert main(["train", str(config), "--method", "sft", "--output", str(out)]) == 0
    capsys.readouterr()
    assert main(["run", str(config), "--output", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "[skip] train sft (loss sft) seed 0: iter 1: done, reused" in text and "5 of 6 steps to do" in text


def test_log_level_and_quiet(config, tmp_path, capsys):
    from gsil_bench.harness.cli import build_parser, log_level

    assert log_level(build_parser().parse_args(["-q", "report", "x"])) == logging.WARNING
    assert log_level(build_parser().parse_args(["--log-level", "DEBUG", "report", "x"])) == logging.DEBUG
    assert log_level(build_parser().parse_args(["report", "x"])) == logging.INFO
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--log-level", "loud", "report", "x"])
    assert "unrecognized" not in capsys.readouterr().err
    for command in ("run", "train", "eval", "report", "compare"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "gsil-bench " + command in capsys.readouterr().out  # every --help shows examples


def test_trl_names_point_to_our_keys(config, capsys):
    data = yaml.safe_load(config.read_text())
    data["shared"]["learning_rate"] = 1e-6
    data["shared"]["train"]["gradient_accumulation_steps"] = 4
    data["shared"]["train"]["report_to"] = ["tensorbord"]
    config.write_text(yaml.safe_dump(data))
    assert main(["run", str(config), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'shared.learning_rate' (a TRL / alignment-handbook name; gsil-bench calls it shared.optimizer.lr)" in err
    assert "'shared.train.gradient_accumulation_steps' (a TRL / alignment-handbook name; gsil-bench calls it shared.train.grad_accum)" in err


def test_publishing_settings_are_checked(config, capsys):
    import torch

    assert main(["run", str(config), "--dry-run", "shared.train.report_to=[tensorbord]",
                 "shared.train.push_to_hub=true", "shared.train.precision=fp16"]) == 2
    err = capsys.readouterr().err
    assert "shared.train.report_to[0]: unknown tracker 'tensorbord' (did you mean 'tensorboard'?)" in err
    assert "shared.train.hub_model_id: push_to_hub needs the Hub repository" in err
    assert ("shared.train.precision: fp16 mixed precision needs a CUDA GPU" in err) != torch.cuda.is_available()


def test_checkpoint_has_a_model_card(config, tmp_path):
    out = tmp_path / "run"
    assert main(["train", str(config), "--method", "gsil-logistic", "--output", str(out),
                 "shared.iterations=1"]) == 0
    folder = out / "gsil-logistic" / "seed-0" / "iter-1"
    card = (folder / "checkpoint" / "README.md").read_text()
    summary = read_json(folder / "summary.json")
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["library_name"] == "transformers" and "gsil-logistic" in meta["tags"]
    assert f"| shared configuration hash | `{summary['shared_hash']}` |" in card
    assert f"| training key | `{summary['train_key']}` |" in card
    assert "loss `gsil-logistic`, parameters none (the loss's defaults)" in card and "gsm8k/train.jsonl" in card
    assert meta["tags"] == ["gsil-bench", "gsil-logistic"]
    assert "Not evaluated yet" in card
    from gsil_bench.core.loading import load_experiment
    from gsil_bench.trainers.publish import model_card

    scores = {"humaneval": {"metrics": {"pass@1": {"value": 0.5, "ci_low": 0.1, "ci_high": 0.9, "n": 2}}}}
    with_scores = model_card(summary, load_experiment(config), scores)
    assert "| humaneval | pass@1 | 0.5 | [0.1, 0.9] | 2 |" in with_scores
    meta = yaml.safe_load(with_scores.split("---")[1])
    assert meta["model-index"][0]["results"][0]["metrics"] == [{"type": "pass@1", "value": 0.5}]


def test_lora_adapter_saved_beside_the_merged_weights(tiny_model_dir, data_dir, tmp_path):
    """lora.save_adapter: checkpoint/adapter/ is the adapter alone; peft puts it on the starting
    model and gives the merged checkpoint's weights."""
    import torch
    from helpers import make_cfg
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from gsil_bench.trainers.api import train_method

    cfg = make_cfg(tiny_model_dir, [{"loss": "sft"}], optimizer={"name": "adamw", "lr": 1e-2},
                   train={"max_steps": 2, "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "save_adapter": True}})
    (res,) = train_method(cfg, "sft", 0, tmp_path)
    adapter = res.checkpoint / "adapter"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    assert (adapter / "adapter_model.safetensors").stat().st_size < (res.checkpoint / "model.safetensors").stat().st_size / 5
    rebuilt = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter).merge_and_unload()
    merged = AutoModelForCausalLM.from_pretrained(res.checkpoint).state_dict()
    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert any(not torch.equal(start[k], merged[k]) for k in merged)
    for k, v in rebuilt.state_dict().items():
        torch.testing.assert_close(v, merged[k], rtol=1e-5, atol=1e-6)


def test_heldout_nll_every_n_steps(tiny_model_dir, data_dir, tmp_path, tokenizer):
    """train.eval_every: eval/nll in metrics.jsonl at every N-th step and the last, equal to the
    final checkpoint's NLL per response token computed independently with plain transformers."""
    import torch
    from helpers import make_cfg
    from transformers import AutoModelForCausalLM

    from gsil_bench.core.io import read_jsonl
    from gsil_bench.trainers.api import train_method
    from gsil_bench.trainers.data import encode_examples, load_examples

    heldout = {"path": "gsm8k/train.jsonl", "format": "gsm8k", "offset": 100, "limit": 3}
    cfg = make_cfg(tiny_model_dir, [{"loss": "sft"}], train_data={"path": "gsm8k/train.jsonl", "format": "gsm8k",
                                                                  "limit": 10},
                   train={"max_steps": 5, "eval_every": 2, "eval_data": heldout})
    (res,) = train_method(cfg, "sft", 0, tmp_path)
    rows = read_jsonl(res.folder / "metrics.jsonl")
    assert [r["step"] for r in rows if "eval/nll" in r] == [2, 4, 5]
    seqs = encode_examples(tokenizer, load_examples(cfg.shared.train.eval_data, data_dir), max_prompt_length=64,
                           max_length=96)
    model = AutoModelForCausalLM.from_pretrained(res.checkpoint).eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for s in seqs:
            ids = torch.tensor([s.input_ids])
            logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
            picked = logp.gather(-1, ids[0, 1:, None])[:, 0]
            total += float(picked[s.response_start - 1:].sum())
            n += len(s.input_ids) - s.response_start
    assert rows[-1]["eval/nll"] == pytest.approx(-total / n, rel=1e-4)
