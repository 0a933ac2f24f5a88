"""Every loss against an independent float64 implementation (tests/reference_losses.py, numpy,
written from docs/methods.md): values, autograd gradients and metrics over random
batches and several GSIL (a, b), including the paper's a = 0.01, b = 2; the reference's own
gradients against finite differences; the logistic member's gradients in closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import reference_losses as ref
import torch

from gsil_bench.trainers.losses import LOSSES, LossInputs, compute_loss

GSIL = sorted(ref.GSIL_MEMBERS)
PAIRWISE = ["dpo", "dpo-hinge", "dpo-ipo", "spin"]
# (a, b): the paper's recipe (0.01, 2), no shift, a negative shift, and large scales
AB = [(0.01, 2.0), (0.01, 0.0), (0.1, -1.0), (1.0, 0.5), (2.0, 2.0), (2.0, 0.0)]


def _batch(seed: int, a: float, b: float, n: int = 7) -> dict[str, np.ndarray]:
    """Random summed log-probs (long responses: tens to hundreds of nats) whose log ratios put
    the GSIL logit z = a r + b in [b - 9, b + 9]: every member's terms are active, and
    exp(z) stays below the project's linear continuation of exp above z = 20."""
    rng = np.random.default_rng(seed)
    ref_real, ref_gen = -rng.uniform(5, 300, n), -rng.uniform(5, 300, n)
    span = 9.0 / a
    return {"policy_real": ref_real + rng.uniform(-span, span, n), "ref_real": ref_real,
            "policy_gen": ref_gen + rng.uniform(-span, span, n), "ref_gen": ref_gen,
            "real_tokens": rng.integers(1, 300, n).astype(np.float64)}


def _ours(name: str, x: dict[str, np.ndarray], params: dict[str, float], dtype=torch.float64):
    """The project's loss with autograd on all four log-prob tensors."""
    leaves = {k: torch.tensor(v, dtype=dtype, requires_grad=k != "real_tokens") for k, v in x.items()}
    out = compute_loss(name, LossInputs(**leaves), params)
    out.loss.backward()
    grads = {k: np.zeros(len(t)) if t.grad is None else t.grad.double().numpy()  # unused input: zero gradient
             for k, t in leaves.items() if k != "real_tokens"}
    return out, grads


def _reference(name: str, x: dict[str, np.ndarray], params: dict[str, float]) -> ref.Reference:
    return ref.reference_loss(name, x["policy_real"], x["ref_real"], x["policy_gen"], x["ref_gen"],
                              x["real_tokens"], params)


def test_the_reference_covers_every_registered_loss():
    """Every loss the project ships (other tests register extra ones) has a reference here."""
    shipped = {n for n in LOSSES.names() if LOSSES.get(n).__module__ == "gsil_bench.trainers.losses"}
    assert set(GSIL + PAIRWISE + ["sft"]) == shipped


