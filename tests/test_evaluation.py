"""helpers.evaluation: the seeded training sample, the chance levels and the background-only control."""
from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from helpers import config, data, evaluation, metrics


# --------------------------------------------------------------------------- training_sample

@pytest.fixture
def images() -> data.ImageList:
    """300 fake training images over 7 classes (nothing is read from disk)."""
    return data.ImageList([Path(f"img{i:03d}.png") for i in range(300)], np.arange(300) % 7,
                          [f"class {c}" for c in range(7)])


def _rows(sample: data.ImageList) -> list[int]:
    return [int(p.name[3:6]) for p in sample.paths]


def test_training_sample_is_a_sorted_subset_with_matching_labels(images):
    sample = evaluation.training_sample(images, size=50, seed=3)
    assert isinstance(sample, data.ImageList) and len(sample) == 50
    rows = _rows(sample)
    assert set(sample.paths) <= set(images.paths)
    assert len(set(rows)) == 50                      # no image twice
    assert rows == sorted(rows)                      # in list order
    assert sample.labels.tolist() == [r % 7 for r in rows]
    assert sample.classes == images.classes


def test_training_sample_is_seeded(images):
    first = evaluation.training_sample(images, size=50, seed=3)
    again = evaluation.training_sample(images, size=50, seed=3)
    other = evaluation.training_sample(images, size=50, seed=4)
    assert first.paths == again.paths and first.labels.tolist() == again.labels.tolist()
    assert first.paths != other.paths


def test_training_sample_larger_than_the_list_returns_all_of_it(images):
    everything = evaluation.training_sample(images, size=1000, seed=3)
    assert everything.paths == images.paths and everything.labels.tolist() == images.labels.tolist()
    exact = evaluation.training_sample(images, size=300, seed=5)
    assert exact.paths == images.paths


def test_training_sample_covers_the_list_evenly(images):
    # over many seeds every image is drawn about 50/300 of the time: not a fixed or front-heavy pick
    counts = np.zeros(300)
    for seed in range(200):
        counts[_rows(evaluation.training_sample(images, size=50, seed=seed))] += 1
    assert counts.sum() == 200 * 50
    assert abs(counts[:150].sum() / counts.sum() - 0.5) < 0.03
    assert counts.min() > 0 and counts.max() < 3 * 200 * 50 / 300


# --------------------------------------------------------------------------- chance_levels

def _exact_chance(n_database: int, n_relevant: int, ks) -> dict:
    """Every metric's expectation over all rankings, by enumerating where the relevant items land.

    A random ranking puts the ``R`` relevant items on a uniformly random set of
    ``R`` of the ``N`` ranks; each set is equally likely, so the expectation is
    the plain mean over all ``C(N, R)`` sets.
    """
    totals = {}
    sets = list(itertools.combinations(range(n_database), n_relevant))
    for ranks in sets:                                # 0-based, increasing
        row = {"mAP (trapezoid)": 0.0, "mAP (standard)": 0.0}
        for k, r in enumerate(ranks):                 # the Oxford compute_ap, hit by hit
            before = 1.0 if r == 0 else k / r
            after = (k + 1) / (r + 1)
            row["mAP (trapezoid)"] += (before + after) / 2 / n_relevant
            row["mAP (standard)"] += after / n_relevant
        for k in ks:
            row[f"R@{k}"] = float(ranks[0] < k)
        row["MAP@R"] = sum((k + 1) / (r + 1) for k, r in enumerate(ranks) if r < n_relevant) / n_relevant
        row["R-Precision"] = sum(r < n_relevant for r in ranks) / n_relevant
        row["P@1"] = float(ranks[0] == 0)
        for key, value in row.items():
            totals[key] = totals.get(key, 0.0) + value
    return {key: value / len(sets) for key, value in totals.items()}


def _split(ground_truth: list[np.ndarray], n_database: int) -> data.RetrievalSplit:
    query_labels, database_labels = data.groups_from_ground_truth(ground_truth, n_database)
    return data.RetrievalSplit("validation", [Path(f"q{i}.jpg") for i in range(len(ground_truth))],
                               [Path(f"db{i}.jpg") for i in range(n_database)], ground_truth,
                               query_labels, database_labels)


