"""Tests of helpers.train on the synthetic smoke release: learning, determinism, cache, resume."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from helpers import config, data, features, losses, metrics, models, runs, synthetic, train

QUICK = dict(ret_epochs=1, pairs_per_category=4, ret_batch_size=16, ret_patience=None)
SMALL_CNN = dict(backbone="small", weights=None, cut=None, render_size=40, train_size_range=(32, 40), eval_size=40)
"""The from-scratch CNN at 40 px, for which the learning tests below were calibrated."""
TWO_EPOCHS = dict(QUICK, ret_epochs=2, ret_lr_step=1)


@pytest.fixture(scope="module")
def smoke_release(tmp_path_factory):
    root = data.make_synthetic_release(tmp_path_factory.mktemp("smoke_release"), "smoke", seed=0)
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


def retrieval(release, loss="double", **kwargs):
    kwargs.setdefault("cache", False)
    return train.train_retrieval(release, loss, profile="smoke", progress=False, device="cpu", **kwargs)


def split_mAP(model, split, profile):
    """Trapezoid mAP of ``model`` on a retrieval split (helper, not a test)."""
    transform = data.eval_transform(profile)
    q = data.ImageDataset(split.queries, transform=transform, progress=False)
    d = data.ImageDataset(split.database, transform=transform, progress=False)
    embed = dict(progress=False, device="cpu")
    return metrics.mean_average_precision(models.extract_embeddings(model, q, **embed),
                                          models.extract_embeddings(model, d, **embed),
                                          split.ground_truth)[0]



# --------------------------------------------------------------------------- small pieces

def test_class_weights_are_inverse_counts_with_mean_one():
    weights = train.class_weights([0, 0, 0, 1, 2, 2], n_classes=4)
    raw = np.array([1 / 3, 1, 1 / 2])
    expected = np.append(raw / raw.mean(), 0.0)  # class 3 is absent
    np.testing.assert_allclose(weights.numpy(), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="n_classes=2"):
        train.class_weights([0, 5], n_classes=2)


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


def test_tuple_dataset_returns_the_indexed_items():
    base = torch.utils.data.TensorDataset(torch.arange(10.0).view(10, 1), torch.zeros(10))
    pairs = train.TupleDataset(base, ([3, 7], [1, 1]), targets=[1, 0])
    x1, x2, y = pairs[1]
    assert (x1.item(), x2.item(), y.item()) == (7.0, 1.0, 0.0)
    assert len(pairs) == 2 and len(train.TupleDataset(base, ([1], [2], [3]))[0]) == 3
    with pytest.raises(ValueError, match="one length"):
        train.TupleDataset(base, ([1, 2], [3]))


class CountingNet(nn.Module):
    """A linear embedding that counts its forward calls."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return models.l2_normalize(self.linear(x.flatten(1)))


def test_pair_step_uses_one_forward_pass_and_matches_a_loop():
    torch.manual_seed(0)
    net = CountingNet()
    x1, x2 = torch.randn(6, 4), torch.randn(6, 4)
    y = torch.tensor([1.0, 0, 0, 1, 1, 0])

    def per_pair(e1, e2, target):
        return losses.double_margin_contrastive_loss(e1, e2, target, 0.1, 1.2, reduction="none")

    loss, stats = train.pair_step(net, (x1, x2, y), torch.device("cpu"), per_pair)
    assert net.calls == 1
    with torch.no_grad():
        e1, e2 = net(x1), net(x2)
    d = [float((e1[k] - e2[k]).norm()) for k in range(6)]
    terms = [0.5 * max(0, d[k] - 0.1) ** 2 if y[k] else 0.5 * max(0, 1.2 - d[k]) ** 2 for k in range(6)]
    assert loss.item() == pytest.approx(sum(terms) / 6, rel=1e-5)
    assert stats["pos_loss"].item() == pytest.approx(sum(t for t, v in zip(terms, y) if v) / 6, rel=1e-5)
    assert stats["pos_dist"].item() == pytest.approx(np.mean([d[k] for k in (0, 3, 4)]), rel=1e-5)
    assert stats["neg_dist"].item() == pytest.approx(np.mean([d[k] for k in (1, 2, 5)]), rel=1e-5)
    assert stats["active_frac"].item() == pytest.approx(np.mean([t > 0 for t in terms]))


