"""A plugged-in loss swept end to end on the tiny model: a plugin file beside the config registers a
GSIL-family loss, the command line sweeps its shift b, and `gsil-bench run` trains every variant,
generates the starting model's responses once for all of them, evaluates the starting model once,
and draws the parameter-ablation figure with one point per variant; the loss anatomy covers the
plugged-in loss by autograd."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from gsil_bench.core.io import read_json, read_jsonl
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
    # each variant trained with its own b: the loss the loop called at step 1, where the policy is the
    # reference (r = 0), is its closed form relu(1 - b)^2 + relu(1 + b)^2 = 2, 2.5, 4 (one b for all of
    # them reads one number three times), and the three trained checkpoints differ pairwise
    step1 = [read_jsonl(root / v / "seed-0" / "iter-1" / "metrics.jsonl")[0]["loss"] for v in variants]
    want = [max(0.0, 1 - b) ** 2 + max(0.0, 1 + b) ** 2 for b in (0.0, 0.5, 1.0)]
    assert step1 == pytest.approx(want, abs=1e-3), (
        f"the sweep's variants b = 0, 0.5, 1 logged step-1 losses {step1}, not their closed forms {want} at r = 0: "
        "the variants did not each train with their own b (the loss bound to another variant's parameters)")
    weights = {v: load_file(str(root / v / "seed-0" / "iter-1" / "checkpoint" / "model.safetensors")) for v in variants}
    same = [(v, w) for i, v in enumerate(variants) for w in variants[i + 1:]
            if all(torch.equal(weights[v][k], weights[w][k]) for k in weights[v])]
    assert not same, f"sweep variants trained to identical weights: {same} (their swept b never reached the loss)"
    summaries = [read_json(root / v / "seed-0" / "iter-1" / "summary.json") for v in variants]
    assert [s["params"]["b"] for s in summaries] == [0.0, 0.5, 1.0]  # the record agrees with what trained
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


def test_a_swept_generation_setting_gets_its_own_shared_inputs(tmp_path, tiny_model_dir, data_dir, monkeypatch):
    """A method sweeping a generation setting (max_new_tokens 4 and 8) beside DPO at 4: the starting model
    generates once per setting, not once for all (the variant at 8 trains on its own, longer generations),
    and two methods train on one shared/ folder exactly when core.sweeps.inputs_group (what the dry run
    prints) puts them in one group."""
    from helpers import make_cfg

    from gsil_bench.core.sweeps import inputs_group
    from gsil_bench.trainers.api import train_method

    methods = [{"loss": "dpo"}, {"loss": "gsil-logistic", "params": {"a": 0.5, "b": 0.0},
                                 "overrides": {"generation.max_new_tokens": [4, 8]}}]
    cfg = make_cfg(tiny_model_dir, methods, generation={"max_new_tokens": 4}, train={"max_steps": 1},
                   train_data={"limit": 2})
    labels = [m.label for m in cfg.methods]
    assert labels == ["dpo", "gsil-logistic[max_new_tokens=4]", "gsil-logistic[max_new_tokens=8]"]
    passes: list[int] = []
    real_generate = trainer_inputs._generate

    def counting_generate(ctx, *args, **kwargs):  # the real generation, with the setting it ran at
        passes.append(ctx.cfg.shared.generation.max_new_tokens)
        return real_generate(ctx, *args, **kwargs)

    monkeypatch.setattr(trainer_inputs, "_generate", counting_generate)
    run = tmp_path / "run"
    for label in labels:
        train_method(cfg, label, 0, run)
    responses = {label: [g["response"] for g in read_jsonl(run / label / "seed-0" / "iter-1" / "generations.jsonl")]
                 for label in labels}
    dpo, short, long = labels
    assert responses[long] != responses[short], (
        "the variant at max_new_tokens 8 trained on the generations made at 4: the shared-inputs key "
        "(trainers.inputs.inputs_key) ignores the generation settings")
    assert all(b.startswith(a) for a, b in zip(responses[short], responses[long]))  # greedy: 8 tokens extend 4
    assert any(len(b) > len(a) for a, b in zip(responses[short], responses[long]))
    assert sorted(passes) == [4, 8], f"generation passes at max_new_tokens {passes}: one per setting expected"
    folders = sorted(d.name for d in (run / "shared").iterdir() if d.is_dir())
    assert len(folders) == 2, folders
    # sharing as the dry run says: equal groups <=> the same generations and reference log-probs
    groups = {label: inputs_group(cfg, label) for label in labels}
    assert groups[dpo] == groups[short] != groups[long]
    files = {label: [(run / label / "seed-0" / "iter-1" / f).read_bytes() for f in ("generations.jsonl", "ref_logps.pt")]
             for label in labels}
    for a in labels:
        for b in labels:
            assert (files[a] == files[b]) == (groups[a] == groups[b]), (
                f"{a} and {b}: inputs_group {'equal' if groups[a] == groups[b] else 'different'}, but their "
                f"iteration-1 inputs are {'the same' if files[a] == files[b] else 'different'}")
