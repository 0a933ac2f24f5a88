"""The loss family: SFT, DPO (sigmoid, hinge, IPO), SPIN and GSIL's convex members.

Every loss is a pure function of per-sequence summed response log-probs (policy and
reference, for the real/chosen and the generated/rejected sequence) with keyword-only
hyperparameters, returning the scalar loss and the metrics the reports plot.
Adding a variant is one decorated function (its parameters' guards declared with it):

    @register_loss("gsil-myvariant", self_play=True, family="gsil", guards=GSIL)
    def my_variant(x: LossInputs, *, a: float = 0.01, b: float = 2.0) -> LossOutput:
        z_real, z_gen = a * x.r_real + b, a * x.r_gen + b
        return gsil_output(x, real_term=..., gen_term=...)

then `loss: gsil-myvariant` in a config's method block.

References: GSIL, Xiao et al. 2024 (arXiv 2410.10093), Sec. 4 and Table 1 (the
convex functions); DPO, Rafailov et al. 2023, Eq. 7; IPO, Azar et al. 2023, Eq. 17;
SPIN, Chen et al. 2024 (arXiv 2401.01335), Eq. 4.4.2 with the logistic loss.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from gsil_bench.core.errors import ConfigError
from gsil_bench.core.registry import Registry, did_you_mean


@dataclass
class LossInputs:
    """Per-sequence summed response log-probs, shape [B] each (float32)."""

    policy_real: torch.Tensor
    ref_real: torch.Tensor | None = None
    policy_gen: torch.Tensor | None = None
    ref_gen: torch.Tensor | None = None
    real_tokens: torch.Tensor | None = None  # response token counts of the real sequences
    # Token-mean losses divide a micro-batch's sum by this when given: the real response tokens of the
    # whole optimizer step (every micro-batch of every process) over micro-batches x processes, so the
    # accumulated, process-averaged gradient is the step's global token mean, however the global batch
    # is split (transformers' num_items_in_batch). None: the micro-batch's own token count.
    token_share: float | None = None

    @property
    def r_real(self) -> torch.Tensor:
        """Log density ratio log pi_theta(y_real) - log pi_ref(y_real)."""
        if self.ref_real is None:
            raise ValueError("this loss needs reference log-probs of the real response (ref_real)")
        return self.policy_real - self.ref_real

    @property
    def r_gen(self) -> torch.Tensor:
        """Log density ratio of the generated (or rejected) response."""
        if self.policy_gen is None or self.ref_gen is None:
            raise ValueError("this loss needs the generated/rejected response's policy and reference log-probs")
        return self.policy_gen - self.ref_gen


@dataclass
class LossOutput:
    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


LossFn = Callable[..., LossOutput]


@dataclass(frozen=True)
class Guard:
    """What a loss parameter must be, declared with the loss (`register_loss(..., guards=...)`) and
    checked wherever the loss is bound to its parameters (`build_loss`: the validation pass, training,
    the loss anatomy), so no path runs a loss with a value its declaration rules out."""

    holds: Callable[[float], bool]
    rule: str  # the allowed values in words: "> 0", "in [0, 0.5)"
    what: str | None = None  # how an error names the parameter (default: its name)


def positive(what: str | None = None) -> Guard:
    return Guard(lambda v: v > 0, "> 0", what)


def keyword_params(fn: LossFn) -> list[str]:
    """A loss function's parameters: its keyword-only arguments."""
    return [p.name for p in inspect.signature(fn).parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]


class LossRegistry(Registry[LossFn]):
    """Registry of losses; metadata says what inputs a loss needs, whether it self-plays, its family and
    the guards of its parameters."""

    def check_params(self, name: str, params: dict[str, float]) -> None:
        """Raise TypeError naming any parameter the loss does not take, ConfigError (a ValueError) for
        a value a declared guard rules out."""
        allowed = keyword_params(self.get(name))
        for key in params:
            if key not in allowed:
                raise TypeError(
                    f"loss {name!r} has no parameter {key!r}{did_you_mean(key, allowed)}; "
                    f"it takes: {', '.join(allowed) or 'none'}"
                )
        for key, guard in self.guards(name).items():
            if key in params and not guard.holds(params[key]):
                raise ConfigError(f"{guard.what or key} must be {guard.rule}, got {params[key]}")

    def guards(self, name: str) -> dict[str, Guard]:
        return dict(self.meta(name).get("guards") or {})

    def validate(self, name: str, params: dict[str, float]) -> None:
        """check_params (names and guards), then evaluate the loss once on unit inputs so a value no
        guard covers but the loss cannot use fails before any training work, not at the first step."""
        self.check_params(name, params)
        one = torch.zeros(2, requires_grad=True)
        x = LossInputs(one, one.detach(), one.detach(), one.detach(), torch.ones(2))
        out = self.get(name)(x, **params)
        if not torch.isfinite(out.loss):
            raise ConfigError(f"loss {name!r} with {params} is not finite at zero log ratios")

    def needs_pairs(self, name: str) -> bool:
        return bool(self.meta(name).get("pairs", True))

    def self_play(self, name: str) -> bool:
        return bool(self.meta(name).get("self_play", False))

    def family(self, name: str) -> str:
        """The family a loss declared (`register_loss(..., family="gsil")`); reports group
        members by it (ablations), never by the name. Undeclared: a family of its own."""
        return str(self.meta(name).get("family") or name)


