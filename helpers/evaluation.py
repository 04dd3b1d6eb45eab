"""From a trained model to a results table: embed a split, score it, compare methods, check controls.

:func:`embed_split` embeds a retrieval split's queries and database as the
profile's network sees them (images, or cached frozen-trunk maps);
:func:`results_table` turns several models' embeddings into one DataFrame of
the paper's metrics, with a column of the relative change of mAP against a
baseline row. Two controls say what a score
means: :func:`chance_levels` of every metric (random rankings) and :func:`background_only_split`
(the same images without their firearms). :func:`training_sample` gives
the evaluation inputs of a seeded sample of training images.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from torch import Tensor, nn

from . import config, features, metrics, models, synthetic


def embed_split(model: nn.Module, split, profile=None, progress: bool = True) -> tuple[Tensor, Tensor]:
    """Embeddings of a retrieval split's queries and database: ``(query_emb, db_emb)``.

    With a cut in the profile, ``model`` is the trainable top and sees the
    cached frozen-trunk maps of the images (see :mod:`helpers.features`).
    """
    profile = config.get_profile(profile)
    return tuple(models.extract_embeddings(model, features.eval_inputs(paths, labels, profile, progress),
                                           batch_size=profile.eval_batch_size, progress=progress)
                 for paths, labels in ((split.queries, split.query_labels),
                                       (split.database, split.database_labels)))


def training_sample(images, profile=None, size: int = 1024, seed: int = config.DEFAULT_SEED, progress: bool = True):
    """Evaluation inputs of a seeded sample of ``size`` images of a training list (all of them when fewer).

    What the PCA of notebook 04 is fitted on and what notebook 06 models its
    distractors on: the training images as the evaluation transform shows
    them, in their list order. The same ``seed`` gives the same sample.
    """
    profile = config.get_profile(profile)
    n = len(images.paths)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(size, n), replace=False))
    labels = np.asarray(images.labels)[rows]
    return features.eval_inputs([images.paths[i] for i in rows], labels, profile, progress)


def untrained_model(profile=None, seed: int = config.DEFAULT_SEED) -> nn.Module:
    """The embedding network of ``profile`` with its initial weights (seeded), in eval mode.

    The "before training" reference: with ``weights="imagenet"`` it is the
    ImageNet network before fine-tuning.
    """
    config.seed_everything(seed)
    return models.build_embedding_net(config.get_profile(profile)).eval()


def relative_change(values: pd.Series, baseline: float) -> pd.Series:
    """``values / baseline - 1`` formatted as signed percentages, e.g. ``"+12.5%"``."""
    return (values / baseline - 1).map("{:+.1%}".format)


def results_table(embeddings: dict, ground_truth, baseline: str | None = None,
                  ks=metrics.DEFAULT_KS) -> pd.DataFrame:
    """One row per model of the paper's metrics on one split, optionally relative to a baseline row.

    ``embeddings`` maps a model's name to ``(query_emb, db_emb)``. Columns:
    mAP (trapezoid and standard) and R@K (see :func:`helpers.metrics.evaluate`);
    with ``baseline`` (a row name) a column ``"rel. to <baseline>"`` gives
    the relative change of trapezoid mAP, as the paper reports it.
    """
    rows = [metrics.evaluate(q, d, ground_truth, ks=ks, name=name) for name, (q, d) in embeddings.items()]
    table = pd.DataFrame(rows).set_index("name")
    if baseline is not None:
        if baseline not in table.index:
            raise ValueError(f"baseline {baseline!r} is not one of the rows {list(table.index)}")
        table.insert(2, f"rel. to {baseline}",
                     relative_change(table["mAP (trapezoid)"], table.loc[baseline, "mAP (trapezoid)"]))
    return table


def chance_levels(split, seed: int = config.DEFAULT_SEED, repeats: int = 20, ks=metrics.DEFAULT_KS) -> pd.Series:
    """Every metric of :func:`helpers.metrics.evaluate` for random rankings of ``split``: its chance level.

    The mean over ``repeats`` rankings by random embeddings (seeded), so it
    follows the split's own numbers of queries, relevant items and database
    images.
    """
    rng = np.random.default_rng(seed)
    rows = [metrics.evaluate(rng.standard_normal((len(split.queries), 8)), rng.standard_normal((len(split.database), 8)),
                             split.ground_truth, ks=ks) for _ in range(repeats)]
    return pd.DataFrame(rows).mean().rename("random ranking")


def random_ranking_map(split, seed: int = config.DEFAULT_SEED, repeats: int = 20) -> float:
    """Trapezoid mAP of random rankings on ``split``, averaged over ``repeats``: its chance level."""
    return float(chance_levels(split, seed, repeats)["mAP (trapezoid)"])


def background_only_split(release, split, folder, profile=None, seed: int = config.DEFAULT_SEED,
                          progress: bool = True):
    """``split`` of a synthetic release re-rendered into ``folder`` with every firearm left out.

    The same file names, backgrounds, clutter, occluders and lighting, and the
    same ground truth: a model that scores above chance on it retrieves by
    the background. See :func:`helpers.synthetic.render_background_only`.
    """
    profile = config.get_profile(profile)
    folder = Path(folder)
    synthetic.render_background_only(release.root, split.name, folder, profile, seed=seed, progress=progress)
    moved = [folder / Path(path).relative_to(release.root) for path in split.queries + split.database]
    return replace(split, queries=moved[:len(split.queries)], database=moved[len(split.queries):])
