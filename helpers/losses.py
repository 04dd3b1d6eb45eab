"""Pair and triplet losses on L2-normalised embeddings.

Every loss is a plain function on
tensors; bind its margins with :func:`functools.partial` where a one-argument
loss is wanted.

Notation used throughout: ``d = ||x1 - x2||_2`` is the Euclidean distance of
a pair of embeddings and ``y = 1`` marks a pair of the same category
(a *positive* pair), ``y = 0`` a pair of different categories (a *negative*
pair). On L2-normalised embeddings ``d`` lies in ``[0, 2]``, so margins are
in the same unit; on non-negative ones (after ReLU6 and MAC pooling, the
networks of this series) it lies in ``[0, sqrt(2)]``.

``reduction`` is one of

* ``"mean"`` (default): the average over **all** pairs of the batch, as in the
  paper (pairs that contribute zero still count in the denominator);
* ``"sum"``: the sum over the batch;
* ``"none"``: the per-pair terms, shape ``(batch,)``. Feed them to
  :func:`split_pair_loss` to separate the positive and negative parts.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

REDUCTIONS = ("mean", "sum", "none")
DISTANCE_EPS = 1e-12
"""Floor on the squared distance before the square root (keeps the gradient finite at d = 0)."""


# --------------------------------------------------------------------------- validation
def _check_embeddings(**tensors: Tensor) -> int:
    """Check that the named tensors are 2-D, of one shape, with a non-empty batch; return it."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"{name} must have shape (batch, dim), got {tuple(t.shape)}")
    if len(set(shapes.values())) != 1:
        raise ValueError(f"embedding shapes must match, got {shapes}")
    batch = next(iter(shapes.values()))[0]
    if batch == 0:
        raise ValueError("the batch is empty: expected at least one pair")
    return batch


def _check_labels(y: Tensor, batch: int, device: torch.device) -> Tensor:
    """Return ``y`` as a bool tensor on ``device`` after checking its shape (batch,) and 0/1 values."""
    y = torch.as_tensor(y, device=device)
    if tuple(y.shape) != (batch,):
        raise ValueError(f"y must have shape ({batch},) to match the embeddings, got {tuple(y.shape)}")
    if y.dtype == torch.bool:
        return y
    if y.is_complex():
        raise ValueError(f"y must be a bool, integer or float tensor, got dtype {y.dtype}")
    valid = (y == 0) | (y == 1)
    if not bool(valid.all()):
        bad = y[~valid][:5].tolist()
        raise ValueError(f"y must hold only 0 (negative pair) or 1 (positive pair), got values {bad}")
    return y == 1


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _check_margin(name: str, value: float, allow_zero: bool = False) -> float:
    value = float(value)
    ok = value >= 0 if allow_zero else value > 0
    if not ok or not np.isfinite(value):
        expected = "a finite number >= 0" if allow_zero else "a finite number > 0"
        raise ValueError(f"{name} must be {expected}, got {value}")
    return value


def _check_double_margins(pos_margin: float, neg_margin: float) -> tuple[float, float]:
    pos_margin = _check_margin("pos_margin", pos_margin, allow_zero=True)
    neg_margin = _check_margin("neg_margin", neg_margin)
    if not pos_margin < neg_margin:
        raise ValueError(
            f"pos_margin must be smaller than neg_margin, got pos_margin={pos_margin}, "
            f"neg_margin={neg_margin}"
        )
    return pos_margin, neg_margin


