"""How the losses behave, away from any image: a 2-D toy experiment and the imbalance measurement.

:func:`toy_embedding_experiment` moves free points on the unit circle with
one loss, so the arrangement each loss prefers can be seen. :func:`positive_share`
is the share of the loss that comes from positive pairs, the quantity the
paper's imbalance argument is about; :func:`imbalance_summary` measures it on
a real training history.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from . import config, data, methods
from .train import pair_gradient_norms  # the one definition; training records it every step


def positive_share(pos_loss, neg_loss) -> float | np.ndarray:
    """The share of a loss that comes from positive pairs: ``pos_loss / (pos_loss + neg_loss)``.

    ``pos_loss`` and ``neg_loss`` are summed (or averaged) positive and
    negative pair losses, numbers or arrays of them (element-wise); the share
    is NaN where both are 0. What the paper's imbalance argument is about.
    """
    pos, neg = np.asarray(pos_loss, dtype=np.float64), np.asarray(neg_loss, dtype=np.float64)
    share = pos / np.where(pos + neg > 0, pos + neg, np.nan)
    return float(share) if share.ndim == 0 else share


def imbalance_summary(history: pd.DataFrame, fraction: float = 0.25) -> dict:
    """Share of the loss from positive pairs early and late in training, and the active fractions late.

    ``history`` is a pair-loss run's per-iteration history (``pos_loss``,
    ``neg_loss``, ``pos_active_frac``, ``neg_active_frac``, and where it has
    them ``pos_grad`` and ``neg_grad``, which add the positive share of the
    gradient); ``fraction`` is
    the part of the iterations counted as "first" and "last". The shares are
    :func:`positive_share` of the losses summed over those iterations.
    """
    n = max(1, int(round(len(history) * fraction)))
    first, last = history.iloc[:n], history.iloc[-n:]
    shares = [positive_share(h["pos_loss"].sum(), h["neg_loss"].sum()) for h in (first, last)]
    summary = {"positive share of the loss, first quarter": shares[0],
               "positive share of the loss, last quarter": shares[1]}
    if {"pos_grad", "neg_grad"} <= set(history.columns):
        summary.update({f"positive share of the gradient, {when} quarter":
                        positive_share(h["pos_grad"].sum(), h["neg_grad"].sum())
                        for when, h in (("first", first), ("last", last))})
    return {**summary, "active positive pairs, last quarter": float(last["pos_active_frac"].mean()),
            "active negative pairs, last quarter": float(last["neg_active_frac"].mean())}


def pair_shares(embeddings, labels, loss, margins: dict, pairs_per_category: int = 16,
                seed: int = config.DEFAULT_SEED) -> dict:
    """What one epoch's pairs ask of a set of embeddings: the positive share of their loss and of their pull.

    ``embeddings`` (N, dim) of images with ``labels``; the pairs are those
    :class:`helpers.data.PairSampler` draws for an epoch (half positive,
    seeded), scored with the pair loss ``loss`` at ``margins``. Returns the
    positive share of the summed loss and of the summed gradient norms
    (:func:`pair_gradient_norms`), and the fractions of positive and of
    negative pairs with a non-zero loss. A trained network's embeddings
    give what the optimiser would see if training went on; the untrained
    network's, what it saw at the start.
    """
    method = methods.get(loss)
    if not method.is_pair_loss:
        raise ValueError(f"{method.name} is not a pair loss: it has no positive and negative pairs")
    i, j, y = data.PairSampler(np.asarray(labels), pairs_per_category, 1, seed).pairs(0)
    emb = torch.as_tensor(np.asarray(embeddings), dtype=torch.float64)
    e1, e2 = emb[i].clone().requires_grad_(), emb[j].clone().requires_grad_()
    positive = torch.as_tensor(y).bool()
    per_pair = method.loss(e1, e2, positive.double(), reduction="none", **margins)
    loss_share, gradient_share, active_pos, active_neg = _split(per_pair, pair_gradient_norms(per_pair, e1, e2),
                                                                positive)
    return {"positive share of the loss": loss_share, "positive share of the gradient": gradient_share,
            "active positive pairs": active_pos, "active negative pairs": active_neg}


def _split(per_pair: torch.Tensor, pull: torch.Tensor, positive: torch.Tensor, weight=1.0) -> tuple:
    """(positive share of the loss, of the pull, active positives, active negatives) of pairs weighted by ``weight``."""
    terms, pull = per_pair.detach() * weight, pull * weight
    return (positive_share(float(terms[positive].sum()), float(terms[~positive].sum())),
            positive_share(float(pull[positive].sum()), float(pull[~positive].sum())),
            float((per_pair[positive] > 0).double().mean()), float((per_pair[~positive] > 0).double().mean()))


@dataclass
class ToyResult:
    """Outcome of :func:`toy_embedding_experiment`: final unit vectors, labels, all pair distances, and per-step records.

    ``steps`` has one row per step: the loss, the positive share of the loss
    and of the gradient (:func:`positive_share` of the pairs' losses and of
    their gradient norms, :func:`pair_gradient_norms`), and the
    fractions of positive and of negative pairs with a non-zero loss (NaN for
    the triplet loss, which has no separate parts).
    """

    embeddings: np.ndarray
    labels: np.ndarray
    pair_distances: np.ndarray
    pair_labels: np.ndarray
    steps: pd.DataFrame

    @property
    def losses(self) -> np.ndarray:
        return self.steps["loss"].to_numpy()


def _toy_loss(method: methods.Method, emb: torch.Tensor, labels: torch.Tensor, margins: dict) -> tuple:
    """Balanced loss over all pairs (half weight positives, half negatives) or all valid triplets, and its record.

    The record holds the positive shares of the loss and of the gradient
    and the active fractions, each part weighted as in the loss.
    """
    nan = float("nan")
    if not method.is_pair_loss:
        same = labels[:, None] == labels[None, :]
        a, p, n = torch.nonzero(same[:, :, None] & ~same[:, None, :]
                                & ~torch.eye(len(labels), dtype=torch.bool)[:, :, None], as_tuple=True)
        return method.loss(emb[a], emb[p], emb[n], **margins), {
            "positive share": nan, "positive gradient share": nan, "active positives": nan, "active negatives": nan}
    i, j = torch.triu_indices(len(labels), len(labels), 1)
    e1, e2 = emb[i], emb[j]
    y = labels[i] == labels[j]
    per_pair = method.loss(e1, e2, y.float(), reduction="none", **margins)
    weight = torch.where(y, 0.5 / y.sum(), 0.5 / (~y).sum())  # each kind of pair carries half the loss
    shares = _split(per_pair, pair_gradient_norms(per_pair, e1, e2), y, weight)
    record = dict(zip(("positive share", "positive gradient share", "active positives", "active negatives"), shares))
    return (per_pair * weight).sum(), record


def toy_embedding_experiment(loss, margins: dict, n_classes: int = 4, per_class: int = 20, steps: int = 300,
                             lr: float = 0.5, dim: int = 2, nonnegative: bool = False,
                             seed: int = config.DEFAULT_SEED) -> ToyResult:
    """Move free unit vectors with one loss and return where they end up, with a record of every step.

    Each point is a learnable vector, L2-normalised onto the unit circle
    (``dim=2``); with ``nonnegative`` its coordinates are made non-negative
    first (absolute values), as ReLU6 and MAC pooling make a network's
    embedding, so the points live on a quarter of the circle and no two are
    more than sqrt(2) apart. Every step uses all pairs (positives and
    negatives weighted equally, as the paper's balanced pairs) or all
    triplets. ``loss`` names a method of :data:`helpers.methods.METHODS` and
    ``margins`` holds all its keyword margins, e.g. ``method.margins(profile)``.
    """
    method = methods.get(loss)
    if sorted(margins) != sorted(method.margin_fields):
        raise ValueError(f"the {method.name} loss takes the margins {list(method.margin_fields)}, got {list(margins)}")
    generator = torch.Generator().manual_seed(seed)
    raw = torch.randn(n_classes * per_class, dim, generator=generator, dtype=torch.float64).requires_grad_()
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    optimizer = torch.optim.SGD([raw], lr=lr)
    embed = (lambda r: F.normalize(r.abs(), dim=1)) if nonnegative else (lambda r: F.normalize(r, dim=1))  # noqa: E731
    records = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss_value, record = _toy_loss(method, embed(raw), labels, margins)
        loss_value.backward()
        optimizer.step()
        records.append({"step": len(records) + 1, "loss": float(loss_value.detach()), **record})
    emb = embed(raw.detach())
    i, j = torch.triu_indices(len(labels), len(labels), 1)
    return ToyResult(embeddings=emb.numpy(), labels=labels.numpy(),
                     pair_distances=(emb[i] - emb[j]).norm(dim=1).numpy(),
                     pair_labels=(labels[i] == labels[j]).numpy().astype(int), steps=pd.DataFrame(records))
