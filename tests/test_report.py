"""Reading the comparison's results: tables over seeds, claims, spreads, committed rows, chosen settings, stamps."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from helpers import config, report, stats

pytestmark = pytest.mark.filterwarnings("ignore:Precision loss occurred")  # made-up differences equal up to rounding

T_975_DF2 = 4.302652729911275
"""The 97.5% quantile of Student's t with 2 degrees of freedom (4.303 in a printed table)."""

TWO_STAGE = {"single, one-stage": 0.0, "double, one-stage": 0.01, "triplet, one-stage": 0.02,
             "single, two-stage": 0.1, "double, two-stage": 0.12, "triplet, two-stage": 0.13, report.MATCHED: 0.03}
"""A made-up comparison: each model's mAP is a shared per-seed base plus this shift."""


def _comparison() -> pd.DataFrame:
    return pd.DataFrame([{"model": model, "seed": seed, "mAP (trapezoid)": base + shift}
                         for seed, base in enumerate([0.40, 0.45, 0.42]) for model, shift in TWO_STAGE.items()])


def test_row_names():
    assert report.model_name("double", "two-stage") == "double, two-stage"
    assert report.study_name("triplet", "one-stage") == "triplet, one-stage"
    assert report.MATCHED == "double, one-stage, compute-matched"
    assert {a for _, a, _ in report.CLAIMS} | {b for _, _, b in report.CLAIMS} <= set(TWO_STAGE)


# --------------------------------------------------------------------------- the summary over seeds
def test_summary_is_the_mean_and_t_interval_over_seeds():
    summary = report.summary(_comparison(), ["mAP (trapezoid)"])
    values = np.array([0.52, 0.57, 0.54])  # double, two-stage
    half = T_975_DF2 * values.std(ddof=1) / np.sqrt(3)
    assert summary.loc["double, two-stage", ("mAP (trapezoid)", "mean")] == pytest.approx(values.mean())
    assert summary.loc["double, two-stage", ("mAP (trapezoid)", "ci")] == pytest.approx(half)
    assert list(summary.index) == list(TWO_STAGE) and summary.index.name == "test, 3 seeds"
    shown = report.formatted(summary)
    assert shown.loc["double, two-stage", "mAP (trapezoid)"] == f"{values.mean():.3f} ± {half:.3f}"


def test_formatted_leaves_out_an_unknown_interval():
    one_seed = _comparison()[lambda t: t["seed"] == 0]
    shown = report.formatted(report.summary(one_seed, ["mAP (trapezoid)"]), digits=2)
    assert shown.loc["double, two-stage", "mAP (trapezoid)"] == "0.52"  # one seed: no interval


def test_a_summary_table_in_markdown():
    table = report.formatted(report.summary(_comparison(), ["mAP (trapezoid)"])).to_markdown()
    header, rule, first = table.splitlines()[:3]
    assert [c.strip() for c in header.strip("|").split("|")] == ["test, 3 seeds", "mAP (trapezoid)"]
    assert set(rule) <= set("|:-") and first.split("|")[1].strip() == "single, one-stage"
    assert "±" in first


# --------------------------------------------------------------------------- the claims
def test_claims_are_paired_differences_with_verdicts():
    claims = report.claims(_comparison())
    assert list(claims.index) == [claim for claim, _, _ in report.CLAIMS]
    assert "boot low" not in claims.columns  # no per-query table, no bootstrap
    matched = claims.loc["two-stage beats compute-matched one-stage (double margin)"]
    assert matched["difference"] == pytest.approx(0.09) and matched["ci"] == pytest.approx(0.0, abs=1e-9)
    assert matched["verdict"] == "holds" and matched["seeds a wins"] == "3/3"
    assert matched["mean a"] == pytest.approx(np.mean([0.52, 0.57, 0.54]))
    assert claims.loc["two-stage double margin beats two-stage triplet", "verdict"] == "reversed"
    assert claims.loc["two-stage double margin beats two-stage triplet", "seeds a wins"] == "0/3"
    # differences without spread move nowhere on a rerun: every resolved verdict is firm
    assert matched["tolerance"] == pytest.approx(0.0, abs=1e-9) and matched["firmness"] == "firm"