def _reduce(per_pair: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return per_pair.mean()
    if reduction == "sum":
        return per_pair.sum()
    return per_pair


# --------------------------------------------------------------------------- distances
def squared_pair_distance(x1: Tensor, x2: Tensor) -> Tensor:
    """Per-pair squared Euclidean distance ``||x1 - x2||^2`` of two (batch, dim) tensors.

    Computed from the difference, not
    as ``2 - 2 cos``, so it stays accurate for nearly identical embeddings.
    """
    _check_embeddings(x1=x1, x2=x2)
    return (x1 - x2).pow(2).sum(dim=1)


def pair_distance(x1: Tensor, x2: Tensor, eps: float = DISTANCE_EPS) -> Tensor:
    """Per-pair Euclidean distance ``d = ||x1 - x2||_2`` of two (batch, dim) tensors.

    The squared distance is floored at
    ``eps`` before the square root: the gradient of ``sqrt`` is infinite at 0,
    so a pair of identical embeddings (a positive pair made of one image twice)
    would otherwise produce NaN gradients. Below the floor the gradient is
    zero; above it the value is exact.
    """
    return _sqrt_floored(squared_pair_distance(x1, x2), eps)


def _sqrt_floored(squared: Tensor, eps: float = DISTANCE_EPS) -> Tensor:
    """``sqrt(max(squared, eps))``: a distance whose gradient stays finite at 0."""
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    return squared.clamp_min(eps).sqrt()


# --------------------------------------------------------------------------- pair losses
def contrastive_loss(x1: Tensor, x2: Tensor, y: Tensor, margin: float = 1.0,
                     reduction: str = "mean") -> Tensor:
    """Single margin contrastive loss.

    Per pair::

        L = 1/2 * y * d^2 + 1/2 * (1 - y) * max(0, m - d)^2

    Positive pairs are pulled together all the way to ``d = 0``; negative
    pairs are pushed apart until they are ``margin`` away. The positive term
    uses the squared distance directly, so its gradient is exact at ``d = 0``.
    ``y`` may be a bool, integer or float tensor of 0/1 values.
    """
    batch = _check_embeddings(x1=x1, x2=x2)
    positive = _check_labels(y, batch, x1.device)
    margin = _check_margin("margin", margin)
    _check_reduction(reduction)
    squared = squared_pair_distance(x1, x2)
    pos_term = 0.5 * squared
    neg_term = 0.5 * F.relu(margin - _sqrt_floored(squared)).pow(2)
    return _reduce(torch.where(positive, pos_term, neg_term), reduction)


def double_margin_contrastive_loss(x1: Tensor, x2: Tensor, y: Tensor, pos_margin: float = 0.8,
                                   neg_margin: float = 1.2, reduction: str = "mean") -> Tensor:
    """Double margin contrastive loss of DeepFirearm (Hao et al., ICPR 2018).

    Per pair::

        L = 1/2 * y * max(0, d - m1)^2 + 1/2 * (1 - y) * max(0, m2 - d)^2

    with ``m1 = pos_margin < m2 = neg_margin`` (the authors' defaults 0.8 and
    1.2). Positive pairs closer than ``m1`` stop contributing, which keeps the
    loss from being dominated by positives. ``pos_margin = 0`` gives back the
    single margin loss with ``margin = neg_margin``.
    """
    batch = _check_embeddings(x1=x1, x2=x2)
    positive = _check_labels(y, batch, x1.device)
    pos_margin, neg_margin = _check_double_margins(pos_margin, neg_margin)
    _check_reduction(reduction)
    d = pair_distance(x1, x2)
    pos_term = 0.5 * F.relu(d - pos_margin).pow(2)
    neg_term = 0.5 * F.relu(neg_margin - d).pow(2)
    return _reduce(torch.where(positive, pos_term, neg_term), reduction)


def triplet_loss(anchor: Tensor, positive: Tensor, negative: Tensor, margin: float = 0.4,
                 reduction: str = "mean", squared: bool = False) -> Tensor:
    """Triplet margin loss, the baseline that the double margin loss is compared with.

    Per triplet, by default::

        L = max(0, d(a, p) - d(a, n) + m)

    on plain (unsquared) Euclidean distances. This is the default because the
    margin is then in the same unit as the contrastive margins (a distance in
    ``[0, 2]`` on the unit sphere), so the three losses of the comparison act
    on the same quantity. ``squared=True`` gives the FaceNet form
    ``max(0, d(a, p)^2 - d(a, n)^2 + m)``, whose margin is in squared units.
    ``margin = 0`` is allowed.
    """
    _check_embeddings(anchor=anchor, positive=positive, negative=negative)
    margin = _check_margin("margin", margin, allow_zero=True)
    _check_reduction(reduction)
    if squared:
        d_ap, d_an = squared_pair_distance(anchor, positive), squared_pair_distance(anchor, negative)
    else:
        d_ap, d_an = pair_distance(anchor, positive), pair_distance(anchor, negative)
    return _reduce(F.relu(d_ap - d_an + margin), reduction)


# --------------------------------------------------------------------------- analysis
def split_pair_loss(per_pair: Tensor, y: Tensor) -> dict[str, Tensor]:
    """Split per-pair loss terms (``reduction="none"``) into positive and negative parts.

    Returns 0-d tensors:

    * ``loss``: the mean over all pairs (what ``reduction="mean"`` returns; it
      keeps the autograd graph, so it can be back-propagated);
    * ``pos_loss`` / ``neg_loss``: the SUM of the terms of positive / negative
      pairs divided by the number of ALL pairs, so
      ``pos_loss + neg_loss == loss``: each part's share of the loss;
    * ``active_frac``: the fraction of pairs whose term is > 0;
    * ``pos_active_frac`` / ``neg_active_frac``: the same among positive /
      negative pairs only; NaN when the batch holds no pair of that kind.
    """
    if not isinstance(per_pair, Tensor) or per_pair.dim() != 1 or per_pair.numel() == 0:
        shape = tuple(per_pair.shape) if isinstance(per_pair, Tensor) else type(per_pair).__name__
        raise ValueError(f"per_pair must be a non-empty 1-D tensor of per-pair terms, got {shape}")
    positive = _check_labels(y, per_pair.shape[0], per_pair.device)
    n_pairs = per_pair.shape[0]
    zero = per_pair.new_zeros(())
    active = (per_pair > 0).to(per_pair.dtype if per_pair.is_floating_point() else torch.float32)
    n_pos = positive.sum()
    n_neg = n_pairs - n_pos
    nan = torch.tensor(float("nan"), dtype=active.dtype, device=per_pair.device)
    return {
        "loss": per_pair.mean(),
        "pos_loss": torch.where(positive, per_pair, zero).sum() / n_pairs,
        "neg_loss": torch.where(positive, zero, per_pair).sum() / n_pairs,
        "active_frac": active.mean(),
        "pos_active_frac": torch.where(n_pos > 0, (active * positive).sum() / n_pos.clamp_min(1), nan),
        "neg_active_frac": torch.where(n_neg > 0, (active * ~positive).sum() / n_neg.clamp_min(1), nan),
    }


# --------------------------------------------------------------------------- curves against distance
# Plain NumPy versions of the per-pair terms above, for drawing the loss and its
# derivative dL/dd as functions of the distance. ``d`` (distances) and ``y``
# (1 positive, 0 negative; scalar or array) broadcast together; each returns
# ``(loss, grad)``, float64 arrays of the broadcast shape.

def _curve_inputs(d, y) -> tuple[np.ndarray, np.ndarray]:
    d = np.asarray(d, dtype=np.float64)
    y = np.asarray(y)
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"y must hold only 0 or 1, got {np.unique(y)[:5].tolist()}")
    if (d < 0).any():
        raise ValueError("distances d must be >= 0")
    positive = np.broadcast_to(y == 1, np.broadcast(d, y).shape)
    return np.broadcast_to(d, positive.shape), positive


