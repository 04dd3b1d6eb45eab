"""helpers.evaluation: the seeded training sample that notebooks 04 and 06 share."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from helpers import evaluation


def test_training_sample_is_a_seeded_sorted_subset_with_matching_labels(monkeypatch):
    monkeypatch.setattr(evaluation.features, "eval_inputs",
                        lambda paths, labels, profile, progress=True: (list(paths), np.asarray(labels)))
    images = SimpleNamespace(paths=[f"img{i:03d}.png" for i in range(300)], labels=np.arange(300) % 7)
    paths, labels = evaluation.training_sample(images, "smoke", size=50, seed=3)
    rows = [int(p[3:6]) for p in paths]
    assert len(rows) == 50 == len(set(rows)) and rows == sorted(rows)
    assert (labels == np.asarray(rows) % 7).all()
    expected = np.sort(np.random.default_rng(3).choice(300, size=50, replace=False))
    assert rows == expected.tolist()
    assert evaluation.training_sample(images, "smoke", size=50, seed=4)[0] != paths
    everything, _ = evaluation.training_sample(images, "smoke", size=1000, seed=3)
    assert everything == images.paths
