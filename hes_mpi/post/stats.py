"""Statistics over seeds, from scipy.stats: the mean with a Student-t confidence interval, and Welch's
test of the difference between two configurations (unequal variances), with its confidence interval."""

from __future__ import annotations

import math

import numpy as np

LEVEL = 0.95


def finite(values) -> np.ndarray:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    return v[np.isfinite(v)]


def mean_ci(values, level: float = LEVEL) -> tuple[float, float, float, int]:
    """(mean, low, high, n): the t interval of the mean at ``level`` (low = high = mean when every value is
    the same; NaN bounds for n < 2)."""
    from scipy import stats

    v = finite(values)
    n = int(v.size)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    m = float(v.mean())
    if n < 2:
        return m, math.nan, math.nan, n
    sem = float(stats.sem(v))
    if sem == 0.0:
        return m, m, m, n
    lo, hi = stats.t.interval(level, n - 1, loc=m, scale=sem)
    return m, float(lo), float(hi), n


def welch(a, b, level: float = LEVEL) -> dict:
    """Welch's t-test of mean(a) - mean(b): ``{diff, low, high, p, n_a, n_b}`` (NaN where it is undefined:
    fewer than 2 values on a side, or no spread at all)."""
    from scipy import stats

    a, b = finite(a), finite(b)
    out = {"diff": float(a.mean() - b.mean()) if a.size and b.size else math.nan, "low": math.nan,
           "high": math.nan, "p": math.nan, "n_a": int(a.size), "n_b": int(b.size)}
    if a.size < 2 or b.size < 2 or (a.var() == 0 and b.var() == 0):
        return out
    res = stats.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(level)
    out.update(low=float(ci.low), high=float(ci.high), p=float(res.pvalue))
    return out
