"""SPIN's recipe on a tiny run: the raw self-play prompt, the official training text, history (iteration k
trains on k-1's and k's pairs), per-iteration lr / epochs / beta, warm-up steps, and a per-method override.

Official values (uclaml/SPIN a12ba808a51c23bb98c7cc892d261e9c2f71ff8e): configs/config_iter1.yaml:7-10 mixes
SPIN_iter0 and SPIN_iter1 (the previous and the current iteration's pairs); scripts/finetune_iter3.sh:21
passes --learning_rate=1.0e-7 --beta=5.0 for the last iteration. GSIL scripts/finetune.sh:53
(tengxiao1/GSIL bf269e0c9dd7642a55fcb4e21cc831ef9ca76406) passes --warmup_steps 30, which wins over
--warmup_ratio in transformers 4.39.1.
"""

from __future__ import annotations

import pytest
import torch

from gsil_bench.core.io import read_json, read_jsonl
from gsil_bench.core.loading import experiment_from_dict
from gsil_bench.core.strict import ConfigError
from gsil_bench.harness.validate import validate
from gsil_bench.trainers.api import train_method
from gsil_bench.trainers.checks import check_method
from gsil_bench.trainers.loop import warmup_steps
from gsil_bench.trainers.losses import LossInputs
from gsil_bench.trainers.official import SPIN_PROMPT_TEMPLATE, encode_official, truncate_pair
from gsil_bench.trainers.reference import load_causal_lm, load_ref, sequences_logps


def spin_cfg(model, **extra):
    shared = {
        "model": str(model),
        "train_data": {"path": "gsm8k/train.jsonl", "format": "gsm8k", "limit": 4, "encoding": "spin"},
        "optimizer": {"name": "adamw", "lr": 1e-3},
        "schedule": {"name": "constant", "warmup_ratio": 0.5, "warmup_steps": 1},
        "train": {"batch_size": 2, "max_length": 96, "max_prompt_length": 64, "logprob_chunk": 32},
        "generation": {"max_new_tokens": 6, "batch_size": 4, "prompt_template": SPIN_PROMPT_TEMPLATE,
                       "temperature": 1.0},  # sampled (seeded per iteration), so iterations' generations differ
        "iterations": 3,
        "self_play": {"history": 2, "schedule": [{"iteration": 2, "epochs": 2}, {"iteration": 3, "lr": 1e-4}]},
        **extra,
    }
    methods = [{"loss": "spin", "params": {"beta": 0.1}, "per_iteration": [{"iteration": 3, "params": {"beta": 5.0}}]},
               {"loss": "sft", "overrides": {"optimizer.lr": 2e-3, "schedule.warmup_steps": 0}}]
    return experiment_from_dict({"name": "spin", "methods": methods, "shared": shared})


@pytest.fixture(scope="module")
def spin_run(tiny_model_dir, data_dir, tmp_path_factory):
    """SPIN's three iterations; every call the loop made to its loss, observed by wrapping Loss.__call__ (the
    loss object itself, the log ratios it received and the loss it returned), tagged with the iteration
    (trainers.loop.forward_loss wrapped): (cfg, run folder, results, [(iteration, loss, r_real, r_gen, value)])."""
    import gsil_bench.trainers.loop as loop
    from gsil_bench.trainers.losses import Loss

    run = tmp_path_factory.mktemp("spin") / "run"
    cfg = spin_cfg(tiny_model_dir)
    calls: list[tuple] = []
    real_call, real_forward = Loss.__call__, loop.forward_loss

    def called(self, inputs):
        out = real_call(self, inputs)
        calls.append((None, self, inputs.r_real.detach().clone(), inputs.r_gen.detach().clone(), float(out.loss.detach())))
        return out

    def forward(run, *args, **kwargs):
        n = len(calls)
        out = real_forward(run, *args, **kwargs)
        calls[n:] = [(run.iteration, *c[1:]) for c in calls[n:]]
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Loss, "__call__", called)
        mp.setattr(loop, "forward_loss", forward)
        results = train_method(cfg, "spin", 0, run)
    return cfg, run, results, calls


def spin_closed_form(beta: float, r_real: torch.Tensor, r_gen: torch.Tensor) -> float:
    """SPIN's loss (DPO's form, docs/methods.md): the batch mean of -log sigmoid(beta * (r_real - r_gen))."""
    return float(-torch.nn.functional.logsigmoid(beta * (r_real.double() - r_gen.double())).mean())