def test_triplet_step_uses_one_forward_pass():
    torch.manual_seed(0)
    net = CountingNet()
    a, p, n = torch.randn(5, 4), torch.randn(5, 4), torch.randn(5, 4)
    def per_triplet(ea, ep, en):
        return losses.triplet_loss(ea, ep, en, margin=0.4, reduction="none")

    loss, stats = train.triplet_step(net, (a, p, n), torch.device("cpu"), per_triplet)
    assert net.calls == 1
    with torch.no_grad():
        ea, ep, en = net(a), net(p), net(n)
    d_ap, d_an = (ea - ep).norm(dim=1), (ea - en).norm(dim=1)
    assert loss.item() == pytest.approx(torch.relu(d_ap - d_an + 0.4).mean().item(), rel=1e-5)
    assert stats["pos_dist"].item() == pytest.approx(d_ap.mean().item(), rel=1e-5)
    assert math.isnan(stats["pos_loss"].item()) and math.isnan(stats["neg_loss"].item())


def test_bad_arguments_are_rejected(smoke_release):
    with pytest.raises(ValueError, match="unknown loss 'quadruplet'"):
        retrieval(smoke_release, "quadruplet")
    with pytest.raises(TypeError, match="unknown profile field"):
        retrieval(smoke_release, ret_epoch=3)
    with pytest.raises(TypeError, match="init must be"):
        retrieval(smoke_release, init=42)


def test_load_run_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.pt"):
        runs.load_run(tmp_path)


# --------------------------------------------------------------------------- training runs

def test_history_columns_schedule_and_determinism(smoke_release):
    first = retrieval(smoke_release, seed=3, **TWO_EPOCHS)
    again = retrieval(smoke_release, seed=3, **TWO_EPOCHS)
    history = first.history
    assert list(history.columns) == ["epoch", "iteration", "lr", "loss", *train.PAIR_COLUMNS]
    assert history["iteration"].tolist() == list(range(1, len(history) + 1))
    lr = config.get_profile("smoke").finetune_lr   # the smoke profile starts from ImageNet: it fine-tunes
    assert set(history.loc[history.epoch == 1, "lr"]) == {lr}
    assert history.loc[history.epoch == 2, "lr"].iloc[0] == pytest.approx(lr * 0.1)
    np.testing.assert_allclose(history.pos_loss + history.neg_loss, history.loss, rtol=1e-5)
    assert first.epochs["epoch"].tolist() == [0, 1, 2]
    assert not first.from_cache and first.path is None and first.wall_time > 0
    assert not first.model.training and next(first.model.parameters()).device.type == "cpu"
    pd.testing.assert_frame_equal(first.history, again.history)
    pd.testing.assert_series_equal(first.epochs["val_mAP"], again.epochs["val_mAP"])
    other = retrieval(smoke_release, seed=4, **TWO_EPOCHS)
    assert not np.allclose(other.history["loss"], first.history["loss"])


def test_load_or_train_returns_the_cached_run(smoke_release, cache_root):
    first = retrieval(smoke_release, cache=True, **QUICK)
    assert not first.from_cache
    assert sorted(p.name for p in first.path.iterdir()) == sorted(runs.RUN_FILES)
    assert first.path.parent == cache_root / "runs" and first.path.name == f"retrieval-double-{first.key}"
    second = retrieval(smoke_release, cache=True, **QUICK)
    assert second.from_cache and second.key == first.key and second.config == first.config
    pd.testing.assert_frame_equal(first.history, second.history)
    pd.testing.assert_frame_equal(first.epochs, second.epochs)
    assert second.wall_time == first.wall_time
    images = features.eval_inputs(smoke_release.test.queries, smoke_release.test.query_labels,
                                  config.get_profile("smoke"), progress=False)
    embed = dict(progress=False, device="cpu")
    assert torch.equal(models.extract_embeddings(first.model, images, **embed),
                       models.extract_embeddings(second.model, images, **embed))
    changed = retrieval(smoke_release, cache=True, pos_margin=0.5, **QUICK)
    assert not changed.from_cache and changed.key != first.key
    assert changed.config["pos_margin"] == 0.5 and first.config["pos_margin"] == 0.8


