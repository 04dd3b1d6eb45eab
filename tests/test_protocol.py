"""The protocol of ``make results``: its recording, its arithmetic, its wiring, its resumption, the committed results.

Nothing trains: ``protocol.runs.*`` and the embedding are replaced by small
fakes (``SimpleNamespace``) that say what the protocol reads from a run.
"""
from __future__ import annotations

import zlib
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from helpers import config, evaluation, methods, metrics, report
from helpers.machinery import protocol

SMOKE = config.get_profile("smoke")  # 16 pairs per category, 32 per batch, 2 + 2 epochs, 3 trials per study


def _release(n_classification: int = 50, retrieval_labels=(0, 0, 1, 1, 1, 2)):
    """What the image counts are read from: the size of the classification set, the retrieval labels."""
    return SimpleNamespace(classification_train=[None] * n_classification,
                           retrieval_train=SimpleNamespace(labels=np.array(retrieval_labels)))


# --------------------------------------------------------------------------- the settings hash
def test_settings_hash_ignores_the_tuned_fields_and_follows_every_other():
    digest = protocol.settings_hash(SMOKE)
    assert len(digest) == 8 and int(digest, 16) >= 0
    retuned = replace(SMOKE, cls_lr=0.05, ret_lr=0.02, pos_margin=0.1, neg_margin=0.3, single_margin=0.7,
                      triplet_margin=0.9, tuned=None)
    assert set(protocol.TUNED_FIELDS) == {"cls_lr", "ret_lr", "pos_margin", "neg_margin", "single_margin",
                                          "triplet_margin", "tuned"}
    assert protocol.settings_hash(retuned) == digest
    assert protocol.settings_hash(replace(SMOKE, ret_epochs=3)) != digest
    assert protocol.settings_hash(replace(SMOKE, tuning_trials=4)) != digest
    assert protocol.settings_hash(replace(SMOKE, name="other")) != digest
    assert protocol.settings_hash(config.get_profile("tutorial")) != digest


# --------------------------------------------------------------------------- the recorder
def _csv(folder, table) -> pd.DataFrame:
    return pd.read_csv(folder / report.FILES[table], dtype={"profile": str, "code": str})


def test_recorder_writes_each_table_atomically_stamped_with_profile_and_code(tmp_path, monkeypatch):
    folder = tmp_path / "results"  # not there yet: the first write makes it
    replaced = []
    real_replace = protocol.os.replace

    def watching_replace(source, target):
        replaced.append((str(source), str(target), pd.read_csv(source)))  # the full table is written first
        real_replace(source, target)

    monkeypatch.setattr(protocol.os, "replace", watching_replace)
    recorder = protocol.Recorder(folder, "smoke", "v1-abc")
    assert recorder.sitting == 0 and recorder.rows("comparison").empty
    recorder.add("comparison", [{"model": "a", "seed": 0, "score": 0.25}, {"model": "b", "seed": 0, "score": 0.5}])
    path = folder / "comparison.csv"
    source, target, written = replaced[0]
    assert (source, target) == (str(path) + ".tmp", str(path))
    assert written["model"].tolist() == ["a", "b"] and written["score"].tolist() == [0.25, 0.5]
    assert not (folder / "comparison.csv.tmp").exists()
    table = _csv(folder, "comparison")
    assert table.to_dict("list") == {"model": ["a", "b"], "seed": [0, 0], "score": [0.25, 0.5],
                                     "profile": ["smoke", "smoke"], "code": ["v1-abc", "v1-abc"]}
    # every write rewrites this sitting's stamp row, not complete
    assert [t for _, t, _ in replaced] == [str(path), str(folder / "stamp.csv")]
    stamp = _csv(folder, "stamp")
    assert stamp[["sitting", "complete", "profile", "code"]].to_dict("list") == {
        "sitting": [0], "complete": [False], "profile": ["smoke"], "code": ["v1-abc"]}


def test_recorder_keeps_other_profiles_and_drops_stale_rows_of_its_own(tmp_path):
    pd.DataFrame({"model": ["a", "a", "b", "c"], "seed": [0, 0, 1, 2], "score": [1.0, 2.0, 3.0, 4.0],
                  "profile": ["tutorial", "smoke", "smoke", "smoke"],
                  "code": ["old", "old", "v1", "v1"]}).to_csv(tmp_path / "comparison.csv", index=False)
    recorder = protocol.Recorder(tmp_path, "smoke", "v1")
    mine = recorder.rows("comparison")
    assert mine[["model", "seed", "score"]].to_dict("list") == {"model": ["b", "c"], "seed": [1, 2],
                                                               "score": [3.0, 4.0]}
    assert len(_csv(tmp_path, "comparison")) == 4  # nothing dropped before the first write
    recorder.add("comparison", [{"model": "d", "seed": 0, "score": 5.0}])
    table = _csv(tmp_path, "comparison")
    # the tutorial row (another profile, another code) stays; smoke's row of the old code goes
    assert table[["model", "profile", "code"]].values.tolist() == [
        ["a", "tutorial", "old"], ["b", "smoke", "v1"], ["c", "smoke", "v1"], ["d", "smoke", "v1"]]
    assert recorder.rows("comparison")["model"].tolist() == ["b", "c", "d"]
    other = protocol.Recorder(tmp_path, "tutorial", "old")
    assert other.rows("comparison")["score"].tolist() == [1.0]


