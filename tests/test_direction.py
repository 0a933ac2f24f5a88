"""Training moves the model the right way: losses equal their closed forms (at step 1, where
every log ratio is 0, and at step 2, where real and generated have different log ratios, so an
exchange of the two gives another number), the trained checkpoint prefers the real (chosen)
response over the generated (rejected) one on the training items, SFT's negative log-likelihood
falls, and each self-play iteration starts from, and is scored against, the previous one's weights.

Sequences and log-probs here are built independently of the project (tests/independent.py): the
text from the tokenizer's own apply_chat_template, one plain forward of each (prompt, response)
sequence, float64 log-softmax, the response tokens summed. The reward of a response is
r(y) = logp_policy(y) - logp_reference(y) (docs/methods.md).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import ALL_METHODS, make_cfg
from independent import chat_sequence, load, response_logp

from gsil_bench.core.io import read_json, read_jsonl
from gsil_bench.trainers.api import train_method
from gsil_bench.trainers.data import load_examples
from gsil_bench.trainers.loop import step_indices
from gsil_bench.trainers.losses import LOSSES

# step-1 loss when the policy equals the reference (every log ratio 0): GSIL with a = 0.5, b = 0
# has z = 0 on both sides; the pairwise losses see margin 0 (beta = 0.1).
STEP1 = {
    "dpo": math.log(2), "spin": math.log(2),  # -log sigmoid(0)
    "dpo-hinge": 1.0,  # max(0, 1 - 0)
    "dpo-ipo": 25.0,  # (0 - 1/(2 * 0.1))^2
    "gsil-logistic": 2 * math.log(2),  # -log sigmoid(0) - log sigmoid(-0)
    "gsil-brier": 0.5,  # (1/2 - 1)^2 + (1/2)^2
    "gsil-hinge": 2.0,  # max(0, 1 - 0) + max(0, 1 + 0)
    "gsil-kliep": 1.0,  # -0 + e^0
    "gsil-lsif": -0.5,  # -e^0 + (e^0)^2 / 2
}
PAIRWISE = sorted(STEP1)
# step 2 (real and generated reach the loss through the same loop code for every member): a sigmoid,
# a hinge and a square pairwise loss, a smooth and a piecewise-linear GSIL member
STEP2 = ["dpo", "dpo-hinge", "dpo-ipo", "gsil-logistic", "gsil-hinge"]
BETA, A, B = 0.1, 0.5, 0.0  # helpers.ALL_METHODS


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def closed_form(label: str, r_real: float, r_gen: float) -> float:
    """One example's loss from its two log ratios, written from docs/methods.md."""
    m, zr, zg = r_real - r_gen, A * r_real + B, A * r_gen + B
    return {
        "dpo": -math.log(_sig(BETA * m)), "spin": -math.log(_sig(BETA * m)),
        "dpo-hinge": max(0.0, 1 - BETA * m), "dpo-ipo": (m - 1 / (2 * BETA)) ** 2,
        "gsil-logistic": -math.log(_sig(zr)) - math.log(_sig(-zg)),
        "gsil-brier": (_sig(zr) - 1) ** 2 + _sig(zg) ** 2,
        "gsil-hinge": max(0.0, 1 - zr) + max(0.0, 1 + zg),
        "gsil-kliep": -zr + math.exp(zg), "gsil-lsif": -math.exp(zr) + math.exp(zg) ** 2 / 2,
    }[label]


def seq_logp(model, tokenizer, prompt, response, max_prompt_length=64, max_length=96) -> float:
    """Summed log-prob of the response tokens, in the training format of helpers.make_cfg."""
    ids, start = chat_sequence(tokenizer, prompt, response, max_prompt_length=max_prompt_length,
                               max_length=max_length)
    return response_logp(model, ids, start)


def _nll_per_token(model, tokenizer, examples) -> float:
    total, count = 0.0, 0
    for ex in examples:
        ids, start = chat_sequence(tokenizer, ex.prompt, ex.response, max_prompt_length=64, max_length=96)
        total -= response_logp(model, ids, start)
        count += len(ids) - start
    return total / count


def _margin(start, trained, tokenizer, pairs) -> float:
    """Mean over pairs of r(real) - r(generated), r = logp_trained - logp_start."""
    out = []
    for prompt, real, gen in pairs:
        r_real = seq_logp(trained, tokenizer, prompt, real) - seq_logp(start, tokenizer, prompt, real)
        r_gen = seq_logp(trained, tokenizer, prompt, gen) - seq_logp(start, tokenizer, prompt, gen)
        out.append(r_real - r_gen)
    return sum(out) / len(out)


_load = load


@pytest.fixture(scope="module")
def start_model(tiny_model_dir):
    return _load(tiny_model_dir)


