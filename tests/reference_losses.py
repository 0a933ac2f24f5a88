"""An independent float64 implementation of the loss family, for tests only.

Written from docs/methods.md ("Loss family" and "Baselines"), in plain numpy, without
reading or importing trainers/losses.py. For every loss it gives the batch loss and its
closed-form gradient with respect to the policy log-probs of the real and the generated
sequence (the reference log-probs enter with the opposite sign, since r = logp_theta - logp_ref).

Notation: B examples; r_real = policy_real - ref_real, r_gen = policy_gen - ref_gen;
GSIL logit z = a * r + b; pairwise margin m = r_real - r_gen. The batch loss is the mean over
examples, so every per-example derivative carries a factor 1/B.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Array = np.ndarray


def sigmoid(z: Array) -> Array:
    """Logistic function, evaluated without overflow for large |z|."""
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def neg_log_sigmoid(z: Array) -> Array:
    """-log sigmoid(z) = log(1 + exp(-z))."""
    return np.logaddexp(0.0, -np.asarray(z, dtype=np.float64))


@dataclass(frozen=True)
class Reference:
    """Batch loss, per-example terms and d loss / d policy log-probs (float64)."""

    loss: float
    grad_real: Array  # d loss / d policy_real, shape [B]
    grad_gen: Array  # d loss / d policy_gen, shape [B] (zeros for SFT)
    real_term: Array | None = None  # GSIL: per-example real term
    gen_term: Array | None = None  # GSIL: per-example generated term


# --- GSIL members: (term(z), d term / dz) for the real and the generated side -------------
# docs/methods.md table: logistic -log s(z_r), -log s(-z_g); Brier (s(z_r) - 1)^2, s(z_g)^2;
# hinge max(0, 1 - z_r), max(0, 1 + z_g); KLIEP -z_r, exp(z_g); LSIF -exp(z_r), exp(z_g)^2 / 2.

def _logistic(zr: Array, zg: Array) -> tuple[Array, Array, Array, Array]:
    return neg_log_sigmoid(zr), neg_log_sigmoid(-zg), -sigmoid(-zr), sigmoid(zg)


def _brier(zr: Array, zg: Array) -> tuple[Array, Array, Array, Array]:
    sr, sg = sigmoid(zr), sigmoid(zg)
    # d/dz (s - 1)^2 = 2 (s - 1) s (1 - s);  d/dz s^2 = 2 s^2 (1 - s)
    return (sr - 1) ** 2, sg ** 2, 2 * (sr - 1) * sr * (1 - sr), 2 * sg ** 2 * (1 - sg)


def _hinge(zr: Array, zg: Array) -> tuple[Array, Array, Array, Array]:
    return (np.maximum(0.0, 1 - zr), np.maximum(0.0, 1 + zg),
            np.where(zr < 1, -1.0, 0.0), np.where(zg > -1, 1.0, 0.0))


def _kliep(zr: Array, zg: Array) -> tuple[Array, Array, Array, Array]:
    return -zr, np.exp(zg), -np.ones_like(zr), np.exp(zg)


def _lsif(zr: Array, zg: Array) -> tuple[Array, Array, Array, Array]:
    return -np.exp(zr), np.exp(zg) ** 2 / 2, -np.exp(zr), np.exp(2 * zg)


GSIL_MEMBERS = {"gsil-logistic": _logistic, "gsil-brier": _brier, "gsil-hinge": _hinge,
                "gsil-kliep": _kliep, "gsil-lsif": _lsif}


def gsil(member: str, policy_real: Array, ref_real: Array, policy_gen: Array, ref_gen: Array, *,
         a: float, b: float) -> Reference:
    """GSIL member `member` ("gsil-logistic", ...): mean over examples of real + generated term."""
    zr = a * (np.asarray(policy_real, np.float64) - ref_real) + b
    zg = a * (np.asarray(policy_gen, np.float64) - ref_gen) + b
    real, gen, d_real, d_gen = GSIL_MEMBERS[member](zr, zg)
    n = len(zr)
    return Reference(float(np.mean(real + gen)), a * d_real / n, a * d_gen / n, real, gen)


# --- pairwise baselines: DPO (sigmoid, hinge, IPO) and SPIN ---------------------------------

def pairwise(name: str, policy_real: Array, ref_real: Array, policy_gen: Array, ref_gen: Array, *,
             beta: float) -> Reference:
    """dpo / spin: -log s(beta m); dpo-hinge: max(0, 1 - beta m); dpo-ipo: (m - 1/(2 beta))^2."""
    m = (np.asarray(policy_real, np.float64) - ref_real) - (np.asarray(policy_gen, np.float64) - ref_gen)
    if name in ("dpo", "spin"):
        per, d_m = neg_log_sigmoid(beta * m), -beta * sigmoid(-beta * m)
    elif name == "dpo-hinge":
        per, d_m = np.maximum(0.0, 1 - beta * m), np.where(beta * m < 1, -beta, 0.0)
    elif name == "dpo-ipo":
        per, d_m = (m - 1 / (2 * beta)) ** 2, 2 * (m - 1 / (2 * beta))
    else:
        raise KeyError(name)
    n = len(m)
    return Reference(float(np.mean(per)), d_m / n, -d_m / n)


def sft(policy_real: Array, real_tokens: Array) -> Reference:
    """Token-mean negative log-likelihood of the real responses over the batch."""
    total = float(np.sum(real_tokens))
    p = np.asarray(policy_real, np.float64)
    return Reference(float(-np.sum(p) / total), np.full_like(p, -1.0 / total), np.zeros_like(p))


def reference_loss(name: str, policy_real: Array, ref_real: Array, policy_gen: Array, ref_gen: Array,
                   real_tokens: Array, params: dict[str, float]) -> Reference:
    """Dispatch by the registry name the project uses."""
    if name in GSIL_MEMBERS:
        return gsil(name, policy_real, ref_real, policy_gen, ref_gen, **params)
    if name == "sft":
        return sft(policy_real, real_tokens)
    return pairwise(name, policy_real, ref_real, policy_gen, ref_gen, **params)