def test_recorder_replacing_drops_this_profiles_matching_rows_only(tmp_path):
    recorder = protocol.Recorder(tmp_path, "smoke", "v1")
    tutorial = protocol.Recorder(tmp_path, "tutorial", "v1")
    recorder.add("per_query", [{"model": "a", "seed": 0, "query": q, "AP": 0.1} for q in range(3)])
    recorder.add("per_query", [{"model": "a", "seed": 1, "query": q, "AP": 0.2} for q in range(3)])
    tutorial.add("per_query", [{"model": "a", "seed": 0, "query": 0, "AP": 0.9}])
    recorder = protocol.Recorder(tmp_path, "smoke", "v1")  # a new sitting reads everything back from CSV
    recorder.add("per_query", [{"model": "a", "seed": 0, "query": q, "AP": 0.3} for q in range(3)],
                 replacing={"model": "a", "seed": 0})
    table = _csv(tmp_path, "per_query")
    smoke = table[table["profile"] == "smoke"]
    assert sorted(zip(smoke["seed"], smoke["query"], smoke["AP"])) == [
        (0, 0, 0.3), (0, 1, 0.3), (0, 2, 0.3), (1, 0, 0.2), (1, 1, 0.2), (1, 2, 0.2)]
    assert table[table["profile"] == "tutorial"]["AP"].tolist() == [0.9]  # same model and seed, other profile
    # replacing rows that are not there yet just adds
    recorder.add("per_query", [{"model": "b", "seed": 0, "query": 0, "AP": 0.4}], replacing={"model": "b", "seed": 0})
    assert len(recorder.rows("per_query")) == 7


def test_the_stamp_table_has_one_row_per_sitting_and_the_last_one_says_complete(tmp_path):
    first = protocol.Recorder(tmp_path, "smoke", "v1")
    first.add("tuning", [{"study": "stage 1", "trial": 0}])
    first.add("tuning", [{"study": "stage 1", "trial": 1}])
    stamp = first.rows("stamp")
    assert stamp["sitting"].tolist() == [0] and stamp["complete"].tolist() == [False]
    assert stamp["wall s"].iloc[0] >= 0
    second = protocol.Recorder(tmp_path, "smoke", "v1")
    assert second.sitting == 1
    second.add("tuning", [{"study": "stage 1", "trial": 2}])
    second.stamp(complete=True, seeds="0 1")
    stamp = _csv(tmp_path, "stamp")
    assert stamp[["sitting", "complete"]].values.tolist() == [[0, False], [1, True]]
    assert stamp["seeds"].astype(str).tolist()[1] == "0 1"
    assert protocol.Recorder(tmp_path, "smoke", "v1").sitting == 2
    assert protocol.Recorder(tmp_path, "smoke", "v2").sitting == 0  # another code version starts afresh
    assert protocol.Recorder(tmp_path, "tutorial", "v1").sitting == 0


# --------------------------------------------------------------------------- the image budgets
def test_images_per_retrieval_epoch_by_hand():
    release = _release()  # 50 classification images; retrieval categories 0 and 1 have two images or more
    assert protocol.classifier_images_per_epoch(release) == 50
    # 16 pairs of 2 images for each of the 2 categories with two images or more
    assert protocol.retrieval_images_per_epoch(release, SMOKE, "double") == 16 * 2 * 2
    assert protocol.retrieval_images_per_epoch(release, SMOKE, "single") == 16 * 2 * 2
    # the triplet: round(16 * 2 / 3) = 11 triplets of 3 images, fewer tuples for about as many images
    triplet = protocol.retrieval_images_per_epoch(release, SMOKE, "triplet")
    assert triplet == 11 * 3 * 2
    double = protocol.retrieval_images_per_epoch(release, SMOKE, "double")
    assert triplet / (3 * 2) < double / (2 * 2)  # tuples per category: 11 triplets against 16 pairs
    assert abs(triplet - double) <= 1.5 * 2  # the rounding moves at most half a triplet per category
    bigger = replace(SMOKE, pairs_per_category=30)
    assert protocol.retrieval_images_per_epoch(_release(retrieval_labels=(0, 0, 1, 1, 2, 2, 2)), bigger,
                                               "triplet") == 20 * 3 * 3  # 30 pairs = 60 images = 20 triplets