def test_a_claim_whose_interval_clears_zero_by_less_than_its_tolerance_is_fragile():
    comparison = _comparison()
    values = {0: 0.43, 1: 0.47, 2: 0.45}            # double, one-stage against single 0.40, 0.45, 0.42
    for seed, value in values.items():
        comparison.loc[(comparison["model"] == "double, one-stage") & (comparison["seed"] == seed),
                       "mAP (trapezoid)"] = value
    row = report.claims(comparison).loc["double margin beats single margin (one-stage)"]
    differences = np.array([0.03, 0.02, 0.03])
    tolerance = 3 * math.sqrt(2) * differences.std(ddof=1) / math.sqrt(3)
    low = differences.mean() - T_975_DF2 * differences.std(ddof=1) / math.sqrt(3)
    assert row["tolerance"] == pytest.approx(tolerance) and row["low"] == pytest.approx(low)
    assert row["verdict"] == "holds" and 0 < low < tolerance and row["firmness"] == "fragile"
    sentence = report.claim_sentence("c", row)
    assert sentence.endswith(f"Fragile: the interval clears zero by less than the difference's tolerance "
                             f"±{tolerance:.3f}; a rerun on another machine may read it as not resolved.")


def test_a_claim_with_seed_noise_by_hand():
    comparison = _comparison()
    noisy = {("single, one-stage", 0): 0.41, ("single, one-stage", 1): 0.43, ("single, one-stage", 2): 0.40,
             ("double, one-stage", 0): 0.40, ("double, one-stage", 1): 0.45, ("double, one-stage", 2): 0.42}
    for (model, seed), value in noisy.items():
        comparison.loc[(comparison["model"] == model) & (comparison["seed"] == seed), "mAP (trapezoid)"] = value
    row = report.claims(comparison).loc["double margin beats single margin (one-stage)"]
    # differences -0.01, 0.02, 0.02: mean 0.01, sample sd sqrt(0.0006 / 2), standard error 0.01
    half = T_975_DF2 * math.sqrt(0.0006 / 2) / math.sqrt(3)
    assert row["difference"] == pytest.approx(0.01) and row["ci"] == pytest.approx(half)
    assert (row["low"], row["high"]) == pytest.approx((0.01 - half, 0.01 + half))
    assert row["verdict"] == "not resolved" and row["seeds a wins"] == "2/3"
    # t = 0.01 / 0.01 = 1 with 2 degrees of freedom: P(|T| > 1) = 1 - 1/sqrt(3)  (the t(2) cdf is 1/2 + t / (2 sqrt(2 + t^2)))
    assert row["p"] == pytest.approx(1 - 1 / math.sqrt(3))


def _per_query(seeds=(0, 1, 2), categories=(3, 3, 5, 5, 5, 8, 8, 11)) -> pd.DataFrame:
    """Made-up per-query APs of every model of :data:`TWO_STAGE`: one row per (model, seed, query)."""
    rng = np.random.default_rng(4)
    return pd.DataFrame([{"model": model, "seed": seed, "query": q, "category": c,
                          "AP": float(rng.uniform(0, 1))}
                         for model in TWO_STAGE for seed in seeds for q, c in enumerate(categories)])


def test_claims_with_per_query_aps_add_the_bootstrap_interval_over_categories():
    per_query = _per_query()
    claims = report.claims(_comparison(), per_query=per_query)
    categories = np.array([3, 3, 5, 5, 5, 8, 8, 11])
    for claim, a, b in report.CLAIMS:
        # the per-query AP of a model averaged over the seeds, by hand: a (seeds x queries) array
        ap = {m: np.array([[per_query[(per_query["model"] == m) & (per_query["seed"] == s)
                                      & (per_query["query"] == q)]["AP"].item() for q in range(8)]
                           for s in (0, 1, 2)]) for m in (a, b)}
        gap = ap[a].mean(axis=0) - ap[b].mean(axis=0)
        want = stats.bootstrap_ci(gap, categories)
        assert claims.loc[claim, "boot low"] == pytest.approx(want["low"])
        assert claims.loc[claim, "boot high"] == pytest.approx(want["high"])
        assert want["low"] < gap.mean() < want["high"]
    # the seed columns do not change with the per-query table
    without = report.claims(_comparison())
    pd.testing.assert_frame_equal(claims[without.columns], without)