@pytest.mark.parametrize("name", GSIL)
@pytest.mark.parametrize(("a", "b"), AB)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gsil_values_and_gradients_equal_the_reference(name, a, b, seed):
    x = _batch(seed, a, b)
    want = _reference(name, x, {"a": a, "b": b})
    out, g = _ours(name, x, {"a": a, "b": b})
    assert out.loss.item() == pytest.approx(want.loss, rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(g["policy_real"], want.grad_real, rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(g["policy_gen"], want.grad_gen, rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(g["ref_real"], -want.grad_real, rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(g["ref_gen"], -want.grad_gen, rtol=1e-10, atol=1e-15)
    m = {k: v.item() for k, v in out.metrics.items()}
    r_real, r_gen = x["policy_real"] - x["ref_real"], x["policy_gen"] - x["ref_gen"]
    assert m["loss/real"] == pytest.approx(np.mean(want.real_term), rel=1e-12, abs=1e-12)
    assert m["loss/generated"] == pytest.approx(np.mean(want.gen_term), rel=1e-12, abs=1e-12)
    assert m["rewards/real"] == pytest.approx(np.mean(r_real), rel=1e-12)
    assert m["rewards/generated"] == pytest.approx(np.mean(r_gen), rel=1e-12)
    assert m["rewards/margin"] == pytest.approx(np.mean(r_real - r_gen), rel=1e-12, abs=1e-9)
    assert m["rewards/accuracy"] == pytest.approx(np.mean(r_real > r_gen), rel=1e-7)  # a float32 fraction


@pytest.mark.parametrize("name", GSIL)
@pytest.mark.parametrize(("a", "b"), [(0.01, 2.0), (2.0, 0.0)])
def test_float32_training_inputs_match_float64(name, a, b):
    """The loop feeds float32 log-probs: same loss and gradients to float32 precision."""
    x = _batch(5, a, b)
    x = {k: v.astype(np.float32).astype(np.float64) for k, v in x.items()}  # the values float32 can hold
    want = _reference(name, x, {"a": a, "b": b})
    out, g = _ours(name, x, {"a": a, "b": b}, dtype=torch.float32)
    scale = max(1.0, abs(want.loss))
    assert abs(out.loss.item() - want.loss) <= 1e-4 * scale
    for got, exp in ((g["policy_real"], want.grad_real), (g["policy_gen"], want.grad_gen)):
        assert np.max(np.abs(got - exp)) <= 1e-4 * np.max(np.abs(exp)) + 1e-12


@pytest.mark.parametrize("name", PAIRWISE)
@pytest.mark.parametrize("beta", [0.01, 0.1, 2.0])
def test_pairwise_values_and_gradients_equal_the_reference(name, beta):
    x = _batch(11, 1.0, 0.0)
    want = _reference(name, x, {"beta": beta})
    out, g = _ours(name, x, {"beta": beta})
    assert out.loss.item() == pytest.approx(want.loss, rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(g["policy_real"], want.grad_real, rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(g["policy_gen"], want.grad_gen, rtol=1e-10, atol=1e-15)
    m = out.metrics
    margin = beta * ((x["policy_real"] - x["ref_real"]) - (x["policy_gen"] - x["ref_gen"]))
    assert m["rewards/margin"].item() == pytest.approx(np.mean(margin), rel=1e-12, abs=1e-12)


def test_sft_value_and_gradient_equal_the_reference():
    x = _batch(4, 1.0, 0.0)
    want = _reference("sft", x, {})
    out, g = _ours("sft", x, {})
    assert out.loss.item() == pytest.approx(want.loss, rel=1e-12)
    np.testing.assert_allclose(g["policy_real"], want.grad_real, rtol=1e-12)


@pytest.mark.parametrize("name", GSIL + PAIRWISE)
def test_numpy_reference_gradients_equal_finite_differences(name):
    """The yardstick itself (tests/reference_losses.py, not project code): its closed-form gradients
    equal central differences of its own values, in float64. Project code: the next test."""
    params = {"a": 0.3, "b": 0.5} if name in GSIL else {"beta": 0.2}
    x = _batch(9, 3.0, 0.5, n=4)  # log ratios within +-3: z = 0.3 r + 0.5 in [-0.4, 1.4]
    want = _reference(name, x, params)
    h = 1e-5
    for key, grad in (("policy_real", want.grad_real), ("policy_gen", want.grad_gen)):
        for i in range(4):
            up, down = {**x, key: x[key].copy()}, {**x, key: x[key].copy()}
            up[key][i] += h
            down[key][i] -= h
            fd = (_reference(name, up, params).loss - _reference(name, down, params).loss) / (2 * h)
            assert fd == pytest.approx(grad[i], rel=1e-5, abs=1e-9), (key, i)


@pytest.mark.parametrize("name", GSIL + PAIRWISE + ["sft"])
def test_project_loss_gradients_equal_finite_differences(name):
    """Project code: trainers.losses' autograd gradients with respect to every log-prob input equal
    central differences of trainers.losses' own values (float64), at log ratios where every term is
    active and real and generated differ."""
    params = {} if name == "sft" else {"a": 0.3, "b": 0.5} if name in GSIL else {"beta": 0.2}
    x = _batch(13, 3.0, 0.5, n=4)
    _, grads = _ours(name, x, params)

    def value(y):
        t = {k: torch.tensor(v, dtype=torch.float64) for k, v in y.items()}
        return compute_loss(name, LossInputs(**t), params).loss.item()

    h = 1e-5
    for key in ("policy_real", "ref_real", "policy_gen", "ref_gen"):
        for i in range(4):
            up, down = {**x, key: x[key].copy()}, {**x, key: x[key].copy()}
            up[key][i] += h
            down[key][i] -= h
            fd = (value(up) - value(down)) / (2 * h)
            assert grads[key][i] == pytest.approx(fd, rel=1e-5, abs=1e-9), \
                f"{name}: d loss / d {key}[{i}] is {grads[key][i]} by autograd, {fd} by finite differences"


def test_logistic_gradients_in_closed_form():
    """dL/d policy_real = -a * sigmoid(-z_real) / B and dL/d policy_gen = a * sigmoid(z_gen) / B,
    written out with math.exp at a hand-picked batch (B = 2, a = 0.01, b = 2)."""
    a, b = 0.01, 2.0
    x = {"policy_real": np.array([-120.0, -40.0]), "ref_real": np.array([-150.0, -35.0]),
         "policy_gen": np.array([-80.0, -60.0]), "ref_gen": np.array([-90.0, -260.0]),
         "real_tokens": np.array([30.0, 12.0])}
    z_real = [a * 30 + b, a * -5 + b]  # 2.3, 1.95
    z_gen = [a * 10 + b, a * 200 + b]  # 2.1, 4.0
    out, g = _ours("gsil-logistic", x, {"a": a, "b": b})
    loss = sum(math.log(1 + math.exp(-zr)) + math.log(1 + math.exp(zg)) for zr, zg in zip(z_real, z_gen)) / 2
    assert out.loss.item() == pytest.approx(loss, rel=1e-12)
    assert g["policy_real"].tolist() == pytest.approx([-a / (1 + math.exp(zr)) / 2 for zr in z_real], rel=1e-12)
    assert g["policy_gen"].tolist() == pytest.approx([a / (1 + math.exp(-zg)) / 2 for zg in z_gen], rel=1e-12)
    # the real side's log-prob is pushed up, the generated side's down
    assert (g["policy_real"] < 0).all() and (g["policy_gen"] > 0).all()