def test_the_compute_matched_run_decays_its_learning_rate_at_the_same_fraction_of_its_budget():
    tutorial = config.PROFILES["tutorial"]                                    # 12 epochs, x 0.1 after 8
    assert (tutorial.ret_epochs, tutorial.ret_lr_step) == (12, 8)
    stretched = protocol.compute_matched_profile(tutorial, 19)
    assert (stretched.ret_epochs, stretched.ret_lr_step) == (19, 13)          # 19 x 8 / 12 = 12.7
    assert stretched == replace(tutorial, ret_epochs=19, ret_lr_step=13)
    assert protocol.compute_matched_profile(replace(tutorial, ret_lr_step=1), 3).ret_lr_step == 1   # never 0


def test_last_epoch_gain_is_the_last_score_minus_the_best_before_it():
    def run(scores, column="val_mAP"):
        return SimpleNamespace(val_column=column, epochs=pd.DataFrame({"epoch": range(len(scores)), column: scores}))
    assert protocol.last_epoch_gain(run([0.2, 0.5, 0.4, 0.53])) == pytest.approx(0.03)    # still rising: kept last
    assert protocol.last_epoch_gain(run([0.2, 0.5, 0.4, 0.45])) == pytest.approx(-0.05)   # past its best
    assert protocol.last_epoch_gain(run([0.7, 0.3], "val_accuracy")) == pytest.approx(-0.4)  # epoch 0 counts


def test_compute_matched_epochs_by_hand():
    release = _release()
    # stage 1: 2 epochs x 50 images; two-stage retrieval: 2 epochs x 64 images; 228 images at 64 an epoch: 3.56 -> 4
    assert protocol.compute_matched_epochs(release, SMOKE) == 4
    assert protocol.compute_matched_epochs(release, replace(SMOKE, cls_epochs=5)) == 6  # (250 + 128) / 64 = 5.9
    assert protocol.compute_matched_epochs(_release(n_classification=64), SMOKE) == 4  # (128 + 128) / 64 exactly
    assert protocol.compute_matched_epochs(release, replace(SMOKE, cls_epochs=0, ret_epochs=0)) == 1


def test_n_trials_counts_stage_1_and_each_loss_on_each_schedule():
    assert protocol.n_trials(SMOKE) == 3 * (1 + 3 * 2) == 21
    assert protocol.n_trials(config.get_profile("tutorial")) == 6 * 7


# --------------------------------------------------------------------------- the jobs of a seed
TEST_QUERIES = np.array([[1.0, 0.0], [0.0, 1.0]])
TEST_DATABASE = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
HAND_MODEL = "double from stage 1"
"""The model whose fake embeddings are :data:`TEST_QUERIES` and :data:`TEST_DATABASE`: its metrics by hand below."""


def _fake_embed_split(model, split, profile, progress):
    if model == HAND_MODEL:
        return TEST_QUERIES, TEST_DATABASE
    rng = np.random.default_rng(zlib.crc32(str(model).encode()))  # one embedding per model
    return rng.standard_normal((2, 4)), rng.standard_normal((3, 4))


def _test_release():
    release = _release()
    release.test = SimpleNamespace(queries=["q0", "q1"], database=["d0", "d1", "d2"],
                                   ground_truth=[np.array([0]), np.array([0, 1])], query_labels=np.array([7, 9]))
    return release


def _stage1_run(seed: int = 0):
    return SimpleNamespace(kind="classifier", last_epoch=2, best_epoch=2, val_column="val_accuracy", best_score=0.4,
                           epochs=pd.DataFrame({"epoch": [0, 1, 2], "val_accuracy": [0.1, 0.3, 0.4]}), wall_time=3.0, key=f"stage1-{seed}", config={"kind": "classifier"},
                           model=SimpleNamespace(embedding=lambda: SimpleNamespace(eval=lambda: "stage-1 features")))