def test_a_change_of_the_training_code_retrains(smoke_release, cache_root, monkeypatch):
    first = retrieval(smoke_release, cache=True, **QUICK)
    assert first.config["code"] == runs.code_version() and len(runs.code_version()) == 12
    assert first.config["profile"]["pairs_per_category"] == QUICK["pairs_per_category"]  # the whole profile
    monkeypatch.setattr(runs, "code_version", lambda: "edited-code")
    second = retrieval(smoke_release, cache=True, **QUICK)
    assert not second.from_cache and second.key != first.key


def test_code_version_follows_the_training_sources(monkeypatch, tmp_path):
    version = runs.code_version()
    runs.code_version.cache_clear()
    assert runs.code_version() == version                      # deterministic
    monkeypatch.setattr(runs, "TRAINING_MODULES", runs.TRAINING_MODULES[:-1])
    runs.code_version.cache_clear()
    assert runs.code_version() != version                      # train.py no longer hashed
    runs.code_version.cache_clear()


def _scripted_task(scores):
    """A Task over a tiny regression whose validation scores are ``scores``, one per call."""
    x, y = torch.randn(32, 3), torch.randn(32, 1)
    calls = iter(scores)

    def step(model, batch):
        inputs, targets = batch
        return nn.functional.mse_loss(model(inputs), targets), {}

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    return train.Task(make_loader=lambda epoch: loader, step=step, validate=lambda model: next(calls),
                      val_column="val_score", loss_name="mse", columns=())


@pytest.mark.parametrize("patience, trained, best", [(2, [1, 2, 3], 1), (None, [1, 2, 3, 4, 5], 5), (1, [1], 0)])
def test_early_stopping_keeps_the_weights_of_the_best_epoch(patience, trained, best):
    scores = {2: [0.1, 0.3, 0.2, 0.25, 0.2, 0.5], None: [0.1, 0.3, 0.2, 0.25, 0.2, 0.5],
              1: [0.4, 0.3, 0.9]}[patience]
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 10)
    snapshots, seen = {0: {k: v.clone() for k, v in model.state_dict().items()}}, []

    def remember(row):
        seen.append(row["epoch"])
        snapshots[row["epoch"]] = {k: v.clone() for k, v in model.state_dict().items()}

    state = train.fit(model, optimizer, scheduler, _scripted_task(scores), epochs=5, patience=patience,
                      progress=False, on_epoch_end=remember)
    assert seen == trained and state.best_epoch == best
    assert [row["epoch"] for row in state.epochs] == [0, *trained]
    for name, value in model.state_dict().items():
        assert torch.equal(value, snapshots[best][name])
    assert not torch.equal(snapshots[trained[-1]]["weight"], snapshots[0]["weight"])  # it did train


def test_cache_false_writes_nothing(smoke_release, cache_root):
    retrieval(smoke_release, cache=False, **QUICK)
    assert not (cache_root / "runs").exists() or not any((cache_root / "runs").iterdir())


