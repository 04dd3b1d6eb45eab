"""Means over seeds with Student-t intervals and paired differences, against hand computations."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from helpers import stats

T_975_DF2 = 4.302652729911275
"""The 97.5% quantile of Student's t with 2 degrees of freedom, from a printed table (4.303)."""


def test_mean_ci_of_three_seeds_by_hand():
    result = stats.mean_ci([1.0, 2.0, 3.0])  # mean 2, sample standard deviation 1
    half = T_975_DF2 * 1.0 / math.sqrt(3)
    assert result == pytest.approx({"mean": 2.0, "ci": half, "low": 2.0 - half, "high": 2.0 + half, "n": 3})


def test_mean_ci_is_the_t_quantile_times_the_standard_error():
    values = np.array([0.51, 0.55, 0.53, 0.58])
    n, mean = len(values), values.mean()
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = scipy_stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    result = stats.mean_ci(values)
    assert result["mean"] == pytest.approx(mean) and result["ci"] == pytest.approx(half)
    assert (result["low"], result["high"]) == pytest.approx((mean - half, mean + half))
    assert stats.mean_ci(values, level=0.90)["ci"] == pytest.approx(scipy_stats.t.ppf(0.95, n - 1) * sd / math.sqrt(n))


def test_mean_ci_without_spread_or_with_one_value():
    assert stats.mean_ci([0.5, 0.5, 0.5]) == {"mean": 0.5, "ci": 0.0, "low": 0.5, "high": 0.5, "n": 3}
    single = stats.mean_ci([0.5])
    assert single["mean"] == 0.5 and single["n"] == 1
    assert np.isnan(single["ci"]) and np.isnan(single["low"]) and np.isnan(single["high"])


def test_paired_difference_by_hand():
    a, b = np.array([0.60, 0.58, 0.61]), np.array([0.50, 0.49, 0.52])
    differences = [0.10, 0.09, 0.09]
    mean = sum(differences) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / 2)
    t = mean / (sd / math.sqrt(3))
    result = stats.paired_difference(a, b)
    assert result["mean"] == pytest.approx(mean) and result["ci"] == pytest.approx(T_975_DF2 * sd / math.sqrt(3))
    assert result["wins"] == 3 and result["n"] == 3
    assert result["p"] == pytest.approx(2 * scipy_stats.t.sf(t, 2))


def test_paired_difference_without_spread_has_no_p_value():
    result = stats.paired_difference([0.6, 0.7], [0.5, 0.6])
    assert result["mean"] == pytest.approx(0.1) and result["ci"] == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(result["p"]) and result["wins"] == 2


def test_verdicts_and_pairing():
    a, b = np.array([0.60, 0.58, 0.61]), np.array([0.50, 0.49, 0.52])
    assert stats.verdict(stats.paired_difference(a, b)) == "holds"
    assert stats.verdict(stats.paired_difference(b, a)) == "reversed"
    assert stats.verdict(stats.paired_difference([0.5, 0.6, 0.4], [0.55, 0.5, 0.45])) == "not resolved"
    # pairing removes the shared seed-to-seed variation: unpaired, these intervals overlap
    shared = np.array([0.3, 0.6, 0.45])
    assert stats.verdict(stats.paired_difference(shared + 0.02, shared)) == "holds"
    assert stats.mean_ci(shared + 0.02)["low"] < stats.mean_ci(shared)["high"]
    with pytest.raises(ValueError, match="one value per seed"):
        stats.paired_difference([1, 2], [1, 2, 3])


def test_rerun_tolerance_by_hand():
    differences = [0.10, 0.09, 0.09]
    sd = math.sqrt(sum((d - 0.28 / 3) ** 2 for d in differences) / 2)
    assert stats.rerun_tolerance(differences) == pytest.approx(3 * math.sqrt(2) * sd / math.sqrt(3))
    assert stats.rerun_tolerance(differences, sigmas=1) == pytest.approx(math.sqrt(2) * sd / math.sqrt(3))
    assert np.isnan(stats.rerun_tolerance([0.1]))


def test_firmness_reads_how_far_the_interval_clears_zero():
    holds = {"low": 0.02, "high": 0.05}
    assert stats.firmness(holds, 0.01) == "firm" and stats.firmness(holds, 0.03) == "fragile"
    reversed_ = {"low": -0.05, "high": -0.02}
    assert stats.firmness(reversed_, 0.01) == "firm" and stats.firmness(reversed_, 0.02) == "fragile"
    assert stats.firmness({"low": -0.01, "high": 0.04}, 0.0) == "open"
    # the same interval, a verdict of each kind: firmness follows the verdict's side
    for low, high in [(0.02, 0.05), (-0.05, -0.02), (-0.01, 0.04)]:
        verdict = stats.verdict({"low": low, "high": high})
        kind = stats.firmness({"low": low, "high": high}, 0.015)
        assert (verdict == "not resolved") == (kind == "open")
