"""Reading the comparison's results: tables over seeds, claims, committed rows, margins, stamps."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from helpers import config, report

TWO_STAGE = {"single, one-stage": 0.0, "double, one-stage": 0.01, "triplet, one-stage": 0.02,
             "single, two-stage": 0.1, "double, two-stage": 0.12, "triplet, two-stage": 0.13, report.MATCHED: 0.03}
"""A made-up comparison: each model's mAP is a shared per-seed base plus this shift."""


def _comparison() -> pd.DataFrame:
    return pd.DataFrame([{"model": model, "seed": seed, "mAP (trapezoid)": base + shift}
                         for seed, base in enumerate([0.40, 0.45, 0.42]) for model, shift in TWO_STAGE.items()])


def test_row_names():
    assert report.model_name("double", "two-stage") == "double, two-stage"
    assert report.MATCHED == "double, one-stage, compute-matched"
    assert {a for _, a, _ in report.CLAIMS} | {b for _, _, b in report.CLAIMS} <= set(TWO_STAGE)


def test_summary_is_the_mean_and_t_interval_over_seeds():
    summary = report.summary(_comparison(), ["mAP (trapezoid)"])
    values = np.array([0.52, 0.57, 0.54])  # double, two-stage
    half = 4.302652729911275 * values.std(ddof=1) / np.sqrt(3)  # t quantile (97.5%, 2 degrees of freedom)
    assert summary.loc["double, two-stage", ("mAP (trapezoid)", "mean")] == pytest.approx(values.mean())
    assert summary.loc["double, two-stage", ("mAP (trapezoid)", "ci")] == pytest.approx(half)
    assert list(summary.index) == list(TWO_STAGE) and summary.index.name == "test, 3 seeds"
    shown = report.formatted(summary)
    assert shown.loc["double, two-stage", "mAP (trapezoid)"] == f"{values.mean():.3f} ± {half:.3f}"


@pytest.mark.filterwarnings("ignore:Precision loss occurred")  # made-up differences equal up to rounding
def test_claims_are_paired_differences_with_verdicts():
    claims = report.claims(_comparison())
    assert list(claims.index) == [claim for claim, _, _ in report.CLAIMS]
    matched = claims.loc["two-stage beats compute-matched one-stage (double margin)"]
    assert matched["difference"] == pytest.approx(0.09) and matched["ci"] == pytest.approx(0.0, abs=1e-9)
    assert matched["verdict"] == "holds" and matched["seeds a wins"] == "3/3"
    assert claims.loc["two-stage double margin beats two-stage triplet", "verdict"] == "reversed"
    assert report.claim_sentence("x", claims.iloc[0]) == (
        "* *x* **holds**: the whole interval is above zero. mAP (trapezoid): double, one-stage 0.433 against "
        "single, one-stage 0.423, paired difference +0.010, 95% interval [+0.010, +0.010]; double, one-stage "
        "ahead in 3/3 seeds.")


def test_a_summary_table_in_markdown():
    table = report.formatted(report.summary(_comparison(), ["mAP (trapezoid)"])).to_markdown()
    header, rule, first = table.splitlines()[:3]
    assert [c.strip() for c in header.strip("|").split("|")] == ["test, 3 seeds", "mAP (trapezoid)"]
    assert set(rule) <= set("|:-") and first.split("|")[1].strip() == "single, one-stage"
    assert "±" in first


def test_committed_rows_pick_one_seed_in_the_asked_order_and_name_what_is_missing():
    comparison = pd.DataFrame({"model": ["a", "b", "a", "b"], "seed": [0, 0, 1, 1],
                               "mAP (trapezoid)": [0.1, 0.2, 0.3, 0.4], "R@1": [0.5, 0.6, 0.7, 0.8]})
    rows = report.committed_rows(comparison, 1, ["b", "a"], ["R@1", "mAP (trapezoid)"])
    assert list(rows.index) == ["b", "a"] and list(rows.columns) == ["R@1", "mAP (trapezoid)"]
    assert rows.loc["a", "mAP (trapezoid)"] == 0.3 and rows.loc["b", "R@1"] == 0.8
    with pytest.raises(KeyError, match=r"\['c'\]"):
        report.committed_rows(comparison, 0, ["a", "c"], ["R@1"])
    with pytest.raises(KeyError, match="P@1"):
        report.committed_rows(comparison, 0, ["a"], ["P@1"])


def test_chosen_margins_take_the_best_validation_map_first_on_ties():
    tuning = pd.DataFrame({"loss": ["single", "single", "double", "double", "double"],
                           "margin": [0.4, 0.6, np.nan, np.nan, np.nan],
                           "pos_margin": [np.nan, np.nan, 0.0, 0.4, 0.8],
                           "neg_margin": [np.nan, np.nan, 1.2, 1.2, 1.2],
                           "best val_mAP": [0.30, 0.35, 0.50, 0.50, 0.40]})
    assert report.chosen_margins(tuning) == {"single": {"margin": 0.6},
                                             "double": {"pos_margin": 0.0, "neg_margin": 1.2}}


def _write(folder, profiles=("smoke", "tutorial")):
    for file in report.FILES.values():
        pd.DataFrame({"profile": list(profiles), "value": range(len(profiles))}).to_csv(folder / file, index=False)


def test_read_results_picks_the_profiles_rows(tmp_path):
    _write(tmp_path)
    by_name = report.read_results("tutorial", tmp_path)
    by_profile = report.read_results(config.get_profile("tutorial"), tmp_path)
    assert set(by_name) == set(report.FILES)
    for key in report.FILES:
        want = {"profile": ["tutorial"], "value": [1]}
        assert by_name[key].to_dict("list") == by_profile[key].to_dict("list") == want
    with pytest.raises(FileNotFoundError, match="make results PROFILE=paper"):
        report.read_results("paper", tmp_path)
    (tmp_path / report.FILES["imbalance"]).unlink()
    with pytest.raises(FileNotFoundError, match="imbalance.csv"):
        report.read_results("smoke", tmp_path)


def test_stamp_note_says_whether_the_code_is_current():
    table = pd.DataFrame({"profile": ["tutorial"], "code": ["abc123"], "wall s": [600]})
    current = report.stamp_note(table, "abc123")
    assert "tutorial profile in 10 min" in current and "(the current one)" in current
    stale = report.stamp_note(table, "def456")
    assert "**not** the current def456" in stale and "code version abc123" in stale
