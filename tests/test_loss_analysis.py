"""The positive share of the loss, the imbalance summary and the toy experiment, against hand computations."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from helpers import config, loss_analysis, methods, plots


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


def test_loss_share_plot_draws_the_positive_share_of_a_rolling_window():
    history = _history()
    fig = plots.loss_share_plot(history, window=2)
    positive = fig.axes[0].collections[0].get_paths()[0].vertices
    tops = {x: y for x, y in positive if y > 0 or x == 7}  # the upper edge of the positive area
    # window of 2: iteration 6 averages (1, 3) and (0, 4): share 1/8; iteration 7 averages (0, 4) and (0, 0): 0
    assert tops[1] == pytest.approx(0.75) and tops[6] == pytest.approx(1 / 8) and tops[7] == 0.0
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
