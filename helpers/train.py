"""Training: the paper's two stages as one short, readable loop.

Read it from the bottom up:

* :func:`train_classifier` (stage 1) and :func:`train_retrieval` (stage 2, or
  one-stage training) wire data, network, loss and schedule together and
  cache the result (:mod:`helpers.runs`): asking twice for the same run loads
  it instead of training again, and an interrupted run resumes.
* :func:`fit` is the loop over epochs: train one epoch, step the learning
  rate schedule, score the validation split, checkpoint.
* :func:`train_epoch` is the loop over batches: forward, loss, backward, update.
* :func:`pair_step`, :func:`triplet_step` and :func:`classifier_step` compute
  one batch's loss and the statistics recorded in the history.

Both stages follow the paper: SGD with momentum and weight decay (Adam at the
CPU profiles), the learning rate multiplied by 0.1 every ``lr_step`` epochs,
everything read from a :class:`~helpers.config.Profile` and overridable by
keyword (``train_retrieval(release, "double", ret_epochs=3)``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from . import config, data, distributed, features, losses, methods, metrics, models, runs
from .progress import bar as tqdm

INITS = ("random", "imagenet")
"""Starting points of a retrieval run besides a stage-1 classifier."""
PAIR_COLUMNS = ("pos_loss", "neg_loss", "active_frac", "pos_active_frac", "neg_active_frac", "pos_dist", "neg_dist")
"""Per-iteration statistics of a retrieval run (NaN where a loss has no such part)."""
CLASSIFIER_COLUMNS = ("accuracy",)
"""Per-iteration statistics of a classifier run."""


# --------------------------------------------------------------------------- pieces

def build_optimizer(model: nn.Module, profile: config.Profile) -> torch.optim.Optimizer:
    """The profile's optimiser: SGD with momentum (the paper's) or Adam (the CPU profiles').

    Weight decay is ``profile.weight_decay`` for both (Adam's is the L2
    penalty of ``torch.optim.Adam``). Frozen parameters are left out.
    """
    parameters = [p for p in model.parameters() if p.requires_grad]
    if profile.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=profile.lr, momentum=profile.momentum,
                               weight_decay=profile.weight_decay)
    if profile.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=profile.lr, weight_decay=profile.weight_decay)
    raise ValueError(f"unknown optimizer {profile.optimizer!r}; expected 'sgd' or 'adam'")


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
            raise ValueError(f"index arrays (and targets) must have one length, got lengths {sorted(lengths)}")

    def __len__(self) -> int:
        return len(self.indices[0])

    def __getitem__(self, k: int):
        items = tuple(self.base[int(index[k])][0] for index in self.indices)
        return items + (self.targets[k],) if self.targets is not None else items


def epoch_loader(dataset: Dataset, batch_size: int, seed: int, epoch: int, profile: config.Profile,
                 device) -> DataLoader:
    """A shuffling DataLoader whose order depends only on ``(seed, epoch)``.

    Under torchrun each process loads its own slice of every global batch of
    ``batch_size`` (:class:`~helpers.distributed.RankBatches`), so the
    slices of all ranks together are the batches one process would see.
    """
    rank, world_size = distributed.world()
    batches = distributed.RankBatches(len(dataset), batch_size, int(seed) * 1_000_003 + int(epoch), rank, world_size)
    return DataLoader(dataset, batch_sampler=batches, num_workers=profile.num_workers,
                      pin_memory=device.type == "cuda")


# --------------------------------------------------------------------------- one batch

def pair_step(model: nn.Module, batch, device, per_pair_loss: Callable) -> tuple[torch.Tensor, dict]:
    """The loss of a batch of pairs and its statistics; both images of every pair in ONE forward pass.

    ``per_pair_loss(e1, e2, y)`` returns one term per pair (a pair loss with
    ``reduction="none"``); the batch loss is their mean, as in the paper.
    """
    x1, x2, y = batch
    embeddings = model(torch.cat([x1, x2]).to(device, non_blocking=True))
    e1, e2 = embeddings.split(len(x1))
    y = y.to(device, non_blocking=True)
    parts = losses.split_pair_loss(per_pair_loss(e1, e2, y), y)
    distance = losses.pair_distance(e1.detach(), e2.detach())
    positive = y.bool()
    stats = {
        "pos_loss": parts["pos_loss"].detach(), "neg_loss": parts["neg_loss"].detach(),
        "active_frac": parts["active_frac"],
        "pos_active_frac": parts["pos_active_frac"], "neg_active_frac": parts["neg_active_frac"],
        "pos_dist": (distance * positive).sum() / positive.sum(),     # NaN without positives
        "neg_dist": (distance * ~positive).sum() / (~positive).sum(),
    }
    return parts["loss"], stats


def triplet_step(model: nn.Module, batch, device, per_triplet_loss: Callable) -> tuple[torch.Tensor, dict]:
    """The loss of a batch of triplets; anchors, positives and negatives in ONE forward pass.

    ``per_triplet_loss(a, p, n)`` returns one term per triplet. A triplet has
    no separate positive and negative part, so those columns are NaN.
    """
    anchor, positive, negative = batch
    embeddings = model(torch.cat([anchor, positive, negative]).to(device, non_blocking=True))
    a, p, n = embeddings.split(len(anchor))
    per_triplet = per_triplet_loss(a, p, n)
    nan = torch.full((), float("nan"), device=per_triplet.device)
    stats = {
        "pos_loss": nan, "neg_loss": nan,
        "active_frac": (per_triplet.detach() > 0).float().mean(),
        "pos_active_frac": nan, "neg_active_frac": nan,
        "pos_dist": losses.pair_distance(a.detach(), p.detach()).mean(),
        "neg_dist": losses.pair_distance(a.detach(), n.detach()).mean(),
    }
    return per_triplet.mean(), stats


def classifier_step(model: nn.Module, batch, device, weights: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Class-weighted cross entropy of a batch of ``(images, labels)`` and the batch accuracy."""
    images, labels = batch
    labels = labels.to(device, non_blocking=True)
    logits = model(images.to(device, non_blocking=True))
    loss = F.cross_entropy(logits, labels, weight=weights)
    return loss, {"accuracy": (logits.detach().argmax(dim=1) == labels).float().mean()}


# --------------------------------------------------------------------------- the loops

def train_epoch(model: nn.Module, loader, optimizer, step: Callable, *, epoch: int, first_iteration: int = 1,
                loss_name: str = "training", progress: bool = True,
                batch_weight: Callable = lambda batch: len(batch[0])) -> list[dict]:
    """One pass over ``loader``: forward, loss, backward, update. Returns one history row per iteration.

    ``step(model, batch)`` returns ``(loss, stats)``, the loss a mean over
    the batch. Under torchrun ``model`` is the DistributedDataParallel
    wrapper and each process holds a slice of the global batch: its loss is
    scaled by its share of the batch (``batch_weight``, the number of tuples
    by default; :func:`~helpers.distributed.loss_share`), and the recorded
    loss and statistics are averaged over the processes (the loss is then
    exactly the global batch's). A loss that is not finite stops training
    with a ``FloatingPointError`` naming the epoch, the iteration and the
    learning rate.
    """
    model.train()
    lr = optimizer.param_groups[0]["lr"]
    rows = []
    _, world_size = distributed.world()
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not progress, unit="batch")
    for offset, batch in enumerate(bar):
        loss, stats = step(model, batch)
        if world_size > 1:
            loss = loss * distributed.loss_share(batch_weight(batch), loss.device)
        values = torch.stack([loss.detach().float()] + [v.float() for v in stats.values()])
        values = (distributed.all_sum(values) / world_size).tolist()
        iteration = first_iteration + offset
        if not math.isfinite(values[0]):
            raise FloatingPointError(f"the {loss_name} loss is {values[0]} at epoch {epoch}, iteration "
                                     f"{iteration} (lr={lr:g}); lower the learning rate or check the inputs")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        rows.append({"epoch": epoch, "iteration": iteration, "lr": lr, "loss": values[0],
                     **dict(zip(stats, values[1:]))})
        bar.set_postfix(loss=f"{values[0]:.4f}")
    return rows


