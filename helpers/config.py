"""Profiles, paths, seeding and device choice.

A :class:`Profile` holds every size and schedule of a run. It is resolved
once, at the edge (a notebook's first cell, the command line, ``make
results``), by :func:`active_profile`, the one reader of the
``FIREARM_PROFILE`` environment variable; everything below receives the
resolved profile, or the values it uses.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
"""The repository root: every path in the project is anchored here, never at the working directory."""

DATA_DIR = REPO_ROOT / "data"
CACHE_ENV = "FIREARM_CACHE"


def _folder_from_env(variable: str, default: Path) -> Path:
    """``$variable`` as a folder (relative values are taken from the repository root), else ``default``."""
    value = os.environ.get(variable, "").strip()
    if not value:
        return default
    path = Path(value).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


CACHE_DIR = _folder_from_env(CACHE_ENV, REPO_ROOT / "cache")
"""Trained runs are cached here; ``FIREARM_CACHE`` moves it (benchmarks use a fresh one)."""
FIGURES_ENV = "FIREARM_FIGURES"
FIGURES_DIR = _folder_from_env(FIGURES_ENV, REPO_ROOT / "figures")
"""Saved figures go here; ``FIREARM_FIGURES`` moves them (``make verify`` uses a temporary folder)."""
DEFAULT_SEED = 0
PROFILE_ENV = "FIREARM_PROFILE"
DATA_ENV = "FIREARM_DATA"


@dataclass(frozen=True)
class Profile:
    """Every size and schedule that changes between ``smoke``, ``tutorial`` and ``paper``.

    The ``paper`` profile holds the
    authors' settings; the other two scale them down for a CPU.
    """

    name: str
    # --- synthetic data (ignored when FIREARM_DATA points at the real release)
    n_train_categories: int
    n_val_categories: int
    n_test_categories: int
    images_per_category: tuple[int, int]   # (min, max) of the long-tailed count
    render_size: int                       # longest side of a rendered image, pixels
    queries_per_category: int              # queries per unseen category in validation/test
    # --- transforms (longest side, pixels)
    train_size_range: tuple[int, int]      # random resize of the longest side during training
    eval_size: int                         # longest side at evaluation, no crop
    # --- model
    backbone: str
    weights: str | None                    # None (random init) or "imagenet"
    cut: int | None                        # first trainable block; the trunk below is frozen and cached (None: nothing frozen)
    feature_views: int                     # augmented views cached per training image when cut is set
    pooling: str
    embedding_dim: int | None              # optional projection; None keeps the backbone width
    # --- optimiser: "sgd" (the paper's, with momentum) or "adam" (CPU profiles, from scratch)
    optimizer: str
    cls_lr: float                          # stage 1 (classification)
    ret_lr: float                          # stage 2, or one-stage retrieval training, whatever its start
    momentum: float
    weight_decay: float
    # --- stage 1: classification
    cls_epochs: int
    cls_lr_step: int                       # lr x 0.1 every this many epochs
    cls_batch_size: int
    cls_patience: int | None               # stop after this many epochs without a better val accuracy (None: never)
    # --- stage 2: retrieval
    ret_epochs: int
    ret_lr_step: int
    ret_batch_size: int                    # pairs (or triplets) per batch
    ret_patience: int | None               # stop after this many epochs without a better val mAP (None: never)
    pairs_per_category: int                # per epoch, half positive, half negative
    regenerate_every: int                  # epochs between pair re-draws
    pos_margin: float                      # double margin m1
    neg_margin: float                      # double margin m2
    single_margin: float                   # single margin m
    triplet_margin: float
    # --- runtime
    num_workers: int
    eval_batch_size: int
    # --- the tuned protocol (make results, helpers.machinery.protocol)
    tuning_trials: int                     # Optuna trials per study: the same for stage 1 and every method and schedule
    tuned: dict | None = None              # {schedule: {loss: {"lr": ..., margins}}} chosen by make results; None: untuned

    def to_dict(self) -> dict:
        """Plain-dict view, used for cache keys and for printing in notebooks."""
        return asdict(self)


PROFILES: dict[str, Profile] = {
    "paper": Profile(
        name="paper",
        n_train_categories=127, n_val_categories=20, n_test_categories=20,
        images_per_category=(20, 250), render_size=384, queries_per_category=5,
        train_size_range=(256, 384), eval_size=384,
        backbone="vgg16", weights="imagenet", cut=None, feature_views=0, pooling="mac", embedding_dim=None,
        optimizer="sgd", cls_lr=1e-3, ret_lr=1e-3, momentum=0.9, weight_decay=5e-4,
        cls_epochs=50, cls_lr_step=30, cls_batch_size=32, cls_patience=None,
        ret_epochs=30, ret_lr_step=10, ret_batch_size=16, ret_patience=None,
        pairs_per_category=360, regenerate_every=5,
        pos_margin=0.8, neg_margin=1.2, single_margin=1.2, triplet_margin=0.4,
        num_workers=8, eval_batch_size=16, tuning_trials=8,
    ),
    "tutorial": Profile(
        name="tutorial",
        n_train_categories=127, n_val_categories=20, n_test_categories=20,
        images_per_category=(12, 60), render_size=128, queries_per_category=5,
        train_size_range=(112, 128), eval_size=128,
        backbone="efficientnet_lite0", weights="imagenet", cut=15, feature_views=2, pooling="mac", embedding_dim=None,
        optimizer="adam", cls_lr=0.00178, ret_lr=1e-4, momentum=0.9, weight_decay=5e-4,
        cls_epochs=12, cls_lr_step=8, cls_batch_size=64, cls_patience=None,
        ret_epochs=12, ret_lr_step=8, ret_batch_size=64, ret_patience=None,
        pairs_per_category=16, regenerate_every=1,
        pos_margin=0.8, neg_margin=1.2, single_margin=1.2, triplet_margin=0.4,  # the paper's; tuned ones below
        num_workers=0, eval_batch_size=256, tuning_trials=6,
        tuned={  # chosen by make results (results/tuning.csv); cls_lr = 0.00178 was chosen too
            "one-stage": {"single": {"lr": 0.000316, "margin": 1.35},
                          "double": {"lr": 0.000316, "pos_margin": 0.135, "neg_margin": 1.35},
                          "triplet": {"lr": 0.000562, "margin": 0.15}},
            "two-stage": {"single": {"lr": 0.000316, "margin": 1.35},
                          "double": {"lr": 0.000316, "pos_margin": 0.135, "neg_margin": 1.35},
                          "triplet": {"lr": 0.000316, "margin": 0.8}}},
    ),
    "smoke": Profile(
        name="smoke",
        n_train_categories=12, n_val_categories=4, n_test_categories=4,
        images_per_category=(6, 14), render_size=64, queries_per_category=2,
        train_size_range=(56, 64), eval_size=64,
        backbone="efficientnet_lite0", weights="imagenet", cut=15, feature_views=2, pooling="mac",
        embedding_dim=None, optimizer="adam", cls_lr=1e-3, ret_lr=1e-4, momentum=0.9, weight_decay=5e-4,
        cls_epochs=2, cls_lr_step=2, cls_batch_size=32, cls_patience=None,
        ret_epochs=2, ret_lr_step=2, ret_batch_size=32, ret_patience=None,
        pairs_per_category=16, regenerate_every=1,
        pos_margin=0.8, neg_margin=1.2, single_margin=1.2, triplet_margin=0.4,
        num_workers=0, eval_batch_size=128, tuning_trials=3,
        tuned={  # chosen by make results PROFILE=smoke (results/tuning.csv)
            "one-stage": {"single": {"lr": 0.000316, "margin": 0.85},
                          "double": {"lr": 0.01, "pos_margin": 0.495, "neg_margin": 0.55},
                          "triplet": {"lr": 0.01, "margin": 0.55}},
            "two-stage": {"single": {"lr": 0.01, "margin": 0.55},
                          "double": {"lr": 0.01, "pos_margin": 0.495, "neg_margin": 0.55},
                          "triplet": {"lr": 0.000562, "margin": 0.15}}},
    ),
}


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)) \
        and math.isfinite(value)


def _positive(value) -> bool:
    return _is_int(value) and value >= 1


def _ordered_pair(value) -> bool:
    return isinstance(value, (tuple, list)) and len(value) == 2 and all(map(_positive, value)) \
        and value[0] <= value[1]


SCHEDULES = ("one-stage", "two-stage")
"""How a retrieval run starts: from ImageNet (one-stage) or from the stage-1 classifier (two-stage)."""


def tuned_settings(profile: Profile, schedule: str, loss: str) -> dict | None:
    """``{"lr": ..., <margins>}`` that ``make results`` chose for ``loss`` trained ``schedule``, or ``None``."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    return ((profile.tuned or {}).get(schedule) or {}).get(loss)


