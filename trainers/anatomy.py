"""The loss anatomy: how much weight a loss puts on the real and on the generated side.

For a loss L of the log ratios r_real = log pi(y_real) - log pi_ref(y_real) and r_gen, the
gradient with respect to the policy is

    dL/dtheta = (dL/dr_real) grad log pi(y_real) + (dL/dr_gen) grad log pi(y_gen),

so `w_real = -dL/dr_real` is the weight with which a step raises the demonstration's
log-likelihood and `w_gen = dL/dr_gen` the weight with which it lowers the model's own
generation. Both are computed here by autograd through the registry (`LOSSES`), so a
plugged-in loss gets them without writing them down:

- at the start of an iteration (r_real = r_gen = 0: the policy is its reference), for every
  method of an experiment at its configured parameters;
- along training, at the mean log ratios each logged step recorded (`rewards/real`,
  `rewards/generated` in metrics.jsonl; a loss that logs them scaled, as DPO logs beta * r,
  has its scale measured by calling it once), with each iteration's own parameters.

SFT's weight is per response token (a sequence of T tokens gets 1/T of it). The harness
writes the result to `<run>/losses.json` (with each method's family, sweep and variant
hash), which the report reads (reports.anatomy).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import yaml

from gsil_bench.core.config import ExperimentConfig, iteration_config
from gsil_bench.core.errors import GsilError
from gsil_bench.core.io import atomic_write_json, read_json, read_jsonl
from gsil_bench.core.layout import RunLayout
from gsil_bench.core.loading import experiment_from_dict
from gsil_bench.core.strict import to_plain
from gsil_bench.core.sweeps import variant_hash
from gsil_bench.trainers.losses import LOSSES, LossInputs, build_loss

log = logging.getLogger(__name__)

MAX_POINTS = 400  # along-training points kept per method x seed (evenly thinned beyond)


def _inputs(name: str, r_real: float, r_gen: float) -> tuple[LossInputs, torch.Tensor, torch.Tensor | None]:
    real = torch.tensor([float(r_real)], dtype=torch.float64, requires_grad=True)
    zero = torch.zeros(1, dtype=torch.float64)
    if not LOSSES.needs_pairs(name):
        return LossInputs(real, real_tokens=torch.ones(1, dtype=torch.float64)), real, None
    gen = torch.tensor([float(r_gen)], dtype=torch.float64, requires_grad=True)
    return LossInputs(real, zero, gen, zero, torch.ones(1, dtype=torch.float64)), real, gen


def weights(name: str, params: dict[str, float], r_real: float = 0.0, r_gen: float = 0.0) -> dict[str, float | None]:
    """{w_real: -dL/dr_real, w_gen: dL/dr_gen (None without a generated side), loss} at one point."""
    x, real, gen = _inputs(name, r_real, r_gen)
    loss = build_loss(name, params)(x).loss
    wrt = [real] + ([gen] if gen is not None else [])
    grads = torch.autograd.grad(loss, wrt, allow_unused=True)
    g_real = float(grads[0]) if grads[0] is not None else 0.0
    g_gen = (float(grads[1]) if grads[1] is not None else 0.0) if gen is not None else None
    return {"w_real": -g_real, "w_gen": g_gen, "loss": float(loss.detach())}


def reward_scale(name: str, params: dict[str, float]) -> float | None:
    """The factor s of the logged `rewards/real` = s * r_real (1 for GSIL, beta for DPO/SPIN),
    measured by evaluating the loss once; None when the loss logs no rewards."""
    if not LOSSES.needs_pairs(name):
        return None
    x, _, _ = _inputs(name, 1.0, -1.0)
    metrics = build_loss(name, params)(x).metrics
    if "rewards/real" not in metrics:
        return None
    return float(metrics["rewards/real"])


def _thin(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if len(rows) <= MAX_POINTS:
        return rows
    step = len(rows) / MAX_POINTS
    return [rows[int(i * step)] for i in range(MAX_POINTS)] + [rows[-1]]


def along_training(root: Path, label: str, loss: str) -> list[dict[str, Any]]:
    """One row per logged step of every seed: the log ratios and both weights there (steps of
    self-play iterations concatenated)."""
    folders: dict[int, list[Path]] = {}
    for where in RunLayout(root).train_iteration_dirs():
        if where.method == label:
            folders.setdefault(int(where.seed or 0), []).append(where.folder)
    out: list[dict[str, Any]] = []
    for seed, its in sorted(folders.items()):
        rows: list[dict[str, Any]] = []
        offset = 0
        for folder in sorted(its, key=lambda f: int(f.name.split("-")[1])):
            summary = read_json(folder / "summary.json")
            params = dict(summary.get("params") or {})
            scale = reward_scale(loss, params)
            for rec in read_jsonl(folder / "metrics.jsonl") if scale else []:
                if rec.get("rewards/real") is None or rec.get("rewards/generated") is None:
                    continue
                r_real, r_gen = rec["rewards/real"] / scale, rec["rewards/generated"] / scale
                w = weights(loss, params, r_real, r_gen)
                rows.append({"seed": seed, "iteration": int(folder.name.split("-")[1]),
                             "step": offset + int(rec.get("step", 0)), "r_real": r_real, "r_gen": r_gen,
                             "w_real": w["w_real"], "w_gen": w["w_gen"]})
            offset += int(summary.get("steps", 0))
        out += _thin(rows)
    return out


def loss_facts(cfg: ExperimentConfig, root: Path | None = None) -> dict[str, Any]:
    """Every method's loss facts: family, parameters, sweep, variant hash, and its anatomy at
    r = 0 (with its first iteration's parameters) and, with a run folder, along training."""
    methods = []
    for m in cfg.methods:
        _, first = iteration_config(cfg, m.label, 1)
        at_zero = weights(m.loss, first.params)
        w_real, w_gen = at_zero["w_real"], at_zero["w_gen"]
        methods.append({
            "label": m.label, "loss": m.loss, "family": LOSSES.family(m.loss), "params": dict(first.params),
            "sweep": to_plain(m.sweep), "sweep_of": m.sweep_of, "hash": variant_hash(cfg, m.label),
            "pairs": LOSSES.needs_pairs(m.loss), "self_play": LOSSES.self_play(m.loss),
            "per_token": not LOSSES.needs_pairs(m.loss),
            "reward_scale": reward_scale(m.loss, first.params),  # logged rewards/* = reward_scale * r
            "at_zero": {"w_real": w_real, "w_gen": w_gen,
                        "gen_over_real": (w_gen / w_real) if w_gen is not None and w_real else None},
            "training": along_training(root, m.label, m.loss) if root is not None else [],
        })
    return {"methods": methods}


def write_loss_facts(cfg: ExperimentConfig, root: str | Path) -> Path:
    """`<run>/losses.json` (the report's loss-anatomy table and figure, and each method's family)."""
    path = RunLayout(root).loss_facts
    atomic_write_json(path, loss_facts(cfg, Path(root)))
    return path


def refresh_loss_facts(root: str | Path) -> Path | None:
    """Rewrite `<run>/losses.json` from the run folder's config.yaml (`gsil-bench report`); when its
    losses cannot be loaded (a plugin not importable here) the file is left as it is, with a warning."""
    path = RunLayout(root).config
    if not path.is_file():
        return None
    try:
        cfg = experiment_from_dict(yaml.safe_load(path.read_text()) or {}, str(path))
        return write_loss_facts(cfg, root)
    except (GsilError, KeyError, TypeError, ValueError) as err:
        log.warning("%s: loss facts not recomputed (%s); the report uses %s as it is",
                                            root, err, RunLayout(root).loss_facts.name)
        return None