@dataclass
class Task:
    """What differs between the two stages: the data of each epoch, one step, and how to validate.

    ``make_loader(epoch)`` gives that epoch's DataLoader (epochs count from
    1); ``step(model, batch)`` returns ``(loss, stats)``;
    ``validate(model)`` returns the validation score stored as ``val_column``
    (higher is better); ``batch_weight(batch)`` is what the batch mean of the
    loss is taken over (its number of items, or its summed class weights).
    """

    make_loader: Callable[[int], DataLoader]
    step: Callable
    validate: Callable[[nn.Module], float]
    val_column: str
    loss_name: str
    columns: tuple[str, ...]
    batch_weight: Callable = lambda batch: len(batch[0])


@dataclass
class Progress:
    """Where a run stands: history rows, epoch rows (epoch 0 = before training), wall time, best epoch.

    ``best_state`` holds the weights of ``best_epoch``, the epoch with the
    highest validation score so far (the earliest one on ties).
    """

    history: list
    epochs: list
    wall_time: float
    best_epoch: int = 0
    best_score: float = -math.inf
    best_state: dict | None = None

    @property
    def next_epoch(self) -> int:
        return self.epochs[-1]["epoch"] + 1

    def stalled(self, patience: int | None) -> bool:
        """Whether ``patience`` epochs have passed without a better validation score."""
        return patience is not None and self.epochs[-1]["epoch"] - self.best_epoch >= patience

    def record_best(self, epoch: int, score: float, model: nn.Module) -> None:
        """Keep ``model``'s weights if ``score`` beats the best so far."""
        if score > self.best_score:
            self.best_epoch, self.best_score = epoch, score
            self.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def fit(model: nn.Module, optimizer, scheduler, task: Task, epochs: int, state: Progress | None = None, *,
        patience: int | None = None, parallel: nn.Module | None = None,
        save: Callable[[int, Progress], None] | None = None, progress: bool = True, desc: str = "training",
        on_epoch_end: Callable[[dict], None] | None = None) -> Progress:
    """Train ``model`` for at most ``epochs`` epochs and end with the weights of its best validation epoch.

    Without a ``state`` (a fresh run) the untrained model is scored first, as
    epoch 0. Each epoch trains once over ``task.make_loader(epoch)`` (through
    ``parallel``, the DistributedDataParallel wrapper under torchrun), steps
    the learning-rate ``scheduler``, scores ``task.validate`` and then calls
    ``save(epoch, state)`` (the checkpoint) and ``on_epoch_end(row)``.
    Training stops early once ``patience`` epochs have gone by without a
    better validation score (``None``: never). At the end ``model`` holds
    the weights of the best epoch, which may be epoch 0: a run that never
    beat its starting point returns its starting point.
    """
    parallel = model if parallel is None else parallel
    if state is None:
        began = time.perf_counter()
        score = distributed.broadcast_float(task.validate(model))
        elapsed = time.perf_counter() - began
        state = Progress([], [{"epoch": 0, "train_loss": float("nan"), task.val_column: score,
                               "wall_time": elapsed}], elapsed)
        state.record_best(0, score, model)
    bar = tqdm(range(state.next_epoch, epochs + 1), desc=desc, unit="epoch", disable=not progress,
               total=epochs, initial=state.next_epoch - 1)
    bar.set_postfix({task.val_column: f"{state.epochs[-1][task.val_column]:.4f}"})
    for epoch in bar:
        if state.stalled(patience):
            break
        began = time.perf_counter()
        rows = train_epoch(parallel, task.make_loader(epoch), optimizer, task.step, epoch=epoch,  # one bar: this one
                           first_iteration=len(state.history) + 1, loss_name=task.loss_name, progress=False,
                           batch_weight=task.batch_weight)
        scheduler.step()
        score = distributed.broadcast_float(task.validate(model))
        state.wall_time += time.perf_counter() - began
        state.history.extend(rows)
        state.record_best(epoch, score, model)
        train_loss = float(np.mean([row["loss"] for row in rows])) if rows else float("nan")
        row = {"epoch": epoch, "train_loss": train_loss, task.val_column: score, "wall_time": state.wall_time}
        state.epochs.append(row)
        bar.set_postfix({"loss": f"{train_loss:.4f}", task.val_column: f"{score:.4f}",
                         "best": state.best_epoch})
        if save is not None:
            save(epoch, state)
        if on_epoch_end is not None:
            on_epoch_end(dict(row))
    bar.close()
    if state.best_state is not None:
        model.load_state_dict(state.best_state)
    return state


