"""The positive share of the loss, the imbalance summary and the toy experiment, against hand computations."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from helpers import config, data, loss_analysis, methods, plots


def _history() -> pd.DataFrame:
    """Eight iterations of a pair-loss history: the positives' loss shrinks while the negatives' stays."""
    return pd.DataFrame({"pos_loss": [3.0, 3.0, 2.0, 2.0, 1.0, 1.0, 0.0, 0.0],
                         "neg_loss": [1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 0.0],
                         "pos_active_frac": [1.0, 1.0, 0.9, 0.9, 0.5, 0.5, 0.2, 0.0],
                         "neg_active_frac": [0.5, 0.5, 0.5, 0.5, 0.6, 0.6, 0.8, 0.0]})


def test_positive_share_by_hand():
    assert loss_analysis.positive_share(3.0, 1.0) == 0.75
    assert loss_analysis.positive_share(0.0, 2.0) == 0.0
    assert np.isnan(loss_analysis.positive_share(0.0, 0.0))
    np.testing.assert_array_equal(loss_analysis.positive_share([1.0, 0.0, 2.0], [3.0, 0.0, 0.0]), [0.25, np.nan, 1.0])


def test_imbalance_summary_by_hand():
    summary = loss_analysis.imbalance_summary(_history())
    # a quarter of 8 iterations is 2: the first two (3 + 3 against 1 + 1), the last two (0 + 0 against 4 + 0)
    assert summary == {"positive share of the loss, first quarter": 6 / 8,
                       "positive share of the loss, last quarter": 0.0,
                       "active positive pairs, last quarter": pytest.approx(0.1),
                       "active negative pairs, last quarter": pytest.approx(0.4)}
    half = loss_analysis.imbalance_summary(_history(), fraction=0.5)
    assert half["positive share of the loss, first quarter"] == pytest.approx(10 / 16)
    assert half["positive share of the loss, last quarter"] == pytest.approx(2 / 12)


def test_imbalance_summary_adds_the_gradient_share_where_the_history_has_it():
    history = _history().assign(pos_grad=[2.0, 2.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.0],
                                neg_grad=[2.0, 2.0, 1.0, 1.0, 3.0, 3.0, 1.5, 0.0])
    summary = loss_analysis.imbalance_summary(history)
    assert summary["positive share of the gradient, first quarter"] == pytest.approx(4 / 8)
    assert summary["positive share of the gradient, last quarter"] == pytest.approx(0.5 / 2)
    assert summary["positive share of the loss, first quarter"] == 6 / 8  # the loss shares are unchanged


def test_loss_share_plot_draws_the_positive_share_of_a_rolling_window():
    history = _history()
    fig = plots.loss_share_plot(history, window=2)
    positive = fig.axes[0].collections[0].get_paths()[0].vertices
    tops = {x: y for x, y in positive if y > 0 or x == 7}  # the upper edge of the positive area
    # window of 2: iteration 6 averages (1, 3) and (0, 4): share 1/8; iteration 7 averages (0, 4) and (0, 0): 0
    assert tops[1] == pytest.approx(0.75) and tops[6] == pytest.approx(1 / 8) and tops[7] == 0.0
    plt.close(fig)


def test_loss_share_plot_of_the_gradient_reads_the_gradient_columns():
    history = _history().assign(pos_grad=[1.0, 1.0, 1.0, 1.0, 3.0, 3.0, 3.0, 3.0],
                                neg_grad=[3.0, 3.0, 3.0, 3.0, 1.0, 1.0, 1.0, 1.0])
    fig = plots.loss_share_plot(history, window=1, of="gradient")
    positive = fig.axes[0].collections[0].get_paths()[0].vertices
    tops = {x: y for x, y in positive if y > 0}
    assert tops[0] == pytest.approx(0.25) and tops[7] == pytest.approx(0.75)
    assert fig.axes[0].get_ylabel() == "share of the gradient"
    plt.close(fig)


def test_toy_experiment_takes_every_margin_of_its_loss():
    margins = methods.get("double").margins(config.PROFILES["paper"])
    result = loss_analysis.toy_embedding_experiment("double", margins, n_classes=2, per_class=4, steps=20)
    assert result.embeddings.shape == (8, 2) and len(result.losses) == 20
    np.testing.assert_allclose(np.linalg.norm(result.embeddings, axis=1), 1.0)
    assert result.losses[-1] < result.losses[0]
    wider = loss_analysis.toy_embedding_experiment("double", {**margins, "neg_margin": 1.9}, n_classes=2,
                                                   per_class=4, steps=20)
    assert not np.allclose(wider.losses, result.losses)  # the margins are used
    with pytest.raises(ValueError, match=r"takes the margins \['pos_margin', 'neg_margin'\]"):
        loss_analysis.toy_embedding_experiment("double", {"pos_margin": 0.4}, steps=1)


def test_toy_experiment_records_the_shares_of_every_step_by_hand():
    # two classes of two points: pairs (0,1) and (2,3) positive, the four others negative
    result = loss_analysis.toy_embedding_experiment("single", {"margin": 1.2}, n_classes=2, per_class=2, steps=1, lr=0.0)
    first = result.steps.iloc[0]
    emb = torch.nn.functional.normalize(torch.randn(4, 2, generator=torch.Generator().manual_seed(0),
                                                    dtype=torch.float64), dim=1)
    d = {(a, b): float((emb[a] - emb[b]).norm()) for a in range(4) for b in range(a + 1, 4)}
    positives, negatives = [(0, 1), (2, 3)], [(0, 2), (0, 3), (1, 2), (1, 3)]
    pos = np.mean([0.5 * d[p] ** 2 for p in positives]) / 2                 # each kind carries half the loss
    neg = np.mean([0.5 * max(0.0, 1.2 - d[p]) ** 2 for p in negatives]) / 2
    assert first["loss"] == pytest.approx(pos + neg)
    assert first["positive share"] == pytest.approx(pos / (pos + neg))
    # a pair's pull on its two points is sqrt(2) |dL/dd|: d for a positive, (m - d)+ for a negative
    pull_pos = np.mean([np.sqrt(2) * d[p] for p in positives]) / 2
    pull_neg = np.mean([np.sqrt(2) * max(0.0, 1.2 - d[p]) for p in negatives]) / 2
    assert first["positive gradient share"] == pytest.approx(pull_pos / (pull_pos + pull_neg))
    assert first["active negatives"] == pytest.approx(np.mean([d[p] < 1.2 for p in negatives]))
    assert first["active positives"] == 1.0


def test_non_negative_toy_points_stay_within_the_square_root_of_two():
    result = loss_analysis.toy_embedding_experiment("single", {"margin": 1.35}, n_classes=3, per_class=5, steps=30,
                                                    nonnegative=True)
    assert (result.embeddings >= 0).all() and result.pair_distances.max() <= np.sqrt(2) + 1e-12
    free = loss_analysis.toy_embedding_experiment("single", {"margin": 1.35}, n_classes=3, per_class=5, steps=30)
    assert free.pair_distances.max() > np.sqrt(2)                      # on the whole circle they can go farther
    triplet = loss_analysis.toy_embedding_experiment("triplet", {"margin": 0.4}, n_classes=2, per_class=3, steps=2)
    assert triplet.steps["positive share"].isna().all() and (triplet.steps["loss"] >= 0).all()


def test_pair_gradient_norms_are_sqrt2_times_the_hinge_for_the_contrastive_loss():
    generator = torch.Generator().manual_seed(0)
    e1 = torch.nn.functional.normalize(torch.rand(6, 4, generator=generator), dim=1).requires_grad_()
    e2 = torch.nn.functional.normalize(torch.rand(6, 4, generator=generator), dim=1).requires_grad_()
    y = torch.tensor([1.0, 0, 1, 0, 1, 0])
    per_pair = methods.get("double").loss(e1, e2, y, reduction="none", pos_margin=0.1, neg_margin=1.2)
    d = (e1 - e2).norm(dim=1).detach()
    hinge = torch.where(y.bool(), torch.clamp(d - 0.1, min=0), torch.clamp(1.2 - d, min=0))
    torch.testing.assert_close(loss_analysis.pair_gradient_norms(per_pair, e1, e2), np.sqrt(2) * hinge,
                               rtol=1e-4, atol=1e-6)
    per_pair.mean().backward()                              # the graph is still there for a training step
    assert e1.grad is not None


def test_pair_shares_by_hand_on_four_points():
    # two categories of two points on the axes: positives at distance 0.1, negatives at sqrt(2) or so
    labels = np.array([0, 0, 1, 1])
    embeddings = np.array([[1.0, 0.0], [0.995, 0.0998749], [0.0, 1.0], [0.0998749, 0.995]])
    shares = loss_analysis.pair_shares(embeddings, labels, "single", {"margin": 1.5}, pairs_per_category=4, seed=0)
    i, j, y = data.PairSampler(labels, 4, 1, 0).pairs(0)
    d = np.linalg.norm(embeddings[i] - embeddings[j], axis=1)
    pos, neg = y.astype(bool), ~y.astype(bool)
    loss = np.where(pos, 0.5 * d ** 2, 0.5 * np.clip(1.5 - d, 0, None) ** 2)
    pull = np.sqrt(2) * np.where(pos, d, np.clip(1.5 - d, 0, None))
    assert shares["positive share of the loss"] == pytest.approx(loss[pos].sum() / loss.sum())
    assert shares["positive share of the gradient"] == pytest.approx(pull[pos].sum() / pull.sum(), rel=1e-6)
    assert shares["active negative pairs"] == pytest.approx(np.mean(d[neg] < 1.5)) == 1.0
    assert 0 < shares["positive share of the gradient"] < 1
    with pytest.raises(ValueError, match="not a pair loss"):
        loss_analysis.pair_shares(embeddings, labels, "triplet", {"margin": 0.4})
