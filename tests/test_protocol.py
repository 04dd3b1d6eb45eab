"""The fair-comparison protocol: its statistics, and the committed results/ files it wrote."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from helpers import config, methods, protocol, stats


def test_mean_ci_is_the_student_t_interval():
    values = np.array([0.51, 0.55, 0.53, 0.58])
    result = stats.mean_ci(values)
    low, high = scipy_stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=scipy_stats.sem(values))
    assert result["low"] == pytest.approx(low) and result["high"] == pytest.approx(high)
    assert np.isnan(stats.mean_ci([0.5])["ci"])


def test_paired_difference_and_verdicts():
    a, b = np.array([0.60, 0.58, 0.61]), np.array([0.50, 0.49, 0.52])
    result = stats.paired_difference(a, b)
    assert result["mean"] == pytest.approx(np.mean(a - b)) and result["wins"] == 3
    assert result["p"] == pytest.approx(scipy_stats.ttest_rel(a, b).pvalue)
    assert stats.verdict(result) == "holds" and stats.verdict(stats.paired_difference(b, a)) == "reversed"
    assert stats.verdict(stats.paired_difference([0.5, 0.6, 0.4], [0.55, 0.5, 0.45])) == "not resolved"
    # pairing removes the shared seed-to-seed variation: unpaired, these intervals overlap
    shared = np.array([0.3, 0.6, 0.45])
    assert stats.verdict(stats.paired_difference(shared + 0.02, shared)) == "holds"
    assert stats.mean_ci(shared + 0.02)["low"] < stats.mean_ci(shared)["high"]
    with pytest.raises(ValueError, match="one value per seed"):
        stats.paired_difference([1, 2], [1, 2, 3])


def test_grids_give_every_loss_the_same_budget_and_contain_the_papers_margins():
    paper = config.get_profile("paper")
    sizes = {loss: len(protocol.grid_points(loss)) for loss in methods.NAMES}
    assert len(set(sizes.values())) == 1, sizes
    for loss in methods.NAMES:
        assert methods.get(loss).margins(paper) in protocol.grid_points(loss)
    assert {"pos_margin": 0.0, "neg_margin": 1.2} in protocol.grid_points("double")  # m1 = 0: the single margin


def test_summary_claims_and_markdown_on_a_made_up_comparison():
    rows = []
    for seed, base in enumerate([0.40, 0.45, 0.42]):
        for model, shift in {"single, one-stage": 0.0, "double, one-stage": 0.01, "triplet, one-stage": 0.02,
                             "single, two-stage": 0.1, "double, two-stage": 0.12, "triplet, two-stage": 0.13,
                             protocol.MATCHED: 0.03}.items():
            rows.append({"model": model, "seed": seed, "mAP (trapezoid)": base + shift})
    comparison = pd.DataFrame(rows)
    summary = protocol.summary(comparison, ["mAP (trapezoid)"])
    assert summary.loc["double, two-stage", ("mAP (trapezoid)", "mean")] == pytest.approx(np.mean([0.52, 0.57, 0.54]))
    claims = protocol.claims(comparison)
    assert claims.loc["two-stage beats compute-matched one-stage (double margin)", "verdict"] == "holds"
    assert claims.loc["two-stage double margin beats two-stage triplet", "verdict"] == "reversed"
    text = protocol.claim_sentence("x", claims.iloc[0])
    assert "**holds**" in text and "3/3" in text
    table = protocol.markdown_table(protocol.formatted(summary))
    assert table.splitlines()[0].startswith("| test, 3 seeds | mAP (trapezoid) |") and "±" in table


@pytest.mark.parametrize("name", ["tutorial", "smoke"])
def test_committed_results_match_the_profile_and_the_methods(name):
    tables = protocol.read_results(name)
    tuning, comparison = tables["tuning"], tables["comparison"]
    profile = config.get_profile(name)
    assert list(dict.fromkeys(tuning["loss"])) == list(methods.NAMES)
    for loss in methods.NAMES:
        settings = tuning[tuning["loss"] == loss][list(methods.get(loss).margin_fields)].to_dict("records")
        assert settings == protocol.grid_points(loss)
    if name == "tutorial":  # the notebooks' margins are the tuned ones
        assert protocol.chosen_margins(tuning) == {m.name: m.margins(profile) for m in methods.METHODS.values()}
    expected = {protocol.model_name(loss, stage) for loss in methods.NAMES for stage in ("one-stage", "two-stage")}
    assert expected | {protocol.MATCHED, *protocol.FLOORS} == set(comparison["model"])
    assert (comparison.groupby("model")["seed"].nunique() >= 3).all()
    assert set(tables["imbalance"]["loss"]) == {m.name for m in methods.METHODS.values() if m.is_pair_loss}


def test_committed_rows_pick_one_seed_in_the_asked_order_and_name_what_is_missing():
    comparison = pd.DataFrame({"model": ["a", "b", "a", "b"], "seed": [0, 0, 1, 1],
                               "mAP (trapezoid)": [0.1, 0.2, 0.3, 0.4], "R@1": [0.5, 0.6, 0.7, 0.8]})
    rows = protocol.committed_rows(comparison, 1, ["b", "a"], ["R@1", "mAP (trapezoid)"])
    assert list(rows.index) == ["b", "a"] and list(rows.columns) == ["R@1", "mAP (trapezoid)"]
    assert rows.loc["a", "mAP (trapezoid)"] == 0.3 and rows.loc["b", "R@1"] == 0.8
    with pytest.raises(KeyError, match=r"\['c'\]"):
        protocol.committed_rows(comparison, 0, ["a", "c"], ["R@1"])
    with pytest.raises(KeyError, match="P@1"):
        protocol.committed_rows(comparison, 0, ["a"], ["P@1"])
