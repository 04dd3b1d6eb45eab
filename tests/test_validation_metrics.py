"""Leave-one-out validation mAP against a brute-force reference, and the category bootstrap."""
import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from helpers import metrics, stats


def _brute_force_loo(emb, labels):
    """Standard AP per query by scikit-learn over every other image (no ties in random data)."""
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    aps = []
    for q in range(len(labels)):
        if labels[q] < 0 or (labels == labels[q]).sum() < 2:
            continue
        others = np.arange(len(labels)) != q
        aps.append(average_precision_score(labels[others] == labels[q], emb[others] @ emb[q]))
    return np.array(aps)


def test_leave_one_out_map_matches_scikit_learn():
    rng = np.random.default_rng(0)
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, -1, -1])  # 3: alone, -1: distractors
    emb = rng.normal(size=(labels.size, 6)) + 0.8 * np.eye(6)[np.maximum(labels, 0) % 6]
    mean, aps = metrics.leave_one_out_map(emb, labels, mode="standard")
    reference = _brute_force_loo(emb, labels)
    assert aps.shape == (9,)
    np.testing.assert_allclose(aps, reference, atol=1e-6)
    assert mean == pytest.approx(reference.mean())


def test_leave_one_out_ranks_the_query_itself_out():
    emb = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # each image's twin is its only match
    mean, aps = metrics.leave_one_out_map(emb, np.array([0, 0, 1, 1]))
    assert mean == pytest.approx(1.0)
    shuffled = metrics.leave_one_out_map(emb, np.array([0, 1, 0, 1]))[0]
    assert shuffled < 0.7


def test_leave_one_out_needs_a_shared_label():
    with pytest.raises(ValueError, match="no label is shared"):
        metrics.leave_one_out_map(np.eye(3), np.array([0, 1, 2]))


def test_bootstrap_over_clusters_is_wider_when_categories_differ():
    rng = np.random.default_rng(1)
    clusters = np.repeat(np.arange(20), 5)
    alike = rng.normal(0.05, 0.01, 100)
    apart = alike + np.repeat(rng.normal(0, 0.1, 20), 5)  # a shared offset per category
    narrow, wide = stats.bootstrap_ci(alike, clusters), stats.bootstrap_ci(apart, clusters)
    assert narrow["low"] < narrow["mean"] < narrow["high"]
    assert (wide["high"] - wide["low"]) > 3 * (narrow["high"] - narrow["low"])
    assert narrow["mean"] == pytest.approx(alike.mean())
