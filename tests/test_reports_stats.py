"""gsil_bench.reports.stats: bootstrap intervals against closed forms and scipy's independent
implementation; the paired bootstrap's sign, p-value and pairing by id."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from gsil_bench.reports.stats import bootstrap_ci, hierarchical_ci, mean_over_seeds, paired_bootstrap, seed_interval


def test_bootstrap_ci_matches_normal_approximation_for_bernoulli():
    rng = np.random.default_rng(1)
    x = (rng.random(2000) < 0.3).astype(float)
    iv = bootstrap_ci(x, n_boot=4000)
    p, se = x.mean(), x.std(ddof=0) / np.sqrt(x.size)  # CLT: the bootstrap mean is ~ N(p, se^2)
    assert iv.value == pytest.approx(p)
    assert iv.ci_low == pytest.approx(p - 1.96 * se, abs=0.15 * 1.96 * se)
    assert iv.ci_high == pytest.approx(p + 1.96 * se, abs=0.15 * 1.96 * se)
    assert iv.n == 2000


def test_bootstrap_ci_agrees_with_scipy_percentile_bootstrap():
    rng = np.random.default_rng(2)
    x = rng.normal(5.0, 2.0, 300)
    ours = bootstrap_ci(x, n_boot=5000)
    ref = sps.bootstrap((x,), np.mean, n_resamples=5000, method="percentile", random_state=3).confidence_interval
    half = (ref.high - ref.low) / 2
    assert ours.ci_low == pytest.approx(ref.low, abs=0.1 * half)
    assert ours.ci_high == pytest.approx(ref.high, abs=0.1 * half)


def test_constant_scores_give_a_degenerate_interval_and_bad_input_errors():
    iv = bootstrap_ci([1.0] * 10)
    assert (iv.value, iv.ci_low, iv.ci_high) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="no scores"):
        bootstrap_ci([])
    assert bootstrap_ci([0.25]).ci_low == 0.25


def test_bootstrap_is_reproducible():
    x = np.random.default_rng(4).random(100)
    assert bootstrap_ci(x) == bootstrap_ci(x)


def test_paired_bootstrap_agrees_with_scipy_paired_and_closed_form():
    rng = np.random.default_rng(5)
    a = rng.normal(0, 1, 400)
    b = a + rng.normal(0.2, 0.5, 400)  # strongly paired: candidate better by ~0.2
    base = {f"q{i}": v for i, v in enumerate(a)}
    cand = {f"q{i}": v for i, v in enumerate(b)}
    d = paired_bootstrap(base, cand, n_boot=5000)
    assert d is not None and d.n == 400 and d.sign == 1 and d.p_value < 0.01
    diff = b - a
    assert d.diff == pytest.approx(diff.mean())
    se = diff.std(ddof=0) / np.sqrt(diff.size)
    assert d.ci_low == pytest.approx(diff.mean() - 1.96 * se, abs=0.15 * 1.96 * se)
    ref = sps.bootstrap((a, b), lambda x, y: np.mean(y - x), paired=True, n_resamples=5000,
                        method="percentile", random_state=6).confidence_interval
    half = (ref.high - ref.low) / 2
    assert d.ci_low == pytest.approx(ref.low, abs=0.1 * half) and d.ci_high == pytest.approx(ref.high, abs=0.1 * half)


def test_paired_bootstrap_pairs_by_id_not_position():
    base = {"a": 0.0, "b": 1.0, "c": 0.0, "x": 1.0}
    cand = {"c": 0.0, "b": 1.0, "a": 0.0, "y": 0.0}  # same items, another order; x/y unshared
    d = paired_bootstrap(base, cand)
    assert d is not None and d.n == 3 and d.diff == 0.0 and d.p_value == 1.0 and d.sign == 0
    assert paired_bootstrap({"a": 1.0}, {"b": 1.0}) is None


def test_paired_bootstrap_detects_flips_but_not_noise():
    base = {f"q{i}": float(i % 2) for i in range(200)}  # 100 correct
    flipped = dict(base)
    for i in range(1, 60, 2):  # 30 correct items now wrong
        flipped[f"q{i}"] = 0.0
    drop = paired_bootstrap(base, flipped)
    assert drop is not None and drop.sign == -1 and drop.diff == pytest.approx(-30 / 200)
    noisy = dict(base)
    noisy["q1"], noisy["q0"] = 0.0, 1.0  # one flip each way
    same = paired_bootstrap(base, noisy)
    assert same is not None and same.sign == 0 and same.p_value > 0.5


def test_hierarchical_interval_widens_with_seed_variance():
    rng = np.random.default_rng(7)
    items = (rng.random(300) < 0.5).astype(float)
    same = np.stack([items, items, items])
    single = bootstrap_ci(items, n_boot=3000)
    h_same = hierarchical_ci(same, n_boot=3000)
    assert h_same.seeds == 3 and h_same.value == pytest.approx(items.mean())
    assert h_same.ci_high - h_same.ci_low == pytest.approx(single.ci_high - single.ci_low, rel=0.15)
    shifted = np.stack([np.clip(items + s, 0, 1) for s in (-0.3, 0.0, 0.3)])  # seeds disagree a lot
    h_var = hierarchical_ci(shifted, n_boot=3000)
    assert h_var.ci_high - h_var.ci_low > 2 * (single.ci_high - single.ci_low)


def test_t_interval_and_mean_over_seeds():
    iv = seed_interval([1.0, 2.0, 3.0])
    half = sps.t.ppf(0.975, 2) * 1.0 / np.sqrt(3)
    assert iv.value == 2.0 and iv.ci_low == pytest.approx(2 - half) and iv.seeds == 3
    assert mean_over_seeds([{"a": 1.0, "b": 0.0}, {"a": 0.0, "c": 1.0}]) == {"a": 0.5}