def _valid_tuned(tuned) -> bool:
    """``None``, or ``{schedule: {loss: {"lr": number > 0, margin: number >= 0, ...}}}``."""
    if tuned is None:
        return True
    if not isinstance(tuned, dict) or not set(tuned) <= set(SCHEDULES):
        return False
    return all(isinstance(by_loss, dict) and all(
        isinstance(values, dict) and _is_number(values.get("lr")) and values["lr"] > 0
        and all(_is_number(v) and v >= 0 for v in values.values()) for values in by_loss.values())
        for by_loss in tuned.values())


POSITIVE_INTS = ("n_train_categories", "n_val_categories", "n_test_categories", "render_size",
                 "queries_per_category", "eval_size", "cls_lr_step", "cls_batch_size", "ret_lr_step", "ret_batch_size", "pairs_per_category", "regenerate_every", "eval_batch_size",
                 "tuning_trials")


def _profile_rules(profile: Profile) -> list[tuple[str, bool, str]]:
    """``(field, passes, what is allowed)`` for every field of ``profile``: the one table of rules."""
    # the vocabularies live with the code that uses them; imported here so that config imports no torch
    from .imagenet import LITE0_N_BLOCKS
    from .models import BACKBONES, POOLINGS
    from .train import OPTIMIZERS

    cuts = range(0, LITE0_N_BLOCKS + 1)
    p = profile
    rules = [(name, _positive(getattr(p, name)), "an integer >= 1") for name in POSITIVE_INTS]
    rules += [(name, _ordered_pair(getattr(p, name)), "a pair (min, max) of integers >= 1 with min <= max")
              for name in ("images_per_category", "train_size_range")]
    rules += [(name, _is_int(getattr(p, name)) and getattr(p, name) >= 0,
               "an integer >= 0 (0 keeps the starting network, epoch 0)") for name in ("cls_epochs", "ret_epochs")]
    rules += [(name, getattr(p, name) is None or _positive(getattr(p, name)), "None or an integer >= 1")
              for name in ("cls_patience", "ret_patience", "embedding_dim")]
    rules += [(name, _is_number(getattr(p, name)) and getattr(p, name) > 0, "a finite number > 0")
              for name in ("cls_lr", "ret_lr", "single_margin", "triplet_margin")]
    rules += [(name, _is_number(getattr(p, name)) and getattr(p, name) >= 0, "a finite number >= 0")
              for name in ("weight_decay", "pos_margin", "neg_margin")]
    rules += [
        ("name", isinstance(p.name, str) and p.name.strip() != "", "a non-empty string"),
        ("num_workers", _is_int(p.num_workers) and p.num_workers >= 0, "an integer >= 0"),
        ("momentum", _is_number(p.momentum) and 0 <= p.momentum < 1, "a number in [0, 1)"),
        ("pos_margin", not (_is_number(p.pos_margin) and _is_number(p.neg_margin)) or p.pos_margin < p.neg_margin,
         f"below neg_margin ({p.neg_margin!r})"),
        ("backbone", p.backbone in BACKBONES, f"one of {list(BACKBONES)}"),
        ("pooling", p.pooling in POOLINGS, f"one of {list(POOLINGS)}"),
        ("weights", p.weights is None or p.weights == "imagenet", "None (random init) or 'imagenet'"),
        ("optimizer", p.optimizer in OPTIMIZERS, f"one of {list(OPTIMIZERS)}"),
        ("cut", p.cut is None or (_is_int(p.cut) and p.cut in cuts),
         f"None or an integer from {cuts.start} to {cuts.stop - 1}"),
        ("cut", p.cut is None or p.backbone == "efficientnet_lite0",
         f"None with backbone {p.backbone!r} (a cut needs efficientnet_lite0)"),
        ("feature_views", p.cut is None or _positive(p.feature_views), "an integer >= 1 when cut is set"),
        ("tuned", _valid_tuned(p.tuned),
         f"None or {{schedule: {{loss: {{'lr': number > 0, margin: number >= 0}}}}}} with schedules {SCHEDULES}"),
    ]
    return rules


