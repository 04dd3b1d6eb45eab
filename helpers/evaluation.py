"""From a trained model to a results table: embed a split, score it, compare methods.

:func:`embed_split` embeds a retrieval split's queries and database with the
profile's evaluation transform; :func:`results_table` turns several models'
embeddings into one DataFrame of the paper's metrics, with a column of the
relative change of mAP against a baseline row.
"""
from __future__ import annotations

import pandas as pd
from torch import Tensor, nn

from . import config, data, metrics, models


def embed_split(model: nn.Module, split, profile=None, progress: bool = True) -> tuple[Tensor, Tensor]:
    """Embeddings of a retrieval split's queries and database: ``(query_emb, db_emb)``."""
    profile = config.get_profile(profile)
    return tuple(models.extract_embeddings(model, data.eval_dataset(paths, labels, profile, progress),
                                           batch_size=profile.eval_batch_size, progress=progress)
                 for paths, labels in ((split.queries, split.query_labels),
                                       (split.database, split.database_labels)))


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