def test_claim_sentence_states_the_verdict_and_both_intervals():
    row = pd.Series({"a": "double, two-stage", "b": "single, two-stage", "mean a": 0.61234, "mean b": 0.5,
                     "difference": 0.11234, "ci": 0.05, "low": 0.06234, "high": 0.16234, "verdict": "holds",
                     "seeds a wins": "5/5", "p": 0.001})
    assert report.claim_sentence("double beats single", row) == (
        "* *double beats single* **holds**: the whole interval is above zero. mAP (trapezoid): double, two-stage "
        "0.612 against single, two-stage 0.500, paired difference +0.112, 95% interval over seeds [+0.062, +0.162]; "
        "double, two-stage ahead in 5/5 seeds.")
    booted = pd.concat([row, pd.Series({"boot low": -0.0123, "boot high": 0.2})])
    assert report.claim_sentence("c", booted, metric="R@1") == (
        "* *c* **holds**: the whole interval is above zero. R@1: double, two-stage 0.612 against single, two-stage "
        "0.500, paired difference +0.112, 95% interval over seeds [+0.062, +0.162] (over test categories "
        "[-0.012, +0.200]); double, two-stage ahead in 5/5 seeds.")
    reversed_ = row.copy()
    reversed_[["difference", "low", "high", "verdict", "seeds a wins"]] = [-0.1, -0.15, -0.05, "reversed", "0/5"]
    assert "is **reversed**: the whole interval is below zero" in report.claim_sentence("c", reversed_)
    assert "paired difference -0.100, 95% interval over seeds [-0.150, -0.050]" in report.claim_sentence("c", reversed_)
    unresolved = row.copy()
    unresolved[["low", "verdict"]] = [-0.01, "not resolved"]
    assert "is **not resolved**: the interval contains zero" in report.claim_sentence("c", unresolved)


def test_claim_sentence_of_a_claims_row():
    claims = report.claims(_comparison(), per_query=_per_query())
    claim = "two-stage beats one-stage (double margin)"
    sentence = report.claim_sentence(claim, claims.loc[claim])
    row = claims.loc[claim]
    assert sentence.startswith(f"* *{claim}* **holds**")
    assert f"(over test categories [{row['boot low']:+.3f}, {row['boot high']:+.3f}])" in sentence
    assert "paired difference +0.110" in sentence and "ahead in 3/3 seeds. Firm: the interval clears zero" in sentence


# --------------------------------------------------------------------------- spreads and tolerances
def _spread_table() -> pd.DataFrame:
    values = {"A": [0.5, 0.6, 0.7], "B": [0.2, 0.4], "C": [0.9], "random ranking": [0.0, 1.0, 0.0],
              "ImageNet features only": [0.1, 0.9]}
    return pd.DataFrame([{"model": m, "seed": s, "mAP (trapezoid)": v, "R@1": 2 * v}
                         for m, vs in values.items() for s, v in enumerate(vs)])


def test_seed_spread_pools_the_variances_of_the_trained_models():
    table = _spread_table()
    # A: variance 0.01 with 2 degrees of freedom; B: variance 0.02 with 1; C has one seed; the floors are left out
    pooled = math.sqrt((2 * 0.01 + 1 * 0.02) / (2 + 1))
    variances = [np.var([0.5, 0.6, 0.7], ddof=1), np.var([0.2, 0.4], ddof=1)]
    assert variances == pytest.approx([0.01, 0.02])
    assert report.seed_spread(table) == pytest.approx(pooled)
    assert report.seed_spread(table, "R@1") == pytest.approx(2 * pooled)