def check_profile(profile: Profile) -> Profile:
    """Check every field of ``profile``; return it, or raise a one-line ``ValueError`` naming the first bad field.

    The message gives the field, its value and what is allowed; every way to
    make a profile (:func:`get_profile`, :func:`active_profile`, a notebook's
    overrides, the command line's ``--set``) goes through here.
    """
    for name, passes, allowed in _profile_rules(profile):
        if not passes:
            raise ValueError(f"profile {profile.name!r}: {name}={getattr(profile, name)!r} is not allowed; "
                             f"expected {allowed}")
    return profile


def get_profile(profile: "Profile | str", **overrides) -> Profile:
    """A :class:`Profile` from a name of :data:`PROFILES` or a Profile, with keyword ``overrides``.

    ``get_profile("smoke", ret_epochs=3)`` is the smoke profile with one
    field changed. A :class:`Profile` is taken as it is, so overrides made
    earlier are kept. Unknown fields raise a ``TypeError``, invalid values a
    one-line ``ValueError`` (:func:`check_profile`).
    """
    if isinstance(profile, str):
        name = profile.strip().lower()
        if name not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}; expected one of {sorted(PROFILES)}")
        profile = PROFILES[name]
    elif not isinstance(profile, Profile):
        raise TypeError(f"profile must be a name or a helpers.config.Profile, got {type(profile).__name__}")
    if not overrides:
        return check_profile(profile)
    unknown = sorted(set(overrides) - {f.name for f in fields(Profile)})
    if unknown:
        raise TypeError(f"unknown profile field(s) {unknown}; expected fields of helpers.config.Profile")
    return check_profile(replace(profile, **overrides))


