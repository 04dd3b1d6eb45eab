"""Statistics over training seeds: means with Student-t confidence intervals, and paired differences.

With ``n`` seeds the mean of a metric has the interval
``mean ± t(0.975, n-1) · s / sqrt(n)`` (``s`` the sample standard deviation):
with 3 to 5 seeds the t quantile (4.30 to 2.78) is much wider than the
normal 1.96, which is why a handful of seeds rarely settles a difference of
a few hundredths.

Two methods trained with the same seeds share their data order and pairs, so
they are compared **paired**: the interval is that of the per-seed
differences, which removes the seed-to-seed variation they share.
"""
from __future__ import annotations

import numpy as np
from scipy import stats as _scipy_stats


def mean_ci(values, level: float = 0.95) -> dict:
    """``{"mean", "ci", "low", "high", "n"}``: the mean of ``values`` and its Student-t interval.

    The interval is ``scipy.stats.t.interval`` with ``n - 1`` degrees of
    freedom around the mean, scaled by the standard error; ``ci`` is its
    half-width. With one value the interval is unknown (NaN); values without
    spread give the mean itself (``ci`` 0).
    """
    values = np.asarray(values, dtype=np.float64)
    mean, n = float(values.mean()), int(values.size)
    low = high = mean if n >= 2 else float("nan")
    if n >= 2 and values.std() > 0:
        low, high = map(float, _scipy_stats.t.interval(level, n - 1, loc=mean, scale=_scipy_stats.sem(values)))
    return {"mean": mean, "ci": (high - low) / 2, "low": low, "high": high, "n": n}


def paired_difference(a, b, level: float = 0.95) -> dict:
    """The mean of ``a - b`` over paired seeds with its t interval, and how many seeds ``a`` won.

    ``a`` and ``b`` hold one value per seed, in the same seed order. Adds
    ``"wins"`` (seeds with ``a > b``) and ``"p"``, the two-sided paired
    t-test p-value (NaN with fewer than two seeds or no spread).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need one value per seed on both sides; got shapes {a.shape} and {b.shape}")
    differences = a - b
    result = mean_ci(differences, level)
    p = float("nan")
    if differences.size >= 2 and differences.std(ddof=1) > 0:
        p = float(_scipy_stats.ttest_rel(a, b).pvalue)
    return {**result, "wins": int((differences > 0).sum()), "p": p}


def verdict(difference: dict) -> str:
    """``"holds"``, ``"reversed"`` or ``"not resolved"``: where the interval of a difference lies against 0."""
    if difference["low"] > 0:
        return "holds"
    if difference["high"] < 0:
        return "reversed"
    return "not resolved"
