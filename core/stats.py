"""Intervals shared by the tasks (a metric's interval over items) and the reports (over seeds):
one Student-t interval for a mean."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as _sps


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Student's t interval for the mean (degenerate to the mean when n = 1 or s = 0)."""
    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, mean
    se = float(x.std(ddof=1)) / math.sqrt(len(x))
    half = float(_sps.t.ppf(0.5 + confidence / 2, len(x) - 1)) * se
    return mean - half, mean + half