@pytest.fixture
def fake_runs(monkeypatch):
    """Fake training: every call is logged in ``log``; nothing trains."""
    log = SimpleNamespace(classifier=[], retrieval=[], defaults=[])

    def train_classifier(release, profile, *, seed, progress):
        log.classifier.append((profile, seed))
        return _stage1_run(seed)

    def train_retrieval(release, loss, init, profile, *, seed, progress, lr=None, margins=None):
        log.retrieval.append(SimpleNamespace(loss=loss, init=init, profile=profile, seed=seed, lr=lr, margins=margins))
        schedule = "one-stage" if isinstance(init, str) else "two-stage"
        tuned = config.tuned_settings(profile, schedule, loss)
        lr = tuned["lr"] if lr is None else lr
        margins = {k: tuned[k] for k in methods.get(loss).margin_fields} if margins is None else margins
        start = init if isinstance(init, str) else "stage 1"
        name = f"{loss} from {start}" + ("" if profile.ret_epochs == SMOKE.ret_epochs else f", {profile.ret_epochs}")
        curve = [0.3, 0.6] + [0.5] * (profile.ret_epochs - 2) + [0.55]  # best at epoch 1, the last 0.05 below it
        return SimpleNamespace(kind="retrieval", last_epoch=profile.ret_epochs, best_epoch=1, val_column="val_mAP",
                               best_score=0.6, epochs=pd.DataFrame({"epoch": range(len(curve)), "val_mAP": curve}),
                               wall_time=7.04, key=name, model=name,
                               config={"kind": "retrieval", "loss": loss, "lr": lr, **margins})

    def default_settings(profile, loss, init):
        log.defaults.append((loss, init))
        return {"lr": 0.0042, "margins": {"pos_margin": 0.3, "neg_margin": 0.9}}

    monkeypatch.setattr(protocol.runs, "train_classifier", train_classifier)
    monkeypatch.setattr(protocol.runs, "train_retrieval", train_retrieval)
    monkeypatch.setattr(protocol.runs, "default_settings", default_settings)
    monkeypatch.setattr(protocol.runs, "untrained_model", lambda profile, seed: "ImageNet network")
    monkeypatch.setattr(protocol.evaluation, "embed_split", _fake_embed_split)
    return log


JOB_NAMES = ["single, one-stage", "double, one-stage", "triplet, one-stage",
             "single, two-stage", "double, two-stage", "triplet, two-stage",
             "double, one-stage, compute-matched", "ImageNet features only", "stage-1 features only", "random ranking"]


def test_seed_jobs_name_every_model_and_train_stage_1_only_when_needed_once(fake_runs):
    release = _test_release()
    jobs = protocol.seed_jobs(release, 3, SMOKE)
    assert [name for name, _ in jobs] == JOB_NAMES
    assert fake_runs.classifier == [] and fake_runs.retrieval == []  # making the jobs trains nothing
    jobs = dict(jobs)
    for name in ("single, one-stage", "double, one-stage", "triplet, one-stage",
                 "double, one-stage, compute-matched", "ImageNet features only", "random ranking"):
        jobs[name]()
    assert fake_runs.classifier == []  # no job so far needed stage 1
    assert [call.init for call in fake_runs.retrieval] == ["imagenet"] * 4
    jobs["single, two-stage"]()
    assert fake_runs.classifier == [(SMOKE, 3)]
    for name in ("double, two-stage", "triplet, two-stage", "stage-1 features only"):
        jobs[name]()
    assert len(fake_runs.classifier) == 1  # trained (or loaded) once for the seed
    two_stage = fake_runs.retrieval[4:]
    assert [c.loss for c in two_stage] == ["single", "double", "triplet"]
    assert all(c.init.kind == "classifier" and c.init.key == "stage1-3" for c in two_stage)
    assert all(c.seed == 3 for c in fake_runs.retrieval)
    # another seed's jobs train their own stage 1
    dict(protocol.seed_jobs(release, 4, SMOKE))["double, two-stage"]()
    assert fake_runs.classifier == [(SMOKE, 3), (SMOKE, 4)]