def load_or_fit(folder_kind: str, run_config: dict, build_model: Callable[[], nn.Module],
                make_task: Callable[[], Task], profile: config.Profile, epochs: int, lr_step: int, *,
                patience: int | None, seed: int, device, cache: bool, progress: bool,
                on_epoch_end: Callable[[dict], None] | None) -> runs.Run:
    """Load the cached run of ``run_config``, or train it (resuming from its checkpoint) and cache it.

    ``make_task`` is called only when training is needed (it decodes the
    data); the model is built after seeding, so a run is repeatable. Under
    torchrun every process trains its share of each batch, BatchNorm uses
    the statistics of the global batch, and only rank 0 writes the
    checkpoints and the cache entry.
    """
    key = runs.run_key(run_config)
    folder = runs.run_folder(folder_kind, key) if cache else None
    if runs.is_finished(folder):
        return runs.load_run(folder)

    with distributed.main_first():  # rank 0 fills the feature cache, the others read it
        task = make_task()
    config.seed_everything(seed)
    model = distributed.sync_batchnorm(build_model(), device).to(device)
    optimizer = build_optimizer(model, profile)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=lr_step, gamma=0.1)
    restored = runs.restore_checkpoint(folder, key, model, optimizer, scheduler)
    state = None
    if restored:
        state = Progress(restored["history"], restored["epochs"], restored["wall_time"],
                         **restored.get("best", {}))
    writes = folder is not None and distributed.is_main()

    def save(epoch: int, state: Progress) -> None:
        runs.save_checkpoint(folder, key, epoch, model, optimizer, scheduler, state.history, state.epochs,
                             state.wall_time, best={"best_epoch": state.best_epoch, "best_score": state.best_score,
                                                    "best_state": state.best_state})

    state = fit(model, optimizer, scheduler, task, epochs, state, patience=patience,
                parallel=distributed.data_parallel(model, device), save=save if writes else None,
                progress=progress and distributed.is_main(), desc=folder_kind, on_epoch_end=on_epoch_end)
    final = model
    if distributed.is_distributed():  # back to plain BatchNorm, outside DistributedDataParallel
        final = build_model()
        final.load_state_dict(model.state_dict())
    run = runs.Run(model=final.cpu().eval(), config=run_config, key=key,
                   history=pd.DataFrame(state.history, columns=["epoch", "iteration", "lr", "loss", *task.columns]),
                   epochs=pd.DataFrame(state.epochs, columns=["epoch", "train_loss", task.val_column, "wall_time"]),
                   wall_time=state.wall_time, from_cache=False, path=folder)
    if writes:
        runs.save_run(run)
    distributed.barrier()
    return run