def test_resume_after_interruption_matches_an_uninterrupted_run(smoke_release, cache_root):
    settings = TWO_EPOCHS
    reference = retrieval(smoke_release, **settings)

    def stop_after_first_epoch(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt("simulated interruption")

    with pytest.raises(KeyboardInterrupt):
        retrieval(smoke_release, cache=True, on_epoch_end=stop_after_first_epoch, **settings)
    folder = cache_root / "runs" / f"retrieval-double-{reference.key}"
    assert (folder / runs.CHECKPOINT_FILE).is_file() and not (folder / "model.pt").exists()
    seen = []
    resumed = retrieval(smoke_release, cache=True, on_epoch_end=seen.append, **settings)
    assert [row["epoch"] for row in seen] == [2]     # epoch 1 was not trained again
    assert not resumed.from_cache and not (folder / runs.CHECKPOINT_FILE).exists()
    pd.testing.assert_frame_equal(resumed.history, reference.history)
    pd.testing.assert_series_equal(resumed.epochs["val_mAP"], reference.epochs["val_mAP"])
    for a, b in zip(resumed.model.state_dict().values(), reference.model.state_dict().values()):
        assert torch.equal(a, b)


def test_nan_loss_raises_floating_point_error(smoke_release, monkeypatch):
    def broken(x1, x2, y, **kwargs):
        return torch.full((len(x1),), float("nan")) + 0 * x1.sum()

    monkeypatch.setattr(losses, "double_margin_contrastive_loss", broken)
    with pytest.raises(FloatingPointError, match=r"double margin contrastive loss is nan at epoch 1, "
                                                 r"iteration 1 \(lr=0\.0001\)"):
        retrieval(smoke_release, **QUICK)


def test_huge_learning_rate_is_caught(smoke_release):
    with pytest.raises(FloatingPointError, match="lr=1e\\+30"):
        retrieval(smoke_release, "single", optimizer="sgd", lr=1e30, **QUICK)


def test_triplet_run_records_distances(smoke_release):
    run = retrieval(smoke_release, "triplet", **QUICK)
    history = run.history
    assert history["pos_loss"].isna().all() and history["neg_loss"].isna().all()
    assert history[["pos_dist", "neg_dist", "active_frac"]].notna().all().all()
    assert ((history.active_frac >= 0) & (history.active_frac <= 1)).all()
    assert run.config["loss"] == "triplet" and run.config["margin"] == config.get_profile("smoke").triplet_margin


@pytest.mark.slow
def test_retrieval_training_lowers_the_loss_and_beats_the_untrained_network(tmp_path):
    # From scratch, the full-nuisance smoke data needs more iterations than a unit test can
    # afford, so this test learns the clean templates of the same 12 + 4 + 4 categories.
    release = clean_release(tmp_path / "clean")
    profile = config.get_profile("smoke", optimizer="sgd", lr=0.1, pairs_per_category=32, ret_epochs=8, ret_lr_step=100, ret_patience=None,
                                 **SMALL_CNN)
    run = train.train_retrieval(release, "single", profile=profile, cache=False, progress=False, device="cpu")
    by_epoch = run.history.groupby("epoch")["loss"].mean()
    assert by_epoch.iloc[-1] < by_epoch.iloc[0]
    assert run.epochs["val_mAP"].iloc[-1] > run.epochs["val_mAP"].iloc[0] + 0.05
    config.seed_everything(0)
    untrained = models.build_embedding_net(profile)
    assert split_mAP(run.model, release.test, profile) > split_mAP(untrained, release.test, profile) + 0.05


@pytest.mark.slow
def test_classifier_beats_chance_and_initialises_stage_two(tmp_path, cache_root):
    release = clean_release(tmp_path / "four", n_train_categories=4, n_val_categories=2,
                            n_test_categories=2, images_per_category=(20, 24))
    clf = train.train_classifier(release, "smoke", progress=False, device="cpu",
                                 cls_epochs=8, cls_lr_step=5, cls_batch_size=16, optimizer="sgd", lr=0.01, **SMALL_CNN)
    n_classes = len(release.categories)
    assert n_classes == 4
    assert list(clf.history.columns) == ["epoch", "iteration", "lr", "loss", "accuracy"]
    # chance is 0.25 over the 26 validation images; 1.5x chance needs 10 of them right
    assert clf.epochs["val_accuracy"].iloc[-1] >= 1.5 * 0.25
    assert clf.epochs["val_accuracy"].iloc[-1] > clf.epochs["val_accuracy"].iloc[0]
    assert clf.config["n_classes"] == n_classes and clf.kind == "classifier"

    stage2 = train.train_retrieval(release, "double", init=clf, profile="smoke", progress=False,
                                   device="cpu", cache=False, ret_epochs=0, **SMALL_CNN)
    assert stage2.config["init"] == "classifier" and stage2.config["init_key"] == clf.key
    for name, value in clf.model.trunk.state_dict().items():
        assert torch.equal(stage2.model.trunk.state_dict()[name], value), name
    by_path = train.train_retrieval(release, "double", init=clf.path, profile="smoke", progress=False,
                                    device="cpu", cache=False, ret_epochs=0, **SMALL_CNN)
    assert by_path.key == stage2.key
    with pytest.raises(ValueError, match="classifier run"):
        train.train_retrieval(release, "double", init=stage2, profile="smoke", cache=False, ret_epochs=0, **SMALL_CNN)


def test_imagenet_init_of_the_small_backbone_fails_before_any_work(smoke_release):
    with pytest.raises(ValueError, match="no ImageNet weights for backbone 'small'"):
        retrieval(smoke_release, init="imagenet", backbone="small", cut=None)
    with pytest.raises(ValueError, match="no ImageNet weights for backbone 'small'"):
        train.train_classifier(smoke_release, "smoke", weights="imagenet", backbone="small", cut=None, cache=False,
                               progress=False)