def test_seed_jobs_rows_hold_the_runs_settings_images_and_test_metrics(fake_runs):
    release = _test_release()
    results = {name: job() for name, job in protocol.seed_jobs(release, 1, SMOKE)}
    rows = pd.DataFrame([row for row, _ in results.values()]).set_index("model")
    assert list(rows.index) == JOB_NAMES and (rows["seed"] == 1).all()
    # one-stage and two-stage runs train at the profile's tuned settings (helpers/config.py, smoke)
    assert rows.loc["double, two-stage", "lr"] == 0.01
    assert rows.loc["double, two-stage", "margins"] == "m1 = 0.495, m2 = 0.55"
    assert rows.loc["triplet, two-stage", "margins"] == "m = 0.15" and rows.loc["triplet, two-stage", "lr"] == 0.000562
    assert rows.loc["single, one-stage", "margins"] == "m = 0.85"
    one_stage, two_stage = fake_runs.retrieval[:3], fake_runs.retrieval[3:6]
    assert [(c.loss, c.init) for c in one_stage] == [("single", "imagenet"), ("double", "imagenet"),
                                                     ("triplet", "imagenet")]
    assert all(c.lr is None and c.margins is None and c.profile is SMOKE for c in one_stage + two_stage)
    # the compute-matched run: (2 x 50 + 2 x 64) / 64 = 3.56 -> 4 epochs, lr step 4 x 2 / 2 = 4 (no decay, as the
    # others with ret_lr_step = ret_epochs), at the default settings of a one-stage double margin run
    matched = fake_runs.retrieval[6]
    assert (matched.loss, matched.init, matched.lr, matched.margins) == (
        "double", "imagenet", 0.0042, {"pos_margin": 0.3, "neg_margin": 0.9})
    assert fake_runs.defaults == [("double", "imagenet")]
    assert matched.profile == replace(SMOKE, ret_epochs=4, ret_lr_step=4)
    assert rows.loc[report.MATCHED, "epochs trained"] == 4 and rows.loc[report.MATCHED, "margins"] == "m1 = 0.3, m2 = 0.9"
    # images seen: 64 a pair epoch, 66 a triplet epoch, stage 1 adds 2 x 50
    images = rows["images seen"]
    assert images["single, one-stage"] == 2 * 64 and images["triplet, one-stage"] == 2 * 66
    assert images["double, two-stage"] == 2 * 64 + 100 and images["triplet, two-stage"] == 2 * 66 + 100
    assert images[report.MATCHED] == 4 * 64 and images["stage-1 features only"] == 100
    assert np.isnan(images["ImageNet features only"]) and np.isnan(images["random ranking"])
    assert rows.loc["double, two-stage", ["epochs trained", "best epoch", "best val_mAP", "train s"]].tolist() == [
        2, 1, 0.6, 7.0]
    assert rows.loc["stage-1 features only", "best val_accuracy"] == 0.4
    gain = rows["last-epoch gain"]  # the last epoch's score minus the best before it
    assert gain["stage-1 features only"] == pytest.approx(0.4 - 0.3)
    assert gain["double, two-stage"] == pytest.approx(0.55 - 0.6) and gain[report.MATCHED] == pytest.approx(0.55 - 0.6)
    assert np.isnan(gain["ImageNet features only"])


FAKE_MODELS = {**{f"{loss}, {schedule}": f"{loss} from {'imagenet' if schedule == 'one-stage' else 'stage 1'}"
                  for schedule in config.SCHEDULES for loss in methods.NAMES},
               report.MATCHED: "double from imagenet, 4", "ImageNet features only": "ImageNet network",
               "stage-1 features only": "stage-1 features"}
"""The fake model each job scores: a retrieval run's is named after its loss and start (and its epochs if not 2)."""


def test_seed_jobs_test_metrics_by_hand_and_per_query_rows(fake_runs):
    release = _test_release()
    results = {name: job() for name, job in protocol.seed_jobs(release, 2, SMOKE)}
    row, per_query = results["double, two-stage"]
    # query 0 finds its one relevant item first (AP 1); query 1 ranks d2, d1, d0 with d0 and d1 relevant:
    # trapezoid AP = ((0 + 1/2) / 2 + (1/2 + 2/3) / 2) / 2 = 5/12, standard AP = (1/2 + 2/3) / 2 = 7/12
    assert row["mAP (trapezoid)"] == pytest.approx((1 + 5 / 12) / 2)
    assert row["mAP (standard)"] == pytest.approx((1 + 7 / 12) / 2)
    assert (row["R@1"], row["R@2"], row["P@1"]) == pytest.approx((0.5, 1.0, 0.5))
    assert row["R-Precision"] == pytest.approx((1 + 1 / 2) / 2) and row["MAP@R"] == pytest.approx((1 + 1 / 4) / 2)
    assert per_query == [{"model": "double, two-stage", "seed": 2, "query": 0, "category": 7, "AP": pytest.approx(1.0)},
                         {"model": "double, two-stage", "seed": 2, "query": 1, "category": 9,
                          "AP": pytest.approx(5 / 12)}]
    for name, (row, per_query) in results.items():
        if name == "random ranking":
            assert per_query == []
            want = evaluation.chance_levels(release.test, seed=2).to_dict()
            assert {k: row[k] for k in want} == pytest.approx(want)
            continue
        model = FAKE_MODELS[name]
        want = metrics.evaluate(*_fake_embed_split(model, None, None, False), release.test.ground_truth)
        assert {k: row[k] for k in want} == pytest.approx(want)
        assert len(per_query) == len(release.test.queries)
        assert [r["category"] for r in per_query] == [7, 9]
        assert np.mean([r["AP"] for r in per_query]) == pytest.approx(row["mAP (trapezoid)"])


