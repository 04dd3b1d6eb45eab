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


def rerun_tolerance(differences, sigmas: float = 3) -> float:
    """How far the mean of paired ``differences`` may move when every seed is run again elsewhere.

    A rerun on another processor (other rounding, so another training path)
    draws a new set of per-seed differences, much as new seeds would: two
    such means differ by about ``sqrt(2) * s / sqrt(n)`` (``s`` the sample
    standard deviation of the differences). The tolerance is ``sigmas``
    times that; NaN with fewer than two differences.
    """
    differences = np.asarray(differences, dtype=np.float64)
    if differences.size < 2:
        return float("nan")
    return rerun_move(differences.std(ddof=1), differences.size, sigmas)


def rerun_move(sd: float, n: int, sigmas: float = 3) -> float:
    """``sigmas * sqrt(2) * sd / sqrt(n)``: how far a mean over ``n`` seeds of spread ``sd`` may move on a rerun."""
    return float(sigmas * np.sqrt(2) * sd / np.sqrt(n))


FIRMNESS = ("firm", "fragile", "open")


def firmness(difference: dict, tolerance: float) -> str:
    """Whether a verdict (:func:`verdict`) would survive a rerun that moves the difference by up to ``tolerance``.

    * ``"firm"``: the interval clears zero by more than ``tolerance``, so a
      rerun elsewhere reads the same verdict;
    * ``"fragile"``: it clears zero, but by less than ``tolerance``: a rerun
      may read "not resolved";
    * ``"open"``: the interval contains zero; a rerun, or more seeds, may
      resolve the claim either way.
    """
    if difference["low"] > 0:
        return "firm" if difference["low"] > tolerance else "fragile"
    if difference["high"] < 0:
        return "firm" if difference["high"] < -tolerance else "fragile"
    return "open"


def bootstrap_ci(values, clusters, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> dict:
    """``{"mean", "low", "high"}``: the mean of ``values`` and its percentile bootstrap interval over ``clusters``.

    Test queries of one category are not independent (they share their
    database images), so whole categories are resampled with replacement
    (``scipy.stats.bootstrap`` over the categories' sums and counts), and
    each resample's mean is the pooled mean of its queries. The interval
    covers the variation due to *which* test categories were drawn, which
    the seed interval does not.
    """
    values = np.asarray(values, dtype=np.float64)
    clusters = np.asarray(clusters)
    if values.shape != clusters.shape or values.size == 0:
        raise ValueError(f"need one cluster per value and at least one value; got shapes {values.shape} "
                         f"and {clusters.shape}")
    _, codes = np.unique(clusters, return_inverse=True)
    sums, counts = np.bincount(codes, weights=values), np.bincount(codes).astype(np.float64)
    mean = float(sums.sum() / counts.sum())
    if sums.size < 2:
        return {"mean": mean, "low": float("nan"), "high": float("nan")}
    result = _scipy_stats.bootstrap((sums, counts), lambda s, c, axis=-1: s.sum(axis=axis) / c.sum(axis=axis),
                                    paired=True, vectorized=True, confidence_level=level, n_resamples=resamples,
                                    method="percentile", rng=np.random.default_rng(seed))
    return {"mean": mean, "low": float(result.confidence_interval.low), "high": float(result.confidence_interval.high)}
