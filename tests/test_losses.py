"""The loss family against closed forms, properties, extreme inputs and TRL's DPO.

Notation as in docs/methods.md: r = logp_policy - logp_ref per sequence,
m = r_real - r_gen, GSIL logit z = a * r + b.
"""

from __future__ import annotations

import math

import pytest
import torch
import trl

from gsil_bench.trainers.losses import (
    LOSSES,
    LossInputs,
    LossOutput,
    compute_loss,
    gsil_output,
    register_loss,
    safe_exp,
)

T = torch.tensor

# One hand-picked point used throughout:
#   policy_real = -10, ref_real = -12  ->  r_real = 2
#   policy_gen  =  -8, ref_gen  =  -7  ->  r_gen  = -1        margin m = 3
POINT = LossInputs(T([-10.0]), T([-12.0]), T([-8.0]), T([-7.0]), T([4.0]))

# Closed forms at POINT, derived by hand (log/exp values to 7 decimals):
CLOSED = {
    # -log sigmoid(beta m) = log(1 + e^{-0.3}) = log(1.7408182) = 0.5543552
    ("dpo", (("beta", 0.1),)): 0.5543552,
    # SPIN's loss is DPO's on the same tensors
    ("spin", (("beta", 0.1),)): 0.5543552,
    # max(0, 1 - beta m) = 1 - 0.3
    ("dpo-hinge", (("beta", 0.1),)): 0.7,
    # (m - 1/(2 beta))^2 = (3 - 5)^2
    ("dpo-ipo", (("beta", 0.1),)): 4.0,
    # a = 0.5, b = 1: z_real = 0.5*2 + 1 = 2, z_gen = 0.5*(-1) + 1 = 0.5
    # logistic: log(1 + e^{-2}) + log(1 + e^{0.5}) = 0.1269280 + 0.9740770
    ("gsil-logistic", (("a", 0.5), ("b", 1.0))): 1.1010050,
    # Brier: (sigmoid(2) - 1)^2 + sigmoid(0.5)^2 = 0.1192029^2 + 0.6224593^2 = 0.0142093 + 0.3874556
    ("gsil-brier", (("a", 0.5), ("b", 1.0))): 0.4016649,
    # hinge: max(0, 1 - 2) + max(0, 1 + 0.5)
    ("gsil-hinge", (("a", 0.5), ("b", 1.0))): 1.5,
    # KLIEP: -2 + e^{0.5} = -2 + 1.6487213
    ("gsil-kliep", (("a", 0.5), ("b", 1.0))): -0.3512787,
    # LSIF: -e^2 + (e^{0.5})^2 / 2 = -7.3890561 + 1.3591409
    ("gsil-lsif", (("a", 0.5), ("b", 1.0))): -6.0299152,
}


@pytest.mark.parametrize(("name", "params"), list(CLOSED))
def test_closed_form(name, params):
    out = compute_loss(name, POINT, dict(params))
    assert out.loss.item() == pytest.approx(CLOSED[(name, params)], abs=2e-6)


def test_sft_is_token_mean_nll():
    # two sequences: summed log-probs -10 (4 tokens) and -6 (2 tokens): (10 + 6) / (4 + 2)
    out = compute_loss("sft", LossInputs(T([-10.0, -6.0]), real_tokens=T([4.0, 2.0])))
    assert out.loss.item() == pytest.approx(16 / 6)


def test_dpo_label_smoothing_closed_form():
    # eps = 0.2: 0.8 * log(1 + e^{-0.3}) + 0.2 * log(1 + e^{0.3}) = 0.8*0.5543552 + 0.2*0.8543552
    out = compute_loss("dpo", POINT, {"beta": 0.1, "label_smoothing": 0.2})
    assert out.loss.item() == pytest.approx(0.8 * 0.5543552 + 0.2 * 0.8543552, abs=2e-6)


def _random_inputs(n=6, seed=0, scale=20.0):
    g = torch.Generator().manual_seed(seed)
    vals = [-(torch.rand(n, generator=g) * scale) for _ in range(4)]
    return LossInputs(*vals, real_tokens=torch.randint(1, 9, (n,), generator=g).float())


@pytest.mark.parametrize("name", [n for n in LOSSES.names() if LOSSES.needs_pairs(n)])
def test_batch_loss_is_mean_of_examples(name):
    x = _random_inputs()
    whole = compute_loss(name, x).loss
    singles = [compute_loss(name, LossInputs(x.policy_real[i:i + 1], x.ref_real[i:i + 1], x.policy_gen[i:i + 1],
                                             x.ref_gen[i:i + 1])).loss for i in range(6)]
    assert whole.item() == pytest.approx(torch.stack(singles).mean().item(), rel=1e-6)


