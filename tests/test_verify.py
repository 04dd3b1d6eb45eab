"""make verify's comparison: masks, numbers within the tolerance, verdicts exact, and the tolerance main uses."""
from __future__ import annotations

import json
import math
import shutil

import pytest

from helpers import config, report
from helpers.machinery import verify

VERDICT = ("* *double margin beats single margin* is **{}**: paired difference {}, "
           "95% interval [{}, {}]; double ahead in {} seeds.")


# --------------------------------------------------------------------------- agree_within

def test_numbers_within_the_tolerance_agree_and_beyond_it_do_not():
    before, after = "test mAP 0.583, R@1 0.780", "test mAP 0.593, R@1 0.775"
    assert verify.numeric_gap(before, after) == pytest.approx(0.010)
    assert verify.agree_within(before, after, 0.02)
    assert verify.agree_within(before, after, 0.010)
    assert not verify.agree_within(before, after, 0.005)
    assert not verify.agree_within(before, after, 0.0)
    assert verify.agree_within(before, before, 0.0)


def test_a_changed_verdict_fails_even_with_the_numbers_equal():
    holds = VERDICT.format("reversed", "-0.009", "-0.010", "-0.007", "0/3")
    flipped = VERDICT.format("not resolved", "-0.009", "-0.010", "-0.007", "0/3")
    assert verify.agree_within(holds, holds, 0.0)
    assert not verify.agree_within(holds, flipped, 1.0)
    assert verify.numeric_gap(holds, flipped) is None
    assert not verify.agree_within("0.012 within tolerance", "0.012 BEYOND TOLERANCE", 1.0)


def test_a_different_count_of_numbers_fails():
    assert not verify.agree_within("mAP 0.5 0.6", "mAP 0.5", 1.0)
    assert not verify.agree_within("mAP 0.5", "mAP NaN", 1.0)
    assert not verify.agree_within("mAP 0.5", "mAP 0.5 0.5", 1.0)


def test_percentages_are_compared_on_the_zero_to_one_scale():
    before, after = "validation accuracy 52.6% (+8.3%)", "validation accuracy 55.0% (+8.3%)"
    assert verify.numeric_gap(before, after) == pytest.approx(0.024)
    assert verify.agree_within(before, after, 0.03)
    assert not verify.agree_within(before, after, 0.02)
    assert verify.agree_within("98% of 120 images", "96% of 120 images", 0.03)
    assert not verify.agree_within("98% of 120 images", "96% of 120 images", 0.01)
    assert not verify.agree_within("98% of 120 images", "98% of 121 images", 1.0)


def test_both_numbers_of_a_plus_minus_interval_are_compared():
    before = "| double, two-stage | 0.575 ± 0.019 |"
    assert verify.agree_within(before, "| double, two-stage | 0.580 ± 0.025 |", 0.01)
    assert not verify.agree_within(before, "| double, two-stage | 0.575 ± 0.031 |", 0.01)
    assert not verify.agree_within(before, "| double, two-stage | 0.590 ± 0.019 |", 0.01)


def test_signed_numbers_compare_by_their_signed_difference():
    before = VERDICT.format("not resolved", "-0.008", "-0.017", "+0.001", "0/3")
    after = VERDICT.format("not resolved", "+0.002", "-0.005", "+0.009", "0/3")
    assert verify.numeric_gap(before, after) == pytest.approx(0.012)
    assert verify.agree_within(before, after, 0.015)
    assert not verify.agree_within(before, after, 0.011)
    assert not verify.agree_within("difference -0.009", "difference +0.009", 0.01)
    assert verify.agree_within("difference -0.009", "difference +0.009", 0.02)


def test_integers_must_be_equal():
    ahead = VERDICT.format("holds", "+0.114", "+0.095", "+0.133", "{}/3")
    assert verify.agree_within(ahead.format(3), ahead.format(3), 0.0)
    assert not verify.agree_within(ahead.format(3), ahead.format(2), 1.0)
    assert not verify.agree_within("15 epochs in all", "14 epochs in all", 1.0)
    assert not verify.agree_within("2032 pairs per epoch", "2031 pairs per epoch", 1.0)


