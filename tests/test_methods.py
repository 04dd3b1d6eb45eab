"""Tests of the method registry, the profile resolver and the results table."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import config, evaluation, losses, methods, metrics, plots


def test_registry_lists_the_three_methods_with_their_profile_margins():
    profile = config.get_profile("paper")
    assert methods.NAMES == ("single", "double", "triplet")
    assert methods.get("single").margins(profile) == {"margin": profile.single_margin}
    assert methods.get("double").margins(profile) == {"pos_margin": 0.8, "neg_margin": 1.2}
    assert methods.get("triplet").margins(profile) == {"margin": profile.triplet_margin}
    assert [m.tuple_size for m in methods.METHODS.values()] == [2, 2, 3]
    assert len({m.colour for m in methods.METHODS.values()}) == 3


def test_registry_losses_are_the_plain_functions():
    torch.manual_seed(0)
    x1, x2 = torch.nn.functional.normalize(torch.randn(2, 6, 4), dim=2)
    y = torch.tensor([1, 0, 1, 0, 0, 1])
    torch.testing.assert_close(methods.get("single").loss(x1, x2, y, margin=0.9),
                               losses.contrastive_loss(x1, x2, y, margin=0.9))
    torch.testing.assert_close(methods.get("double").loss(x1, x2, y, pos_margin=0.3, neg_margin=1.1),
                               losses.double_margin_contrastive_loss(x1, x2, y, 0.3, 1.1))
    torch.testing.assert_close(methods.get("triplet").loss(x1, x2, x2.flip(0), margin=0.2),
                               losses.triplet_loss(x1, x2, x2.flip(0), margin=0.2))
    d = np.linspace(0, 2, 9)
    np.testing.assert_array_equal(methods.get("double").curves(d, 1, pos_margin=0.5, neg_margin=1.0)[0],
                                  losses.double_margin_curves(d, 1, 0.5, 1.0)[0])


def test_run_labels_find_their_method_and_colour():
    # "single, two-stage" used to lose its colour (the first word kept its comma)
    assert methods.find("single, two-stage") is methods.get("single")
    assert methods.find("double (classifier init)") is methods.get("double")
    assert methods.find("Triplet") is methods.get("triplet")
    assert methods.find("stage-1 features only") is None and methods.find("") is None
    assert methods.colour_of("double, two-stage") == methods.get("double").colour
    assert methods.colour_of("untrained") == methods.NEUTRAL_COLOUR
    fig = plots.metric_bars(pd.DataFrame({"mAP": [0.2, 0.3]}, index=["single, two-stage", "untrained"]), "mAP")
    colours = [tuple(np.round(bar.get_facecolor()[:3], 3)) for bar in fig.axes[0].patches]
    import matplotlib.colors as mc
    assert colours[0] == tuple(np.round(mc.to_rgb(methods.get("single").colour), 3))


def test_unknown_method_is_named():
    with pytest.raises(ValueError, match="unknown loss 'quadruplet'; expected one of"):
        methods.get("quadruplet")


def test_one_profile_resolver_keeps_overrides():
    base = config.get_profile("smoke")
    changed = config.get_profile(base, render_size=72)
    assert changed.render_size == 72 and changed.name == "smoke"
    assert config.get_profile(changed) is changed                       # a Profile passes through
    assert config.get_profile(changed, ret_epochs=5).render_size == 72  # earlier overrides are kept
    with pytest.raises(TypeError, match="unknown profile field"):
        config.get_profile("smoke", render_sise=64)
    with pytest.raises(ValueError, match="unknown profile 'huge'"):
        config.get_profile("huge")
    # a release with overridden data fields never shares the named profile's folder
    assert config.synthetic_root(base) == config.DATA_DIR / "synthetic" / "smoke-seed0"
    assert config.synthetic_root(changed) != config.synthetic_root(base)
    assert config.synthetic_root(config.get_profile(base, ret_epochs=9)) == config.synthetic_root(base)


def test_results_table_relative_column_matches_a_hand_computation():
    rng = np.random.default_rng(0)
    db = rng.standard_normal((30, 8)).astype(np.float32)
    gt = [np.array([i, i + 10]) for i in range(5)]
    good = db[:5] + 0.01 * rng.standard_normal((5, 8)).astype(np.float32)
    bad = rng.standard_normal((5, 8)).astype(np.float32)
    table = evaluation.results_table({"bad": (bad, db), "good": (good, db)}, gt, baseline="bad")
    expected = metrics.mean_average_precision(good, db, gt)[0] / metrics.mean_average_precision(bad, db, gt)[0] - 1
    assert table.loc["good", "rel. to bad"] == f"{expected:+.1%}"
    assert table.loc["bad", "rel. to bad"] == "+0.0%"
    assert list(table.columns[:3]) == ["mAP (trapezoid)", "mAP (standard)", "rel. to bad"]
    with pytest.raises(ValueError, match="baseline 'best'"):
        evaluation.results_table({"bad": (bad, db)}, gt, baseline="best")