def test_dpo_at_zero_margin_is_log2_and_spin_equals_dpo():
    zero = LossInputs(T([-5.0, -3.0]), T([-5.0, -4.0]), T([-2.0, -7.0]), T([-2.0, -8.0]))  # r_real = r_gen
    assert compute_loss("dpo", zero, {"beta": 0.3}).loss.item() == pytest.approx(math.log(2))
    x = _random_inputs(seed=3)
    for beta in (0.01, 0.1, 1.0):
        assert torch.equal(compute_loss("spin", x, {"beta": beta}).loss, compute_loss("dpo", x, {"beta": beta}).loss)


def _grads(name, x, params):
    leaves = [t.clone().requires_grad_(True) for t in (x.policy_real, x.policy_gen)]
    out = compute_loss(name, LossInputs(leaves[0], x.ref_real, leaves[1], x.ref_gen, x.real_tokens), params)
    out.loss.backward()
    return out, leaves[0].grad, leaves[1].grad


# points where every term is active: z = 0 (a = 0.5, b = 0) and margin 0
SIGN_PARAMS = {n: ({"a": 0.5, "b": 0.0} if n.startswith("gsil") else {"beta": 0.1})
               for n in LOSSES.names() if LOSSES.needs_pairs(n)}


@pytest.mark.parametrize("name", sorted(SIGN_PARAMS))
def test_gradient_signs(name):
    """The real side's policy log-prob is pushed up (negative gradient of the loss), the generated side's down."""
    x = LossInputs(T([-4.0, -9.0]), T([-4.0, -9.0]), T([-6.0, -2.0]), T([-6.0, -2.0]), T([3.0, 5.0]))
    _, g_real, g_gen = _grads(name, x, SIGN_PARAMS[name])
    assert (g_real < 0).all() and (g_gen > 0).all(), (g_real, g_gen)


def test_sft_gradient_pushes_real_up():
    p = T([-4.0, -9.0], requires_grad=True)
    compute_loss("sft", LossInputs(p, real_tokens=T([2.0, 3.0]))).loss.backward()
    assert (p.grad < 0).all()


@pytest.mark.parametrize("name", [n for n in LOSSES.names() if LOSSES.needs_pairs(n)])
@pytest.mark.parametrize(("r_real", "r_gen"), [(1e4, -1e4), (-1e4, 1e4), (1e4, 1e4), (-1e4, -1e4)])
def test_finite_at_extreme_log_ratios(name, r_real, r_gen):
    """r = +-1e4 with a = 1: plain exp would overflow (KLIEP, LSIF); loss and gradients stay finite
    and the gradients keep their signs (except IPO, whose squared loss pulls a margin beyond
    1/(2 beta) back by design)."""
    params = {"a": 1.0, "b": 2.0} if name.startswith("gsil") else {"beta": 0.1}
    x = LossInputs(T([-1.0]), T([-1.0 - r_real]), T([-1.0]), T([-1.0 - r_gen]), T([5.0]))
    out, g_real, g_gen = _grads(name, x, params)
    assert torch.isfinite(out.loss) and torch.isfinite(g_real).all() and torch.isfinite(g_gen).all()
    if name != "dpo-ipo":
        assert g_real.item() <= 0 <= g_gen.item()
    assert all(torch.isfinite(v) for v in out.metrics.values())


def test_safe_exp_is_exact_below_bound_and_tangent_above():
    z = torch.linspace(-30, 20, 101, dtype=torch.float64)
    assert torch.allclose(safe_exp(z), torch.exp(z))
    # above the bound: value and slope of exp at 20, continued linearly (convex, increasing, finite)
    zz = T([20.0, 21.0, 1e4], dtype=torch.float64, requires_grad=True)
    y = safe_exp(zz)
    y.sum().backward()
    e20 = math.exp(20)
    assert y.tolist() == pytest.approx([e20, 2 * e20, e20 * (1 + 1e4 - 20)])
    assert zz.grad.tolist() == pytest.approx([e20, e20, e20])


def test_metrics_names_and_values():
    out = compute_loss("gsil-logistic", POINT, {"a": 0.5, "b": 1.0})
    m = {k: v.item() for k, v in out.metrics.items()}
    assert m["rewards/real"] == 2.0 and m["rewards/generated"] == -1.0 and m["rewards/margin"] == 3.0
    assert m["rewards/accuracy"] == 1.0
    assert m["loss/real"] + m["loss/generated"] == pytest.approx(out.loss.item())
    dpo = {k: v.item() for k, v in compute_loss("dpo", POINT, {"beta": 0.1}).metrics.items()}
    assert dpo["rewards/real"] == pytest.approx(0.2) and dpo["rewards/margin"] == pytest.approx(0.3)