def test_tolerance_is_three_sigma_of_a_difference_of_two_runs():
    table = _spread_table()
    spread = math.sqrt(0.04 / 3)
    assert report.tolerance(table) == pytest.approx(3 * math.sqrt(2) * spread)
    assert report.tolerance(table, n_seeds=5) == pytest.approx(3 * math.sqrt(2) * spread / math.sqrt(5))
    assert report.tolerance(table, "R@1", n_seeds=4) == pytest.approx(3 * math.sqrt(2) * 2 * spread / 2)


def test_kept_last_share_counts_the_trained_retrieval_runs_only():
    table = pd.DataFrame({"model": ["double, one-stage", "single, two-stage", report.MATCHED, "triplet, one-stage",
                                    "stage-1 features only", "random ranking", "double, one-stage"],
                          "best epoch": [12, 11, 20, 12, 12, np.nan, 3],
                          "epochs trained": [12, 12, 20, 12, 12, np.nan, 12]})
    # the retrieval runs: 12/12, 11/12, 20/20, 12/12, 3/12: three of five kept their last epoch
    assert report.kept_last_share(table) == pytest.approx(3 / 5)


def _plateau_table():
    return pd.DataFrame({
        "model": ["double, one-stage", "single, one-stage", "double, two-stage", "triplet, two-stage", report.MATCHED,
                  "stage-1 features only", "random ranking", "ImageNet features only"],
        "best epoch": [12, 12, 5, 12, 19, 11, np.nan, np.nan],
        "epochs trained": [12, 12, 12, 12, 19, 12, np.nan, np.nan],
        "last-epoch gain": [0.004, 0.002, -0.01, 0.0005, 0.001, -0.02, np.nan, np.nan]})


def test_plateau_groups_the_trained_runs_by_schedule():
    table = report.plateau(_plateau_table())
    assert table.index.tolist() == ["one-stage", "two-stage", "compute-matched", "stage 1"]
    assert table["runs"].tolist() == [2, 2, 1, 1]
    assert table["kept last epoch"].tolist() == [1.0, 0.5, 1.0, 0.0]
    assert table.loc["one-stage", "median last-epoch gain"] == pytest.approx(0.003)
    assert table.loc["two-stage", "largest last-epoch gain"] == pytest.approx(0.0005)
    assert table["epochs"].tolist() == [12, 12, 19, 12]
    # results that predate the gain column still give the shares
    older = report.plateau(_plateau_table().drop(columns="last-epoch gain"))
    assert older["kept last epoch"].tolist() == [1.0, 0.5, 1.0, 0.0] and older["median last-epoch gain"].isna().all()


def test_plateau_sentence_states_the_share_against_the_target_and_each_group():
    text = report.plateau_sentence(_plateau_table())
    assert text.startswith("80% of the retrieval runs kept their last epoch, more than the 10% the budget aims at")
    assert "one-stage: 100% of 2 runs (12 epochs), median gain +0.0030 (largest +0.0040)" in text
    assert "compute-matched: 100% of 1 run (19 epochs), median gain +0.0010" in text
    assert text.endswith("stage 1: 0% of 1 run (12 epochs), median gain -2.0 (largest -2.0).")  # points of accuracy
    assert "median gain" not in report.plateau_sentence(_plateau_table().drop(columns="last-epoch gain"))
    flat = _plateau_table().assign(**{"best epoch": [3, 4, 5, 6, 7, 8, np.nan, np.nan]})
    assert report.plateau_sentence(flat).startswith("0% of the retrieval runs kept their last epoch, under the 10%")
    assert report.run_group("random ranking") is None and report.run_group("triplet, two-stage") == "two-stage"