@pytest.fixture(scope="module")
def one_step_run(tiny_model_dir, tmp_path_factory):
    """The pairwise methods of `all_methods_run` stopped after one optimizer step: {label: checkpoint},
    the policy that `all_methods_run`'s step 2 starts from (same seed, data order, constant rate)."""
    cfg = make_cfg(tiny_model_dir, [m for m in ALL_METHODS if m["loss"] in STEP2], train={"max_steps": 1})
    run = tmp_path_factory.mktemp("one-step") / "run"
    return {m.label: train_method(cfg, m.label, 0, run)[0].checkpoint for m in cfg.methods}


@pytest.mark.parametrize("label", PAIRWISE)
def test_step1_loss_is_its_closed_form_at_zero_log_ratios(all_methods_run, label):
    """Symmetric: real and generated both have r = 0 here, so this cannot see them exchanged (step 2 can)."""
    _, _, results = all_methods_run
    first = read_jsonl(results[label][0].folder / "metrics.jsonl")[0]
    assert first["loss"] == pytest.approx(STEP1[label], rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("label", STEP2)
def test_step2_loss_is_its_closed_form_at_asymmetric_log_ratios(all_methods_run, one_step_run, start_model,
                                                                 tokenizer, label):
    """Step 2's logged loss equals the closed form at log ratios computed independently (policy: the
    weights after step 1; reference: the starting model) on step 2's examples, where r(real) != r(gen):
    with real and generated exchanged the closed form reads another number, asserted far off."""
    cfg, _, results = all_methods_run
    res = results[label][0]
    logged = read_jsonl(res.folder / "metrics.jsonl")[1]
    assert logged["step"] == 2
    gens = {g["index"]: g for g in read_jsonl(res.folder / "generations.jsonl")}
    policy = load(one_step_run[label])
    t = cfg.shared.train
    ratios = []
    for i in step_indices(len(gens), t.batch_size, 0, 1, 1, math.ceil(len(gens) / t.batch_size)):
        g = gens[i]
        ratios.append(tuple(seq_logp(policy, tokenizer, g["prompt"], y) - seq_logp(start_model, tokenizer, g["prompt"], y)
                            for y in (g["real"], g["response"])))
    want = sum(closed_form(label, rr, rg) for rr, rg in ratios) / len(ratios)
    swapped = sum(closed_form(label, rg, rr) for rr, rg in ratios) / len(ratios)
    tol = 2e-3 * max(1.0, abs(want))
    assert abs(want - swapped) > 10 * tol, f"not an asymmetric case: log ratios {ratios}"
    assert logged["loss"] == pytest.approx(want, abs=tol), (
        f"{label} step-2 loss {logged['loss']:.6f} is not its closed form {want:.6f} at log ratios (real, generated) "
        f"{ratios}" + (" but the one with real and generated exchanged" if abs(logged["loss"] - swapped) <= tol else ""))


def test_sft_step1_loss_is_the_starting_models_nll(all_methods_run, start_model, tokenizer, data_dir):
    """SFT's first logged loss is the token-mean NLL, under the starting model, of the
    examples of step 1; after training the NLL of all training examples is lower."""
    cfg, _, results = all_methods_run
    examples = load_examples(cfg.shared.train_data, data_dir)
    first = read_jsonl(results["sft"][0].folder / "metrics.jsonl")[0]
    batch = [examples[i] for i in step_indices(len(examples), 2, 0, 1, 0, 2)]
    want = _nll_per_token(start_model, tokenizer, batch)
    assert first["loss"] == pytest.approx(want, rel=1e-4), (
        f"SFT's step-1 loss {first['loss']:.6f} is not the starting model's token-mean NLL {want:.6f} of step 1's "
        "demonstrations in the chat template, EOS included: the trainer trains on another text")
    trained = _load(results["sft"][0].checkpoint)
    before, after = _nll_per_token(start_model, tokenizer, examples), _nll_per_token(trained, tokenizer, examples)
    assert after < before - 0.01, f"SFT did not lower the demonstrations' NLL: {before:.4f} before, {after:.4f} after"


@pytest.mark.parametrize("label", PAIRWISE)
def test_training_raises_real_over_generated(all_methods_run, start_model, tokenizer, label):
    """On the training items, the trained checkpoint's mean r(real) - r(generated) is positive
    (r against the starting model, the reference of iteration 1)."""
    _, _, results = all_methods_run
    res = results[label][0]
    gens = read_jsonl(res.folder / "generations.jsonl")
    assert LOSSES.needs_pairs(label) and len(gens) == 4
    margin = _margin(start_model, _load(res.checkpoint), tokenizer, [(g["prompt"], g["real"], g["response"]) for g in gens])
    assert margin > 0.05, margin


def _same_weights(state: dict[str, torch.Tensor], folder) -> bool:
    """`state` holds exactly the weights saved in `folder` (every saved tensor equal)."""
    from safetensors.torch import load_file

    saved = load_file(str(folder / "model.safetensors"))
    return all(k in state and torch.equal(state[k], v) for k, v in saved.items())


def test_iteration2_starts_at_iteration1_weights(two_gsil_iterations, tiny_model_dir):
    """The policy iteration 2 trains is iteration 1's saved checkpoint, not the starting model
    (and iteration 1's is the starting model)."""
    (first, _), starts = two_gsil_iterations
    assert _same_weights(starts[1], tiny_model_dir), "iteration 1 did not start from the starting model"
    assert not _same_weights(starts[2], tiny_model_dir), \
        "iteration 2 started from the base model, not iteration 1's checkpoint"
    assert _same_weights(starts[2], first.checkpoint), \
        "iteration 2 did not start from iteration 1's saved checkpoint"


def test_reference_of_iteration_k_is_iteration_k_minus_1(two_gsil_iterations, tiny_model_dir, start_model, tokenizer):
    """The reference log-probs iteration k trains against (ref_logps.pt, real and generated) are
    those of iteration k-1's weights, computed independently: the starting model for k = 1,
    iteration 1's checkpoint (and not the starting model) for k = 2."""
    (first, second), _ = two_gsil_iterations
    for res, ref_model, name in ((first, start_model, "the starting model"),
                                 (second, load(first.checkpoint), "iteration 1's checkpoint")):
        saved = torch.load(res.folder / "ref_logps.pt", weights_only=True)
        gens = sorted(read_jsonl(res.folder / "generations.jsonl"), key=lambda g: g["index"])
        for side, key in (("real", "real"), ("gen", "response")):
            want = [seq_logp(ref_model, tokenizer, g["prompt"], g[key]) for g in gens]
            base = [seq_logp(start_model, tokenizer, g["prompt"], g[key]) for g in gens]
            got = saved[side].tolist()
            if res is second and got == pytest.approx(base, abs=1e-3):
                pytest.fail(f"iteration 2's reference ({side}) is the starting model, not iteration 1's weights")
            assert got == pytest.approx(want, abs=1e-3), \
                f"iteration {res.iteration}'s reference log-probs ({side}) {got} are not those of {name} {want}"


def test_policy_equals_reference_at_each_iteration_start_and_differs_after_one_step(two_gsil_iterations):
    """Every iteration's first step sees log ratios 0 (policy = reference, up to rounding: the
    rewards are mean log ratios); after one optimizer step they are not 0 (the reference is frozen)."""
    results, _ = two_gsil_iterations
    for res in results:
        steps = read_jsonl(res.folder / "metrics.jsonl")
        assert len(steps) >= 2
        first = (steps[0]["rewards/real"], steps[0]["rewards/generated"])
        assert max(map(abs, first)) < 1e-4, \
            f"iteration {res.iteration} step 1: log ratios {first}, not 0: the policy does not start at the reference"
        second = (steps[1]["rewards/real"], steps[1]["rewards/generated"])
        assert max(map(abs, second)) > 1e-2, (
            f"iteration {res.iteration} step 2: log ratios {second} still 0 after an optimizer step: "
            "the reference moves with the policy (no frozen reference)")


def test_iteration2_raises_real_over_generated(two_gsil_iterations, tokenizer):
    """Iteration 2 raises r(real) - r(generated) relative to its reference, iteration 1's checkpoint."""
    (first, second), _ = two_gsil_iterations
    gens = read_jsonl(second.folder / "generations.jsonl")
    pairs = [(g["prompt"], g["real"], g["response"]) for g in gens]
    assert _margin(load(first.checkpoint), load(second.checkpoint), tokenizer, pairs) > 0.05


def test_dpo_on_preference_data_raises_chosen_over_rejected(tiny_model_dir, tmp_path, start_model, tokenizer):
    """DPO on (chosen, rejected) pairs: the trained model's r(chosen) - r(rejected) is positive,
    i.e. the roles reach the loss the right way round."""
    rows = [{"prompt": f"What is {i}+{i}?", "chosen": f"It is {2 * i}.", "rejected": f"Maybe {i} or so."}
            for i in range(4)]
    pref = tmp_path / "pref.jsonl"
    pref.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = make_cfg(tiny_model_dir, [{"loss": "dpo"}], preference_data={"path": str(pref), "format": "preference"})
    (res,) = train_method(cfg, "dpo", 0, tmp_path / "run")
    assert read_json(res.folder / "summary.json")["generated_tokens"] == 0
    first = read_jsonl(res.folder / "metrics.jsonl")[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-4)
    pairs = [([{"role": "user", "content": r["prompt"]}], r["chosen"], r["rejected"]) for r in rows]
    assert _margin(start_model, _load(res.checkpoint), tokenizer, pairs) > 0.05