def _device(device) -> torch.device:
    return torch.device(device) if device is not None else config.get_device()


def _embed(model: nn.Module, dataset, profile: config.Profile, device) -> torch.Tensor:
    return models.extract_embeddings(model, dataset, batch_size=profile.eval_batch_size, device=device,
                                     num_workers=profile.num_workers, progress=False)


# --------------------------------------------------------------------------- stage 1

def train_classifier(release, profile=None, *, seed: int = config.DEFAULT_SEED, device=None,
                     cache: bool = True, progress: bool = True,
                     on_epoch_end: Callable[[dict], None] | None = None, **overrides) -> runs.Run:
    """Stage 1: train a classifier over the training categories; load it if already trained.

    Class-weighted cross entropy (:func:`class_weights` of
    ``release.classification_train``), training augmentation, ``profile.lr``
    x 0.1 every ``cls_lr_step`` epochs for ``cls_epochs`` epochs of
    ``cls_batch_size`` images; accuracy on ``release.classification_val``
    after every epoch (and at epoch 0). ``overrides`` replace profile fields.
    """
    profile = config.get_profile(profile, **overrides)
    device = _device(device)
    n_classes = len(release.classification_train.classes)
    if profile.weights:
        models.check_imagenet_weights(profile.backbone)  # fails early for "small"
    run_config = runs.run_config("classifier", release, profile, seed, n_classes=n_classes, dropout=0.0,
                                 class_weighting="inverse_count_mean_1")

    def make_task() -> Task:
        inputs = features.training_inputs(release.classification_train, profile, seed, progress)
        val = release.classification_val
        val_set = features.eval_inputs(val.paths, val.labels, profile, progress)
        weights = class_weights(inputs.labels, n_classes).to(device)

        def validate(model: nn.Module) -> float:
            logits = _embed(model, val_set, profile, device)
            return float((logits.argmax(dim=1).numpy() == val_set.labels).mean())

        return Task(make_loader=lambda epoch: epoch_loader(inputs.for_epoch(epoch), profile.cls_batch_size, seed,
                                                           epoch, profile, device),
                    step=lambda model, batch: classifier_step(model, batch, device, weights),
                    validate=validate, val_column="val_accuracy", loss_name="cross-entropy",
                    columns=CLASSIFIER_COLUMNS, batch_weight=lambda batch: float(weights[batch[1].to(device)].sum()))

    return load_or_fit("classifier", run_config, lambda: models.build_classifier(n_classes, profile), make_task,
                       profile, profile.cls_epochs, profile.cls_lr_step, patience=profile.cls_patience, seed=seed, device=device, cache=cache,
                       progress=progress, on_epoch_end=on_epoch_end)


