"""Training trajectories in the nightly comparison: the same config (same seed, same data,
same steps) must train along the same per-step curve, within a float-level tolerance.

For every training iteration (method, seed, iteration) of the baseline, each logged key of
metrics.jsonl (loss and its terms, rewards, log-probs, learning rate, gradient norm,
tokens) is compared step by step with the candidate's: a step diverges when

    |candidate - baseline| > tol(key) * max(1, |baseline|)

(a scaled absolute tolerance: absolute near 0, relative for large values such as summed
log-probs). A flipped loss sign shows at step 1, a broken chat template in `tokens` and
the log-probs at step 1, a wrong learning rate in `lr` and in the loss from step 2 on. A
different number of logged steps, or an iteration the candidate lacks, is a divergence too.

Keys not compared: `step` and `epoch` (the index), and the classifier accuracies
(`rewards/accuracy`, ...): at the start of an iteration the policy is the reference, every
log ratio is 0 up to float rounding, and `r(real) > r(gen)` flips on rounding alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gsil_bench.reports.rundata import RunData

# key prefix -> tolerance (scaled absolute, see above); the longest matching prefix wins
TRAIN_TOLERANCE: dict[str, float] = {
    "loss": 1e-3, "rewards/": 1e-3, "logps/": 1e-4, "grad_norm": 1e-2, "lr": 1e-6, "tokens": 0.0,
}
TRAIN_FALLBACK = 1e-3
SKIPPED = ("step", "epoch")


def _skipped(key: str) -> bool:
    return key in SKIPPED or key.endswith("accuracy")


def train_tolerance(key: str, overrides: Mapping[str, float] | None = None) -> float:
    """`report.tolerance["train/<key>"]`, else the longest TRAIN_TOLERANCE prefix, else the fallback."""
    over = overrides or {}
    if f"train/{key}" in over:
        return float(over[f"train/{key}"])
    hits = [p for p in TRAIN_TOLERANCE if key.startswith(p)]
    return TRAIN_TOLERANCE[max(hits, key=len)] if hits else TRAIN_FALLBACK


@dataclass
class TrajectoryChange:
    """One training iteration's curve compared key by key."""

    method: str
    seed: int
    iteration: int
    steps: int  # baseline steps
    status: str  # same, diverged, missing
    key: str | None = None  # the first key that diverged (at the first step that did)
    step: int | None = None
    base_value: float | None = None
    cand_value: float | None = None
    max_diff: float = 0.0  # the largest |candidate - baseline| over every compared key and step
    note: str = ""


def _first_divergence(base: list[dict], cand: list[dict], overrides: Mapping[str, float] | None,
                      change: TrajectoryChange) -> None:
    for b, c in zip(base, cand):
        for key, bv in b.items():
            if _skipped(key) or not isinstance(bv, (int, float)):
                continue
            cv = c.get(key)
            if not isinstance(cv, (int, float)):
                if change.status == "same":
                    change.status, change.key, change.step, change.note = "diverged", key, b.get("step"), "absent"
                    change.base_value = float(bv)
                continue
            diff = abs(float(cv) - float(bv))
            change.max_diff = max(change.max_diff, diff)
            if diff > train_tolerance(key, overrides) * max(1.0, abs(float(bv))) and change.status == "same":
                change.status, change.key, change.step = "diverged", key, b.get("step")
                change.base_value, change.cand_value = float(bv), float(cv)


def compare_trajectories(base: RunData, cand: RunData,
                         overrides: Mapping[str, float] | None = None) -> list[TrajectoryChange]:
    """Every baseline training iteration against the candidate's (see the module docstring)."""
    by_key = {(t.method, t.seed, t.iteration): t for t in cand.train}
    out = []
    for t in sorted(base.train, key=lambda t: (base.methods.index(t.method) if t.method in base.methods else 99,
                                               t.seed, t.iteration)):
        b_curve = t.curve()
        change = TrajectoryChange(t.method, t.seed, t.iteration, len(b_curve), "same")
        other = by_key.get((t.method, t.seed, t.iteration))
        if other is None:
            change.status, change.note = "missing", "the candidate has no such training iteration"
            out.append(change)
            continue
        c_curve = other.curve()
        _first_divergence(b_curve, c_curve, overrides, change)
        if len(c_curve) != len(b_curve) and change.status == "same":
            change.status, change.note = "diverged", f"{len(c_curve)} logged steps, baseline {len(b_curve)}"
        out.append(change)
    return out


def trajectory_rows(changes: list[TrajectoryChange]) -> list[dict[str, object]]:
    """Table rows for compare.md/.html."""
    rows = []
    for c in changes:
        first = (f"{c.key} at step {c.step}: {c.base_value:.6g} -> "
                 + (f"{c.cand_value:.6g}" if c.cand_value is not None else "absent")) if c.key else (c.note or "–")
        rows.append({"method": c.method, "seed": c.seed, "iteration": c.iteration, "steps": c.steps,
                     "first divergence": first, "max |diff|": f"{c.max_diff:.3g}",
                     "status": {"same": "ok", "diverged": "▼ diverged", "missing": "MISSING"}[c.status]})
    return rows
