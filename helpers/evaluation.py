"""From a trained network to a results table: embed images, score them, compare methods, check controls.

:func:`embed_images` and :func:`embed_split` run a network over images as the
evaluation transform shows them; :func:`results_table` turns several models'
embeddings into one DataFrame of the paper's metrics, with a column of the
relative change of mAP against a baseline row. Two controls say what a score
means: :func:`chance_levels` of every metric (random rankings) and
:func:`background_only_split` (the same images without their firearms).
:func:`training_sample` draws a seeded sample of training images.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from torch import Tensor

from . import config, data, metrics, models, synthetic


def embed_images(network: models.Network, paths, profile: config.Profile, progress: bool = True) -> Tensor:
    """Embeddings ``(N, dim)`` of images through the evaluation transform (longest side ``profile.eval_size``)."""
    transform = data.eval_transform(profile.eval_size, *network.spec.normalization)
    dataset = data.eval_dataset(list(paths), np.zeros(len(paths), dtype=np.int64), transform, progress)
    return models.extract_embeddings(network, dataset, batch_size=profile.eval_batch_size, progress=progress)


def embed_split(network: models.Network, split, profile: config.Profile,
                progress: bool = True) -> tuple[Tensor, Tensor]:
    """Embeddings of a retrieval split's queries and database: ``(query_emb, db_emb)``."""
    return (embed_images(network, split.queries, profile, progress),
            embed_images(network, split.database, profile, progress))


def training_sample(images: data.ImageList, size: int = 1024, seed: int = config.DEFAULT_SEED) -> data.ImageList:
    """A seeded sample of ``size`` images of a training list (all of them when fewer), in list order.

    What the PCA of notebook 04 is fitted on and what notebook 06 models its
    distractors on. The same ``seed`` gives the same sample.
    """
    n = len(images)
    return images.subset(np.sort(np.random.default_rng(seed).choice(n, size=min(size, n), replace=False)))


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


def background_only_split(release, split, folder, profile: config.Profile, seed: int = config.DEFAULT_SEED,
                          progress: bool = True):
    """``split`` of a synthetic release re-rendered into ``folder`` with every firearm left out.

    The same file names, backgrounds, clutter, occluders and lighting, and the
    same ground truth: a model that scores above chance on it retrieves by
    the background. See :func:`helpers.synthetic.render_background_only`.
    """
    folder = Path(folder)
    synthetic.render_background_only(release.root, split.name, folder, profile, seed=seed, progress=progress)
    moved = [folder / Path(path).relative_to(release.root) for path in split.queries + split.database]
    return replace(split, queries=moved[:len(split.queries)], database=moved[len(split.queries):])
