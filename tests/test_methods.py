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


# Margins unlike the loss functions' defaults and the profiles' values, so that a per-item loss that
# dropped the bound margins would show.
MARGINS = {"single": {"margin": 0.7}, "double": {"pos_margin": 0.5, "neg_margin": 1.0},
           "triplet": {"margin": 0.25}}
PLAIN = {"single": (losses.contrastive_loss, losses.contrastive_curves),
         "double": (losses.double_margin_contrastive_loss, losses.double_margin_curves),
         "triplet": (losses.triplet_loss, losses.triplet_curves)}


def _formula(name: str, margins: dict, y: int, d: float, d_neg: float = 0.0) -> float:
    """The per-item loss from the paper's formulas, one pair (distance d) or triplet (d(a,p), d(a,n))."""
    if name == "single":
        return 0.5 * d**2 if y else 0.5 * max(0.0, margins["margin"] - d) ** 2
    if name == "double":
        return (0.5 * max(0.0, d - margins["pos_margin"]) ** 2 if y
                else 0.5 * max(0.0, margins["neg_margin"] - d) ** 2)
    return max(0.0, d - d_neg + margins["margin"])


@pytest.mark.parametrize("name", methods.NAMES)
def test_per_item_loss_matches_the_formula_with_the_bound_margins(name):
    method = methods.get(name)
    loss, curves = PLAIN[name]
    assert method.loss is loss and method.curves is curves
    margins = MARGINS[name]
    per_item = method.per_item_loss(margins)
    distances = [0.1, 0.4, 0.6, 0.85, 1.1, 1.5]
    origin = torch.zeros(len(distances), 2, dtype=torch.float64)
    along_x = torch.tensor([[d, 0.0] for d in distances], dtype=torch.float64)   # ||x|| = d exactly
    if method.is_pair_loss:
        y = torch.tensor([1, 0, 1, 0, 1, 0])
        values = per_item(origin, along_x, y)
        expected = [_formula(name, margins, int(t), d) for t, d in zip(y, distances)]
    else:
        negatives = [0.5, 0.3, 0.9, 1.0, 1.2, 1.0]
        along_y = torch.tensor([[0.0, d] for d in negatives], dtype=torch.float64)
        values = per_item(origin, along_x, along_y)
        expected = [_formula(name, margins, 1, d, dn) for d, dn in zip(distances, negatives)]
    assert values.shape == (len(distances),)                          # reduction="none"
    torch.testing.assert_close(values, torch.tensor(expected, dtype=torch.float64))
    assert 0 < sum(v == 0 for v in expected) < len(expected)           # both sides of the hinges
    # the registry's margins reach the loss: the profile's margins give other values here
    paper = method.per_item_loss(method.margins(config.get_profile("paper")))
    other = paper(origin, along_x, y if method.is_pair_loss else along_y)
    assert not torch.allclose(other, values)


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
    assert config.synthetic_settings(changed) == {**config.synthetic_settings(base), "render_size": 72}


def test_get_profile_needs_a_profile_and_only_active_profile_reads_the_environment(monkeypatch):
    monkeypatch.setenv(config.PROFILE_ENV, "smoke")
    with pytest.raises(TypeError, match="name or a helpers.config.Profile"):
        config.get_profile(None)
    assert config.get_profile("paper").name == "paper"
    assert config.active_profile() is config.PROFILES["smoke"]
    assert config.active_profile(cls_lr=0.5).cls_lr == 0.5
    monkeypatch.delenv(config.PROFILE_ENV)
    assert config.active_profile().name == "tutorial"
    monkeypatch.setenv(config.PROFILE_ENV, "huge")
    with pytest.raises(ValueError, match="FIREARM_PROFILE='huge'"):
        config.active_profile()


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