LOSSES = LossRegistry("loss")


def register_loss(name: str, *, pairs: bool = True, self_play: bool = False, family: str | None = None,
                  guards: dict[str, Guard] | None = None) -> Callable[[LossFn], LossFn]:
    """Register a loss. pairs: needs reference + generated/rejected log-probs;
    self_play: the generated side is regenerated by the current model every iteration;
    family: the family it belongs to ("gsil", "dpo", ...; default: its own name), which the
    reports' loss-family ablations group by; guards: parameter -> `Guard` (what its value must be)."""

    def deco(fn: LossFn) -> LossFn:
        unknown = [k for k in guards or {} if k not in keyword_params(fn)]
        if unknown:
            raise ConfigError(f"loss {name!r}: guards for parameters it does not take: {', '.join(unknown)}")
        LOSSES.add(name, fn, pairs=pairs, self_play=self_play, family=family or name, guards=dict(guards or {}))
        return fn

    return deco


@dataclass(frozen=True)
class Loss:
    """A registered loss bound to its parameters, with its flags read once (build_loss)."""

    name: str
    fn: LossFn
    params: dict[str, float]
    pairs: bool  # needs reference log-probs and a generated/rejected side
    self_play: bool  # the generated side is regenerated by the current model every iteration

    def __call__(self, inputs: LossInputs) -> LossOutput:
        return self.fn(inputs, **self.params)


def build_loss(name: str, params: dict[str, float] | None = None) -> Loss:
    """Look a loss up once and bind its parameters (checked against its signature and its guards)."""
    params = dict(params or {})
    LOSSES.check_params(name, params)
    return Loss(name, LOSSES.get(name), params, LOSSES.needs_pairs(name), LOSSES.self_play(name))


def compute_loss(name: str, inputs: LossInputs, params: dict[str, float] | None = None) -> LossOutput:
    """One-off evaluation of a loss by name (the loop uses a Loss built once)."""
    return build_loss(name, params)(inputs)


def _pair_metrics(x: LossInputs, scale: float = 1.0) -> dict[str, torch.Tensor]:
    r_real, r_gen = x.r_real.detach() * scale, x.r_gen.detach() * scale
    return {
        "rewards/real": r_real.mean(),
        "rewards/generated": r_gen.mean(),
        "rewards/margin": (r_real - r_gen).mean(),
        "rewards/accuracy": (r_real > r_gen).float().mean(),
        "logps/real": x.policy_real.detach().mean(),
        "logps/generated": x.policy_gen.detach().mean(),  # type: ignore[union-attr]
    }


# --- SFT -----------------------------------------------------------------------------


@register_loss("sft", pairs=False, family="sft")
def sft(x: LossInputs) -> LossOutput:
    """Token-mean negative log-likelihood of the real response tokens over the batch (the
    optimizer step's global batch when the loop passes `token_share`)."""
    tokens = x.real_tokens if x.real_tokens is not None else torch.ones_like(x.policy_real)
    denominator = tokens.sum().clamp_min(1) if x.token_share is None else x.token_share
    loss = -x.policy_real.sum() / denominator
    metrics = {"logps/real": x.policy_real.detach().mean(), "loss/real": loss.detach()}
    return LossOutput(loss, metrics)


# --- Pairwise: DPO and SPIN ----------------------------------------------------------


BETA = {"beta": positive()}  # DPO's and SPIN's inverse temperature


def _pairwise(x: LossInputs, per_example: torch.Tensor, beta: float) -> LossOutput:
    metrics = _pair_metrics(x, scale=beta)
    metrics["loss/pair"] = per_example.detach().mean()
    return LossOutput(per_example.mean(), metrics)


@register_loss("dpo", family="dpo",
               guards={**BETA, "label_smoothing": Guard(lambda v: 0 <= v < 0.5, "in [0, 0.5)")})
def dpo(x: LossInputs, *, beta: float = 0.1, label_smoothing: float = 0.0) -> LossOutput:
    """DPO (Rafailov et al. 2023, Eq. 7): -log sigmoid(beta * m), m = r_real - r_gen;
    with label_smoothing eps, the conservative form (1-eps)*that + eps*(-log sigmoid(-beta*m))."""
    logits = beta * (x.r_real - x.r_gen)
    per = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return _pairwise(x, per, beta)


@register_loss("dpo-hinge", family="dpo", guards=BETA)
def dpo_hinge(x: LossInputs, *, beta: float = 0.1) -> LossOutput:
    """SLiC-style hinge on the scaled margin: max(0, 1 - beta * m)."""
    return _pairwise(x, torch.relu(1 - beta * (x.r_real - x.r_gen)), beta)


