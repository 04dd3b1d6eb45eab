"""Tests of :func:`helpers.config.check_profile`: every field checked in one place, one line per fault."""
from __future__ import annotations

import math

import pytest

from helpers import config, models

INVALID = [
    # integers >= 1
    ("n_train_categories", 0), ("n_val_categories", -1), ("n_test_categories", 1.5), ("render_size", 0),
    ("queries_per_category", 0), ("eval_size", "64"), ("cls_batch_size", 0), ("ret_batch_size", -4),
    ("cls_lr_step", 0), ("ret_lr_step", 0), ("pairs_per_category", 0), ("regenerate_every", 0),
    ("eval_batch_size", 0), ("ret_batch_size", True),
    # epoch counts: integers >= 0 (0 keeps the starting network)
    ("cls_epochs", -1), ("ret_epochs", -2), ("ret_epochs", 2.0),
    # ordered pairs of positive integers
    ("images_per_category", (14, 6)), ("images_per_category", (0, 6)), ("images_per_category", (6,)),
    ("train_size_range", (64, 56)), ("train_size_range", 64), ("train_size_range", (56.0, 64)),
    # optional positive integers
    ("cls_patience", 0), ("ret_patience", -1), ("embedding_dim", 0),
    ("num_workers", -1), ("num_workers", None),
    # learning rates, momentum, weight decay
    ("cls_lr", 0.0), ("ret_lr", -1e-4), ("ret_lr", math.nan), ("cls_lr", math.inf), ("ret_lr", "1e-4"),
    ("momentum", 1.0), ("momentum", -0.1), ("weight_decay", -1e-4), ("weight_decay", math.inf),
    # margins
    ("pos_margin", -0.1), ("pos_margin", 1.3), ("neg_margin", math.nan), ("single_margin", 0.0),
    ("triplet_margin", 0), ("triplet_margin", -0.4),
    # choices
    ("backbone", "resnet101"), ("pooling", "max"), ("weights", "random"), ("optimizer", "rmsprop"),
    ("cut", 17), ("cut", -1), ("cut", 15.0), ("feature_views", 0), ("name", ""),
]


@pytest.mark.parametrize("name", sorted(config.PROFILES))
def test_every_built_in_profile_passes(name):
    profile = config.PROFILES[name]
    assert config.check_profile(profile) is profile
    assert config.get_profile(name) is profile


@pytest.mark.parametrize("field, value", INVALID, ids=[f"{f}={v!r}" for f, v in INVALID])
def test_an_invalid_value_raises_one_line_naming_the_field(field, value):
    with pytest.raises(ValueError) as raised:
        config.get_profile("smoke", **{field: value})
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("profile ") and f": {field}={value!r} is not allowed; expected " in message


def test_cross_field_rules_name_the_field_they_constrain():
    with pytest.raises(ValueError, match=r"^profile 'smoke': cut=15 .*needs efficientnet_lite0"):
        config.get_profile("smoke", backbone="resnet18")
    with pytest.raises(ValueError, match=r"pos_margin=1\.2 .*below neg_margin \(1\.2\)"):
        config.get_profile("smoke", pos_margin=1.2)
    assert config.get_profile("paper", feature_views=0).feature_views == 0    # nothing frozen: no views needed
    assert config.get_profile("smoke", cut=None, backbone="resnet18").cut is None
    assert config.get_profile("smoke", ret_epochs=0).ret_epochs == 0


def test_the_backbone_message_lists_every_backbone():
    with pytest.raises(ValueError) as raised:
        config.get_profile("tutorial", backbone="resnet101")
    for backbone in models.BACKBONES:
        assert repr(backbone) in str(raised.value)
    assert "'efficientnet_lite0'" in str(raised.value)


def test_valid_edge_values_pass():
    profile = config.get_profile("smoke", momentum=0.0, weight_decay=0, pos_margin=0, num_workers=0,
                                 images_per_category=(5, 5), train_size_range=[48, 64], cut=0, embedding_dim=8,
                                 ret_patience=None, weights="imagenet", pooling="gem", optimizer="sgd")
    assert profile.cut == 0


def test_active_profile_and_profiles_given_as_objects_are_checked(monkeypatch):
    monkeypatch.setenv(config.PROFILE_ENV, "smoke")
    with pytest.raises(ValueError, match=r"^profile 'smoke': eval_batch_size=0 is not allowed"):
        config.active_profile(eval_batch_size=0)
    with pytest.raises(ValueError, match="ret_lr"):
        config.get_profile(config.PROFILES["smoke"], ret_lr=0)
    import dataclasses

    broken = dataclasses.replace(config.PROFILES["smoke"], pooling="avg")   # made past get_profile
    with pytest.raises(ValueError, match="pooling='avg'"):
        config.get_profile(broken)


def test_the_command_line_set_goes_through_the_check(capsys):
    from helpers.machinery import cli

    with pytest.raises(SystemExit) as raised:
        cli.main(["train-retrieval", "--profile", "smoke", "--set", "ret_batch_size=0"])
    assert raised.value.code != 0
    assert "ret_batch_size=0 is not allowed" in capsys.readouterr().err