def test_longer_budget_sentence_compares_the_compute_matched_run_with_the_one_stage_run_seed_by_seed():
    table = pd.DataFrame({"model": ["double, one-stage"] * 3 + [report.MATCHED] * 2,
                          "seed": [0, 1, 2, 0, 1], "epochs trained": [12, 12, 12, 19, 19],
                          "best val_mAP": [0.50, 0.52, 0.9, 0.56, 0.60], "mAP (trapezoid)": [0.4, 0.5, 0.9, 0.43, 0.55]})
    text = report.longer_budget_sentence(table)  # seed 2 has no compute-matched run: left out
    assert "trained 19 epochs instead of 12" in text
    assert "validation mAP is +0.070 above" in text and "test mAP (trapezoid) +0.040 (means over 2 seeds)" in text
    assert report.longer_budget_sentence(table[table["model"] != report.MATCHED]) == ""


def test_validation_noise_by_hand():
    # epochs in any order; the last five (2 to 6) count
    table = pd.DataFrame({"epoch": [6, 0, 3, 1, 5, 2, 4],
                          "queries": [0.52, 0.30, 0.54, 0.45, 0.53, 0.50, 0.49],
                          "leave-one-out": [0.62, 0.40, 0.61, 0.55, 0.62, 0.60, 0.61]})
    noise = report.validation_noise(table)
    # queries 0.50, 0.54, 0.49, 0.53, 0.52: mean 0.516, squared deviations summing to 0.00172; changes .04 .05 .04 .01
    assert noise.loc["queries", "std over epochs"] == pytest.approx(math.sqrt(0.00172 / 4))
    assert noise.loc["queries", "mean epoch-to-epoch change"] == pytest.approx(0.14 / 4)
    # leave-one-out 0.60, 0.61, 0.61, 0.62, 0.62: mean 0.612, squared deviations 0.00028; changes .01 0 .01 0
    assert noise.loc["leave-one-out", "std over epochs"] == pytest.approx(math.sqrt(0.00028 / 4))
    assert noise.loc["leave-one-out", "mean epoch-to-epoch change"] == pytest.approx(0.005)
    assert noise.index.name == "validation mAP, last 5 epochs"
    # around the line 0.612 + 0.005 (epoch - 4): residuals -.002 .003 -.002 .003 -.002, 3 degrees of freedom
    assert noise.loc["leave-one-out", "std around the trend"] == pytest.approx(math.sqrt(30e-6 / 3))
    assert noise.loc["leave-one-out", "trend per epoch"] == pytest.approx(0.005)
    rising = pd.DataFrame({"epoch": range(6), "queries": [0.1 * e for e in range(6)],
                           "leave-one-out": [0.3 + 0.02 * e for e in range(6)]})
    assert report.validation_noise(rising)["std around the trend"].tolist() == pytest.approx([0, 0], abs=1e-12)
    assert report.validation_noise(rising)["trend per epoch"].tolist() == pytest.approx([0.1, 0.02])
    assert report.validation_noise(rising).loc["queries", "std over epochs"] > 0.1
    last3 = report.validation_noise(table, last=3)  # epochs 4, 5, 6
    assert last3.loc["queries", "mean epoch-to-epoch change"] == pytest.approx((0.04 + 0.01) / 2)


# --------------------------------------------------------------------------- committed rows and chosen settings
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


def _tuning_table() -> pd.DataFrame:
    rows = [("stage 1", "complete", 1e-3, {}, 0.50), ("stage 1", "pruned", 1e-2, {}, 0.90),
            ("stage 1", "complete", 3e-3, {}, 0.55)]
    for schedule in config.SCHEDULES:
        shift = 0.0 if schedule == "one-stage" else 0.1
        rows += [(f"single, {schedule}", "complete", 1e-4, {"margin": 0.5}, 0.30 + shift),
                 (f"single, {schedule}", "complete", 3e-4, {"margin": 0.9}, 0.35 + shift),
                 (f"single, {schedule}", "complete", 1e-3, {"margin": 1.1}, 0.35 + shift),  # a tie: the earlier wins
                 (f"double, {schedule}", "complete", 1e-4, {"pos_margin": 0.0, "neg_margin": 1.2}, 0.40),
                 (f"double, {schedule}", "pruned", 1e-2, {"pos_margin": 0.1, "neg_margin": 0.2}, 0.99),
                 (f"triplet, {schedule}", "complete", 5e-4, {"margin": 0.15}, 0.20 - shift),
                 (f"triplet, {schedule}", "complete", 1e-4, {"margin": 0.40}, 0.25 - shift)]
    return pd.DataFrame([{"study": study, "trial": t, "state": state, "lr": lr, **margins, "best score": score}
                         for t, (study, state, lr, margins, score) in enumerate(rows)])


