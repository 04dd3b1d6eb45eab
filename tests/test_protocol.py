"""The protocol of ``make results``: its grids, its arithmetic, its wiring and the committed results/ files."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from helpers import config, methods, metrics, report
from helpers.machinery import protocol

SMOKE = config.get_profile("smoke")  # 16 pairs per category, 32 per batch


def _release(n_classification: int = 50, retrieval_labels=(0, 0, 1, 1, 1, 2)):
    """What the image counts are read from: the size of the classification set, the retrieval labels."""
    return SimpleNamespace(classification_train=[None] * n_classification,
                           retrieval_train=SimpleNamespace(labels=np.array(retrieval_labels)))


def _run(kind: str, last_epoch: int, loss: str | None = None, history: pd.DataFrame | None = None, **margins):
    """A stand-in for a :class:`helpers.machinery.Run` with what the protocol reads."""
    val = {"classifier": "val_accuracy", "retrieval": "val_mAP"}[kind]
    return SimpleNamespace(kind=kind, last_epoch=last_epoch, best_epoch=last_epoch - 1, val_column=val,
                           best_score=0.5, wall_time=12.0, key=f"{loss}-{margins}",
                           config={"kind": kind, "loss": loss, **margins}, history=history)


# --------------------------------------------------------------------------- the tuning grid
def test_grids_give_every_loss_the_same_budget_and_contain_the_papers_margins():
    paper = config.PROFILES["paper"]
    sizes = {loss: len(protocol.grid_points(loss)) for loss in methods.NAMES}
    assert sizes == {"single": 6, "double": 6, "triplet": 6}
    for loss in methods.NAMES:
        assert methods.get(loss).margins(paper) in protocol.grid_points(loss)
    assert {"pos_margin": 0.0, "neg_margin": 1.2} in protocol.grid_points("double")  # m1 = 0: the single margin


def test_tune_trains_every_grid_point_from_stage_1(monkeypatch):
    calls = []

    def train_retrieval(release, loss, init, profile, *, seed, margins, progress):
        calls.append((loss, init, profile, seed, margins))
        return _run("retrieval", 4, loss, **margins)

    monkeypatch.setattr(protocol.runs, "train_retrieval", train_retrieval)
    stage1 = _run("classifier", 3)
    tuning = protocol.tune(_release(), stage1, SMOKE, seed=5, progress=False)
    assert [(c[0], c[4]) for c in calls] == [(loss, p) for loss in methods.NAMES for p in protocol.grid_points(loss)]
    assert all(c[1] is stage1 and c[2] is SMOKE and c[3] == 5 for c in calls)
    first = tuning.iloc[0]
    assert (first["loss"], first["margins"], first["margin"]) == ("single", "m = 0.4", 0.4)
    assert (first["epochs trained"], first["best epoch"], first["best val_mAP"]) == (4, 3, 0.5)
    assert report.chosen_margins(tuning.assign(**{"best val_mAP": range(len(tuning))})) == {
        "single": {"margin": 1.4}, "double": {"pos_margin": 0.8, "neg_margin": 1.2}, "triplet": {"margin": 0.8}}


# --------------------------------------------------------------------------- the compute-matched budget
def test_images_seen_by_hand():
    release = _release()  # 50 classification images; retrieval categories 0 and 1 have two images or more
    assert protocol.images_seen(_run("classifier", 3), release, SMOKE) == 3 * 50
    # 16 pairs of 2 images for each of the 2 categories, per epoch
    assert protocol.images_seen(_run("retrieval", 4, "double"), release, SMOKE) == 4 * 16 * 2 * 2
    assert protocol.images_seen(_run("retrieval", 4, "single"), release, SMOKE) == 4 * 16 * 2 * 2
    # as many images in triplets: round(16 * 2 / 3) = 11 triplets of 3 images
    assert protocol.images_seen(_run("retrieval", 4, "triplet"), release, SMOKE) == 4 * 11 * 3 * 2


def test_compute_matched_epochs_by_hand():
    release = _release()
    stage1, two_stage = _run("classifier", 3), _run("retrieval", 4, "double")
    # 150 + 256 images at 64 a retrieval epoch: 6.3 epochs, rounded up
    assert protocol.compute_matched_epochs(stage1, two_stage, release, SMOKE) == 7
    assert protocol.compute_matched_epochs(_run("classifier", 2), two_stage, release, SMOKE) == 6  # 356 / 64
    assert protocol.compute_matched_epochs(_run("classifier", 0), _run("retrieval", 1, "double"), release,
                                           SMOKE) == 1


def test_seed_rows_train_every_model_at_the_tuned_margins_and_the_matched_budget(monkeypatch):
    tuned = {"single": {"margin": 1.4}, "double": {"pos_margin": 0.4, "neg_margin": 1.2}, "triplet": {"margin": 0.4}}
    stage1 = _run("classifier", 3)
    stage1.model = SimpleNamespace(embedding=lambda: SimpleNamespace(eval=lambda: "stage-1 features"))
    trained = []

    def train_retrieval(release, loss, init, profile, *, seed, margins, progress):
        trained.append((loss, init, profile, margins))
        run = _run("retrieval", 4, loss, **margins)
        run.model = f"{loss} from {getattr(init, 'kind', init)}"
        return run

    def embed_split(model, split, profile, progress):
        rng = np.random.default_rng(len(str(model)))  # one embedding per model
        return rng.standard_normal((2, 4)), rng.standard_normal((3, 4))

    monkeypatch.setattr(protocol.runs, "train_classifier", lambda release, profile, *, seed, progress: stage1)
    monkeypatch.setattr(protocol.runs, "train_retrieval", train_retrieval)
    monkeypatch.setattr(protocol.runs, "untrained_model", lambda profile, seed: "ImageNet network")
    monkeypatch.setattr(protocol.evaluation, "embed_split", embed_split)
    release = _release()
    release.test = SimpleNamespace(queries=["q0", "q1"], database=["d0", "d1", "d2"],
                                   ground_truth=[np.array([0]), np.array([1, 2])])
    rows = pd.DataFrame(protocol.seed_rows(release, 1, SMOKE, tuned, progress=False)).set_index("model")
    assert list(rows.index) == [report.model_name(loss, stage) for stage in ("one-stage", "two-stage")
                                for loss in methods.NAMES] + [report.MATCHED, *report.FLOORS]
    six = [(loss, tuned[loss]) for loss in methods.NAMES] * 2
    assert [(loss, margins) for loss, _, _, margins in trained] == six + [("double", tuned["double"])]
    assert [init for _, init, _, _ in trained] == ["imagenet"] * 3 + [stage1] * 3 + ["imagenet"]
    # the compute-matched run: 7 epochs (150 + 256 images at 64 an epoch), lr step 3, no early stopping
    matched = trained[-1][2]
    assert (matched.ret_epochs, matched.ret_lr_step, matched.ret_patience) == (7, 3, None)
    assert matched == config.get_profile(SMOKE, ret_epochs=7, ret_lr_step=3, ret_patience=None)
    assert rows.loc["double, two-stage", "images seen"] == 150 + 256
    assert rows.loc["double, two-stage", "margins"] == "m1 = 0.4, m2 = 1.2"
    assert rows.loc["stage-1 features only", "images seen"] == 150
    want = metrics.evaluate(*embed_split("double from classifier", None, None, False), release.test.ground_truth)
    assert rows.loc["double, two-stage", list(want)].tolist() == list(want.values())
    assert rows.loc["random ranking", "seed"] == 1 and 0 < rows.loc["random ranking", "mAP (trapezoid)"] < 1


# --------------------------------------------------------------------------- the imbalance table
def test_imbalance_rows_are_the_positive_share_per_epoch_at_tuned_and_paper_margins(monkeypatch):
    history = pd.DataFrame({"epoch": [1, 1, 2, 2], "pos_loss": [3.0, 1.0, 1.0, 0.0], "neg_loss": [1.0, 3.0, 2.0, 1.0],
                            "pos_active_frac": [1.0, 0.5, 0.4, 0.2], "neg_active_frac": [0.2, 0.4, 0.6, 0.8]})
    seen = []

    def train_retrieval(release, loss, init, profile, *, seed, margins, progress):
        seen.append((loss, margins))
        return _run("retrieval", 2, loss, history=history, **margins)

    monkeypatch.setattr(protocol.runs, "train_retrieval", train_retrieval)
    tuned = {"single": {"margin": 1.4}, "double": {"pos_margin": 0.4, "neg_margin": 1.2}, "triplet": {"margin": 0.4}}
    rows = pd.DataFrame(protocol.imbalance_rows(_release(), _run("classifier", 3), SMOKE, tuned))
    assert seen == [("single", {"margin": 1.4}), ("single", {"margin": 1.2}),
                    ("double", {"pos_margin": 0.4, "neg_margin": 1.2}),
                    ("double", {"pos_margin": 0.8, "neg_margin": 1.2})]
    assert list(rows["margins"].unique()) == ["tuned: m = 1.4", "paper: m = 1.2", "tuned: m1 = 0.4, m2 = 1.2",
                                              "paper: m1 = 0.8, m2 = 1.2"]
    # epoch 1: (3 + 1) / (3 + 1 + 1 + 3); epoch 2: 1 / (1 + 0 + 2 + 1)
    assert rows["positive share"].tolist() == [0.5, 0.25] * 4
    assert rows["active positives"].tolist() == pytest.approx([0.75, 0.3] * 4)
    assert rows["active negatives"].tolist() == pytest.approx([0.3, 0.7] * 4)


# --------------------------------------------------------------------------- writing the tables
def _tables(profile: str, value: float) -> dict[str, pd.DataFrame]:
    return {name: pd.DataFrame({"model": ["a", "b"], "score": [value, value + 1], "profile": profile})
            for name in report.FILES}


def test_write_results_replaces_only_the_rows_of_the_tables_profile(tmp_path):
    paths = protocol.write_results(_tables("smoke", 0.5), tmp_path)
    assert paths == [tmp_path / file for file in report.FILES.values()]
    protocol.write_results(_tables("tutorial", 0.25), tmp_path)
    protocol.write_results(_tables("smoke", 0.75), tmp_path)  # smoke again: its old rows go, tutorial's stay
    for path in paths:
        table = pd.read_csv(path)
        assert table.to_dict("list") == {"model": ["a", "b", "a", "b"], "score": [0.25, 1.25, 0.75, 1.75],
                                         "profile": ["tutorial", "tutorial", "smoke", "smoke"]}
    assert report.read_results("smoke", tmp_path)["comparison"]["score"].tolist() == [0.75, 1.75]


# --------------------------------------------------------------------------- the committed results
@pytest.mark.parametrize("name", ["tutorial", "smoke"])
def test_committed_results_match_the_profile_and_the_methods(name):
    tables = report.read_results(name)
    tuning, comparison = tables["tuning"], tables["comparison"]
    profile = config.get_profile(name)
    assert list(dict.fromkeys(tuning["loss"])) == list(methods.NAMES)
    for loss in methods.NAMES:
        settings = tuning[tuning["loss"] == loss][list(methods.get(loss).margin_fields)].to_dict("records")
        assert settings == protocol.grid_points(loss)
    if name == "tutorial":  # the notebooks' margins are the tuned ones
        assert report.chosen_margins(tuning) == {m.name: m.margins(profile) for m in methods.METHODS.values()}
    expected = {report.model_name(loss, stage) for loss in methods.NAMES for stage in ("one-stage", "two-stage")}
    assert expected | {report.MATCHED, *report.FLOORS} == set(comparison["model"])
    assert (comparison.groupby("model")["seed"].nunique() >= 3).all()
    assert set(tables["imbalance"]["loss"]) == {m.name for m in methods.METHODS.values() if m.is_pair_loss}