def active_profile(**overrides) -> Profile:
    """The profile ``FIREARM_PROFILE`` names (default ``tutorial``), with ``overrides``.

    The one place the variable is read; the notebooks and ``make results``
    call it once, at the top.
    """
    name = os.environ.get(PROFILE_ENV, "tutorial").strip().lower() or "tutorial"
    if name not in PROFILES:
        raise ValueError(f"{PROFILE_ENV}={name!r} is not a known profile; expected one of {sorted(PROFILES)}")
    return get_profile(name, **overrides)


SYNTHETIC_FIELDS = ("n_train_categories", "n_val_categories", "n_test_categories",
                    "images_per_category", "render_size", "queries_per_category")
"""The profile fields that shape the synthetic release (its one list: :mod:`helpers.synthetic` reads it)."""


def synthetic_settings(profile: Profile) -> dict:
    """The profile's :data:`SYNTHETIC_FIELDS` as a dict."""
    return {name: getattr(profile, name) for name in SYNTHETIC_FIELDS}


def synthetic_root(profile: Profile, seed: int = DEFAULT_SEED) -> Path:
    """Where the synthetic release of a resolved profile lives.

    ``data/synthetic/<profile>-seed<seed>`` for a named profile as it is; a
    profile whose data fields (:data:`SYNTHETIC_FIELDS`) were overridden gets
    a folder of its own, ``<profile>-<hash of those fields>-seed<seed>``, so it
    never overwrites the named profile's release.
    """
    mine = synthetic_settings(profile)
    if profile.name in PROFILES and mine == synthetic_settings(PROFILES[profile.name]):
        return DATA_DIR / "synthetic" / f"{profile.name}-seed{seed}"
    digest = hashlib.sha1(json.dumps(mine, sort_keys=True).encode("utf-8")).hexdigest()[:8]
    return DATA_DIR / "synthetic" / f"{profile.name}-{digest}-seed{seed}"


def real_data_root() -> Path | None:
    """The real Firearm 14k root from ``FIREARM_DATA``, or ``None`` when it is unset.

    Relative values are taken
    relative to the repository root, so notebooks see the same path whatever
    their working directory.
    """
    value = os.environ.get(DATA_ENV, "").strip()
    if not value:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


def cache_dir(*parts: str) -> Path:
    """A folder under the gitignored ``cache/`` (created on demand): the run and feature caches live here."""
    path = CACHE_DIR.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def seed_everything(seed: int = DEFAULT_SEED) -> int:
    """Seed Python, NumPy and PyTorch (CPU and CUDA) and return the seed.

    On CPU this makes a training run
    repeatable; on a GPU some cuDNN kernels stay non-deterministic.
    """
    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch
    except ImportError:  # the data generator works without torch
        return seed
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    return seed


def get_device(prefer: str | None = None):
    """The device to use: ``prefer`` if given, else CUDA, then Apple MPS, then CPU."""
    import torch

    if prefer:
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