@register_loss("dpo-ipo", family="dpo", guards=BETA)
def dpo_ipo(x: LossInputs, *, beta: float = 0.1) -> LossOutput:
    """IPO (Azar et al. 2023, Eq. 17): (m - 1/(2*beta))^2 on the unscaled margin m (summed
    log-probs; TRL additionally divides each side's log ratio by its token count)."""
    return _pairwise(x, (x.r_real - x.r_gen - 1 / (2 * beta)) ** 2, beta)


@register_loss("spin", self_play=True, family="spin", guards=BETA)
def spin(x: LossInputs, *, beta: float = 0.1) -> LossOutput:
    """SPIN (Chen et al. 2024, Eq. 4.7 with logistic l): -log sigmoid(beta * (r_real - r_gen)),
    with the generated side regenerated by the previous iteration's model."""
    return _pairwise(x, -F.logsigmoid(beta * (x.r_real - x.r_gen)), beta)


# --- GSIL: density-ratio classification with logit z = a * r + b ----------------------


def gsil_output(x: LossInputs, real_term: torch.Tensor, gen_term: torch.Tensor) -> LossOutput:
    """Mean over examples of (real term + generated term), with GSIL's logged metrics."""
    metrics = _pair_metrics(x)
    metrics["loss/real"] = real_term.detach().mean()
    metrics["loss/generated"] = gen_term.detach().mean()
    return LossOutput((real_term + gen_term).mean(), metrics)


EXP_LINEAR_ABOVE = 20.0


def safe_exp(z: torch.Tensor, bound: float = EXP_LINEAR_ABOVE) -> torch.Tensor:
    """exp(z) for z <= bound; above it, exp's first-order continuation exp(bound) * (1 + z - bound).

    KLIEP and LSIF exponentiate the logit z = a * r + b, and exp overflows float32 at z ~ 88
    (r ~ 8600 with the paper's a = 0.01; a single long sequence can reach that). The tangent
    continuation keeps the function convex, increasing and C^1 (value and slope match at the
    bound), so the gradient keeps its sign and stays finite; it equals exp exactly for z <= 20
    (|r| up to 1800 nats with a = 0.01, b = 2), i.e. in every regime training actually visits.
    """
    clamped = z.clamp(max=bound)
    return torch.exp(clamped) * (1 + (z - clamped))


GSIL = {"a": positive("GSIL scale a")}  # the classifier logit z = a * r + b needs a > 0 (GSIL Sec. 4)


def _logits(x: LossInputs, a: float, b: float) -> tuple[torch.Tensor, torch.Tensor]:
    return a * x.r_real + b, a * x.r_gen + b


@register_loss("gsil-logistic", self_play=True, family="gsil", guards=GSIL)
def gsil_logistic(x: LossInputs, *, a: float = 0.01, b: float = 2.0) -> LossOutput:
    """Bernoulli/logistic member: -log sigmoid(z_real) - log sigmoid(-z_gen)."""
    z_real, z_gen = _logits(x, a, b)
    return gsil_output(x, -F.logsigmoid(z_real), -F.logsigmoid(-z_gen))


@register_loss("gsil-brier", self_play=True, family="gsil", guards=GSIL)
def gsil_brier(x: LossInputs, *, a: float = 0.01, b: float = 2.0) -> LossOutput:
    """Brier member: (sigmoid(z_real) - 1)^2 + sigmoid(z_gen)^2."""
    z_real, z_gen = _logits(x, a, b)
    return gsil_output(x, (torch.sigmoid(z_real) - 1) ** 2, torch.sigmoid(z_gen) ** 2)


@register_loss("gsil-hinge", self_play=True, family="gsil", guards=GSIL)
def gsil_hinge(x: LossInputs, *, a: float = 0.01, b: float = 2.0) -> LossOutput:
    """Hinge member: max(0, 1 - z_real) + max(0, 1 + z_gen)."""
    z_real, z_gen = _logits(x, a, b)
    return gsil_output(x, torch.relu(1 - z_real), torch.relu(1 + z_gen))


@register_loss("gsil-kliep", self_play=True, family="gsil", guards=GSIL)
def gsil_kliep(x: LossInputs, *, a: float = 0.01, b: float = 2.0) -> LossOutput:
    """KLIEP member: -z_real + exp(z_gen) (exp continued linearly above z = 20, see safe_exp)."""
    z_real, z_gen = _logits(x, a, b)
    return gsil_output(x, -z_real, safe_exp(z_gen))


@register_loss("gsil-lsif", self_play=True, family="gsil", guards=GSIL)
def gsil_lsif(x: LossInputs, *, a: float = 0.01, b: float = 2.0) -> LossOutput:
    """LSIF member: -exp(z_real) + exp(z_gen)^2 / 2 (exp continued linearly above z = 20, see safe_exp)."""
    z_real, z_gen = _logits(x, a, b)
    return gsil_output(x, -safe_exp(z_real), safe_exp(z_gen) ** 2 / 2)
