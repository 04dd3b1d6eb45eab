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

from . import config, methods


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
    ``neg_loss``, ``pos_active_frac``, ``neg_active_frac``); ``fraction`` is
    the part of the iterations counted as "first" and "last". The shares are
    :func:`positive_share` of the losses summed over those iterations.
    """
    n = max(1, int(round(len(history) * fraction)))
    first, last = history.iloc[:n], history.iloc[-n:]
    shares = [positive_share(h["pos_loss"].sum(), h["neg_loss"].sum()) for h in (first, last)]
    return {"positive share of the loss, first quarter": shares[0],
            "positive share of the loss, last quarter": shares[1],
            "active positive pairs, last quarter": float(last["pos_active_frac"].mean()),
            "active negative pairs, last quarter": float(last["neg_active_frac"].mean())}


@dataclass
class ToyResult:
    """Outcome of :func:`toy_embedding_experiment`: final unit vectors, labels and all pair distances."""

    embeddings: np.ndarray
    labels: np.ndarray
    pair_distances: np.ndarray
    pair_labels: np.ndarray
    losses: np.ndarray


def _toy_loss(method: methods.Method, emb: torch.Tensor, labels: torch.Tensor, margins: dict) -> torch.Tensor:
    """Balanced loss over all pairs (half weight positives, half negatives) or all valid triplets."""
    if not method.is_pair_loss:
        same = labels[:, None] == labels[None, :]
        a, p, n = torch.nonzero(same[:, :, None] & ~same[:, None, :]
                                & ~torch.eye(len(labels), dtype=torch.bool)[:, :, None], as_tuple=True)
        return method.loss(emb[a], emb[p], emb[n], **margins)
    i, j = torch.triu_indices(len(labels), len(labels), 1)
    y = (labels[i] == labels[j]).float()
    per_pair = method.loss(emb[i], emb[j], y, reduction="none", **margins)
    return 0.5 * per_pair[y == 1].mean() + 0.5 * per_pair[y == 0].mean()


def toy_embedding_experiment(loss, margins: dict, n_classes: int = 4, per_class: int = 20, steps: int = 300,
                             lr: float = 0.5, dim: int = 2, seed: int = config.DEFAULT_SEED) -> ToyResult:
    """Move free unit vectors with one loss and return where they end up.

    Each point is a learnable vector, L2-normalised onto the unit circle
    (``dim=2``); every step uses all pairs (positives and negatives weighted
    equally, as the paper's balanced pairs) or all triplets. ``loss`` names a
    method of :data:`helpers.methods.METHODS` and ``margins`` holds all its
    keyword margins, e.g. ``method.margins(profile)``.
    """
    method = methods.get(loss)
    if sorted(margins) != sorted(method.margin_fields):
        raise ValueError(f"the {method.name} loss takes the margins {list(method.margin_fields)}, got {list(margins)}")
    generator = torch.Generator().manual_seed(seed)
    raw = torch.randn(n_classes * per_class, dim, generator=generator, dtype=torch.float64).requires_grad_()
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    optimizer = torch.optim.SGD([raw], lr=lr)
    history = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss_value = _toy_loss(method, F.normalize(raw, dim=1), labels, margins)
        loss_value.backward()
        optimizer.step()
        history.append(float(loss_value.detach()))
    emb = F.normalize(raw.detach(), dim=1)
    i, j = torch.triu_indices(len(labels), len(labels), 1)
    return ToyResult(embeddings=emb.numpy(), labels=labels.numpy(),
                     pair_distances=(emb[i] - emb[j]).norm(dim=1).numpy(),
                     pair_labels=(labels[i] == labels[j]).numpy().astype(int), losses=np.array(history))