def test_bad_parameters_are_rejected_before_training():
    with pytest.raises(TypeError, match="has no parameter 'beta'"):
        LOSSES.validate("gsil-logistic", {"beta": 0.1})
    with pytest.raises(ValueError, match="a must be > 0"):
        LOSSES.validate("gsil-kliep", {"a": 0.0})
    with pytest.raises(ValueError, match="beta must be > 0"):
        LOSSES.validate("dpo-ipo", {"beta": 0.0})
    with pytest.raises(ValueError, match="generated"):
        compute_loss("gsil-hinge", LossInputs(T([-1.0]), T([-1.0])))


def test_a_parameter_guard_holds_on_every_path(tiny_model_dir, tmp_path, monkeypatch):
    """gsil-logistic with a = -1 is refused by the validation pass (its per-iteration parameters too),
    when training binds the loss (build_loss: before, it bound and failed at the first step, after the
    self-play generation), by compute_loss and by the loss anatomy; a loss whose body never checks `a`
    (a plugin's) is refused alike, the guard being in its declaration."""
    from helpers import make_cfg

    from gsil_bench.core.errors import ConfigError
    from gsil_bench.harness.validate import validate
    from gsil_bench.trainers.anatomy import weights
    from gsil_bench.trainers.api import train_method
    from gsil_bench.trainers.losses import build_loss, positive

    monkeypatch.setattr(LOSSES, "_items", dict(LOSSES._items))  # the test's own losses leave with it
    monkeypatch.setattr(LOSSES, "_meta", dict(LOSSES._meta))
    bad = {"a": -1.0}
    refused = r"GSIL scale a must be > 0, got -1.0"
    for path in (lambda: build_loss("gsil-logistic", bad), lambda: compute_loss("gsil-logistic", POINT, bad),
                 lambda: weights("gsil-logistic", bad), lambda: LOSSES.validate("gsil-logistic", bad)):
        with pytest.raises(ConfigError, match=refused):
            path()
    with pytest.raises(ConfigError, match=refused):  # training without the validation pass: before any work
        train_method(make_cfg(tiny_model_dir, [{"loss": "gsil-logistic", "params": bad}]), "gsil-logistic", 0, tmp_path)
    assert not list(tmp_path.rglob("generations*.jsonl"))
    late = [{"loss": "gsil-logistic", "per_iteration": [{"iteration": 2, "params": bad}]}]
    with pytest.raises(ConfigError, match=r"methods\[0\]\.per_iteration\[0\]\.params: " + refused):
        validate(make_cfg(tiny_model_dir, late), scope=("train",))

    @register_loss("test-unchecked-a", self_play=True, family="gsil", guards={"a": positive("GSIL scale a")})
    def unchecked(x: LossInputs, *, a: float = 0.01, b: float = 2.0) -> LossOutput:
        return gsil_output(x, -torch.nn.functional.logsigmoid(a * x.r_real + b),
                           -torch.nn.functional.logsigmoid(-(a * x.r_gen + b)))

    with pytest.raises(ConfigError, match=refused):
        build_loss("test-unchecked-a", bad)
    assert torch.isfinite(unchecked(POINT, a=-1.0).loss)  # the body itself would have trained on it
    with pytest.raises(ConfigError, match="guards for parameters it does not take: beta"):
        register_loss("test-bad-guard", guards={"beta": positive()})(unchecked)


# --- a new variant is one decorated function and one config line ------------------------

@register_loss("test-gsil-sqhinge", self_play=True)
def _sq_hinge(x: LossInputs, *, a: float = 0.01, b: float = 2.0) -> LossOutput:
    """Squared hinge member: max(0, 1 - z_real)^2 + max(0, 1 + z_gen)^2."""
    z_real, z_gen = a * x.r_real + b, a * x.r_gen + b
    return gsil_output(x, torch.relu(1 - z_real) ** 2, torch.relu(1 + z_gen) ** 2)


def test_new_variant_registers_and_loads_from_config(tmp_path):
    from gsil_bench.core.loading import load_experiment

    p = tmp_path / "exp.yaml"
    p.write_text("name: x\nmethods:\n  - loss: test-gsil-sqhinge\n    params: {a: 0.5, b: 1.0}\n")
    cfg = load_experiment(p)
    method = cfg.methods[0]
    assert LOSSES.self_play(method.loss) and LOSSES.needs_pairs(method.loss)
    # z_real = 2, z_gen = 0.5: max(0, -1)^2 + 1.5^2
    assert compute_loss(method.loss, POINT, method.params).loss.item() == pytest.approx(2.25)