# --------------------------------------------------------------------------- the imbalance table
def test_imbalance_rows_are_the_positive_share_per_epoch_at_tuned_and_paper_margins(monkeypatch):
    history = pd.DataFrame({"epoch": [1, 1, 2, 2, 3],
                            "pos_loss": [3.0, 1.0, 1.0, 0.5, 0.0], "neg_loss": [2.0, 4.0, 3.0, 1.5, 0.0],
                            "pos_active_frac": [1.0, 0.5, 0.4, 0.2, 0.0], "neg_active_frac": [0.2, 0.4, 0.6, 0.8, 1.0],
                            "pos_grad": [1.0, 1.0, 0.5, 0.5, 0.0], "neg_grad": [1.0, 3.0, 2.0, 2.0, 0.0]})
    stage1 = _stage1_run(5)
    seen = []

    def train_retrieval(release, loss, init, profile, *, seed, lr, margins, progress):
        seen.append((loss, init, seed, lr, margins))
        return SimpleNamespace(history=history)

    monkeypatch.setattr(protocol.runs, "train_classifier", lambda release, profile, *, seed, progress: stage1)
    monkeypatch.setattr(protocol.runs, "train_retrieval", train_retrieval)
    rows = pd.DataFrame(protocol.imbalance_rows(_release(), SMOKE, seed=5))
    # the smoke profile's tuned two-stage settings (lr 0.01 for both), then the paper's margins at the tuned lr
    assert seen == [("single", stage1, 5, 0.01, {"margin": 0.55}), ("single", stage1, 5, 0.01, {"margin": 1.2}),
                    ("double", stage1, 5, 0.01, {"pos_margin": 0.495, "neg_margin": 0.55}),
                    ("double", stage1, 5, 0.01, {"pos_margin": 0.8, "neg_margin": 1.2})]
    assert list(rows["margins"].unique()) == ["tuned: m = 0.55", "paper: m = 1.2", "tuned: m1 = 0.495, m2 = 0.55",
                                              "paper: m1 = 0.8, m2 = 1.2"]
    assert rows["loss"].tolist() == ["single"] * 6 + ["double"] * 6 and rows["epoch"].tolist() == [1, 2, 3] * 4
    # epoch 1: (3 + 1) / (3 + 1 + 2 + 4) = 0.4; epoch 2: 1.5 / (1.5 + 4.5) = 0.25; epoch 3: no loss at all, NaN
    share = rows["positive share"].to_numpy()
    assert share[rows["epoch"] != 3] == pytest.approx([0.4, 0.25] * 4) and np.isnan(share[rows["epoch"] == 3]).all()
    # the same share of the gradient norms: epoch 1: 2 / (2 + 4) = 1/3; epoch 2: 1 / (1 + 4) = 0.2
    gradient = rows["positive gradient share"].to_numpy()
    assert gradient[rows["epoch"] != 3] == pytest.approx([1 / 3, 0.2] * 4)
    assert np.isnan(gradient[rows["epoch"] == 3]).all()
    assert rows["active positives"].tolist() == pytest.approx([0.75, 0.3, 0.0] * 4)
    assert rows["active negatives"].tolist() == pytest.approx([0.3, 0.7, 1.0] * 4)


# --------------------------------------------------------------------------- resuming make results
class FakeProtocol:
    """Fakes of tune_all, seed_jobs and the two analyses that count what runs; ``interrupt`` raises in one job."""

    NAMES = ("a", "b", "c")

    def __init__(self, interrupt=None):
        self.tuned, self.ran, self.analyses, self.interrupt = [], [], [], interrupt
        self.profiles_seen = set()

    def tune_all(self, release, profile, recorder, *, seed, on_trial):
        self.tuned.append(seed)
        if recorder.rows("tuning").empty:
            recorder.add("tuning", [{"study": "stage 1", "trial": 0, "state": "complete", "lr": 0.001}])
        return replace(profile, cls_lr=0.005)

    def seed_jobs(self, release, seed, profile):
        def job(name):
            def run():
                if self.interrupt == (name, seed):
                    raise KeyboardInterrupt
                self.ran.append((name, seed))
                self.profiles_seen.add(profile.cls_lr)
                per_query = [] if name == "c" else [{"model": name, "seed": seed, "query": q, "category": q,
                                                     "AP": 0.1 * q} for q in range(2)]
                return {"model": name, "seed": seed, "mAP (trapezoid)": 0.5 + seed}, per_query
            return run
        return [(name, job(name)) for name in self.NAMES]

    def imbalance_rows(self, release, profile, *, seed):
        self.analyses.append(("imbalance", seed))
        return [{"loss": "double", "epoch": 1, "positive share": 0.5}]

    def validation_noise_rows(self, release, profile, *, seed):
        self.analyses.append(("validation_noise", seed))
        return [{"loss": "double", "epoch": 1, "queries": 0.4, "leave-one-out": 0.5}]

    def install(self, monkeypatch, code="code1"):
        for name in ("tune_all", "seed_jobs", "imbalance_rows", "validation_noise_rows"):
            monkeypatch.setattr(protocol, name, getattr(self, name))
        monkeypatch.setattr(protocol.runs, "code_version", lambda: code)


