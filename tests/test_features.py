"""Tests of the cached frozen-trunk maps: the same embeddings as the whole network, each map computed once."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import config, data, evaluation, models
from helpers.machinery import features, runs

PROFILE = config.get_profile("smoke", backbone="efficientnet_lite0", weights="imagenet", cut=15, feature_views=2)
SPEC = models.ModelSpec.of(PROFILE)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = data.make_synthetic_release(tmp_path_factory.mktemp("release"), PROFILE, seed=0, progress=False)
    return data.load_firearm_release(root)


@pytest.fixture(scope="module")
def network():
    return models.build_network(SPEC).eval()


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "CACHE_DIR", tmp_path / "cache")
    return tmp_path / "cache"


def test_the_cut_network_embeds_like_the_whole_network(release, network):
    paths = release.test.queries[:5]
    whole = models.build_network(models.ModelSpec.of(PROFILE, cut=None)).eval()
    expected = evaluation.embed_images(whole, paths, PROFILE, progress=False)
    cut = evaluation.embed_images(network, paths, PROFILE, progress=False)
    # the frozen maps are rounded to float16, so the two agree to about 1e-3
    torch.testing.assert_close(cut, expected, atol=5e-3, rtol=0)
    assert cut.shape == (5, 1280)


def test_cached_frozen_answers_seen_inputs_from_disk_with_the_same_maps(network, cache_root, monkeypatch):
    cached = features.with_cached_frozen(models.build_network(SPEC).eval())
    images = torch.randn(4, 3, 64, 64)
    first = cached.frozen(images)
    torch.testing.assert_close(first, network.frozen(images), atol=1e-2, rtol=0)
    assert first.dtype == torch.float32 and torch.equal(first, first.half().float())   # float16 values
    fresh = features.with_cached_frozen(models.build_network(SPEC).eval())               # another process
    monkeypatch.setattr(fresh.frozen.inner, "forward", lambda x: pytest.fail("should come from the store"))
    assert torch.equal(fresh.frozen(images[[2, 0]]), first[[2, 0]])


def test_train_views_are_cached_once_and_shared_by_identical_files(release, network, cache_root, monkeypatch):
    train = release.retrieval_train
    first = features.train_view_maps(network, train.paths[:6], PROFILE.train_size_range, 2, progress=False)
    assert first.shape[:2] == (2, 6) and first.dtype == torch.float16
    monkeypatch.setattr(features, "compute_views", lambda *a, **k: pytest.fail("should come from the cache"))
    again = features.train_view_maps(network, train.paths[:6], PROFILE.train_size_range, 2, progress=False)
    assert torch.equal(first, again)
    # the classification archive holds the same pictures under other paths: found by their bytes
    by_name = {p.parent.name + "/" + p.name: p for p in release.classification_train.paths
               + release.classification_val.paths}
    twins = [by_name[p.parent.name + "/" + p.name] for p in train.paths[:6]]
    assert torch.equal(features.train_view_maps(network, twins, PROFILE.train_size_range, 2, progress=False), first)


def test_a_view_depends_only_on_the_image_and_the_view(release, network, tmp_path, monkeypatch):
    paths = release.retrieval_train.paths[:4]
    monkeypatch.setattr(config, "CACHE_DIR", tmp_path / "one")
    together = features.train_view_maps(network, paths, PROFILE.train_size_range, 2, progress=False)
    monkeypatch.setattr(config, "CACHE_DIR", tmp_path / "two")
    alone = features.train_view_maps(network, paths[2:3], PROFILE.train_size_range, 2, progress=False)
    # the same augmented pixels; only the batch size differs, which moves float16 maps by ~1e-3
    torch.testing.assert_close(alone[:, 0].float(), together[:, 2].float(), atol=1e-2, rtol=0)
    assert (together[0].float() - together[1].float()).abs().max() > 0.1   # two different augmented views


def test_settings_that_change_the_maps_change_the_store(release, network, cache_root):
    paths = release.retrieval_train.paths[:2]
    features.train_view_maps(network, paths, PROFILE.train_size_range, 2, progress=False)
    features.train_view_maps(network, paths, PROFILE.train_size_range, 3, progress=False)
    features.train_view_maps(network, paths, (48, 64), 2, progress=False)
    assert len(list((cache_root / "features").glob("*-train-*.pt"))) == 3
    assert features.store_key(SPEC, kind="eval") != features.store_key(models.ModelSpec.of(PROFILE, cut=13), kind="eval")
    with pytest.raises(ValueError, match="at least 1"):
        features.train_view_maps(network, paths, PROFILE.train_size_range, 0, progress=False)


def test_cache_false_computes_the_views_without_writing(release, network, cache_root):
    maps = features.train_view_maps(network, release.retrieval_train.paths[:3], PROFILE.train_size_range, 2,
                                    progress=False, cache=False)
    assert maps.shape[:2] == (2, 3) and not (cache_root / "features").exists() or \
        not any((cache_root / "features").iterdir())


def test_random_views_are_seeded_per_epoch(release, network, cache_root):
    maps = features.train_view_maps(network, release.retrieval_train.paths, PROFILE.train_size_range, 2,
                                    progress=False)
    labels = release.retrieval_train.labels
    first, again, later = (features.random_views(maps, labels, 3, epoch) for epoch in (1, 1, 2))
    assert np.array_equal(first.view, again.view) and not np.array_equal(first.view, later.view)
    assert set(np.unique(first.view)) <= {0, 1}
    x, y = first[4]
    assert x.dtype == torch.float32 and x.shape == (192, 2, 2) and y == labels[4]


def test_networks_without_a_cut_train_on_images(release):
    images = config.get_profile("smoke", backbone="small", weights=None, cut=None)
    network = models.build_network(models.ModelSpec.of(images))
    dataset = runs.eval_inputs(network, release.test.queries[:3], release.test.query_labels[:3], images,
                               progress=False)
    assert isinstance(dataset, data.ImageDataset) and dataset[0][0].shape == (3, 64, 64)
    with pytest.raises(ValueError, match="freezes nothing"):
        features.train_view_maps(network, release.test.queries[:3], (56, 64), 2, progress=False)
