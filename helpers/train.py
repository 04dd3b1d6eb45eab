"""Training: the loop both stages share, written out.

Read it from the bottom up:

* :func:`fit` is the loop over epochs: train one epoch, step the learning
  rate, score the validation split, keep the weights of the best epoch.
* :func:`train_epoch` is the loop over batches: forward, loss, backward, step.
* :func:`pair_step`, :func:`triplet_step` and :func:`classifier_step` are the
  forward and the loss of one batch, and the statistics recorded with it.
  A loss function is bound to them with :func:`functools.partial`:
  ``partial(pair_step, loss=partial(losses.double_margin_contrastive_loss,
  pos_margin=0.4, neg_margin=1.2, reduction="none"))``.
* :func:`epoch_loader`, :class:`TupleDataset` and :func:`training_tuples`
  give each epoch's batches of pairs or triplets, seeded.

Nothing here caches, checkpoints or spreads work over processes: the
machinery (:mod:`helpers.machinery.runs`) wraps :func:`fit` for that.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from . import data, losses, methods
from .progress import bar as tqdm

OPTIMIZERS = ("sgd", "adam")


# --------------------------------------------------------------------------- optimiser

def build_optimizer(parameters, name: str, lr: float, momentum: float = 0.9,
                    weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """SGD with momentum (the paper's) or Adam, over the ``parameters`` that require gradients.

    ``weight_decay`` is the L2 penalty of either (Adam's is that of
    ``torch.optim.Adam``, not AdamW's decoupled decay).
    """
    parameters = [p for p in parameters if p.requires_grad]
    if not parameters:
        raise ValueError("no parameter requires a gradient: there is nothing to train")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"the learning rate must be a positive number, got {lr}")
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; expected one of {list(OPTIMIZERS)}")


def class_weights(labels, n_classes: int) -> torch.Tensor:
    """Cross-entropy class weights inversely proportional to the class counts, with mean 1.

    Classes absent from ``labels`` get weight 0 and the mean is taken over
    the classes present.
    """
    counts = np.bincount(np.asarray(labels, dtype=np.int64).reshape(-1), minlength=n_classes).astype(np.float64)
    if len(counts) > n_classes:
        raise ValueError(f"labels go up to {len(counts) - 1} but n_classes={n_classes}")
    present = counts > 0
    if not present.any():
        raise ValueError("no labels given: cannot weight the classes")
    weights = np.zeros(n_classes)
    weights[present] = 1.0 / counts[present]
    weights[present] /= weights[present].mean()
    return torch.as_tensor(weights, dtype=torch.float32)


# --------------------------------------------------------------------------- each epoch's data

def tuple_budget(method: methods.Method, pairs_per_category: int, pairs_per_batch: int) -> tuple[int, int]:
    """``(tuples per category per epoch, tuples per batch)`` that give every loss about the same image budget.

    The budget is counted in pairs (two images each). A triplet holds three
    images (``method.tuple_size``), so the triplet loss gets two thirds as
    many triplets per category and per batch, rounded: 11 triplets (33
    images) for 16 pairs (32 images), for instance.
    """
    scale = 2 / method.tuple_size
    return max(1, round(pairs_per_category * scale)), max(1, round(pairs_per_batch * scale))


def training_tuples(method: methods.Method, labels, per_category: int, regenerate_every: int,
                    seed: int) -> Callable[[int], tuple[tuple, np.ndarray | None]]:
    """``epoch -> (index arrays, targets)``: the pairs (or triplets) of each epoch (1-based), seeded.

    Pairs are half positive, half negative (:class:`helpers.data.PairSampler`);
    triplets have no target (:class:`helpers.data.TripletSampler`). They are
    redrawn every ``regenerate_every`` epochs.
    """
    if not method.is_pair_loss:
        sampler = data.TripletSampler(labels, per_category, regenerate_every, seed)
        return lambda epoch: (sampler.triplets(epoch - 1), None)
    sampler = data.PairSampler(labels, per_category, regenerate_every, seed)

    def pairs(epoch: int):
        i, j, y = sampler.pairs(epoch - 1)
        return (i, j), y
    return pairs


class TupleDataset(Dataset):
    """Tuples of items of a base dataset: item ``k`` is ``(base[i[k]][0], base[j[k]][0], ..., y[k])``.

    Pairs ``(x1, x2, y)`` from the indices of :class:`~helpers.data.PairSampler`
    and triplets ``(a, p, n)`` from :class:`~helpers.data.TripletSampler` (no target).
    """

    def __init__(self, base: Dataset, indices, targets=None):
        self.base = base
        self.indices = [np.asarray(index, dtype=np.int64) for index in indices]
        lengths = {len(index) for index in self.indices}
        if targets is not None:
            self.targets = torch.as_tensor(np.asarray(targets), dtype=torch.float32)
            lengths.add(len(self.targets))
        else:
            self.targets = None
        if len(lengths) != 1:
            raise ValueError(f"index arrays and targets must have one length, got lengths {sorted(lengths)}")

    def __len__(self) -> int:
        return len(self.indices[0])

    def __getitem__(self, k: int):
        items = tuple(self.base[int(index[k])][0] for index in self.indices)
        return items + (self.targets[k],) if self.targets is not None else items


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The batches of one epoch: a shuffle of ``range(n)`` seeded by ``(seed, epoch)`` only, cut into batches.

    The last batch may be shorter.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    order = torch.randperm(n, generator=generator).tolist()
    return [order[start:start + batch_size] for start in range(0, n, batch_size)]


def epoch_loader(dataset: Dataset, batch_size: int, seed: int, epoch: int, num_workers: int = 0) -> DataLoader:
    """A DataLoader over the batches of :func:`epoch_batches`: the same ``(seed, epoch)``, the same batches."""
    return DataLoader(dataset, batch_sampler=epoch_batches(len(dataset), batch_size, seed, epoch),
                      num_workers=num_workers)


# --------------------------------------------------------------------------- one batch

def _on_device_of(model: nn.Module, *tensors: torch.Tensor):
    device = next(model.parameters()).device
    return [tensor.to(device, non_blocking=True) for tensor in tensors]


def pair_step(model: nn.Module, batch, loss: Callable) -> tuple[torch.Tensor, dict]:
    """The loss of a batch of pairs and its statistics; both images of every pair in ONE forward pass.

    ``loss(e1, e2, y)`` returns one term per pair (a pair loss of
    :mod:`helpers.losses` with ``reduction="none"``); the batch loss is their
    mean, as in the paper. The statistics split it into its positive and
    negative parts, the share of pairs with a non-zero term, the mean
    distance of positive and of negative pairs, and the summed gradient norms
    (:func:`pair_gradient_norms`) of positive and of negative pairs divided
    by the number of pairs (``pos_grad``, ``neg_grad``).
    """
    x1, x2, y = _on_device_of(model, *batch)
    e1, e2 = model(torch.cat([x1, x2])).split(len(x1))
    per_pair = loss(e1, e2, y)
    parts = losses.split_pair_loss(per_pair, y)
    distance = losses.pair_distance(e1.detach(), e2.detach())
    gradient = pair_gradient_norms(per_pair, e1, e2)
    positive = y.bool()
    stats = {
        "pos_loss": parts["pos_loss"].detach(), "neg_loss": parts["neg_loss"].detach(),
        "active_frac": parts["active_frac"],
        "pos_active_frac": parts["pos_active_frac"], "neg_active_frac": parts["neg_active_frac"],
        "pos_dist": (distance * positive).sum() / positive.sum(),     # NaN without positives
        "neg_dist": (distance * ~positive).sum() / (~positive).sum(),
        "pos_grad": (gradient * positive).sum() / len(y), "neg_grad": (gradient * ~positive).sum() / len(y),
    }
    return parts["loss"], stats


def pair_gradient_norms(per_pair: torch.Tensor, e1: torch.Tensor, e2: torch.Tensor) -> torch.Tensor:
    """How hard each pair pulls on its two embeddings: the norm of the gradient of its term w.r.t. ``e1`` and ``e2``.

    Pair ``k``'s term depends on row ``k`` of ``e1`` and ``e2`` only, so one
    backward pass of their sum gives every pair's gradient; the graph is kept
    for the training step's own backward. A pair with a zero term pulls with 0.
    For the contrastive losses (½·hinge²) it is sqrt(2)·|dL/dd|: d moves
    with ``e1`` and ``e2`` along opposite unit vectors.
    """
    g1, g2 = torch.autograd.grad(per_pair.sum(), (e1, e2), retain_graph=True)
    return torch.sqrt((g1 ** 2).sum(dim=1) + (g2 ** 2).sum(dim=1)).detach()


def triplet_step(model: nn.Module, batch, loss: Callable) -> tuple[torch.Tensor, dict]:
    """The loss of a batch of triplets; anchors, positives and negatives in ONE forward pass.

    ``loss(a, p, n)`` returns one term per triplet. A triplet has no separate
    positive and negative part, so those statistics are NaN.
    """
    anchor, positive, negative = _on_device_of(model, *batch)
    a, p, n = model(torch.cat([anchor, positive, negative])).split(len(anchor))
    per_triplet = loss(a, p, n)
    nan = torch.full((), float("nan"))
    stats = {
        "pos_loss": nan, "neg_loss": nan,
        "active_frac": (per_triplet.detach() > 0).float().mean(),
        "pos_active_frac": nan, "neg_active_frac": nan,
        "pos_dist": losses.pair_distance(a.detach(), p.detach()).mean(),
        "neg_dist": losses.pair_distance(a.detach(), n.detach()).mean(),
        "pos_grad": nan, "neg_grad": nan,
    }
    return per_triplet.mean(), stats


def classifier_step(model: nn.Module, batch, weights: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Class-weighted cross entropy of a batch of ``(images, labels)`` and the batch accuracy."""
    images, labels = _on_device_of(model, *batch)
    logits = model(images)
    loss = F.cross_entropy(logits, labels, weight=weights.to(logits.device))
    return loss, {"accuracy": (logits.detach().argmax(dim=1) == labels).float().mean()}


# --------------------------------------------------------------------------- the loops

def train_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, step: Callable) -> list[dict]:
    """One pass over ``loader``: forward and loss (``step``), backward, update. One row per batch.

    ``step(model, batch)`` returns ``(loss, stats)``; a row holds the loss and
    the statistics as floats (a ``"loss"`` among the statistics is the one
    recorded, for a step that knows a better value to report).
    """
    model.train()
    rows = []
    for batch in loader:
        loss, stats = step(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        rows.append({"loss": loss.item(), **{name: float(value) for name, value in stats.items()}})
    return rows


@dataclass
class History:
    """Where a run stands: one row per iteration, one per epoch (epoch 0 is before training), the best epoch.

    ``best_state`` holds the weights of ``best_epoch``, the epoch with the
    highest validation score so far (the earliest one on ties).
    """

    iterations: list = field(default_factory=list)
    epochs: list = field(default_factory=list)
    wall_time: float = 0.0
    best_epoch: int = 0
    best_score: float = -math.inf
    best_state: dict | None = None

    @property
    def next_epoch(self) -> int:
        return self.epochs[-1]["epoch"] + 1 if self.epochs else 0

    def record(self, epoch: int, score: float, seconds: float, model: nn.Module, rows=(), lr=float("nan")) -> dict:
        """Add an epoch's rows and validation score; keep the weights if the score is the best so far."""
        self.wall_time += seconds
        first = len(self.iterations) + 1
        self.iterations += [{"epoch": epoch, "iteration": first + k, "lr": lr, **row} for k, row in enumerate(rows)]
        train_loss = float(np.mean([row["loss"] for row in rows])) if rows else float("nan")
        self.epochs.append({"epoch": epoch, "train_loss": train_loss, "val": score, "wall_time": self.wall_time})
        if score > self.best_score:
            self.best_epoch, self.best_score = epoch, score
            self.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return self.epochs[-1]


def _check_finite(rows: list[dict], epoch: int, lr: float, first_iteration: int) -> None:
    for offset, row in enumerate(rows):
        if not math.isfinite(row["loss"]):
            raise FloatingPointError(f"the loss is {row['loss']} at epoch {epoch}, iteration "
                                     f"{first_iteration + offset} (lr={lr:g}); lower the learning rate "
                                     "or check the inputs")


def fit(model: nn.Module, optimizer, scheduler, loader_for: Callable[[int], object], step: Callable,
        validate: Callable[[nn.Module], float], epochs: int, *, patience: int | None = None,
        history: History | None = None, on_epoch_end: Callable[[History], None] | None = None,
        progress: bool = True, desc: str = "training", score_name: str = "val") -> History:
    """Train for ``epochs`` epochs (or fewer with ``patience``) and end with the best validation epoch's weights.

    The untrained model is scored first, as epoch 0. Each epoch then trains
    once over ``loader_for(epoch)`` (:func:`train_epoch`), steps the
    learning-rate ``scheduler`` and scores ``validate(model)`` (higher is
    better). With ``patience``, training stops once that many epochs have
    gone by without a better score. A loss that is not finite stops it with
    a ``FloatingPointError`` naming the epoch, the iteration and the
    learning rate. ``history`` resumes an interrupted run;
    ``on_epoch_end(history)`` is called after every epoch; the progress bar
    shows the score as ``score_name``. At the end
    ``model`` holds the weights of the best epoch, which may be epoch 0.
    """
    if history is None:
        history = History()
    if not history.epochs:
        began = time.perf_counter()
        history.record(0, validate(model), time.perf_counter() - began, model)
    bar = tqdm(range(history.next_epoch, epochs + 1), desc=desc, unit="epoch", disable=not progress,
               total=epochs, initial=history.next_epoch - 1)
    for epoch in bar:
        if patience is not None and history.epochs[-1]["epoch"] - history.best_epoch >= patience:
            bar.total = bar.n  # the bar ends full, and says why it ended before ``epochs``
            bar.set_postfix_str(f"stopped early at epoch {history.epochs[-1]['epoch']} of {epochs}, "
                                f"best {history.best_epoch}")
            break
        began = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        rows = train_epoch(model, loader_for(epoch), optimizer, step)
        _check_finite(rows, epoch, lr, len(history.iterations) + 1)
        scheduler.step()
        row = history.record(epoch, validate(model), time.perf_counter() - began, model, rows, lr)
        bar.set_postfix({"loss": f"{row['train_loss']:.4f}", score_name: f"{row['val']:.4f}",
                         "best": history.best_epoch})
        if on_epoch_end is not None:
            on_epoch_end(history)
    bar.close()
    if history.best_state is not None:
        model.load_state_dict(history.best_state)
    return history