def _run(folder, monkeypatch, fake, seeds=(0, 1), code="code1"):
    fake.install(monkeypatch, code)
    return protocol.run_protocol(SimpleNamespace(), SMOKE, seeds=seeds, folder=folder, progress=False)


def test_run_protocol_records_everything_and_a_second_run_runs_nothing(tmp_path, monkeypatch):
    first = FakeProtocol()
    tuned = _run(tmp_path, monkeypatch, first)
    assert tuned.cls_lr == 0.005 and first.profiles_seen == {0.005}  # the jobs get the tuned profile
    assert first.tuned == [0] and first.ran == [(n, s) for s in (0, 1) for n in FakeProtocol.NAMES]
    assert first.analyses == [("imbalance", 0), ("validation_noise", 0)]
    tables = report.read_results("smoke", tmp_path)
    code = f"code1-{protocol.settings_hash(SMOKE)}"
    assert all((table["code"] == code).all() for table in tables.values())
    assert sorted(zip(tables["comparison"]["model"], tables["comparison"]["seed"])) == sorted(first.ran)
    assert len(tables["per_query"]) == 2 * 2 * 2  # models a and b, two seeds, two queries
    stamp = tables["stamp"]
    assert stamp["sitting"].tolist() == [0] and stamp["complete"].tolist() == [True]
    assert str(stamp["seeds"].iloc[0]) == "0 1" and stamp["trials per study"].iloc[0] == 3

    second = FakeProtocol()
    _run(tmp_path, monkeypatch, second)
    assert second.ran == [] and second.analyses == [] and second.tuned == [0]
    tables = report.read_results("smoke", tmp_path)
    assert tables["stamp"][["sitting", "complete"]].values.tolist() == [[0, True], [1, True]]
    assert len(tables["comparison"]) == 6 and len(tables["tuning"]) == 1


def test_an_interrupted_run_keeps_its_rows_and_the_rerun_runs_only_the_missing_jobs(tmp_path, monkeypatch):
    interrupted = FakeProtocol(interrupt=("b", 1))
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, monkeypatch, interrupted)
    assert interrupted.ran == [("a", 0), ("b", 0), ("c", 0), ("a", 1)] and interrupted.analyses == []
    comparison = _csv(tmp_path, "comparison")
    assert list(zip(comparison["model"], comparison["seed"])) == interrupted.ran
    assert _csv(tmp_path, "stamp")["complete"].tolist() == [False]
    with pytest.raises(FileNotFoundError):  # no imbalance table yet, and the stamp is not complete
        report.read_results("smoke", tmp_path)

    rerun = FakeProtocol()
    _run(tmp_path, monkeypatch, rerun)
    assert rerun.ran == [("b", 1), ("c", 1)]
    assert rerun.analyses == [("imbalance", 0), ("validation_noise", 0)]
    tables = report.read_results("smoke", tmp_path)
    keys = list(zip(tables["comparison"]["model"], tables["comparison"]["seed"]))
    assert sorted(keys) == sorted((n, s) for s in (0, 1) for n in FakeProtocol.NAMES) and len(set(keys)) == 6
    assert tables["stamp"][["sitting", "complete"]].values.tolist() == [[0, False], [1, True]]
    assert len(tables["per_query"]) == 8 and len(tables["tuning"]) == 1


def test_a_run_interrupted_between_its_per_query_and_comparison_rows_is_rerun_without_duplicates(tmp_path,
                                                                                                  monkeypatch):
    real_add = protocol.Recorder.add

    def add_then_stop(self, table, rows, replacing=None):
        if table == "comparison" and rows[0]["model"] == "b" and rows[0]["seed"] == 0:
            raise KeyboardInterrupt  # b's per-query rows are written, its comparison row is not
        real_add(self, table, rows, replacing)

    monkeypatch.setattr(protocol.Recorder, "add", add_then_stop)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, monkeypatch, FakeProtocol())
    per_query = _csv(tmp_path, "per_query")
    assert list(zip(per_query["model"], per_query["seed"])) == [("a", 0)] * 2 + [("b", 0)] * 2
    monkeypatch.setattr(protocol.Recorder, "add", real_add)
    rerun = FakeProtocol()
    _run(tmp_path, monkeypatch, rerun)
    assert rerun.ran == [("b", 0), ("c", 0), ("a", 1), ("b", 1), ("c", 1)]
    per_query = report.read_results("smoke", tmp_path)["per_query"]
    assert sorted(zip(per_query["model"], per_query["seed"], per_query["query"])) == sorted(
        (m, s, q) for m in ("a", "b") for s in (0, 1) for q in (0, 1))