def test_whole_numbers_may_differ_where_they_count_epochs_or_iterations():
    assert verify.agree_within("stage 1: 15 of at most 15 epochs; kept epoch 13, validation accuracy 52.6%",
                               "stage 1: 14 of at most 15 epochs; kept epoch 12, validation accuracy 52.6%", 0.0)
    assert verify.agree_within("single margin contrastive: 288 iterations", "single margin contrastive: 320 iterations",
                               0.0)
    table = "          epochs trained  best epoch  best val mAP\nsingle    {:>14}  {:>10}  {:>12}"
    assert verify.agree_within(table.format("9.0", "7.0", "0.4184"), table.format("10.0", "10.0", "0.4184"), 0.0)
    assert verify.agree_within(table.format("9.0", "7.0", "0.4184"), table.format("9.0", "7.0", "0.4284"), 0.01)
    assert not verify.agree_within(table.format("9.0", "7.0", "0.4184"), table.format("9.0", "7.0", "0.4284"), 0.005)
    assert not verify.agree_within(table.format("9.0", "7.5", "0.4184"), table.format("9.0", "9.5", "0.4184"), 0.01)
    assert verify.agree_within("   count  share confused with\n0     38   0.76",
                               "   count  share confused with\n0     37   0.74", 0.05)


def test_digits_inside_words_hashes_versions_and_sizes_are_text():
    assert verify.split_numbers("efficientnet_lite0 torch 2.14.1+cu130 dcba6fb85a45 <Figure size 792x273.6>") == (
        ["efficientnet_lite0 torch 2.14.1+cu130 dcba6fb85a45 <Figure size 792x273.6>"], [])
    assert not verify.agree_within("code version dcba6fb85a45", "code version dcba7fb85a45", 1.0)
    assert not verify.agree_within("torch 2.14.1", "torch 2.15.1", 1.0)
    assert verify.split_numbers("R@1 0.583 ± 0.012, [+0.010, -0.030]; 3.86e-07 in 3/5 seeds")[1] == [
        "1", "0.583", "0.012", "+0.010", "-0.030", "3.86e-07", "3", "5"]


def test_padding_may_change_but_not_the_rest_of_the_layout():
    assert verify.agree_within("double   0.417\nsingle   0.425", "double  0.417\nsingle  0.425", 0.0)
    assert not verify.agree_within("double 0.417\nsingle 0.425", "double 0.417 single 0.425", 1.0)
    assert not verify.agree_within("double 0.417", "double0.417", 1.0)


# --------------------------------------------------------------------------- normalise

def test_normalise_masks_what_changes_from_run_to_run():
    assert verify.normalise("trained in 12.3 s, 4 min; 83 ms") == "trained in <time>, <time>; <time>"
    assert verify.normalise("epoch 3: 2.31batch/s, 17 it/s") == "epoch 3: <rate>, <rate>"
    assert verify.normalise("cache holds 12.5 MB, 3 GiB") == "cache holds <size>, <size>"
    assert verify.normalise("from cache: True") == verify.normalise("from cache: False") == "from cache: <bool>"
    assert verify.normalise("a\nepoch 3: 100%|####| 5/5 [00:12<00:00, 2.31batch/s]\nb") == "a\nb"
    assert verify.normalise("single: 9 iterations (loaded from cache)  \n\n") == "single: 9 iterations"
    assert verify.normalise("test mAP 0.556") != verify.normalise("test mAP 0.557")


def test_normalise_does_not_mask_a_number_before_a_line_break():
    # a describe() table: "1.21" ends a line and "min" starts the next; not a duration
    assert verify.normalise("mean  1.21\nmin   0.60") == "mean  1.21\nmin   0.60"


# --------------------------------------------------------------------------- compare and main

def _book(path, cells):
    """Write a notebook whose code cells have the stdout texts ``cells``; a text ``"bench"`` is tagged verify-skip."""
    book = {"cells": [{"cell_type": "code", "source": "x", "execution_count": 1,
                       "metadata": {"tags": [verify.SKIP_TAG]} if text.startswith("bench") else {},
                       "outputs": [{"output_type": "stream", "name": "stdout", "text": text}]}
                      for text in cells], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(book), encoding="utf-8")
    return path


COMMITTED = ["R@1 0.700 in 3.2 s\n", "test mAP 0.583 ± 0.012\n",
             VERDICT.format("holds", "+0.114", "+0.095", "+0.133", "3/3"), "bench 9 QPS\n"]
WITHIN = ["R@1 0.700 in 9.9 s\n", "test mAP 0.593 ± 0.015\n",
          VERDICT.format("holds", "+0.120", "+0.100", "+0.140", "3/3"), "bench 3 QPS\n"]
