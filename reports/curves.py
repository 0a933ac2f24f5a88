"""What the training figure and the report say about the training curves beyond drawing them:
which curves coincide (drawn so each stays visible, and named in the panel), which trainings
diverged (flagged on the page, in tables.md and on the console), and what a logged reward is.

Rewards: every pairwise loss logs `rewards/real` and `rewards/generated` as s * r, with
r = log pi - log pi_ref summed over the response and s the loss's own scale (1 for the GSIL
family, beta for DPO, its variants and SPIN: TRL's convention). trainers.anatomy measures s
for each method (`reward_scale` in losses.json); the figure gives each loss family its own
reward panels, the axis saying which quantity it shows ("beta*r" or "r").

Divergence: a training iteration whose loss becomes NaN or infinite, or rises above its first
logged value by more than DIVERGE_FACTOR times that value's size (at least DIVERGE_FLOOR), e.g.
an IPO loss going from 25 to 1804 in two steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from gsil_bench.reports.rundata import RunData, method_facts

DIVERGE_FACTOR = 10.0
DIVERGE_FLOOR = 0.1  # the size a loss near zero is measured against


@dataclass(frozen=True)
class Divergence:
    """One training iteration whose loss left every reasonable range."""

    method: str
    seed: int
    iteration: int
    step: int
    first: float
    value: float

    def text(self) -> str:
        where = f"{self.method} seed {self.seed} iteration {self.iteration}"
        if not math.isfinite(self.value):
            return f"{where}: the loss is {self.value} at step {self.step} (first step: {self.first:.4g})"
        return (f"{where}: the loss rose from {self.first:.4g} to {self.value:.4g} by step {self.step} "
                f"(more than {DIVERGE_FACTOR:g} times its first value): the training diverged")


def divergences(run: RunData) -> list[Divergence]:
    """Every training iteration of the run whose loss diverged (module docstring), first step that did."""
    out = []
    for t in sorted(run.train, key=lambda t: (t.method, t.seed, t.iteration)):
        rows = [r for r in t.curve() if isinstance(r.get("loss"), int | float)]
        if not rows:
            continue
        first = float(rows[0]["loss"])
        limit = first + DIVERGE_FACTOR * max(abs(first), DIVERGE_FLOOR) if math.isfinite(first) else -math.inf
        for i, r in enumerate(rows):
            v = float(r["loss"])
            if not math.isfinite(v) or v > limit:
                out.append(Divergence(t.method, t.seed, t.iteration, int(r.get("step", i + 1)), first, v))
                break
    return out


SAME = 1e-3  # two curves coincide on screen when every point is within this share of the panel's y span


def same_points(xa: Any, ya: Any, xb: Any, yb: Any, span: float) -> bool:
    """The same x and the same y within SAME x `span` and within 1% of the values (on a log-like axis
    0.7 and 1.0 lie far apart however wide the span): one curve would hide the other."""
    xa, ya, xb, yb = (np.asarray(v, dtype=float) for v in (xa, ya, xb, yb))
    if xa.shape != xb.shape or ya.shape != yb.shape or not np.allclose(xa, xb):
        return False
    both = np.isfinite(ya) & np.isfinite(yb)
    if not np.array_equal(np.isnan(ya), np.isnan(yb)):
        return False
    gap = np.abs(ya[both] - yb[both])
    size = np.maximum(np.abs(ya[both]), np.abs(yb[both]))
    return bool(np.all(gap <= SAME * span + 1e-12) and np.all(gap <= 0.01 * size + 1e-9))


def coinciding(curves: dict[str, tuple[Any, Any]]) -> list[list[str]]:
    """Groups (two or more) of labels whose curves lie on one another (same_points, over the span of all
    of them): drawn in one style each, the later would hide the earlier."""
    ys = [np.asarray(y, dtype=float) for _, y in curves.values()]
    finite = np.concatenate([y[np.isfinite(y)] for y in ys]) if ys else np.array([])
    span = float(finite.max() - finite.min()) if finite.size else 0.0
    groups: list[list[str]] = []
    for label, (x, y) in curves.items():
        for g in groups:
            if same_points(*curves[g[0]], x, y, span):
                g.append(label)
                break
        else:
            groups.append([label])
    return [g for g in groups if len(g) > 1]


def reward_scales(run: RunData) -> dict[str, float | None]:
    """Method -> s of its logged rewards (s * r), from losses.json; absent: unknown (older runs)."""
    return {m: (None if f.get("reward_scale") is None else float(f["reward_scale"]))
            for m, f in method_facts(run).items() if "reward_scale" in f}


def reward_axis(side: str, scales: list[float | None]) -> str:
    """The y label of a reward panel: what the logged number is for these methods."""
    known = [s for s in scales if s is not None]
    if not known or len(known) < len(scales):
        return f"logged reward of {side} (scale as the loss logs it)"
    if all(s == 1.0 for s in known):
        return f"r({side}) = log-ratio to reference"
    values = sorted(set(known))
    beta = f"beta={values[0]:g}" if len(values) == 1 else "beta per method"
    return f"beta*r({side}), {beta}"