def test_a_new_code_version_runs_everything_again_and_drops_the_stale_rows(tmp_path, monkeypatch):
    _run(tmp_path, monkeypatch, FakeProtocol(), code="code1")
    again = FakeProtocol()
    _run(tmp_path, monkeypatch, again, code="code2")
    assert len(again.ran) == 6 and len(again.analyses) == 2
    tables = report.read_results("smoke", tmp_path)
    assert all(table["code"].str.startswith("code2-").all() for table in tables.values())
    assert tables["stamp"][["sitting", "complete"]].values.tolist() == [[0, True]]


# --------------------------------------------------------------------------- the committed results
def _stamp_complete(name: str) -> bool:
    """Whether results/ holds a finished ``make results`` for profile ``name`` (read at collection)."""
    path = report.RESULTS_DIR / report.FILES["stamp"]
    if not path.is_file():
        return False
    stamp = pd.read_csv(path, dtype={"profile": str, "code": str})
    stamp = stamp[stamp["profile"] == name]
    return bool(len(stamp)) and str(stamp["complete"].iloc[-1]).lower() == "true"


COMMITTED = [pytest.param(name, marks=pytest.mark.skipif(
    not _stamp_complete(name), reason=f"results/ holds no finished make results for the {name} profile yet"))
    for name in ("smoke", "tutorial")]


@pytest.mark.parametrize("name", COMMITTED)
def test_committed_results_are_complete_for_the_profile(name):
    tables = report.read_results(name)
    profile = config.get_profile(name)
    tuning, comparison = tables["tuning"], tables["comparison"]
    studies = [report.STAGE1_STUDY] + [report.study_name(loss, schedule) for schedule in config.SCHEDULES
                                       for loss in methods.NAMES]
    assert sorted(set(tuning["study"])) == sorted(studies)
    for study in studies:
        trials = tuning[tuning["study"] == study]["trial"]
        assert sorted(trials) == list(range(profile.tuning_trials)), study
    models = [report.model_name(loss, schedule) for schedule in config.SCHEDULES for loss in methods.NAMES]
    models += [report.MATCHED, *report.FLOORS]
    keys = list(zip(comparison["model"], comparison["seed"]))
    assert sorted(keys) == sorted((m, s) for m in models for s in protocol.SEEDS)
    stamp = tables["stamp"]
    assert str(stamp["complete"].iloc[-1]).lower() == "true"
    assert int(stamp["trials per study"].iloc[-1]) == profile.tuning_trials
    assert str(stamp["seeds"].iloc[-1]) == " ".join(map(str, protocol.SEEDS))
    assert tables["stamp"]["code"].nunique() == 1 and all(
        (table["code"] == stamp["code"].iloc[-1]).all() for table in tables.values())
    assert stamp["code"].iloc[-1].endswith("-" + protocol.settings_hash(profile))
    # per-query APs: every query of the test split for each scored model and seed; their mean is the row's mAP
    per_query = tables["per_query"]
    counts = per_query.groupby(["model", "seed"]).size()
    assert set(counts.index) == {(m, s) for m in models if m != "random ranking" for s in protocol.SEEDS}
    assert (counts == profile.n_test_categories * profile.queries_per_category).all()
    means = per_query.groupby(["model", "seed"])["AP"].mean()
    rows = comparison.set_index(["model", "seed"])["mAP (trapezoid)"]
    assert means.to_numpy() == pytest.approx(rows.loc[means.index].to_numpy(), abs=1e-5)
    imbalance = tables["imbalance"]
    assert set(imbalance["loss"]) == {m.name for m in methods.METHODS.values() if m.is_pair_loss}
    assert imbalance.groupby("margins")["epoch"].apply(sorted).tolist() == [
        list(range(1, profile.ret_epochs + 1))] * 4
    assert tables["validation_noise"]["epoch"].tolist() == list(range(profile.ret_epochs + 1))


@pytest.mark.parametrize("name", COMMITTED)
def test_the_profile_holds_the_settings_its_tuning_chose(name):
    tables = report.read_results(name)
    profile = config.get_profile(name)
    chosen = report.chosen_settings(tables["tuning"])
    assert profile.cls_lr == chosen["cls_lr"]
    assert profile.tuned == chosen["tuned"]