def test_per_iteration_beta_reaches_the_loss_the_loop_called(spin_run):
    """Every iteration's loop called a loss with that iteration's beta (0.1, 0.1, then 5.0 from the method's
    per_iteration): the loss object each call went to, evaluated at r_real - r_gen = 1, is -log sigmoid(beta);
    and every call where the log ratios are not 0 returned the closed form at that beta on the log ratios it
    received (a loss kept from iteration 1 reads beta 0.1 at iteration 3: 0.644 instead of 0.0067)."""
    _, _, _, calls = spin_run
    probe = LossInputs(torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]))
    wanted = {1: 0.1, 2: 0.1, 3: 5.0}
    assert sorted({c[0] for c in calls}) == [1, 2, 3], "the loop did not call the loss at every iteration"
    for k, beta in wanted.items():
        seen = {round(float(loss(probe).loss), 6) for it, loss, *_ in calls if it == k}
        want = round(spin_closed_form(beta, torch.tensor([1.0]), torch.tensor([0.0])), 6)
        assert seen == {want}, (
            f"iteration {k} called a loss that reads {sorted(seen)} at margin 1, not -log sigmoid({beta}) = {want}: "
            f"the per-iteration params (beta {beta} at iteration {k}) never reached the loss the loop called")
    moved = [(it, r_real, r_gen, value) for it, _, r_real, r_gen, value in calls
             if float((r_real - r_gen).abs().max()) > 1e-3]
    assert {it for it, *_ in moved} >= {2, 3}, "no step with nonzero log ratios at iterations 2 and 3: nothing to check"
    for it, r_real, r_gen, value in moved:
        want, other = spin_closed_form(wanted[it], r_real, r_gen), spin_closed_form(0.1 if it == 3 else 5.0, r_real, r_gen)
        assert abs(want - other) > 1e-5, f"beta does not change the loss at log ratios {r_real}, {r_gen}"
        assert value == pytest.approx(want, abs=1e-6), (
            f"iteration {it}: the loop's loss {value} is not -log sigmoid(beta * margin) at beta {wanted[it]} ({want})")


def test_spin_history_and_per_iteration_schedule(spin_run, tokenizer, data_dir):
    cfg, run, results, _ = spin_run
    summaries = [read_json(r.folder / "summary.json") for r in results]
    lrs = [[m["lr"] for m in read_jsonl(r.folder / "metrics.jsonl")] for r in results]
    # iteration 1: its own 4 pairs, 2 steps; 1 warm-up step (warmup_steps wins over warmup_ratio 0.5)
    assert summaries[0]["pairs"] == 4 and lrs[0] == [0.0, 1e-3]
    # iteration 2: its pairs + iteration 1's (8), 2 epochs -> 8 steps
    assert summaries[1]["pairs"] == 8 and summaries[1]["epochs"] == 2 and lrs[1] == [0.0] + [1e-3] * 7
    # iteration 3: iterations 2 and 3 (8 pairs), 1 epoch, lr 1e-4, beta 5.0
    assert summaries[2]["pairs"] == 8 and lrs[2] == pytest.approx([0.0] + [1e-4] * 3)
    assert [s["params"]["beta"] for s in summaries] == [0.1, 0.1, 5.0]  # the record (the effect: the test above)
    assert [s["lr"] for s in summaries] == [1e-3, 1e-3, 1e-4]
    # the self-play prompt is the raw official text around the question
    gens1 = read_jsonl(results[0].folder / "generations.jsonl")
    rows = read_jsonl(data_dir / "gsm8k" / "train.jsonl")[:4]
    assert [g["prompt_text"] for g in gens1] == ["### Instruction: " + r["question"] + "\n\n### Response: " for r in rows]
    # iteration 2's history pairs are iteration 1's generations, scored by iteration 2's reference (iter-1 checkpoint)
    ref = load_ref(results[1].folder / "ref_logps.pt")
    assert ref.gen is not None and ref.gen.shape == (8,)
    t = cfg.shared.train
    seqs = []
    for g in gens1:
        real, gen = truncate_pair(encode_official(tokenizer, g["prompt"], g["real"]),
                                  encode_official(tokenizer, g["prompt"], g["response"]),
                                  max_prompt_length=t.max_prompt_length, max_length=t.max_length)
        seqs.append(gen)
    model = load_causal_lm(str(results[0].checkpoint), revision=None, device="cpu").eval()
    want = sequences_logps(model, seqs, batch_size=2, chunk=32, pad_id=tokenizer.pad_token_id)
    assert torch.allclose(ref.gen[4:], want.float(), atol=1e-4)
    assert torch.equal(ref.real[:4], ref.real[4:])  # the same demonstrations, scored by the same reference
    gens2 = read_jsonl(results[1].folder / "generations.jsonl")
    assert [g["response"] for g in gens2] != [g["response"] for g in gens1]
    assert not torch.allclose(ref.gen[:4], ref.gen[4:])  # iteration 2's own generations come first


