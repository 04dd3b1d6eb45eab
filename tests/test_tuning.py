"""The Optuna tuning of ``make results``: its search space, its seeded and resumable studies, pruning, the choice.

Nothing trains: ``train(settings, report)`` is a cheap fake whose validation
score is a smooth function of log10(lr) and the margins, reported per epoch
as a rising curve.
"""
from __future__ import annotations

import io
import json
import math

import numpy as np
import optuna
import pandas as pd
import pytest

from helpers import methods
from helpers.machinery import tuning

EPOCHS = 8
WARMUP = max(1, EPOCHS // 4)  # the pruner's warm-up, as the module states it: a quarter of the epochs


# --------------------------------------------------------------------------- a fake training run
def quality(settings: dict) -> float:
    """The score a setting reaches: best at lr = 10^-3.5 and m (or m2) = 0.7, lower the further away."""
    x = math.log10(settings["lr"])
    m = settings.get("margin", settings.get("neg_margin"))
    score = 0.9 - 0.15 * (x + 3.5) ** 2
    if m is not None:
        score -= 0.4 * (m - 0.7) ** 2
    if "pos_margin" in settings:
        score -= 0.1 * settings["pos_margin"]
    return score


def curve_of(settings: dict, epochs: int = EPOCHS) -> list[float]:
    """The per-epoch validation curve: rising towards the quality, rounded as a recorded curve is (6 decimals)."""
    q = quality(settings)
    return [round(q * (1 - 0.6 ** epoch), 4) for epoch in range(1, epochs + 1)]


class FakeTrainer:
    """``train(settings, report)``: reports the curve epoch by epoch; remembers what it trained."""

    def __init__(self, epochs: int = EPOCHS):
        self.epochs, self.calls, self.epochs_run = epochs, [], 0

    def __call__(self, settings: dict, report) -> dict:
        self.calls.append(dict(settings))
        curve = curve_of(settings, self.epochs)
        for epoch, score in enumerate(curve, start=1):
            self.epochs_run += 1
            report(epoch, score)
        return {"best epoch": int(np.argmax(curve)) + 1, "best score": max(curve), "key": f"run{len(self.calls)}",
                "train s": 1.5}


def study(loss="single", *, trials=10, seed=0, recorded=(), epochs=EPOCHS, train=None, on_trial=None):
    """Run one study with the fake trainer; return (rows, recorded rows, trainer)."""
    train = train or FakeTrainer(epochs)
    written = []
    table = tuning.run_study(f"{loss}, one-stage", tuning.search_space("retrieval", loss), train, epochs=epochs,
                             trials=trials, seed=seed, recorded=list(recorded), record=written.append,
                             on_trial=on_trial)
    return table, written, train


def settings_of(rows: pd.DataFrame, names) -> list[tuple]:
    return [tuple(float(v) for v in values) for values in rows[list(names)].itertuples(index=False)]


# --------------------------------------------------------------------------- the search space
def _random_trials(n: int, seed: int = 0):
    random_study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [random_study.ask() for _ in range(n)]


def test_learning_rates_are_rounded_powers_of_ten_on_a_quarter_decade_grid():
    fixed = optuna.trial.FixedTrial({"log10_lr": -3.25})
    assert tuning.search_space("stage 1")(fixed) == {"lr": 0.000562}  # 10^-3.25 = 5.623e-4, 3 significant digits
    fixed = optuna.trial.FixedTrial({"log10_lr": -2.0, "margin": 0.5})
    assert tuning.search_space("retrieval", "single")(fixed) == {"lr": 0.01, "margin": 0.5}
    for stage, (low, high) in (("stage 1", (-4.5, -1.5)), ("retrieval", (-5.0, -2.0))):
        suggest = tuning.search_space(stage, None if stage == "stage 1" else "triplet")
        for trial in _random_trials(60):
            lr = suggest(trial)["lr"]
            x = trial.params["log10_lr"]
            assert low <= x <= high and (x - low) / 0.25 == pytest.approx(round((x - low) / 0.25))
            assert lr == pytest.approx(10 ** x, rel=5e-3)  # 3 significant digits
            assert trial.distributions["log10_lr"] == optuna.distributions.FloatDistribution(low, high, step=0.25)


def test_stage_1_searches_the_learning_rate_alone():
    trial = _random_trials(1)[0]
    assert set(tuning.search_space("stage 1")(trial)) == {"lr"} and set(trial.params) == {"log10_lr"}


def test_margin_ranges_hold_the_single_margin_inside_the_double_and_stay_below_the_distance_bound():
    assert tuning.DISTANCE_BOUND == pytest.approx(2 ** 0.5)
    spaces = {loss: tuning.search_space("retrieval", loss) for loss in methods.NAMES}
    distributions = {}
    for loss, suggest in spaces.items():
        for trial in _random_trials(80, seed=len(loss)):
            settings = suggest(trial)
            assert set(settings) == {"lr", *methods.get(loss).margin_fields}
            margins = [v for k, v in settings.items() if k != "lr"]
            assert all(0 <= m <= 2 ** 0.5 for m in margins)
            if loss == "double":
                m2, ratio = trial.params["neg_margin"], trial.params["pos_ratio"]
                assert settings["neg_margin"] == pytest.approx(m2)
                assert settings["pos_margin"] == pytest.approx(ratio * m2, abs=1e-3)
                assert settings["pos_margin"] < settings["neg_margin"]
            distributions[loss] = trial.distributions
    # the single margin and the double margin's m2 share one range
    assert distributions["single"]["margin"] == distributions["double"]["neg_margin"] == \
        optuna.distributions.FloatDistribution(0.1, 1.4, step=0.05)
    assert distributions["double"]["pos_ratio"] == optuna.distributions.FloatDistribution(0.0, 0.9, step=0.1)
    assert distributions["triplet"]["margin"] == optuna.distributions.FloatDistribution(0.05, 1.4, step=0.05)
    for by_name in distributions.values():
        for name, distribution in by_name.items():
            if name != "log10_lr" and name != "pos_ratio":
                assert 0 <= distribution.low and distribution.high <= 2 ** 0.5
    # m1 = 0 is in the double margin's space: the single margin's loss
    m1_zero = spaces["double"](optuna.trial.FixedTrial({"log10_lr": -3.0, "neg_margin": 1.2, "pos_ratio": 0.0}))
    assert m1_zero == {"lr": 0.001, "pos_margin": 0.0, "neg_margin": 1.2}
    widest = spaces["double"](optuna.trial.FixedTrial({"log10_lr": -3.0, "neg_margin": 1.4, "pos_ratio": 0.9}))
    assert widest["pos_margin"] == pytest.approx(1.26) and widest["pos_margin"] < widest["neg_margin"]


def test_an_unknown_loss_is_refused():
    with pytest.raises(ValueError, match="unknown loss"):
        tuning.search_space("retrieval", "quadruplet")


# --------------------------------------------------------------------------- running a study
def test_a_study_records_one_row_per_trial_as_it_ends():
    seen = []
    table, written, train = study("double", trials=7, on_trial=seen.append)
    assert len(table) == 7 and table["trial"].tolist() == list(range(7))
    assert (table["study"] == "double, one-stage").all()
    assert written == seen  # every new row recorded, and handed to on_trial, in order
    pd.testing.assert_frame_equal(table, pd.DataFrame(written))
    assert len(train.calls) == 7
    for row, trained in zip(written, train.calls):
        assert {k: row[k] for k in ("lr", "pos_margin", "neg_margin")} == trained
        curve = curve_of(trained)[:row["epochs trained"]]
        assert json.loads(row["curve"]) == curve
        assert row["best score"] == max(curve) and row["best epoch"] == int(np.argmax(curve)) + 1
        params = json.loads(row["params"])
        assert set(params) == {"log10_lr", "neg_margin", "pos_ratio"}
        assert row["lr"] == pytest.approx(10 ** params["log10_lr"], rel=5e-3)
        assert set(json.loads(row["distributions"])) == set(params)
        if row["state"] == "complete":
            assert row["epochs trained"] == EPOCHS and row["key"].startswith("run")


def test_a_study_is_deterministic_for_a_seed():
    names = ("lr", "margin")
    first, _, _ = study("triplet", trials=9, seed=4)
    again, _, _ = study("triplet", trials=9, seed=4)
    other, _, _ = study("triplet", trials=9, seed=5)
    assert settings_of(first, names) == settings_of(again, names)
    assert first["state"].tolist() == again["state"].tolist()
    assert settings_of(first, names) != settings_of(other, names)


def _as_read_back(rows: list[dict]) -> list[dict]:
    """The rows as the Recorder writes them (``float_format="%.6g"``) and reads them back from CSV."""
    buffer = io.StringIO()
    pd.DataFrame(rows).to_csv(buffer, index=False, float_format="%.6g")
    buffer.seek(0)
    return pd.read_csv(buffer).to_dict("records")


@pytest.mark.parametrize("loss, kept", [("double", 2), ("double", 6), ("single", 9)])
def test_a_resumed_study_suggests_what_the_uninterrupted_one_did(loss, kept):
    names = ("lr", *methods.get(loss).margin_fields)
    full, written, _ = study(loss, trials=12, seed=7)
    if kept > tuning.STARTUP_TRIALS + 1:
        assert (full["state"].iloc[:kept] == "pruned").any(), "the replayed trials should include pruned ones"
    seen = []
    resumed, new, train = study(loss, trials=12, seed=7, recorded=_as_read_back(written[:kept]),
                                on_trial=seen.append)
    assert len(train.calls) == 12 - kept  # the replayed trials are not trained again
    assert [row["trial"] for row in new] == list(range(kept, 12))  # only new rows are recorded
    assert [int(row["trial"]) for row in seen] == list(range(12))  # every row, replayed or new, goes to on_trial
    assert settings_of(resumed, names) == settings_of(full, names)
    assert resumed["state"].tolist() == full["state"].tolist()
    assert resumed["epochs trained"].tolist() == full["epochs trained"].tolist()


def test_a_finished_study_given_all_its_rows_trains_nothing():
    full, written, _ = study("single", trials=5)
    again, new, train = study("single", trials=5, recorded=_as_read_back(written))
    assert train.calls == [] and new == []
    assert settings_of(again, ("lr", "margin")) == settings_of(full, ("lr", "margin"))


# --------------------------------------------------------------------------- pruning
def test_the_median_pruner_stops_trials_below_the_median_of_finished_ones():
    table, written, train = study("single", trials=16, seed=1)
    states = table["state"].tolist()
    assert "pruned" in states and set(states) == {"complete", "pruned"}
    pruned = table[table["state"] == "pruned"]
    assert (pruned["epochs trained"] < EPOCHS).all()
    assert train.epochs_run == table["epochs trained"].sum() < 16 * EPOCHS  # pruning saved epochs
    assert pruned["key"].isna().all()  # a pruned trial returns nothing besides its curve
    # the rule, replayed by hand: from epoch WARMUP on, once 3 trials finished, a trial stops at the first epoch
    # where its best score so far is below the median of the finished trials' scores at that epoch
    finished: list[list[float]] = []
    for row in written:
        curve = json.loads(row["curve"])
        stop = None
        if len(finished) >= tuning.STARTUP_TRIALS:
            for epoch in range(WARMUP, len(curve) + 1):
                if max(curve[:epoch]) < np.median([c[epoch - 1] for c in finished]):
                    stop = epoch
                    break
        if row["state"] == "pruned":
            assert stop == row["epochs trained"] == len(curve)
            assert row["best score"] == max(curve)
        else:
            assert stop is None and len(curve) == EPOCHS
            finished.append(curve)


def test_a_trials_kept_epoch_may_be_epoch_0():
    def untrained_is_best(settings, report):
        for epoch in (1, 2):
            report(epoch, 0.1 * epoch)
        return {"best epoch": 0, "best score": 0.99}

    table, _, _ = study("single", trials=2, epochs=2, train=untrained_is_best)
    assert table["best epoch"].tolist() == [0, 0] and table["best score"].tolist() == [0.99, 0.99]
    assert json.loads(table["curve"].iloc[0]) == [0.1, 0.2]


def test_a_study_of_zero_epochs_keeps_the_untrained_network():
    def untrained(settings, report):  # 0 epochs (allowed by the profile rules): only epoch 0 is scored
        return {"best epoch": 0, "best score": 0.3}

    table, _, _ = study("single", trials=2, epochs=0, train=untrained)
    assert table["best epoch"].tolist() == [0, 0] and table["epochs trained"].tolist() == [0, 0]


# --------------------------------------------------------------------------- the choice
def test_best_settings_take_the_best_finished_trial_earliest_on_ties():
    rows = pd.DataFrame({"state": ["complete", "pruned", "complete", "complete", "complete"],
                         "lr": [1e-3, 1e-2, 3e-4, 1e-4, 5e-4],
                         "margin": [0.5, 0.9, 0.7, 0.6, 0.8],
                         "best score": [0.40, 0.95, 0.55, 0.55, 0.30]})
    best = tuning.best_settings(rows, ["lr", "margin"])
    assert best == {"lr": 3e-4, "margin": 0.7}  # the pruned trial's 0.95 does not count; 0.55 first at trial 2
    assert all(type(v) is float for v in best.values())
    assert tuning.best_settings(rows.iloc[[0, 1]], ["lr"]) == {"lr": 1e-3}
    with pytest.raises(ValueError, match="no trial of the study finished"):
        tuning.best_settings(rows[rows["state"] == "pruned"], ["lr"])


def test_best_settings_of_a_study_run_here():
    table, _, _ = study("single", trials=8, seed=2)
    complete = table[table["state"] == "complete"]
    scores = complete["best score"].tolist()
    winner = complete.iloc[scores.index(max(scores))]
    assert tuning.best_settings(table, ["lr", "margin"]) == {"lr": winner["lr"], "margin": winner["margin"]}


def test_at_edge_is_the_first_or_last_step_of_the_range():
    low, high, step = -5.0, -2.0, 0.25
    assert tuning.at_edge(-5.0, low, high, step) and tuning.at_edge(-2.0, low, high, step)
    assert not tuning.at_edge(-4.75, low, high, step) and not tuning.at_edge(-2.25, low, high, step)
    assert tuning.at_edge(math.log10(1e-5), low, high, step)  # -5 up to rounding
    assert tuning.at_edge(0.1, 0.1, 1.4, 0.05) and tuning.at_edge(1.4000000000000001, 0.1, 1.4, 0.05)
    assert not tuning.at_edge(0.15, 0.1, 1.4, 0.05) and not tuning.at_edge(1.35, 0.1, 1.4, 0.05)


def test_chosen_at_edge_names_each_setting_on_the_first_or_last_step_of_its_range():
    inside = {"lr": 3.16e-4, "margin": 0.8}
    chosen = {"cls_lr": 10 ** -4.5,   # stage 1's lowest step
              "tuned": {"one-stage": {"single": {"lr": 1e-2, "margin": 1.4},  # both at the top
                                      "double": {"lr": 3.16e-4, "pos_margin": 0.0, "neg_margin": 0.1},  # m1/m2 0, m2 lowest
                                      "triplet": {"lr": 1e-5, "margin": 0.05}},  # lowest lr and margin
                        "two-stage": {"single": dict(inside),
                                      "double": {"lr": 3.16e-4, "pos_margin": 0.72, "neg_margin": 0.8},  # ratio 0.9
                                      "triplet": dict(inside)}}}
    assert tuning.chosen_at_edge(chosen) == [
        "stage 1 lr 3.16e-5", "one-stage single lr 1e-2", "one-stage single m 1.4", "one-stage double m2 0.1",
        "one-stage double m1/m2 0.0", "one-stage triplet lr 1e-5", "one-stage triplet m 0.05",
        "two-stage double m1/m2 0.9"]
    chosen["cls_lr"] = 1e-3
    chosen["tuned"]["one-stage"] = {"single": dict(inside), "triplet": dict(inside),
                                    "double": {"lr": 3.16e-4, "pos_margin": 0.4, "neg_margin": 0.8}}
    chosen["tuned"]["two-stage"]["double"]["pos_margin"] = 0.64  # ratio 0.8: one step inside
    assert tuning.chosen_at_edge(chosen) == []