# --------------------------------------------------------------------------- stage 2

def _resolve_init(init, profile: config.Profile) -> tuple[dict, Callable[[], nn.Module]]:
    """(config entries, model builder) for an init: "random", "imagenet", a Run or a run path."""
    if init is None:
        init = "imagenet" if profile.weights else "random"
    if isinstance(init, str) and init in INITS:
        weights = "imagenet" if init == "imagenet" else None
        if weights:
            models.check_imagenet_weights(profile.backbone)  # fails early for "small"
        return {"init": init, "init_key": None}, lambda: models.build_embedding_net(profile, weights=weights)
    if isinstance(init, (str, Path)):
        init = runs.load_run(init)
    if not isinstance(init, runs.Run):
        raise TypeError(f"init must be one of {list(INITS)}, a stage-1 Run or its folder; got {init!r}")
    if init.kind != "classifier":
        raise ValueError(f"init must be a stage-1 classifier run; run {init.key} is a {init.kind} run")
    classifier = init.model
    return ({"init": "classifier", "init_key": init.key},
            lambda: models.EmbeddingNet.from_classifier(classifier, profile.embedding_dim))


def retrieval_step(method: methods.Method, margins: dict, device) -> Callable:
    """``step(model, batch)`` of a method: :func:`pair_step` or :func:`triplet_step` with its loss."""
    def per_item(*embeddings):
        return method.loss(*embeddings, reduction="none", **margins)

    if method.is_pair_loss:
        return lambda model, batch: pair_step(model, batch, device, per_item)
    return lambda model, batch: triplet_step(model, batch, device, per_item)


def tuple_budget(method: methods.Method, profile: config.Profile) -> tuple[int, int]:
    """``(tuples per category per epoch, tuples per batch)`` that give every loss the same image budget.

    The profile counts pairs (two images each). A triplet holds three images
    (``method.tuple_size``), so the triplet loss gets two thirds as many
    triplets per category and per batch (rounded): every loss then sees about
    the same number of images per epoch and per step, and costs the same.
    """
    scale = 2 / method.tuple_size
    return (max(1, round(profile.pairs_per_category * scale)), max(1, round(profile.ret_batch_size * scale)))


def training_tuples(method: methods.Method, labels: np.ndarray, profile: config.Profile, seed: int) -> Callable:
    """``epoch -> (index arrays, targets)``: the pairs (or triplets) of each epoch (1-based), seeded."""
    per_category, _ = tuple_budget(method, profile)
    if not method.is_pair_loss:
        sampler = data.TripletSampler(labels, per_category, profile.regenerate_every, seed)
        return lambda epoch: (sampler.triplets(epoch - 1), None)
    sampler = data.PairSampler(labels, per_category, profile.regenerate_every, seed)

    def pairs(epoch: int):
        i, j, y = sampler.pairs(epoch - 1)
        return (i, j), y
    return pairs