def contrastive_curves(d, y, margin: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Single margin: ``y: d^2/2, dL/dd = d``; ``not y: max(0, m - d)^2/2, dL/dd = -max(0, m - d)``."""
    d, positive = _curve_inputs(d, y)
    margin = _check_margin("margin", margin)
    hinge = np.maximum(0.0, margin - d)
    return np.where(positive, 0.5 * d**2, 0.5 * hinge**2), np.where(positive, d, -hinge)


def double_margin_curves(d, y, pos_margin: float = 0.8, neg_margin: float = 1.2) -> tuple[np.ndarray, np.ndarray]:
    """Double margin: ``y: max(0, d - m1)^2/2``, slope ``max(0, d - m1)``; ``not y: max(0, m2 - d)^2/2``, slope ``-max(0, m2 - d)``."""
    d, positive = _curve_inputs(d, y)
    m1, m2 = _check_double_margins(pos_margin, neg_margin)
    pos_hinge, neg_hinge = np.maximum(0.0, d - m1), np.maximum(0.0, m2 - d)
    loss = np.where(positive, 0.5 * pos_hinge**2, 0.5 * neg_hinge**2)
    return loss, np.where(positive, pos_hinge, -neg_hinge)


def triplet_curves(d, y, margin: float = 0.4, other_distance: float = 1.0,
                   squared: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Triplet: one distance moves while the other is held at ``other_distance``.

    For ``y = 1``, ``d`` is d(a, p) and ``other_distance`` is d(a, n); for
    ``y = 0``, ``d`` is d(a, n) and ``other_distance`` is d(a, p).
    ``L = max(0, d(a,p) - d(a,n) + m)``, so ``dL/dd = +1`` (positive) or ``-1``
    (negative) while the triplet is active; with ``squared=True`` distances
    are squared and the slopes are ``+2d`` / ``-2d``.
    """
    d, positive = _curve_inputs(d, y)
    margin = _check_margin("margin", margin, allow_zero=True)
    power = 2 if squared else 1
    moving, fixed = d**power, float(other_distance) ** power
    loss = np.maximum(0.0, np.where(positive, moving - fixed, fixed - moving) + margin)
    slope = 2 * d if squared else np.ones_like(d)
    return loss, np.where(loss > 0, np.where(positive, slope, -slope), 0.0)
