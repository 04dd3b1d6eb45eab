"""Tests of helpers.machinery.runs on the synthetic smoke release: determinism, the cache and its key, resume."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import config, data, evaluation, losses, metrics, models, synthetic
from helpers.machinery import cache, features, runs

SMOKE = config.get_profile("smoke", tuned=None)  # untuned: runs take the profile's ret_lr and margins
QUICK = config.get_profile(SMOKE, ret_epochs=1, pairs_per_category=4, ret_batch_size=16, ret_patience=None)
TWO_EPOCHS = config.get_profile(QUICK, ret_epochs=2, ret_lr_step=1)
SMALL_CNN = dict(backbone="small", weights=None, cut=None, render_size=40, train_size_range=(32, 40), eval_size=40)
"""The from-scratch CNN at 40 px, for which the learning tests below were calibrated."""


@pytest.fixture(scope="module")
def smoke_release(tmp_path_factory):
    root = data.make_synthetic_release(tmp_path_factory.mktemp("smoke_release"), SMOKE, seed=0)
    return data.load_firearm_release(root)


def clean_release(root, **sizes):
    """A smoke-sized release without nuisance variation, learnable in a few dozen iterations."""
    profile = config.get_profile("smoke", **SMALL_CNN, **sizes)
    root = data.make_synthetic_release(root, profile, seed=0, progress=False, difficulty=synthetic.CLEAN)
    return data.load_firearm_release(root)


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    """Send the load-or-train cache to a fresh temporary folder."""
    monkeypatch.setattr(config, "CACHE_DIR", tmp_path / "cache")
    return tmp_path / "cache"


def retrieval(release, loss="double", init="imagenet", profile=QUICK, **kwargs):
    kwargs.setdefault("cache", False)
    return runs.train_retrieval(release, loss, init, profile, progress=False, device="cpu", **kwargs)


def split_mAP(model, split, profile):
    """Trapezoid mAP of ``model`` on a retrieval split (helper, not a test)."""
    return metrics.mean_average_precision(*evaluation.embed_split(model, split, profile, progress=False),
                                          split.ground_truth)[0]


def leave_one_out_mAP(model, split, profile):
    """Trapezoid mAP of ``model`` with every image of ``split`` a query against the rest (helper, not a test)."""
    query_emb, db_emb = evaluation.embed_split(model, split, profile, progress=False)
    return metrics.leave_one_out_map(np.concatenate([query_emb, db_emb]),
                                     np.concatenate([split.query_labels, split.database_labels]))[0]


# --------------------------------------------------------------------------- keys

def test_run_key_is_canonical_and_sensitive():
    a = {"loss": "double", "lr": 0.01, "seed": 0}
    assert runs.run_key(a) == runs.run_key(dict(reversed(list(a.items()))))
    assert runs.run_key(a) != runs.run_key({**a, "seed": 1})
    assert len(runs.run_key(a)) == 12


def test_release_fingerprint_follows_paths_and_sizes(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"123")
    (tmp_path / ".DS_Store").write_bytes(b"junk")
    release = type("Release", (), {"root": tmp_path})()
    first = runs.release_fingerprint(release)
    (tmp_path / ".DS_Store").write_bytes(b"other junk")
    assert runs.release_fingerprint(release) == first          # hidden files are ignored
    (tmp_path / "a" / "x.jpg").write_bytes(b"1234")
    second = runs.release_fingerprint(release)
    assert second != first
    (tmp_path / "a" / "y.jpg").write_bytes(b"")
    assert runs.release_fingerprint(release) not in (first, second)


def test_the_key_holds_the_settings_of_the_stage_and_no_others():
    retrieval_settings = runs.stage_settings(SMOKE, "retrieval")
    assert retrieval_settings["ret_epochs"] == SMOKE.ret_epochs and "cls_epochs" not in retrieval_settings
    assert "eval_batch_size" not in retrieval_settings and "triplet_margin" not in retrieval_settings
    assert runs.stage_settings(config.get_profile(SMOKE, eval_batch_size=7, cls_epochs=9), "retrieval") \
        == retrieval_settings
    assert runs.stage_settings(config.get_profile(SMOKE, ret_lr_step=9), "retrieval") != retrieval_settings
    classifier = runs.stage_settings(SMOKE, "classifier")
    assert classifier["cls_lr"] == SMOKE.cls_lr and "ret_epochs" not in classifier


METRIC = '''"""Metrics."""


def average(values):
    """The mean."""
    return sum(values) / len(values)  # a comment
'''


def test_the_code_version_ignores_docstrings_and_comments_but_not_code():
    same = METRIC.replace('"""The mean."""', '"""The arithmetic mean, edited."""').replace("# a comment", "")
    changed = METRIC.replace("/ len(values)", "/ max(1, len(values))")
    assert cache.digest_of_sources({"metrics": same}) == cache.digest_of_sources({"metrics": METRIC})
    assert cache.digest_of_sources({"metrics": changed}) != cache.digest_of_sources({"metrics": METRIC})
    two = METRIC + "\n\ndef other():\n    return 1\n"
    assert cache.digest_of_sources({"m:average": two}) == cache.digest_of_sources({"m:average": METRIC})


def _copy_of_the_package(tmp_path, monkeypatch):
    package = tmp_path / "helpers"
    shutil.copytree(cache.PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cache, "PACKAGE", package)
    cache.code_version.cache_clear()
    return package


def test_the_run_key_follows_the_validation_metric_and_seeding_but_not_their_docstrings(tmp_path, monkeypatch):
    assert "metrics" in runs.RUN_CODE and "config:seed_everything" in runs.RUN_CODE
    package = _copy_of_the_package(tmp_path, monkeypatch)
    try:
        original = runs.code_version()
        source = (package / "metrics.py").read_text()
        (package / "metrics.py").write_text(source.replace('"""', '"""Edited. ', 1))      # a docstring
        cache.code_version.cache_clear()
        assert runs.code_version() == original
        (package / "metrics.py").write_text(source + "\nEXTRA = 1\n")                      # code
        cache.code_version.cache_clear()
        assert runs.code_version() != original
        (package / "metrics.py").write_text(source)
        config_source = (package / "config.py").read_text()
        (package / "config.py").write_text(config_source.replace("    random.seed(seed)\n", "    random.seed(seed + 1)\n"))
        cache.code_version.cache_clear()
        assert runs.code_version() != original
        (package / "config.py").write_text(config_source.replace('cls_epochs=15', 'cls_epochs=16'))  # a profile value:
        cache.code_version.cache_clear()                                  # the key holds the settings themselves
        assert runs.code_version() == original
    finally:
        cache.code_version.cache_clear()


def test_load_run_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.pt"):
        runs.load_run(tmp_path)


def test_bad_arguments_are_rejected(smoke_release):
    with pytest.raises(ValueError, match="unknown loss 'quadruplet'"):
        retrieval(smoke_release, "quadruplet")
    with pytest.raises(TypeError, match="init must be"):
        retrieval(smoke_release, init=42)
    with pytest.raises(ValueError, match="takes the margins"):
        retrieval(smoke_release, "double", margins={"margin": 1.0})


# --------------------------------------------------------------------------- training runs

def test_history_columns_schedule_and_determinism(smoke_release):
    first = retrieval(smoke_release, seed=3, profile=TWO_EPOCHS)
    again = retrieval(smoke_release, seed=3, profile=TWO_EPOCHS)
    history = first.history
    assert list(history.columns) == ["epoch", "iteration", "lr", "loss", "pos_loss", "neg_loss", "active_frac",
                                     "pos_active_frac", "neg_active_frac", "pos_dist", "neg_dist", "pos_grad",
                                     "neg_grad"]
    assert history["iteration"].tolist() == list(range(1, len(history) + 1))
    assert set(history.loc[history.epoch == 1, "lr"]) == {SMOKE.ret_lr}
    assert history.loc[history.epoch == 2, "lr"].iloc[0] == pytest.approx(SMOKE.ret_lr * 0.1)
    np.testing.assert_allclose(history.pos_loss + history.neg_loss, history.loss, rtol=1e-5)
    assert first.epochs["epoch"].tolist() == [0, 1, 2]
    assert not first.from_cache and first.path is None and first.wall_time > 0
    assert not first.model.training and next(first.model.parameters()).device.type == "cpu"
    pd.testing.assert_frame_equal(first.history, again.history)
    pd.testing.assert_series_equal(first.epochs["val_mAP"], again.epochs["val_mAP"])
    other = retrieval(smoke_release, seed=4, profile=TWO_EPOCHS)
    assert not np.allclose(other.history["loss"], first.history["loss"])


def test_the_learning_rate_is_the_profiles_or_the_one_given(smoke_release):
    from_profile = retrieval(smoke_release, profile=config.get_profile(QUICK, ret_lr=3e-3))
    assert set(from_profile.history["lr"]) == {3e-3} and from_profile.config["lr"] == 3e-3
    given = retrieval(smoke_release, profile=QUICK, lr=2e-3)
    assert set(given.history["lr"]) == {2e-3} and given.config["lr"] == 2e-3
    assert given.key != from_profile.key


def test_an_epoch_written_out_gives_the_runs_losses_number_for_number(smoke_release):
    run = retrieval(smoke_release)
    training = runs.retrieval_training(smoke_release, "double", "imagenet", QUICK)
    top, optimizer = training.network.top, training.optimizer
    margins = {"pos_margin": SMOKE.pos_margin, "neg_margin": SMOKE.neg_margin}
    top.train()
    by_hand = []
    for x1, x2, y in training.loader_for(1):
        e1, e2 = top(torch.cat([x1, x2])).split(len(x1))
        loss = losses.double_margin_contrastive_loss(e1, e2, y, **margins)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        by_hand.append(loss.item())
    assert by_hand == pytest.approx(run.history["loss"].tolist(), rel=1e-6)


def test_the_run_keeps_its_best_epoch_and_says_so(smoke_release):
    run = retrieval(smoke_release, profile=config.get_profile(QUICK, ret_epochs=3))
    scores = run.epochs["val_mAP"].to_numpy()
    assert run.best_epoch == int(np.argmax(scores)) and run.best_score == scores.max()
    assert leave_one_out_mAP(run.model, smoke_release.validation, QUICK) == pytest.approx(run.best_score, abs=1e-6)
    assert f"kept epoch {run.best_epoch} of 3" in repr(run)


def test_load_or_train_returns_the_cached_run(smoke_release, cache_root):
    first = retrieval(smoke_release, cache=True)
    assert not first.from_cache
    assert sorted(p.name for p in first.path.iterdir()) == sorted(runs.RUN_FILES)
    assert first.path.parent == cache_root / "runs" and first.path.name == f"retrieval-double-{first.key}"
    second = retrieval(smoke_release, cache=True)
    assert second.from_cache and second.key == first.key and second.config == first.config
    pd.testing.assert_frame_equal(first.history, second.history)
    pd.testing.assert_frame_equal(first.epochs, second.epochs)
    assert second.wall_time == first.wall_time
    paths = smoke_release.test.queries
    assert torch.equal(evaluation.embed_images(first.model, paths, QUICK, progress=False),
                       evaluation.embed_images(second.model, paths, QUICK, progress=False))
    changed = retrieval(smoke_release, cache=True, margins={"pos_margin": 0.5, "neg_margin": 1.2})
    assert not changed.from_cache and changed.key != first.key
    assert changed.config["pos_margin"] == 0.5 and first.config["pos_margin"] == SMOKE.pos_margin


def test_the_frozen_cache_changes_speed_not_embeddings(smoke_release, cache_root):
    run = retrieval(smoke_release, cache=True)
    assert isinstance(run.model.frozen, features.CachedFrozen)
    paths = smoke_release.test.database
    cached = evaluation.embed_images(run.model, paths, QUICK, progress=False)
    again = evaluation.embed_images(run.model, paths, QUICK, progress=False)    # now answered from the store
    plain = models.build_network(run.model.spec, pretrained_top=False)
    plain.top.load_state_dict(run.model.top.state_dict())
    direct = evaluation.embed_images(plain.eval(), paths, QUICK, progress=False)
    assert torch.equal(cached, again)
    torch.testing.assert_close(cached, direct, atol=1e-3, rtol=0)


def test_a_change_of_the_training_code_retrains(smoke_release, cache_root, monkeypatch):
    first = retrieval(smoke_release, cache=True)
    assert first.config["code"] == runs.code_version() and len(runs.code_version()) == 12
    monkeypatch.setattr(runs, "code_version", lambda: "edited-code")
    second = retrieval(smoke_release, cache=True)
    assert not second.from_cache and second.key != first.key


def test_cache_false_writes_nothing(smoke_release, cache_root):
    retrieval(smoke_release, cache=False)
    written = [p for p in cache_root.rglob("*") if p.is_file()] if cache_root.exists() else []
    assert written == []


def test_resume_after_interruption_matches_an_uninterrupted_run(smoke_release, cache_root):
    reference = retrieval(smoke_release, profile=TWO_EPOCHS)

    first = []

    def stop_after_first_epoch(row):
        first.append(row)
        if row["epoch"] == 1:
            raise KeyboardInterrupt("simulated interruption")

    with pytest.raises(KeyboardInterrupt):
        retrieval(smoke_release, cache=True, on_epoch_end=stop_after_first_epoch, profile=TWO_EPOCHS)
    folder = cache_root / "runs" / f"retrieval-double-{reference.key}"
    assert (folder / runs.CHECKPOINT_FILE).is_file() and not (folder / "model.pt").exists()
    seen = []
    resumed = retrieval(smoke_release, cache=True, on_epoch_end=seen.append, profile=TWO_EPOCHS)
    assert [row["epoch"] for row in seen] == [1, 2]  # epoch 1 replayed from the checkpoint, epoch 2 trained
    assert seen[0] == first[0]                        # the same row, its timing included: not trained again
    assert not resumed.from_cache and not (folder / runs.CHECKPOINT_FILE).exists()
    pd.testing.assert_frame_equal(resumed.history, reference.history)
    pd.testing.assert_series_equal(resumed.epochs["val_mAP"], reference.epochs["val_mAP"])
    for a, b in zip(resumed.model.top.state_dict().values(), reference.model.top.state_dict().values()):
        assert torch.equal(a, b)


def test_huge_learning_rate_is_caught(smoke_release):
    with pytest.raises(FloatingPointError, match="lr=1e\\+30"):
        retrieval(smoke_release, "single", profile=config.get_profile(QUICK, optimizer="sgd"), lr=1e30)


def test_triplet_run_records_distances(smoke_release):
    run = retrieval(smoke_release, "triplet")
    history = run.history
    assert history["pos_loss"].isna().all() and history["neg_loss"].isna().all()
    assert history[["pos_dist", "neg_dist", "active_frac"]].notna().all().all()
    assert ((history.active_frac >= 0) & (history.active_frac <= 1)).all()
    assert run.config["loss"] == "triplet" and run.config["margin"] == SMOKE.triplet_margin


def test_untrained_model_is_the_imagenet_network(smoke_release):
    untrained = runs.untrained_model(SMOKE, cache=False)
    stage0 = retrieval(smoke_release, profile=config.get_profile(QUICK, ret_epochs=0))
    paths = smoke_release.test.queries
    torch.testing.assert_close(evaluation.embed_images(untrained, paths, SMOKE, progress=False),
                               evaluation.embed_images(stage0.model, paths, SMOKE, progress=False))


@pytest.mark.slow
def test_retrieval_training_lowers_the_loss_and_beats_the_untrained_network(tmp_path):
    # From scratch, the full-nuisance smoke data needs more iterations than a unit test can
    # afford, so this test learns the clean templates of the same 12 + 4 + 4 categories.
    release = clean_release(tmp_path / "clean")
    profile = config.get_profile("smoke", optimizer="sgd", ret_lr=0.1, pairs_per_category=32, ret_epochs=8,
                                 ret_lr_step=100, ret_patience=None, tuned=None, **SMALL_CNN)
    run = runs.train_retrieval(release, "single", "random", profile, cache=False, progress=False, device="cpu")
    by_epoch = run.history.groupby("epoch")["loss"].mean()
    assert by_epoch.iloc[-1] < by_epoch.iloc[0]
    assert run.epochs["val_mAP"].iloc[-1] > run.epochs["val_mAP"].iloc[0] + 0.05
    untrained = runs.untrained_model(profile, cache=False)
    assert split_mAP(run.model, release.test, profile) > split_mAP(untrained, release.test, profile) + 0.05


@pytest.mark.slow
def test_classifier_beats_chance_and_initialises_stage_two(tmp_path, cache_root):
    release = clean_release(tmp_path / "four", n_train_categories=4, n_val_categories=2,
                            n_test_categories=2, images_per_category=(20, 24))
    profile = config.get_profile("smoke", cls_epochs=8, cls_lr_step=5, cls_batch_size=16, optimizer="sgd",
                                 cls_lr=0.01, ret_epochs=0, **SMALL_CNN)
    clf = runs.train_classifier(release, profile, progress=False, device="cpu")
    assert len(release.categories) == 4
    assert list(clf.history.columns) == ["epoch", "iteration", "lr", "loss", "accuracy"]
    # chance is 0.25 over the 26 validation images; 1.5x chance needs 10 of them right
    assert clf.epochs["val_accuracy"].iloc[-1] >= 1.5 * 0.25
    assert clf.epochs["val_accuracy"].iloc[-1] > clf.epochs["val_accuracy"].iloc[0]
    assert clf.config["model"]["n_classes"] == 4 and clf.kind == "classifier"

    stage2 = runs.train_retrieval(release, "double", clf, profile, progress=False, device="cpu", cache=False)
    assert stage2.config["init"] == "classifier" and stage2.config["init_key"] == clf.key
    for name, value in clf.model.top.trunk.state_dict().items():
        assert torch.equal(stage2.model.top.trunk.state_dict()[name], value), name
    by_path = runs.train_retrieval(release, "double", clf.path, profile, progress=False, device="cpu", cache=False)
    assert by_path.key == stage2.key
    with pytest.raises(ValueError, match="classifier run"):
        runs.train_retrieval(release, "double", stage2, profile, cache=False)


def test_imagenet_init_of_the_small_backbone_fails_before_any_work(smoke_release):
    small = config.get_profile(QUICK, backbone="small", cut=None)
    with pytest.raises(ValueError, match="no ImageNet weights for backbone 'small'"):
        retrieval(smoke_release, init="imagenet", profile=small)
    with pytest.raises(ValueError, match="no ImageNet weights for backbone 'small'"):
        runs.train_classifier(smoke_release, small, cache=False, progress=False)
    with pytest.raises(ValueError, match="frozen trunk"):
        retrieval(smoke_release, init="random", profile=QUICK)


def test_default_settings_are_the_tuned_ones_of_the_runs_schedule():
    tuned = config.get_profile("smoke", tuned={
        "one-stage": {"double": {"lr": 2e-4, "pos_margin": 0.1, "neg_margin": 0.9}},
        "two-stage": {"triplet": {"lr": 5e-4, "margin": 0.3}}})
    assert runs.default_settings(tuned, "double", "imagenet") == {
        "lr": 2e-4, "margins": {"pos_margin": 0.1, "neg_margin": 0.9}}
    assert runs.default_settings(tuned, "triplet", "cache/runs/classifier-abc") == {"lr": 5e-4, "margins": {"margin": 0.3}}
    # not tuned for that loss and schedule: the profile's own learning rate and margins
    assert runs.default_settings(tuned, "double", "cache/runs/classifier-abc") == {
        "lr": tuned.ret_lr, "margins": {"pos_margin": tuned.pos_margin, "neg_margin": tuned.neg_margin}}
    assert runs.default_settings(SMOKE, "single", "random") == {"lr": SMOKE.ret_lr,
                                                              "margins": {"margin": SMOKE.single_margin}}
