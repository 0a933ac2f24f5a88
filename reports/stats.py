"""Statistics for reports: bootstrap intervals over examples (and seeds), and the
paired bootstrap that compares two models item by item.

All resampling is seeded, so a report written twice from the same files is
byte-identical (a resumed run's tables equal an uninterrupted run's).

- `bootstrap_ci(scores)`: mean of per-item scores with a percentile interval.
- `hierarchical_ci(matrix)`: seeds x items; resamples seeds, then items (the item
  draw is shared by the seeds, since the same items are scored under every seed),
  so the interval covers variation over examples and over seeds.
- `paired_bootstrap(base, cand)`: difference of means over items paired by `id`,
  its interval and a two-sided bootstrap p-value (Efron & Tibshirani 1993, ch. 16;
  the paired design of Koehn 2004 / Dror et al. 2018 for NLP significance).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from gsil_bench.core.stats import t_interval

DEFAULT_SEED = 20241014  # fixed: reports must be reproducible


@dataclass(frozen=True)
class Interval:
    """A mean with its (1 - alpha) interval, over `n` items and `seeds` seeds."""

    value: float
    ci_low: float
    ci_high: float
    n: int
    seeds: int = 1


@dataclass(frozen=True)
class PairedDiff:
    """Candidate minus baseline over `n` shared items."""

    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int
    base_mean: float
    cand_mean: float

    def significant(self) -> bool:
        """The interval excludes zero."""
        return self.ci_low > 0 or self.ci_high < 0

    @property
    def sign(self) -> int:
        """+1 significant gain, -1 significant drop, 0 not significant."""
        if not self.significant():
            return 0
        return 1 if self.diff > 0 else -1


def _rng(seed: int | None) -> np.random.Generator:
    return np.random.default_rng(DEFAULT_SEED if seed is None else seed)


def _percentiles(stats: np.ndarray, alpha: float) -> tuple[float, float]:
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def _resample_means(values: np.ndarray, n_boot: int, rng: np.random.Generator, chunk: int = 256) -> np.ndarray:
    """Means of `n_boot` resamples (with replacement) of the last axis, in chunks to
    bound memory. `values` is [n] or [k, n]; for 2-D the same item draw is used for
    every row and the row means are returned as [n_boot, k]."""
    n = values.shape[-1]
    out = []
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        idx = rng.integers(0, n, size=(b, n))
        out.append(values[..., idx].mean(axis=-1).T if values.ndim == 2 else values[idx].mean(axis=-1))
    return np.concatenate(out, axis=0)


def bootstrap_ci(scores: np.ndarray | list[float], *, n_boot: int = 2000, alpha: float = 0.05,
                 seed: int | None = None) -> Interval:
    """Mean of per-item scores with a percentile-bootstrap interval over items."""
    x = np.asarray(scores, dtype=float)
    if x.size == 0:
        raise ValueError("bootstrap_ci: no scores")
    if x.size == 1:
        v = float(x[0])
        return Interval(v, v, v, 1)
    lo, hi = _percentiles(_resample_means(x, n_boot, _rng(seed)), alpha)
    return Interval(float(x.mean()), lo, hi, int(x.size))


def hierarchical_ci(matrix: np.ndarray, *, n_boot: int = 2000, alpha: float = 0.05,
                    seed: int | None = None) -> Interval:
    """Mean of a seeds x items score matrix with a two-level bootstrap interval:
    each replicate draws seeds with replacement, then items with replacement."""
    m = np.asarray(matrix, dtype=float)
    if m.ndim != 2 or m.size == 0:
        raise ValueError("hierarchical_ci: expected a non-empty seeds x items matrix")
    k, n = m.shape
    if k == 1:
        return bootstrap_ci(m[0], n_boot=n_boot, alpha=alpha, seed=seed)
    rng = _rng(seed)
    per_seed = _resample_means(m, n_boot, rng)  # [n_boot, k]: item draw shared across seeds
    pick = rng.integers(0, k, size=(n_boot, k))
    stats = np.take_along_axis(per_seed, pick, axis=1).mean(axis=1)
    lo, hi = _percentiles(stats, alpha)
    return Interval(float(m.mean()), lo, hi, n, k)


def seed_interval(values: list[float], alpha: float = 0.05) -> Interval:
    """Mean over seeds with core.stats.t_interval's Student-t interval, as an Interval (used when per-item
    scores are missing)."""
    lo, hi = t_interval(values, 1 - alpha)
    return Interval(float(np.mean(values)), lo, hi, 0, len(values))


def pair_by_id(base: Mapping[str, float], cand: Mapping[str, float]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Shared ids (sorted) and the two aligned score vectors."""
    ids = sorted(set(base) & set(cand))
    return ids, np.array([base[i] for i in ids], dtype=float), np.array([cand[i] for i in ids], dtype=float)


def paired_bootstrap(base: Mapping[str, float], cand: Mapping[str, float], *, n_boot: int = 2000,
                     alpha: float = 0.05, seed: int | None = None) -> PairedDiff | None:
    """Paired bootstrap of mean(cand) - mean(base) over the items both scored.

    Returns None when they share no item. The p-value is the two-sided bootstrap
    p: twice the smaller tail mass of the replicate differences at zero (floored
    at 1/n_boot), which agrees with the percentile interval excluding zero.
    """
    ids, a, b = pair_by_id(base, cand)
    if not ids:
        return None
    d = b - a
    if np.all(d == d[0]):  # no variation: the difference is exact
        v = float(d[0])
        return PairedDiff(v, v, v, 1.0 if v == 0 else 0.0, len(ids), float(a.mean()), float(b.mean()))
    reps = _resample_means(d, n_boot, _rng(seed))
    lo, hi = _percentiles(reps, alpha)
    tail = min(float(np.mean(reps <= 0)), float(np.mean(reps >= 0)))
    p = min(1.0, max(2 * tail, 1.0 / n_boot))
    return PairedDiff(float(d.mean()), lo, hi, p, len(ids), float(a.mean()), float(b.mean()))


def mean_over_seeds(per_seed: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Average per-item scores over seeds, on the items every seed scored."""
    if not per_seed:
        return {}
    common = set(per_seed[0]).intersection(*per_seed[1:])
    return {i: float(np.mean([s[i] for s in per_seed])) for i in sorted(common)}
