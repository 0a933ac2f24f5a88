"""Training moves the model the right way: step-1 losses equal their closed forms, the trained
checkpoint prefers the real (chosen) response over the generated (rejected) one on the training
items, SFT's negative log-likelihood falls, and iteration 2 starts at iteration 1's weights.

Log-probs here are computed independently of trainers.logprobs: one plain forward of each
(prompt, response) sequence, float64 log-softmax, the response tokens summed. The reward of a
response is r(y) = logp_checkpoint(y) - logp_start(y) (docs/methods.md). If real and generated were
exchanged anywhere between the data and the loss, the margins below turn negative.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import make_cfg

from gsil_bench.core.io import read_json, read_jsonl
from gsil_bench.trainers.api import train_method
from gsil_bench.trainers.data import encode, load_examples
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


def _load(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()


@torch.no_grad()
def seq_logp(model, tokenizer, prompt, response, max_prompt_length=64, max_length=96) -> float:
    """Summed log-prob of the response tokens: one forward, float64 log-softmax."""
    seq = encode(tokenizer, prompt, response, max_prompt_length=max_prompt_length, max_length=max_length)
    ids = torch.tensor([seq.input_ids])
    logp = model(input_ids=ids).logits[0].double().log_softmax(-1)
    targets = ids[0, seq.response_start:]
    return float(logp[seq.response_start - 1 : -1].gather(1, targets[:, None]).sum())


def _nll_per_token(model, tokenizer, examples) -> float:
    total, count = 0.0, 0
    for ex in examples:
        seq = encode(tokenizer, ex.prompt, ex.response, max_prompt_length=64, max_length=96)
        total -= seq_logp(model, tokenizer, ex.prompt, ex.response)
        count += seq.n_response
    return total / count


def _margin(start, trained, tokenizer, pairs) -> float:
    """Mean over pairs of r(real) - r(generated), r = logp_trained - logp_start."""
    out = []
    for prompt, real, gen in pairs:
        r_real = seq_logp(trained, tokenizer, prompt, real) - seq_logp(start, tokenizer, prompt, real)
        r_gen = seq_logp(trained, tokenizer, prompt, gen) - seq_logp(start, tokenizer, prompt, gen)
        out.append(r_real - r_gen)
    return sum(out) / len(out)


@pytest.fixture(scope="module")
def start_model(tiny_model_dir):
    return _load(tiny_model_dir)


@pytest.mark.parametrize("label", PAIRWISE)
def test_step1_loss_is_its_closed_form(all_methods_run, label):
    _, _, results = all_methods_run
    first = read_jsonl(results[label][0].folder / "metrics.jsonl")[0]
    assert first["loss"] == pytest.approx(STEP1[label], rel=1e-4, abs=1e-4)


def test_sft_step1_loss_is_the_starting_models_nll(all_methods_run, start_model, tokenizer, data_dir):
    """SFT's first logged loss is the token-mean NLL, under the starting model, of the
    examples of step 1; after training the NLL of all training examples is lower."""
    cfg, _, results = all_methods_run
    examples = load_examples(cfg.shared.train_data, data_dir)
    first = read_jsonl(results["sft"][0].folder / "metrics.jsonl")[0]
    batch = [examples[i] for i in step_indices(len(examples), 2, 0, 1, 0, 2)]
    assert first["loss"] == pytest.approx(_nll_per_token(start_model, tokenizer, batch), rel=1e-4)
    trained = _load(results["sft"][0].checkpoint)
    before, after = _nll_per_token(start_model, tokenizer, examples), _nll_per_token(trained, tokenizer, examples)
    assert after < before - 0.01, (before, after)


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


def test_iteration2_starts_at_iteration1_weights(tiny_model_dir, data_dir, tmp_path, start_model, tokenizer):
    """GSIL iteration 2: its step-1 rewards are about 0 (its policy and its reference are both
    iteration 1's checkpoint, not the starting model), and it again raises real over generated
    relative to iteration 1's checkpoint."""
    cfg = make_cfg(tiny_model_dir, [{"loss": "gsil-logistic", "params": {"a": 0.5, "b": 0.0}}], iterations=2)
    first, second = train_method(cfg, "gsil-logistic", 0, tmp_path)
    m1 = read_jsonl(second.folder / "metrics.jsonl")[0]
    assert abs(m1["rewards/real"]) < 1e-3 and abs(m1["rewards/generated"]) < 1e-3
    assert m1["loss"] == pytest.approx(2 * math.log(2), abs=1e-3)
    iter1 = _load(first.checkpoint)
    gens = read_jsonl(second.folder / "generations.jsonl")
    pairs = [(g["prompt"], g["real"], g["response"]) for g in gens]
    # iteration 1 moved the model: starting from the original weights would show nonzero rewards
    moved = [seq_logp(iter1, tokenizer, p, r) - seq_logp(start_model, tokenizer, p, r) for p, r, _ in pairs]
    assert max(abs(v) for v in moved) > 0.05
    assert _margin(iter1, _load(second.checkpoint), tokenizer, pairs) > 0.05


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