def test_method_override_changes_only_that_method(spin_run, tiny_model_dir):
    cfg, run, _, _ = spin_run
    (res,) = train_method(cfg, "sft", 0, run)
    summary = read_json(res.folder / "summary.json")
    assert summary["overrides"] == {"optimizer.lr": 2e-3, "schedule.warmup_steps": 0}
    assert summary["shared_hash"] == read_json(run / "spin" / "seed-0" / "iter-1" / "summary.json")["shared_hash"]
    # no warm-up steps -> warmup_ratio 0.5 of 2 steps = 1; then the overridden lr
    assert [m["lr"] for m in read_jsonl(res.folder / "metrics.jsonl")] == [0.0, 2e-3]


def test_warmup_steps_rule():
    from gsil_bench.core.config import ScheduleConfig

    assert warmup_steps(ScheduleConfig(warmup_ratio=0.1, warmup_steps=30), 1000) == 30
    assert warmup_steps(ScheduleConfig(warmup_ratio=0.1, warmup_steps=0), 1000) == 100  # 0 = use the ratio
    assert warmup_steps(ScheduleConfig(warmup_ratio=0.1), 15) == 2  # ceil


@pytest.mark.parametrize("change,message", [
    ({"schedule": {"warmup_steps": -1}}, "shared.schedule.warmup_steps: must be >= 0"),
    ({"generation": {"prompt_template": "### Instruction:"}}, "shared.generation.prompt_template: must contain {prompt}"),
    ({"self_play": {"history": 0}}, "shared.self_play.history: must be >= 1"),
    ({"self_play": {"schedule": [{"iteration": 0, "lr": 1e-7}]}}, "shared.self_play.schedule[0].iteration: must be >= 1"),
    ({"self_play": {"schedule": [{"iteration": 2, "lr": -1.0}]}}, "shared.self_play.schedule[0].lr: must be > 0"),
])
def test_bad_settings_name_the_key(change, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")
                       .replace("{", r"\{").replace("}", r"\}")):
        validate(spin_cfg("m", **change), scope=("train",))  # the validation pass every command runs


@pytest.mark.parametrize("overrides,message", [
    ({"model": "x"}, r"methods\[1\].overrides.model: only keys below optimizer"),
    ({"optimizer.nme": "adamw"}, r"methods\[1\].overrides.optimizer.nme: no shared key"),
    ({"optimizer.lr": "fast"}, r"methods\[1\].overrides -> shared.optimizer.lr: expected a number"),
])
def test_bad_overrides_name_the_key(overrides, message):
    methods = [{"loss": "spin"}, {"loss": "sft", "overrides": overrides}]
    with pytest.raises(ConfigError, match=message):
        validate(experiment_from_dict({"name": "x", "methods": methods, "shared": {"model": "m"}}), scope=("train",))


def test_per_iteration_params_are_checked():
    methods = [{"loss": "spin", "per_iteration": [{"iteration": 2, "params": {"betta": 5.0}}]}]
    cfg = experiment_from_dict({"name": "x", "methods": methods, "shared": {"model": "m"}})
    assert check_method(cfg, 0, cfg.methods[0])[0].key == "methods[0].per_iteration[0].params"  # the validation pass


def test_packing_refuses_the_official_encoding():
    from gsil_bench.trainers.checks import check_training

    cfg = spin_cfg("m", train={"batch_size": 2, "max_length": 96, "max_prompt_length": 64, "packing": True})
    found = [p.render() for p in check_training(cfg)]
    assert any(line.startswith("shared.train.packing: cannot be combined with encoding 'spin'") for line in found), found