def test_chosen_settings_take_each_studys_best_finished_trial():
    per_schedule = {"single": {"lr": 3e-4, "margin": 0.9}, "double": {"lr": 1e-4, "pos_margin": 0.0, "neg_margin": 1.2},
                    "triplet": {"lr": 1e-4, "margin": 0.4}}
    assert report.chosen_settings(_tuning_table()) == {"cls_lr": 3e-3, "tuned": {"one-stage": per_schedule,
                                                                                  "two-stage": per_schedule}}
    chosen = report.chosen_settings(_tuning_table())
    assert config.check_profile(config.get_profile("smoke", cls_lr=chosen["cls_lr"], tuned=chosen["tuned"]))


# --------------------------------------------------------------------------- the stamp and reading results/
def test_stamp_note_sums_the_sittings_and_says_whether_the_code_is_current():
    stamp = pd.DataFrame({"sitting": [0, 1], "wall s": [3000, 600], "complete": [False, True],
                          "profile": ["tutorial", "tutorial"], "code": ["abc123-deadbeef", "abc123-deadbeef"]})
    current = report.stamp_note(stamp, "abc123")
    assert current == ("Read from `results/`, written by `make results` for the tutorial profile in 60 min by code "
                       "version abc123 (the current one).")
    stale = report.stamp_note(stamp, "def456")
    assert "**not** the current def456" in stale and "code version abc123 (" in stale and "deadbeef" not in stale
    assert "in 10 min" in report.stamp_note(stamp.iloc[[1]], "abc123")


def _write(folder, profiles=("smoke", "tutorial"), complete=((True,), (True,))):
    """Every table with one row per profile; the stamp with one row per sitting of each profile."""
    for key, file in report.FILES.items():
        if key == "stamp":
            rows = [{"sitting": s, "wall s": 60, "complete": c, "profile": p, "code": "v1-h"}
                    for p, sittings in zip(profiles, complete) for s, c in enumerate(sittings)]
            pd.DataFrame(rows).to_csv(folder / file, index=False)
        else:
            pd.DataFrame({"profile": list(profiles), "value": range(len(profiles))}).to_csv(folder / file, index=False)


def test_read_results_picks_the_profiles_rows(tmp_path):
    _write(tmp_path)
    by_name = report.read_results("tutorial", tmp_path)
    by_profile = report.read_results(config.get_profile("tutorial"), tmp_path)
    assert set(by_name) == set(report.FILES)
    for key in report.FILES:
        if key == "stamp":
            assert by_name[key]["profile"].tolist() == ["tutorial"]
            continue
        want = {"profile": ["tutorial"], "value": [1]}
        assert by_name[key].to_dict("list") == by_profile[key].to_dict("list") == want
    with pytest.raises(FileNotFoundError, match="make results PROFILE=paper"):
        report.read_results("paper", tmp_path)
    (tmp_path / report.FILES["imbalance"]).unlink()
    with pytest.raises(FileNotFoundError, match="imbalance.csv"):
        report.read_results("smoke", tmp_path)


def test_read_results_refuses_results_whose_last_sitting_has_not_finished(tmp_path):
    _write(tmp_path, complete=((True, False), (False, True)))
    # smoke: its first sitting finished, a later one (another make results) is under way
    with pytest.raises(FileNotFoundError, match=r"has not finished \(1 test rows recorded so far\).*it resumes"):
        report.read_results("smoke", tmp_path)
    assert report.read_results("tutorial", tmp_path)["stamp"]["complete"].tolist() == [False, True]
    _write(tmp_path, complete=((False,), (True,)))  # another profile's finished stamp does not count
    with pytest.raises(FileNotFoundError, match="smoke profile has not finished"):
        report.read_results("smoke", tmp_path)