FLIPPED = WITHIN[:2] + [VERDICT.format("not resolved", "+0.114", "-0.005", "+0.133", "3/3"), WITHIN[3]]


def test_compare_separates_identical_within_and_failing_cells(tmp_path):
    committed = _book(tmp_path / "a.ipynb", COMMITTED)
    fresh = _book(tmp_path / "b.ipynb", FLIPPED)
    result = verify.compare(committed, fresh, tolerance=0.02)
    assert result.identical == 1
    assert len(result.within) == 1 and "cell 1" in result.within[0] and "0.01" in result.within[0]
    assert len(result) == 1 and "cell 2" in result[0] and "**holds**" in result[0] and "**not resolved**" in result[0]
    assert result[0].splitlines()[1:3] == ["--- committed", "+++ re-executed"]


def test_compare_within_the_tolerance_is_no_failure_and_exact_without_it(tmp_path):
    committed = _book(tmp_path / "a.ipynb", COMMITTED)
    fresh = _book(tmp_path / "b.ipynb", WITHIN)
    result = verify.compare(committed, fresh, tolerance=0.02)
    assert result == [] and result.identical == 1 and len(result.within) == 2
    assert "largest difference 0.01)" in result.within[0] and "largest difference 0.007)" in result.within[1]
    exact = verify.compare(committed, fresh)
    assert len(exact) == 2 and exact.within == [] and exact.identical == 1
    assert verify.compare(committed, committed) == [] and verify.compare(committed, committed).identical == 3
    assert verify.compare(committed, _book(tmp_path / "c.ipynb", COMMITTED[:3]), 1.0) == [
        "a.ipynb: the cells differ in number or kind"]


@pytest.fixture
def fake_execute(monkeypatch):
    """Make main 're-execute' a notebook by copying the one in ``fake_execute['fresh']``; returns that dict."""
    chosen = {}

    def execute(path, folder, cache):
        copy = folder / path.name
        shutil.copy(chosen["fresh"], copy)
        return copy

    monkeypatch.setattr(verify, "execute", execute)
    monkeypatch.delenv(config.PROFILE_ENV, raising=False)
    return chosen


def _unavailable(profile, *args, **kwargs):
    raise FileNotFoundError("results/comparison.csv holds no results")


def test_main_compares_exactly_when_the_results_are_unavailable(tmp_path, monkeypatch, capsys, fake_execute):
    monkeypatch.setattr(report, "read_results", _unavailable)
    committed = _book(tmp_path / "a.ipynb", COMMITTED)
    fake_execute["fresh"] = _book(tmp_path / "b.ipynb", WITHIN)
    assert verify.default_tolerance()[0] == 0.0
    assert verify.main([str(committed)]) == 1
    out = capsys.readouterr().out
    assert "tolerance 0 (no committed results for the tutorial profile" in out
    assert "numbers compared exactly" in out
    assert "1 cell(s) identical; 0 cell(s) within the tolerance 0" in out and "2 cell(s) differ" in out
    assert verify.main([str(committed), "--tolerance", "0.02"]) == 0
    out = capsys.readouterr().out
    assert "tolerance 0.02 (--tolerance)" in out and "1 cell(s) identical; 2 cell(s) within the tolerance 0.02" in out
    assert "0 cell(s) differ" in out


def test_main_defaults_to_the_committed_tolerance(tmp_path, monkeypatch, capsys, fake_execute):
    seen = []
    monkeypatch.setattr(report, "read_results", lambda profile: seen.append(profile.name) or {"comparison": "t"})
    monkeypatch.setattr(report, "tolerance", lambda comparison: 0.05 if comparison == "t" else math.nan)
    committed = _book(tmp_path / "a.ipynb", COMMITTED)
    fake_execute["fresh"] = _book(tmp_path / "b.ipynb", WITHIN)
    assert verify.main([str(committed)]) == 0
    assert seen == ["tutorial"]
    out = capsys.readouterr().out
    assert "tolerance 0.05 (the committed tolerance" in out and "2 cell(s) within the tolerance 0.05" in out
    fake_execute["fresh"] = _book(tmp_path / "c.ipynb", FLIPPED)
    assert verify.main([str(committed)]) == 1
    assert "1 cell(s) differ (failures)" in capsys.readouterr().out
    monkeypatch.setattr(report, "tolerance", lambda comparison: math.nan)
    assert verify.default_tolerance()[0] == 0.0
