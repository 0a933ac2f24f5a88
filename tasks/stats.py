"""Confidence intervals and estimators for evaluation metrics.

Which interval a metric gets (recorded as `ci_method` beside it in metrics.json):
- `wilson`: a proportion of 0/1 item scores (exact match, greedy pass@1): the Wilson
  score interval, which keeps its coverage near 0 and 1 and for small n;
- `t`: a mean of real-valued item scores (pass@k estimates, per-question judge
  ratings): Student's t interval, mean +- t_{n-1} * s / sqrt(n);
- `cluster-bootstrap`: a ratio over clustered observations (MT-Bench: all parsed
  turn ratings, clustered by question): percentile bootstrap resampling whole
  questions, so the two turns of one question are not counted as independent.

`stderr` is always the sample standard error s / sqrt(n) (ddof = 1), as lm-eval reports.
`pass_at_k` is the unbiased estimator of Chen et al. (2021), computed exactly with
integer binomials.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as _sps

from gsil_bench.core.stats import t_interval

Z95 = 1.959963984540054  # standard normal 97.5% quantile


@dataclass(frozen=True)
class Metric:
    """One aggregated metric with its 95% interval (the metrics.json entry)."""

    value: float | None
    ci_low: float | None
    ci_high: float | None
    n: int
    stderr: float | None
    ci_method: str
    higher_is_better: bool = True  # the direction reports and regression checks read

    def to_json(self) -> dict:
        return asdict(self)


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion successes / n."""
    if n <= 0:
        raise ValueError("wilson_interval needs n > 0")
    z = float(_sps.norm.ppf(0.5 + confidence / 2))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def sample_stderr(values: Sequence[float]) -> float | None:
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return None
    return float(x.std(ddof=1)) / math.sqrt(len(x))


def is_binary(values: Sequence[float]) -> bool:
    return all(v in (0, 1) for v in values)


def summarize(values: Sequence[float], method: str = "auto") -> Metric:
    """Mean of per-item scores with a 95% interval; method auto = wilson for 0/1 scores, else t."""
    vals = [float(v) for v in values]
    if not vals:
        return Metric(None, None, None, 0, None, "none")
    if method == "auto":
        method = "wilson" if is_binary(vals) else "t"
    mean = float(np.mean(vals))
    if method == "wilson":
        lo, hi = wilson_interval(sum(vals), len(vals))
    elif method == "t":
        lo, hi = t_interval(vals)
    else:
        raise ValueError(f"unknown interval method {method!r} (wilson, t)")
    return Metric(mean, _finite(lo), _finite(hi), len(vals), sample_stderr(vals), method)


def cluster_bootstrap(
    clusters: Sequence[Sequence[float]], *, resamples: int = 2000, seed: int = 0, confidence: float = 0.95
) -> Metric:
    """Mean over all observations, with a percentile bootstrap interval resampling whole clusters.

    The value is sum(all) / count(all) (e.g. FastChat's MT-Bench score: the mean of every
    parsed turn rating); `n` is the number of observations. Empty clusters are kept (they
    carry no observations) so the resampling unit stays the question.
    """
    sums = np.array([float(sum(c)) for c in clusters])
    counts = np.array([len(c) for c in clusters], dtype=float)
    total = counts.sum()
    if total == 0:
        return Metric(None, None, None, 0, None, "none")
    value = float(sums.sum() / total)
    flat = [v for c in clusters for v in c]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(clusters), size=(resamples, len(clusters)))
    s, c = sums[idx].sum(axis=1), counts[idx].sum(axis=1)
    ok = c > 0
    boot = s[ok] / c[ok]
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(boot, [alpha, 1 - alpha]) if len(boot) else (value, value)
    return Metric(value, float(lo), float(hi), int(total), sample_stderr(flat), "cluster-bootstrap")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021, eq. 1)."""
    if not 0 <= c <= n or k < 1 or k > n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)