def train_retrieval(release, loss="double", init=None, profile=None, *,
                    seed: int = config.DEFAULT_SEED, device=None, cache: bool = True, progress: bool = True,
                    on_epoch_end: Callable[[dict], None] | None = None, **overrides) -> runs.Run:
    """Train an embedding network with a pair or triplet loss; load it if already trained.

    ``loss`` names a method of :data:`helpers.methods.METHODS` (its margins
    come from the profile). ``init`` is ``"random"``, ``"imagenet"``, a
    stage-1 run of :func:`train_classifier` or its cache folder; ``None``
    means ``"imagenet"`` when ``profile.weights`` is set, else ``"random"``.

    Every epoch draws ``pairs_per_category`` pairs per category of
    ``release.retrieval_train`` (half positive, half negative), redrawn every
    ``regenerate_every`` epochs, in batches of ``ret_batch_size`` whose
    images go through the network in one forward pass; the triplet loss gets
    as many images, in two thirds as many triplets (:func:`tuple_budget`).
    Training stops after ``ret_epochs`` epochs, or earlier once
    ``ret_patience`` epochs pass without a better validation mAP, and the run
    keeps the weights of its best validation epoch. Starting from trained weights (ImageNet or stage 1), the learning
    rate is ``profile.finetune_lr`` unless ``lr`` is overridden. The
    validation mAP (trapezoid) on ``release.validation`` is measured before
    training (epoch 0) and after every epoch. ``overrides`` replace profile
    fields; ``on_epoch_end(row)`` is called after every epoch.
    """
    method = methods.get(loss)
    profile = config.get_profile(profile, **overrides)
    margins = method.margins(profile)
    device = _device(device)
    init_entries, build_model = _resolve_init(init, profile)
    if init_entries["init"] != "random" and "lr" not in overrides:
        profile = replace(profile, lr=profile.finetune_lr)  # stage 2 fine-tunes trained weights
    run_config = runs.run_config("retrieval", release, profile, seed, loss=method.name, **margins, **init_entries)

    def make_task() -> Task:
        inputs = features.training_inputs(release.retrieval_train, profile, seed, progress)
        split = release.validation
        queries = features.eval_inputs(split.queries, split.query_labels, profile, progress)
        database = features.eval_inputs(split.database, split.database_labels, profile, progress)
        tuples = training_tuples(method, inputs.labels, profile, seed)
        _, batch_size = tuple_budget(method, profile)

        def make_loader(epoch: int) -> DataLoader:
            indices, targets = tuples(epoch)
            return epoch_loader(TupleDataset(inputs.for_epoch(epoch), indices, targets), batch_size,
                                seed, epoch, profile, device)

        def validate(model: nn.Module) -> float:
            return metrics.mean_average_precision(_embed(model, queries, profile, device),
                                                  _embed(model, database, profile, device),
                                                  split.ground_truth, mode="trapezoid")[0]

        return Task(make_loader=make_loader, step=retrieval_step(method, margins, device), validate=validate,
                    val_column="val_mAP", loss_name=method.label, columns=PAIR_COLUMNS)

    return load_or_fit(f"retrieval-{method.name}", run_config, build_model, make_task, profile,
                       profile.ret_epochs, profile.ret_lr_step, patience=profile.ret_patience, seed=seed, device=device, cache=cache,
                       progress=progress, on_epoch_end=on_epoch_end)


def tune_margins(release, loss, grid: dict, init=None, profile=None, *, seed: int = config.DEFAULT_SEED,
                 progress: bool = True, **overrides) -> pd.DataFrame:
    """Final validation mAP of one method over a grid of its margins: one row per grid point.

    ``grid`` maps each of the method's margin keywords (e.g. ``pos_margin``
    and ``neg_margin``) to the values to try; every combination is a cached
    :func:`train_retrieval` run. Invalid combinations (``pos_margin >=
    neg_margin``) get NaN. Columns: the margin keywords, then ``val_mAP``.
    """
    method = methods.get(loss)
    unknown = sorted(set(grid) - set(method.margin_fields))
    if unknown:
        raise ValueError(f"{method.name} has margins {list(method.margin_fields)}; got {unknown}")
    names = list(grid)
    points = [dict(zip(names, values)) for values in np.array(np.meshgrid(*grid.values(), indexing="ij"))
              .reshape(len(names), -1).T.tolist()]
    rows = []
    for point in tqdm(points, desc=f"{method.name} margins", disable=not progress):
        row = dict(point)
        if point.get("pos_margin", -np.inf) >= point.get("neg_margin", np.inf):
            rows.append({**row, "val_mAP": float("nan")})
            continue
        fields = {method.margin_fields[k]: v for k, v in point.items()}
        run = train_retrieval(release, method, init=init, profile=profile, seed=seed, progress=False,
                              **overrides, **fields)
        rows.append({**row, "val_mAP": float(run.epochs["val_mAP"].iloc[-1])})
    return pd.DataFrame(rows)
