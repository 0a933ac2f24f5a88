"""A plugged-in loss swept end to end on the tiny model: a plugin file beside the config registers a
GSIL-family loss, the command line sweeps its shift b, and `gsil-bench run` trains every variant,
generates the starting model's responses once for all of them, evaluates the starting model once,
and draws the parameter-ablation figure with one point per variant; the loss anatomy covers the
plugged-in loss by autograd."""

from __future__ import annotations

import json

import pytest
import yaml

from gsil_bench.core.io import read_json
from gsil_bench.harness.cli import main
from gsil_bench.trainers import inputs as trainer_inputs

PLUGIN = '''import torch
from gsil_bench.trainers.losses import LossInputs, LossOutput, gsil_output, register_loss


@register_loss("e2e-sqhinge", self_play=True, family="gsil")
def e2e_sqhinge(x: LossInputs, *, a: float = 0.01, b: float = 2.0) -> LossOutput:
    z_real, z_gen = a * x.r_real + b, a * x.r_gen + b
    return gsil_output(x, real_term=torch.relu(1 - z_real) ** 2, gen_term=torch.relu(1 + z_gen) ** 2)
'''


def test_a_plugged_in_loss_swept_end_to_end(tmp_path, tiny_model_dir, data_dir, monkeypatch):
    (tmp_path / "e2e_sweep_losses.py").write_text(PLUGIN)
    config = {
        "name": "sweep-e2e", "plugins": ["e2e_sweep_losses"],
        "shared": {"model": str(tiny_model_dir),
                   "train_data": {"path": "gsm8k/train.jsonl", "format": "gsm8k", "limit": 4},
                   "optimizer": {"lr": 1e-3}, "schedule": {"name": "constant", "warmup_ratio": 0.0},
                   "train": {"batch_size": 2, "max_length": 96, "max_prompt_length": 64, "logprob_chunk": 32},
                   "generation": {"max_new_tokens": 6, "batch_size": 4}, "iterations": 1, "seeds": [0],
                   "eval": {"tasks": ["heldout_gsm8k"], "limit": 4, "generation": {"max_new_tokens": 6}}},
        "methods": [{"loss": "sft"}, {"loss": "e2e-sqhinge", "params": {"a": 0.5, "b": 2.0}}],
        "report": {"baseline": "sft", "bootstrap": 200},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    generated: list[int] = []
    real_generate = trainer_inputs._generate

    def counting_generate(ctx, *args, **kwargs):  # the real generation, counted
        generated.append(len(ctx.examples))
        return real_generate(ctx, *args, **kwargs)

    monkeypatch.setattr(trainer_inputs, "_generate", counting_generate)
    root = tmp_path / "run"
    assert main(["run", str(path), "--output", str(root), "methods.e2e-sqhinge.params.b=[0,0.5,1]"]) == 0

    variants = ["e2e-sqhinge[b=0]", "e2e-sqhinge[b=0.5]", "e2e-sqhinge[b=1]"]
    plan = read_json(root / "plan.json")
    assert {s["method"] for s in plan["steps"]} == {"base", "sft", *variants}
    assert {s["status"] for s in plan["steps"]} == {"done"}
    # shared work done once: one generation pass over the 4 prompts serves the three variants, one base evaluation
    assert generated == [4]
    shared = [d for d in (root / "shared").iterdir() if d.is_dir()]
    assert len(shared) == 1 and (shared[0] / "DONE").is_file()
    gens = {(root / v / "seed-0" / "iter-1" / "generations.jsonl").read_bytes() for v in variants}
    assert gens == {(shared[0] / "generations.jsonl").read_bytes()}
    assert sorted(p.name for p in (root / "eval" / "base").iterdir()) == ["iter-0"]
    # each variant trained with its own b (and its own training key)
    summaries = [read_json(root / v / "seed-0" / "iter-1" / "summary.json") for v in variants]
    assert [s["params"]["b"] for s in summaries] == [0.0, 0.5, 1.0]
    assert len({s["train_key"] for s in summaries}) == 3
    # the anatomy of the plugged-in loss at r = 0: d/dr (1 - a r - b)^2 = -2a(1 - b), d/dr (1 + a r + b)^2 = 2a(1 + b)
    facts = {m["label"]: m for m in json.loads((root / "losses.json").read_text())["methods"]}
    for v, b in zip(variants, (0.0, 0.5, 1.0)):
        assert facts[v]["family"] == "gsil" and facts[v]["sweep"] == {"params.b": b} and facts[v]["sweep_of"] == "e2e-sqhinge"
        assert facts[v]["at_zero"]["w_real"] == pytest.approx(2 * 0.5 * (1 - b))
        assert facts[v]["at_zero"]["w_gen"] == pytest.approx(2 * 0.5 * (1 + b))
        assert facts[v]["training"], v  # along training, from the logged rewards
    # the ablation figure, with one point per variant at its b, and the report's sections
    from gsil_bench.reports.ablation import sweep_lines, sweep_points
    from gsil_bench.reports.rundata import load_run
    from gsil_bench.reports.tables import build_comparison

    comp = build_comparison(load_run(root), baseline="sft", n_boot=200)
    lines = sweep_lines(comp)["params.b"]
    for col in ("heldout_gsm8k", "heldout_gsm8k/margin"):
        pts = sweep_points(comp, col, lines)["e2e-sqhinge"]
        assert [p[0] for p in pts] == [0.0, 0.5, 1.0]
        for (_, value, lo, hi), v in zip(pts, variants):
            cell = comp.cells[(v, 1, col)].interval
            assert (value, lo, hi) == pytest.approx((cell.value, cell.ci_low, cell.ci_high)) and lo <= value <= hi
    plots = root / "report" / "plots"
    svg = (plots / "sweep-params.b.svg").read_text()
    assert "e2e-sqhinge" in svg and "b (params.b)" in svg and (plots / "sweep-params.b.png").is_file()
    assert not (plots / "ablation.png").exists()  # no unswept GSIL member: no bar chart
    html = (root / "report" / "index.html").read_text()
    assert 'id="sweep-section"' in html and 'id="anatomy"' in html
    md = (root / "report" / "tables.md").read_text()
    assert all(f"| {v} " in md for v in variants)