def test_chance_levels_match_the_expectation_over_all_rankings():
    n_database, ks = 9, (1, 2, 4)
    relevant_counts = [1, 2, 3, 4] * 8               # 32 queries
    rng = np.random.default_rng(1)
    ground_truth = [np.sort(rng.choice(n_database, size=r, replace=False)) for r in relevant_counts]
    split = _split(ground_truth, n_database)
    levels = evaluation.chance_levels(split, seed=0, repeats=150, ks=ks)
    assert levels.name == "random ranking"
    exact = {key: np.mean([_exact_chance(n_database, r, ks)[key] for r in relevant_counts])
             for key in levels.index}
    assert list(levels.index) == list(metrics.evaluate(np.eye(3), np.eye(3), [np.array([0])] * 3, ks=ks))
    for key, value in exact.items():
        assert levels[key] == pytest.approx(value, abs=0.02), key
    # the analytic forms: a random top-R and a random first item are relevant R/N of the time
    fraction = np.mean(relevant_counts) / n_database
    assert levels["P@1"] == pytest.approx(fraction, abs=0.02)
    assert levels["R-Precision"] == pytest.approx(fraction, abs=0.02)
    # standard AP of a random ranking: (H_N + (R - 1)/(N - 1) * (N - H_N)) / N
    harmonic = sum(1 / p for p in range(1, n_database + 1))
    analytic = np.mean([(harmonic + (r - 1) / (n_database - 1) * (n_database - harmonic)) / n_database
                        for r in relevant_counts])
    assert math.isclose(exact["mAP (standard)"], analytic, rel_tol=1e-12)
    # seeded, and a mean over repeats rather than one ranking
    again = evaluation.chance_levels(split, seed=0, repeats=150, ks=ks)
    assert levels.equals(again)
    assert not levels.equals(evaluation.chance_levels(split, seed=1, repeats=150, ks=ks))
    assert evaluation.random_ranking_map(split, seed=0, repeats=150) == levels["mAP (trapezoid)"]


# --------------------------------------------------------------------------- background_only_split

@pytest.fixture(scope="module")
def smoke_release():
    profile = config.get_profile("smoke")
    if config.real_data_root() is not None:
        pytest.skip("FIREARM_DATA points at the real release; the background-only control is synthetic")
    return profile, data.load_active_release(profile, progress=False)


def test_background_only_split_keeps_names_and_ground_truth_but_not_the_images(smoke_release, tmp_path):
    from PIL import Image

    profile, release = smoke_release
    split = release.validation
    moved = evaluation.background_only_split(release, split, tmp_path / "background", profile, progress=False)
    originals = split.queries + split.database
    copies = moved.queries + moved.database
    assert len(moved.queries) == len(split.queries) and len(moved.database) == len(split.database)
    for original, copy in zip(originals, copies):
        assert copy.relative_to(tmp_path / "background") == original.relative_to(release.root)
        assert copy.is_file() and copy.read_bytes() != original.read_bytes()
    assert moved.name == split.name
    assert all(np.array_equal(a, b) for a, b in zip(moved.ground_truth, split.ground_truth))
    assert len(moved.ground_truth) == len(split.ground_truth)
    assert np.array_equal(moved.query_labels, split.query_labels)
    assert np.array_equal(moved.database_labels, split.database_labels)
    # the background is kept: each copy is far closer to its own original than to another image
    def centre(path, side=32):   # images differ in shape; compare their central 32 x 32 pixels
        image = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
        top, left = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
        return image[top:top + side, left:left + side]
    own = [np.abs(centre(a) - centre(b)).mean() for a, b in zip(originals, copies)]
    others = [np.abs(centre(a) - centre(b)).mean() for a, b in zip(originals, copies[1:] + copies[:1])]
    assert np.median(own) < 0.5 * np.median(others)
    # the original release is untouched
    assert data.load_firearm_release(release.root).validation.queries == split.queries
