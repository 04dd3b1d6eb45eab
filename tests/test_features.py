"""Tests of the cached frozen-trunk features: the same embeddings as the whole network, cached once."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import config, data, features, models

PROFILE = config.get_profile("smoke", backbone="efficientnet_lite0", weights="imagenet", cut=15, feature_views=2)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = data.make_synthetic_release(tmp_path_factory.mktemp("release"), PROFILE, seed=0, progress=False)
    return data.load_firearm_release(root)


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "CACHE_DIR", tmp_path / "cache")
    return tmp_path / "cache"


def test_cached_path_embeds_like_the_whole_network(release, cache_root):
    paths = release.test.queries[:5]
    labels = release.test.query_labels[:5]
    head = models.build_embedding_net(PROFILE).eval()
    whole = models.build_embedding_net(PROFILE, cut=None).eval()
    images = data.ImageDataset(paths, transform=data.eval_transform(PROFILE), progress=False)
    expected = models.extract_embeddings(whole, images, progress=False)
    cached = models.extract_embeddings(head, features.eval_inputs(paths, labels, PROFILE, progress=False),
                                       progress=False)
    # the maps are stored as float16, so the two agree to about 1e-3
    torch.testing.assert_close(cached, expected, atol=5e-3, rtol=0)
    assert cached.shape == (5, 1280)


def test_maps_are_cached_once_and_shared_by_identical_files(release, cache_root, monkeypatch):
    train = release.retrieval_train
    first = features.cached_maps(train.paths[:6], PROFILE, "train", progress=False)
    assert first.shape[:2] == (2, 6) and first.dtype == torch.float16

    def no_work(*args, **kwargs):
        raise AssertionError("the maps should come from the cache")

    monkeypatch.setattr(features, "compute_maps", no_work)
    again = features.cached_maps(train.paths[:6], PROFILE, "train", progress=False)
    assert torch.equal(first, again)
    # the classification archive holds the same pictures under other paths: found by their bytes
    by_name = {p.parent.name + "/" + p.name: p for p in release.classification_train.paths
               + release.classification_val.paths}
    twins = [by_name[p.parent.name + "/" + p.name] for p in train.paths[:6]]
    assert torch.equal(features.cached_maps(twins, PROFILE, "train", progress=False), first)


def test_a_view_depends_only_on_the_image_and_the_view(release, tmp_path, monkeypatch):
    paths = release.retrieval_train.paths[:4]
    monkeypatch.setattr(config, "CACHE_DIR", tmp_path / "one")
    together = features.cached_maps(paths, PROFILE, "train", progress=False)
    monkeypatch.setattr(config, "CACHE_DIR", tmp_path / "two")
    alone = features.cached_maps(paths[2:3], PROFILE, "train", progress=False)
    # the same augmented pixels; only the batch size differs, which moves float16 maps by ~1e-3
    torch.testing.assert_close(alone[:, 0].float(), together[:, 2].float(), atol=1e-2, rtol=0)
    assert (together[0].float() - together[1].float()).abs().max() > 0.1   # two different augmented views


def test_settings_that_change_the_maps_change_the_store(release, cache_root):
    paths = release.retrieval_train.paths[:2]
    features.cached_maps(paths, PROFILE, "eval", progress=False)
    features.cached_maps(paths, config.get_profile(PROFILE, cut=13), "eval", progress=False)
    features.cached_maps(paths, config.get_profile(PROFILE, feature_views=3), "train", progress=False)
    stores = sorted(p.name for p in (cache_root / "features").iterdir())
    assert len(stores) == 3 and any("cut13" in name for name in stores)
    assert features.store_settings(PROFILE, "train") != features.store_settings(config.get_profile(
        PROFILE, train_size_range=(48, 64)), "train")
    with pytest.raises(ValueError, match="kind must be"):
        features.store_settings(PROFILE, "test")


def test_training_inputs_draw_seeded_views_per_epoch(release, cache_root):
    inputs = features.training_inputs(release.retrieval_train, PROFILE, seed=3, progress=False)
    first, again, later = inputs.for_epoch(1), inputs.for_epoch(1), inputs.for_epoch(2)
    assert np.array_equal(first.view, again.view) and not np.array_equal(first.view, later.view)
    assert set(np.unique(first.view)) <= {0, 1}
    x, y = first[4]
    assert x.dtype == torch.float32 and x.shape == (192, 2, 2) and y == release.retrieval_train.labels[4]


def test_profiles_without_a_cut_feed_images(release):
    images = config.get_profile("smoke", backbone="small", weights=None, cut=None)
    dataset = features.eval_inputs(release.test.queries[:3], release.test.query_labels[:3], images, progress=False)
    assert isinstance(dataset, data.ImageDataset) and dataset[0][0].shape == (3, 64, 64)
    with pytest.raises(ValueError, match="freezes nothing"):
        features.frozen_trunk(images)