# --- TRL's DPO, an independent implementation ----------------------------------------------

@pytest.fixture(scope="module")
def trl_trainer(tokenizer, tmp_path_factory):
    """A real trl.DPOTrainer around a tiny random Llama (trl: a test dependency, imported
    plainly so a missing or broken trl fails the suite instead of skipping the comparison)."""
    from datasets import Dataset

    from gsil_bench.core.models import tiny_llama

    row = {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "hello"}],
           "rejected": [{"role": "assistant", "content": "bye"}]}
    args = trl.DPOConfig(output_dir=str(tmp_path_factory.mktemp("trl")), report_to=[], use_cpu=True, beta=0.1)
    trainer = trl.DPOTrainer(model=tiny_llama(tokenizer, seed=1), ref_model=tiny_llama(tokenizer, seed=2), args=args,
                             train_dataset=Dataset.from_list([row]), processing_class=tokenizer)
    trainer.precompute_ref_logps = True  # feed our random reference log-probs
    return trainer


@pytest.mark.parametrize(("ours", "trl_type"), [("dpo", "sigmoid"), ("dpo-hinge", "hinge"), ("dpo-ipo", "ipo")])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_variants_equal_trl(trl_trainer, tokenizer, ours, trl_type, beta):
    """Same model, same random token sequences and reference log-probs: TRL computes the policy
    log-probs (its fused LM head) and the loss; we compute ours with batch_logps + our loss.
    TRL's IPO divides each side's log ratio by its completion length: ours on length-normalised
    log-probs must then agree."""
    from gsil_bench.trainers.data import Batch
    from gsil_bench.trainers.logprobs import batch_logps

    g = torch.Generator().manual_seed(7)
    B, L = 3, 14
    ids = torch.randint(3, len(tokenizer), (2 * B, L), generator=g)
    attention = torch.ones(2 * B, L, dtype=torch.long)
    completion = torch.zeros(2 * B, L, dtype=torch.long)
    starts = [5, 7, 6, 4, 9, 8]
    ends = [14, 12, 14, 11, 14, 13]
    for i, (s, e) in enumerate(zip(starts, ends)):
        completion[i, s:e] = 1
        attention[i, e:] = 0
    ref_c, ref_r = -torch.rand(B, generator=g) * 80 - 60, -torch.rand(B, generator=g) * 80 - 60
    trl_trainer.beta, trl_trainer.loss_types, trl_trainer.loss_weights = beta, [trl_type], [1.0]
    trl_trainer.model.train()
    trl_loss = trl_trainer._compute_loss(trl_trainer.model, {
        "input_ids": ids, "attention_mask": attention, "completion_mask": completion,
        "ref_chosen_logps": ref_c, "ref_rejected_logps": ref_r}, False)

    logps, n = batch_logps(trl_trainer.model, Batch(ids, attention, completion), chunk=4)
    x = LossInputs(logps[:B], ref_c, logps[B:], ref_r)
    if ours == "dpo-ipo":
        x = LossInputs(logps[:B] / n[:B], ref_c / n[:B], logps[B:] / n[B:], ref_r / n[B:])
    mine = compute_loss(ours, x, {"beta": beta}).loss
    assert mine.item() == pytest.approx(trl_loss.item(), rel=1e-5, abs=1e-6)
    assert logps[:B].mean().item() == pytest.approx(trl_trainer._metrics["train"]["logps/chosen"][-1], rel=1e-5)
    # gradients agree too
    trl_trainer.model.zero_grad()
    trl_loss.backward()
    g_trl = [p.grad.clone() for p in trl_trainer.model.parameters() if p.grad is not None]
    trl_trainer.model.zero_grad()
    logps, n = batch_logps(trl_trainer.model, Batch(ids, attention, completion), chunk=4)
    x = LossInputs(logps[:B], ref_c, logps[B:], ref_r)
    if ours == "dpo-ipo":
        x = LossInputs(logps[:B] / n[:B], ref_c / n[:B], logps[B:] / n[B:], ref_r / n[B:])
    compute_loss(ours, x, {"beta": beta}).loss.backward()
    g_ours = [p.grad.clone() for p in trl_trainer.model.parameters() if p.grad is not None]
    assert len(g_trl) == len(g_ours)
    for a, b in zip(g_trl, g_ours):  # float32 sums in a different order: compare in norm
        assert (a - b).norm() <= 1e-4 * a.norm() + 1e-8, ((a - b).norm(), a.norm())