def test_previous_comparison_and_verdict_changes(tmp_path):
    assert report.previous_comparison("smoke", tmp_path / "nowhere").empty
    pd.DataFrame({"model": ["a", "b"], "seed": [0, 0], "profile": ["smoke", "tutorial"]}).to_csv(
        tmp_path / "comparison.csv", index=False)
    assert report.previous_comparison(config.get_profile("tutorial"), tmp_path)["model"].tolist() == ["b"]
    before = pd.DataFrame({"difference": [0.02, -0.01], "verdict": ["holds", "not resolved"],
                           "seeds a wins": ["3/3", "1/3"]}, index=["x", "y"])
    after = pd.DataFrame({"difference": [0.03, -0.04], "verdict": ["holds", "reversed"],
                          "seeds a wins": ["5/5", "0/5"]}, index=["x", "y"])
    changes = report.verdict_changes(before, after)
    assert changes["changed"].tolist() == [False, True] and changes["seeds before"].tolist() == [3, 3]
    assert changes.loc["y", ["verdict before", "verdict now"]].tolist() == ["not resolved", "reversed"]


def test_rerun_verdicts_replace_the_rerun_rows_and_allow_only_non_firm_changes():
    comparison = _comparison()
    # seed 0's double, one-stage goes from 0.41 (ahead of single by 0.01 on every seed) to 0.38: behind on seed 0
    rerun = pd.DataFrame({"model": ["double, one-stage"], "seed": [0], "mAP (trapezoid)": [0.38]})
    table = report.rerun_verdicts(comparison, rerun)
    claim = "double margin beats single margin (one-stage)"
    assert table.loc[claim, "committed"] == "holds" and table.loc[claim, "firmness"] == "firm"
    assert table.loc[claim, "with the rerun"] == "not resolved" and not table.loc[claim, "same"]
    assert not table.loc[claim, "allowed"]                              # a firm verdict may not change
    others = table.drop(index=claim)
    assert others["same"].all() and others["allowed"].all()
    # the comparison itself is left as it was
    assert comparison.loc[(comparison.model == "double, one-stage") & (comparison.seed == 0),
                          "mAP (trapezoid)"].item() == pytest.approx(0.41)


def test_lr_text_writes_a_learning_rate_as_a_person_would():
    assert [report.lr_text(v) for v in (1e-3, 3.16e-4, 5.62e-4, 1e-2, 0.000316227766)] == [
        "1e-3", "3.16e-4", "5.62e-4", "1e-2", "3.16e-4"]


def test_chosen_sentence_lists_every_schedule_and_loss_and_says_what_sits_on_an_edge():
    chosen = {"cls_lr": 1e-3,
              "tuned": {"one-stage": {"single": {"lr": 3.16e-4, "margin": 1.35},
                                      "double": {"lr": 1e-3, "pos_margin": 0.135, "neg_margin": 1.35},
                                      "triplet": {"lr": 5.62e-4, "margin": 0.15}},
                        "two-stage": {"single": {"lr": 1e-4, "margin": 1.2},
                                      "double": {"lr": 1e-4, "pos_margin": 0.8, "neg_margin": 1.2},
                                      "triplet": {"lr": 3.16e-4, "margin": 0.8}}}}
    sentence = report.chosen_sentence(chosen, [])
    assert sentence == ("Chosen: stage 1 lr 1e-3. One-stage: single lr 3.16e-4 (m = 1.35); double lr 1e-3 "
                        "(m1 = 0.135, m2 = 1.35); triplet lr 5.62e-4 (m = 0.15). Two-stage: single lr 1e-4 (m = 1.2); "
                        "double lr 1e-4 (m1 = 0.8, m2 = 1.2); triplet lr 3.16e-4 (m = 0.8). "
                        "No winner sits on the edge of its range.")
    flagged = report.chosen_sentence(chosen, ["one-stage double lr 1e-2", "two-stage single m 1.4"])
    assert flagged.endswith("On the edge of its range: one-stage double lr 1e-2, two-stage single m 1.4; "
                            "the search may have wanted to go further.")
