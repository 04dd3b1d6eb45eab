"""The two training loops of the series, with history, checkpoints and load-or-train.

Introduced in ``03_loss_comparison`` (:func:`train_retrieval`, one-stage
training with a pair or triplet loss) and ``04_two_stage_training``
(:func:`train_classifier`, stage 1, whose weights :func:`train_retrieval` can
start from).

Both loops follow the paper (DESIGN §1): SGD with momentum and weight decay (Adam at the
CPU profiles, which train from scratch; see ``config``),
the learning rate multiplied by 0.1 every ``lr_step`` epochs, all read from a
:class:`~helpers.config.Profile` and overridable by keyword
(``train_retrieval(release, "double", ret_epochs=3)``).

**Load-or-train.** A run is described by a config dict (loss, init, seed, the
profile fields it uses and a fingerprint of the data) whose short SHA-1 is its
``key``. A finished run lives in ``cache/runs/<kind>-<key>/`` as
``config.json``, ``history.csv``, ``epochs.csv`` and ``model.pt``; asking for
the same run again loads it instead of training. While training, a checkpoint
(model, optimiser, scheduler, history and random-number states) is written
atomically at the end of every epoch, and an interrupted run with the same key
resumes from it, giving the same history as an uninterrupted run on a CPU.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from . import config, data, losses, metrics, models

FORMAT_VERSION = 1
"""Part of every run's config: bump it when the saved layout or the training semantics change."""

LOSSES = ("single", "double", "triplet")
LOSS_NAMES = {"single": "single margin contrastive", "double": "double margin contrastive", "triplet": "triplet"}
INITS = ("random", "imagenet")
RUN_FILES = ("config.json", "history.csv", "epochs.csv", "model.pt")
CHECKPOINT_FILE = "checkpoint.pt"
DATASET_CACHE_SIZE = 8
PAIR_COLUMNS = ("pos_loss", "neg_loss", "active_frac", "pos_active_frac", "neg_active_frac", "pos_dist", "neg_dist")
CLASSIFIER_COLUMNS = ("accuracy",)


# --------------------------------------------------------------------------- the result

@dataclass
class Run:
    """One trained (or loaded) model with everything that describes how it was made.

    Introduced in ``03_loss_comparison``. ``model`` is in eval mode on the CPU;
    ``history`` has one row per iteration and ``epochs`` one row per epoch
    (epoch 0 is the untrained network); ``wall_time`` is the training time in
    seconds as measured when the run was made, also when it is loaded from the
    cache (``from_cache=True``); ``path`` is its cache folder (``None`` with
    ``cache=False``).
    """

    model: nn.Module
    config: dict
    key: str
    history: pd.DataFrame
    epochs: pd.DataFrame
    wall_time: float
    from_cache: bool
    path: Path | None

    @property
    def kind(self) -> str:
        """``"classifier"`` or ``"retrieval"``."""
        return self.config["kind"]

    @property
    def name(self) -> str:
        """A short readable label such as ``"double (random init)"`` or ``"classifier"``."""
        if self.kind == "classifier":
            return "classifier"
        return f"{self.config['loss']} ({self.config['init']} init)"

    def __repr__(self) -> str:
        last = self.epochs.iloc[-1].to_dict() if len(self.epochs) else {}
        metric = {k: round(float(v), 4) for k, v in last.items() if k.startswith("val_")}
        return (f"Run({self.name}, key={self.key}, epochs={int(last.get('epoch', 0))}, {metric}, "
                f"wall_time={self.wall_time:.1f}s, from_cache={self.from_cache})")


# --------------------------------------------------------------------------- keys and fingerprints

def release_fingerprint(release) -> str:
    """SHA-1 over the sorted relative paths and sizes of every file under ``release.root``.

    Introduced in ``03_loss_comparison``. Cheap (no file is read) and enough to
    keep runs on the synthetic data of each profile and on the real Firearm
    14k from ever sharing a cache entry. Hidden files are ignored.
    """
    root = Path(release.root)
    if not root.is_dir():
        raise FileNotFoundError(f"release root {root} does not exist; expected the folder the release was loaded from")
    entries = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.startswith("."):
                continue
            path = Path(folder) / name
            entries.append(f"{path.relative_to(root).as_posix()}\t{path.stat().st_size}")
    digest = hashlib.sha1("\n".join(sorted(entries)).encode("utf-8"))
    return digest.hexdigest()


def run_key(run_config: dict) -> str:
    """The short (12 hex digits) SHA-1 of a config's canonical JSON: the run's cache key.

    Introduced in ``03_loss_comparison``.
    """
    canonical = json.dumps(run_config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(canonical.encode("utf-8")).hexdigest()[:12]


def _profile(profile, overrides: dict) -> config.Profile:
    return models._resolve_profile(profile, overrides)


def _common_config(kind: str, release, profile: config.Profile, seed: int) -> dict:
    return {
        "format": FORMAT_VERSION, "kind": kind, "seed": int(seed),
        "data": release_fingerprint(release),
        "optimizer": profile.optimizer,
        "lr": profile.lr, "momentum": profile.momentum, "weight_decay": profile.weight_decay,
        "train_size_range": list(profile.train_size_range), "eval_size": profile.eval_size,
        "num_workers": profile.num_workers,
    }


def build_optimizer(model: nn.Module, profile: config.Profile) -> torch.optim.Optimizer:
    """The profile's optimiser: SGD with momentum (the paper's) or Adam (the CPU profiles').

    Introduced in ``03_loss_comparison``. Weight decay is ``profile.weight_decay``
    for both (Adam's is the L2 penalty of torch.optim.Adam).
    """
    if profile.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=profile.lr, momentum=profile.momentum,
                               weight_decay=profile.weight_decay)
    if profile.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=profile.lr, weight_decay=profile.weight_decay)
    raise ValueError(f"unknown optimizer {profile.optimizer!r}; expected 'sgd' or 'adam'")


# --------------------------------------------------------------------------- datasets

_DECODED: "OrderedDict[tuple, data.ImageDataset]" = OrderedDict()


def decoded_dataset(paths, labels, max_side: int, progress: bool = True) -> "data.ImageDataset":
    """An :class:`~helpers.data.ImageDataset` of ``paths``, decoded once per process and reused.

    Introduced in ``03_loss_comparison``. Decoding takes seconds, so the last
    few decoded sets are memoised by (paths, labels, max_side); callers attach
    their transform with ``.with_transform``, which copies nothing.
    """
    key = (tuple(str(p) for p in paths), tuple(int(v) for v in np.asarray(labels).reshape(-1)), int(max_side))
    if key in _DECODED:
        _DECODED.move_to_end(key)
        return _DECODED[key]
    dataset = data.ImageDataset([Path(p) for p in paths], labels=np.asarray(labels),
                                max_side=max_side, progress=progress)
    _DECODED[key] = dataset
    while len(_DECODED) > DATASET_CACHE_SIZE:
        _DECODED.popitem(last=False)
    return dataset


def clear_dataset_cache() -> None:
    """Forget the memoised decoded datasets (frees their memory).

    Introduced in ``03_loss_comparison``.
    """
    _DECODED.clear()


def _train_dataset(images: "data.ImageList", profile: config.Profile, progress: bool):
    transform = data.train_transform(profile)
    return decoded_dataset(images.paths, images.labels, transform.canvas_size, progress).with_transform(transform)


def _eval_dataset(paths, labels, profile: config.Profile, progress: bool, what: str):
    transform = data.eval_transform(profile)
    dataset = decoded_dataset(paths, labels, transform.canvas_size, progress).with_transform(transform)
    if len(dataset) != len(paths):
        raise ValueError(f"{len(paths) - len(dataset)} image(s) of {what} could not be decoded; the "
                         f"evaluation needs every one of them (see the warning that lists them)")
    return dataset


class TupleDataset(Dataset):
    """Tuples of items of a base dataset: item ``k`` is ``(base[i[k]][0], base[j[k]][0], ..., y[k])``.

    Introduced in ``03_loss_comparison``: pairs ``(x1, x2, y)`` from the
    indices of :class:`~helpers.data.PairSampler` and triplets ``(a, p, n)``
    from :class:`~helpers.data.TripletSampler` (no target).
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


def _loader(dataset: Dataset, batch_size: int, seed: int, epoch: int, profile, device) -> DataLoader:
    """A shuffling DataLoader whose order depends only on (seed, epoch)."""
    generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator,
                      num_workers=profile.num_workers, pin_memory=device.type == "cuda",
                      persistent_workers=False)


# --------------------------------------------------------------------------- one step

def _pair_step(model: nn.Module, batch, device, per_pair_loss: Callable) -> tuple[torch.Tensor, dict]:
    """Both images of every pair in ONE forward pass, then the loss and its parts."""
    x1, x2, y = batch
    embeddings = model(torch.cat([x1, x2]).to(device, non_blocking=True))
    e1, e2 = embeddings.split(len(x1))
    y = y.to(device, non_blocking=True)
    per_pair = per_pair_loss(e1, e2, y)
    parts = losses.split_pair_loss(per_pair, y)
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


def _triplet_step(model: nn.Module, batch, device, margin: float) -> tuple[torch.Tensor, dict]:
    """Anchors, positives and negatives in ONE forward pass, then the triplet loss."""
    anchor, positive, negative = batch
    embeddings = model(torch.cat([anchor, positive, negative]).to(device, non_blocking=True))
    a, p, n = embeddings.split(len(anchor))
    per_triplet = losses.triplet_loss(a, p, n, margin=margin, reduction="none")
    nan = torch.full((), float("nan"), device=per_triplet.device)
    stats = {
        "pos_loss": nan, "neg_loss": nan,
        "active_frac": (per_triplet.detach() > 0).float().mean(),
        "pos_active_frac": nan, "neg_active_frac": nan,
        "pos_dist": losses.pair_distance(a.detach(), p.detach()).mean(),
        "neg_dist": losses.pair_distance(a.detach(), n.detach()).mean(),
    }
    return per_triplet.mean(), stats


def _classifier_step(model: nn.Module, batch, device, class_weights: torch.Tensor) -> tuple[torch.Tensor, dict]:
    images, labels = batch
    labels = labels.to(device, non_blocking=True)
    logits = model(images.to(device, non_blocking=True))
    loss = F.cross_entropy(logits, labels, weight=class_weights)
    return loss, {"accuracy": (logits.detach().argmax(dim=1) == labels).float().mean()}


def class_weights(labels, n_classes: int) -> torch.Tensor:
    """Cross-entropy class weights inversely proportional to the class counts, with mean 1.

    Introduced in ``04_two_stage_training``. Classes absent from ``labels``
    get weight 0 and the mean is taken over the classes present.
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


def _train_epoch(model, optimizer, loader, step: Callable, epoch: int, first_iteration: int,
                 loss_name: str, progress: bool) -> list[dict]:
    """One pass over ``loader``; returns one history row per iteration."""
    model.train()
    lr = optimizer.param_groups[0]["lr"]
    rows = []
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not progress, unit="batch")
    for offset, batch in enumerate(bar):
        loss, stats = step(model, batch)
        values = torch.stack([loss.detach().float()] + [v.float() for v in stats.values()]).tolist()
        iteration = first_iteration + offset
        if not math.isfinite(values[0]):
            raise FloatingPointError(
                f"the {loss_name} loss is {values[0]} at epoch {epoch}, iteration {iteration} "
                f"(lr={lr:g}); lower the learning rate or check the inputs"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        rows.append({"epoch": epoch, "iteration": iteration, "lr": lr, "loss": values[0],
                     **dict(zip(stats, values[1:]))})
        bar.set_postfix(loss=f"{values[0]:.4f}")
    return rows


# --------------------------------------------------------------------------- saving and loading

def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write through a temporary file in the same folder, then rename it over ``path``."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def _write_text(path: Path, text: str) -> None:
    def write(temporary: str) -> None:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
    _atomic_write(path, write)


def _rng_states() -> dict:
    return {
        "python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _restore_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _model_spec(model: nn.Module, backbone: str, pooling: str) -> dict:
    if isinstance(model, models.ClassifierNet):
        dropout = model.dropout.p if isinstance(model.dropout, nn.Dropout) else 0.0
        return {"type": "classifier", "backbone": backbone, "pooling": pooling,
                "n_classes": model.n_classes, "dropout": dropout}
    return {"type": "embedding", "backbone": backbone, "pooling": pooling,
            "embedding_dim": model.projection.out_features if model.projection is not None else None}


def _model_from_spec(spec: dict) -> nn.Module:
    trunk, channels = models.build_backbone(spec["backbone"], weights=None)
    pooling = models.build_pooling(spec["pooling"])
    if spec["type"] == "classifier":
        return models.ClassifierNet(trunk, pooling, channels, spec["n_classes"], spec["dropout"])
    return models.EmbeddingNet(trunk, pooling, channels, spec["embedding_dim"])


def _save_run(folder: Path, run: Run, spec: dict) -> None:
    """Write a finished run; ``model.pt`` goes last, so its presence marks the run finished."""
    _write_text(folder / "config.json", json.dumps(run.config, indent=2, sort_keys=True) + "\n")
    _write_text(folder / "history.csv", run.history.to_csv(index=False))
    _write_text(folder / "epochs.csv", run.epochs.to_csv(index=False))
    payload = {"state_dict": run.model.state_dict(), "spec": spec, "key": run.key, "wall_time": run.wall_time}
    _atomic_write(folder / "model.pt", lambda temporary: torch.save(payload, temporary))


def load_run(path) -> Run:
    """Load a finished run from its cache folder (or its ``model.pt``).

    Introduced in ``04_two_stage_training``, where a stage-1 run is reloaded
    by path. Raises ``FileNotFoundError`` naming the missing file when the
    folder does not hold a finished run.
    """
    folder = Path(path)
    if folder.name == "model.pt":
        folder = folder.parent
    missing = [name for name in RUN_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} does not hold a finished run: missing {missing}; expected "
                                f"the files {list(RUN_FILES)} written by train_classifier/train_retrieval")
    run_config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    payload = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
    model = _model_from_spec(payload["spec"])
    model.load_state_dict(payload["state_dict"])
    return Run(model=model.eval(), config=run_config, key=payload["key"],
               history=pd.read_csv(folder / "history.csv"), epochs=pd.read_csv(folder / "epochs.csv"),
               wall_time=float(payload["wall_time"]), from_cache=True, path=folder)


# --------------------------------------------------------------------------- the shared loop

@dataclass
class _Job:
    """What differs between the classification and the retrieval loop."""

    kind: str                      # folder prefix, e.g. "classifier" or "retrieval-double"
    config: dict
    build_model: Callable[[], nn.Module]
    setup: Callable[[], "_Loop"]   # decodes the data; only called when training is needed
    val_column: str                # "val_mAP" or "val_accuracy"
    loss_name: str
    epochs: int
    lr_step: int
    columns: tuple[str, ...]


@dataclass
class _Loop:
    """The data-bound parts of a loop, built once the cache has been checked."""

    make_loader: Callable[[int], DataLoader]   # epoch (1-based) -> DataLoader
    step: Callable                             # step(model, batch) -> (loss, stats)
    validate: Callable[[nn.Module], float]


def _run_job(job: _Job, profile: config.Profile, seed: int, device, cache: bool, progress: bool,
             on_epoch_end: Callable[[dict], None] | None) -> Run:
    """Load the finished run, or train it (resuming from its checkpoint) and save it."""
    key = run_key(job.config)
    folder = config.cache_dir("runs", f"{job.kind}-{key}") if cache else None
    if folder is not None and all((folder / name).is_file() for name in RUN_FILES):
        return load_run(folder)

    loop = job.setup()
    config.seed_everything(seed)
    model = job.build_model().to(device)
    optimizer = build_optimizer(model, profile)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=job.lr_step, gamma=0.1)
    history, epoch_rows, wall_time, start = _resume_or_start(folder, key, model, optimizer, scheduler,
                                                             loop, job.val_column)
    outer = tqdm(range(start, job.epochs + 1), desc=job.kind, unit="epoch", disable=not progress,
                 total=job.epochs, initial=start - 1)
    outer.set_postfix({job.val_column: f"{epoch_rows[-1][job.val_column]:.4f}"})
    for epoch in outer:
        began = time.perf_counter()
        rows = _train_epoch(model, optimizer, loop.make_loader(epoch), loop.step, epoch,
                            len(history) + 1, job.loss_name, progress)
        scheduler.step()
        score = loop.validate(model)
        wall_time += time.perf_counter() - began
        history.extend(rows)
        train_loss = float(np.mean([row["loss"] for row in rows])) if rows else float("nan")
        row = {"epoch": epoch, "train_loss": train_loss, job.val_column: score, "wall_time": wall_time}
        epoch_rows.append(row)
        outer.set_postfix({"loss": f"{train_loss:.4f}", job.val_column: f"{score:.4f}"})
        if folder is not None:
            _save_checkpoint(folder, key, epoch, model, optimizer, scheduler, history, epoch_rows, wall_time)
        if on_epoch_end is not None:
            on_epoch_end(dict(row))
    outer.close()

    model = model.cpu().eval()
    columns = ["epoch", "iteration", "lr", "loss", *job.columns]
    run = Run(model=model, config=job.config, key=key,
              history=pd.DataFrame(history, columns=columns),
              epochs=pd.DataFrame(epoch_rows, columns=["epoch", "train_loss", job.val_column, "wall_time"]),
              wall_time=wall_time, from_cache=False, path=folder)
    if folder is not None:
        _save_run(folder, run, _model_spec(model, job.config["backbone"], job.config["pooling"]))
        (folder / CHECKPOINT_FILE).unlink(missing_ok=True)
    return run


def _resume_or_start(folder: Path | None, key: str, model, optimizer, scheduler, loop: _Loop,
                     val_column: str) -> tuple[list, list, float, int]:
    """Restore the last checkpoint of this run, or score the untrained model as epoch 0.

    Returns ``(history rows, epoch rows, wall time so far, first epoch to train)``.
    """
    checkpoint = _load_checkpoint(folder, key)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        _restore_rng_states(checkpoint["rng"])
        return checkpoint["history"], checkpoint["epochs"], checkpoint["wall_time"], checkpoint["epoch"] + 1
    began = time.perf_counter()
    score = loop.validate(model)
    wall_time = time.perf_counter() - began
    return [], [{"epoch": 0, "train_loss": float("nan"), val_column: score, "wall_time": wall_time}], wall_time, 1


def _save_checkpoint(folder: Path, key: str, epoch: int, model, optimizer, scheduler,
                     history: list, epoch_rows: list, wall_time: float) -> None:
    state = {"key": key, "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "history": history, "epochs": epoch_rows,
             "wall_time": wall_time, "rng": _rng_states()}
    _atomic_write(folder / CHECKPOINT_FILE, lambda temporary: torch.save(state, temporary))


def _load_checkpoint(folder: Path | None, key: str) -> dict | None:
    """The checkpoint of an unfinished run with this key, or ``None``."""
    if folder is None or not (folder / CHECKPOINT_FILE).is_file():
        return None
    # our own file, holding NumPy and Python RNG states besides tensors
    state = torch.load(folder / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
    return state if state.get("key") == key else None


def _device(device) -> torch.device:
    return torch.device(device) if device is not None else config.get_device()


# --------------------------------------------------------------------------- stage 1

def train_classifier(release, profile=None, *, seed: int = config.DEFAULT_SEED, device=None,
                     cache: bool = True, progress: bool = True,
                     on_epoch_end: Callable[[dict], None] | None = None, **overrides) -> Run:
    """Stage 1: train a classifier over the training categories; load it if already trained.

    Introduced in ``04_two_stage_training``. Class-weighted cross entropy
    (:func:`class_weights` of ``release.classification_train``), training
    augmentation, SGD with ``profile.lr`` x 0.1 every ``cls_lr_step`` epochs
    for ``cls_epochs`` epochs of ``cls_batch_size`` images; accuracy on
    ``release.classification_val`` after every epoch (and at epoch 0).
    ``overrides`` replace profile fields. ``on_epoch_end(row)`` is called
    after every epoch with that epoch's row.
    """
    profile = _profile(profile, overrides)
    device = _device(device)
    n_classes = len(release.classification_train.classes)
    if profile.weights:
        models.imagenet_weights_location(profile.backbone)  # fails early for "small"
    job_config = {
        **_common_config("classifier", release, profile, seed),
        "backbone": profile.backbone, "weights": profile.weights, "pooling": profile.pooling,
        "dropout": 0.0, "n_classes": n_classes, "class_weighting": "inverse_count_mean_1",
        "epochs": profile.cls_epochs, "lr_step": profile.cls_lr_step, "batch_size": profile.cls_batch_size,
    }

    def setup() -> _Loop:
        train_images = _train_dataset(release.classification_train, profile, progress)
        val = release.classification_val
        val_images = _eval_dataset(val.paths, val.labels, profile, progress, "the classification validation split")
        weights = class_weights(train_images.labels, n_classes).to(device)

        def validate(model: nn.Module) -> float:
            logits = metrics.extract_embeddings(model, val_images, batch_size=profile.eval_batch_size,
                                                device=device, num_workers=profile.num_workers, progress=False)
            return float((logits.argmax(dim=1).numpy() == val_images.labels).mean())

        return _Loop(
            make_loader=lambda epoch: _loader(train_images, profile.cls_batch_size, seed, epoch, profile, device),
            step=lambda model, batch: _classifier_step(model, batch, device, weights),
            validate=validate,
        )

    job = _Job(kind="classifier", config=job_config,
               build_model=lambda: models.build_classifier(n_classes, profile), setup=setup,
               val_column="val_accuracy", loss_name="cross-entropy",
               epochs=profile.cls_epochs, lr_step=profile.cls_lr_step, columns=CLASSIFIER_COLUMNS)
    return _run_job(job, profile, seed, device, cache, progress, on_epoch_end)


# --------------------------------------------------------------------------- stage 2

def _resolve_init(init, profile: config.Profile):
    """(config entries, model builder) for an init: "random", "imagenet", a Run or a run path."""
    if init is None:
        init = "imagenet" if profile.weights else "random"
    if isinstance(init, str) and init in INITS:
        weights = "imagenet" if init == "imagenet" else None
        if weights:
            models.imagenet_weights_location(profile.backbone)  # fails early for "small"
        entries = {"init": init, "init_key": None, "backbone": profile.backbone, "pooling": profile.pooling}
        return entries, lambda: models.build_embedding_net(profile, weights=weights)
    if isinstance(init, (str, Path)):
        init = load_run(init)
    if not isinstance(init, Run):
        raise TypeError(f"init must be one of {list(INITS)}, a stage-1 Run or its folder; got {init!r}")
    if init.kind != "classifier":
        raise ValueError(f"init must be a stage-1 classifier run; run {init.key} is a {init.kind} run")
    classifier = init.model
    entries = {"init": "classifier", "init_key": init.key,
               "backbone": init.config["backbone"], "pooling": init.config["pooling"]}
    return entries, lambda: models.EmbeddingNet.from_classifier(classifier, profile.embedding_dim)


def _loss_settings(loss: str, profile: config.Profile) -> dict:
    if loss == "single":
        return {"margin": profile.single_margin}
    if loss == "double":
        return {"pos_margin": profile.pos_margin, "neg_margin": profile.neg_margin}
    if loss == "triplet":
        return {"margin": profile.triplet_margin}
    raise ValueError(f"unknown loss {loss!r}; expected one of {list(LOSSES)}")


def _retrieval_step(loss: str, margins: dict, device) -> Callable:
    if loss == "triplet":
        return lambda model, batch: _triplet_step(model, batch, device, margins["margin"])
    if loss == "single":
        def per_pair(e1, e2, y):
            return losses.contrastive_loss(e1, e2, y, margin=margins["margin"], reduction="none")
    else:
        def per_pair(e1, e2, y):
            return losses.double_margin_contrastive_loss(e1, e2, y, reduction="none", **margins)
    return lambda model, batch: _pair_step(model, batch, device, per_pair)


def _tuple_source(loss: str, labels: np.ndarray, profile: config.Profile, seed: int) -> Callable:
    """epoch (1-based) -> (index arrays, targets) of that epoch's pairs or triplets."""
    if loss == "triplet":
        sampler = data.TripletSampler(labels, profile.pairs_per_category, profile.regenerate_every, seed)
        return lambda epoch: (sampler.triplets(epoch - 1), None)
    sampler = data.PairSampler(labels, profile.pairs_per_category, profile.regenerate_every, seed)

    def pairs(epoch: int):
        i, j, y = sampler.pairs(epoch - 1)
        return (i, j), y
    return pairs


def train_retrieval(release, loss: str = "double", init=None, profile=None, *,
                    seed: int = config.DEFAULT_SEED, device=None, cache: bool = True, progress: bool = True,
                    on_epoch_end: Callable[[dict], None] | None = None, **overrides) -> Run:
    """Train an embedding network with a pair or triplet loss; load it if already trained.

    Introduced in ``03_loss_comparison`` (one stage) and ``04_two_stage_training``
    (two stages). ``loss`` is ``"single"`` (contrastive, margin
    ``single_margin``), ``"double"`` (double margin, ``pos_margin`` and
    ``neg_margin``) or ``"triplet"`` (``triplet_margin``). ``init`` is
    ``"random"``, ``"imagenet"``, a stage-1 :class:`Run` of
    :func:`train_classifier` or its cache folder; ``None`` means
    ``"imagenet"`` when ``profile.weights`` is set, else ``"random"``.

    Every epoch draws ``pairs_per_category`` pairs per category of
    ``release.retrieval_train`` (half positive, half negative; triplets: as
    many triplets), redrawn every ``regenerate_every`` epochs, in batches of
    ``ret_batch_size`` whose images go through the network in one forward
    pass. Starting from trained weights (ImageNet or stage 1), the learning
    rate is ``profile.finetune_lr`` unless ``lr`` is overridden. The validation mAP (trapezoid) on ``release.validation`` is measured
    before training (epoch 0) and after every epoch. ``overrides`` replace
    profile fields; ``on_epoch_end(row)`` is called after every epoch.
    """
    profile = _profile(profile, overrides)
    margins = _loss_settings(loss, profile)
    device = _device(device)
    init_entries, build_model = _resolve_init(init, profile)
    if init_entries["init"] != "random" and "lr" not in overrides:
        profile = replace(profile, lr=profile.finetune_lr)  # stage 2 fine-tunes trained weights
    job_config = {
        **_common_config("retrieval", release, profile, seed), **init_entries,
        "loss": loss, **margins, "embedding_dim": profile.embedding_dim,
        "epochs": profile.ret_epochs, "lr_step": profile.ret_lr_step, "batch_size": profile.ret_batch_size,
        "pairs_per_category": profile.pairs_per_category, "regenerate_every": profile.regenerate_every,
    }

    def setup() -> _Loop:
        train_images = _train_dataset(release.retrieval_train, profile, progress)
        split = release.validation
        queries = _eval_dataset(split.queries, split.query_labels, profile, progress, "the validation queries")
        database = _eval_dataset(split.database, split.database_labels, profile, progress,
                                 "the validation database")
        tuples = _tuple_source(loss, train_images.labels, profile, seed)

        def make_loader(epoch: int) -> DataLoader:
            indices, targets = tuples(epoch)
            return _loader(TupleDataset(train_images, indices, targets), profile.ret_batch_size,
                           seed, epoch, profile, device)

        def validate(model: nn.Module) -> float:
            embed = dict(batch_size=profile.eval_batch_size, device=device,
                         num_workers=profile.num_workers, progress=False)
            q = metrics.extract_embeddings(model, queries, **embed)
            d = metrics.extract_embeddings(model, database, **embed)
            return metrics.mean_average_precision(q, d, split.ground_truth, mode="trapezoid")[0]

        return _Loop(make_loader=make_loader, step=_retrieval_step(loss, margins, device), validate=validate)

    job = _Job(
        kind=f"retrieval-{loss}", config=job_config, build_model=build_model, setup=setup,
        val_column="val_mAP", loss_name=LOSS_NAMES[loss],
        epochs=profile.ret_epochs, lr_step=profile.ret_lr_step, columns=PAIR_COLUMNS,
    )
    return _run_job(job, profile, seed, device, cache, progress, on_epoch_end)


# --------------------------------------------------------------------------- notebook conveniences

def eval_dataset(paths, labels, profile=None, progress: bool = True) -> "data.ImageDataset":
    """Decoded images with the evaluation transform of ``profile``, memoised in-process.

    Introduced in ``03_loss_comparison``: embedding the same split for several
    models decodes its images only once.
    """
    profile = _profile(profile, {})
    return _eval_dataset(list(paths), np.asarray(labels), profile, progress, "images")


def embed_split(model: nn.Module, split, profile=None, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings of a retrieval split's queries and database: ``(query_emb, db_emb)``.

    Introduced in ``04_two_stage_training``. Unreadable images would shift the
    ground-truth positions, so they raise instead of being skipped here.
    """
    profile = _profile(profile, {})
    out = []
    for paths, labels in ((split.queries, split.query_labels), (split.database, split.database_labels)):
        dataset = eval_dataset(paths, labels, profile, progress)
        if len(dataset) != len(paths):
            raise ValueError(f"{len(paths) - len(dataset)} image(s) of the {split.name} split could not be "
                             "read; the ground truth positions would no longer match")
        out.append(metrics.extract_embeddings(model, dataset, batch_size=profile.eval_batch_size,
                                              progress=progress))
    return out[0], out[1]


def untrained_model(release, profile=None, seed: int = config.DEFAULT_SEED) -> nn.Module:
    """The embedding network of ``profile`` with its initial weights (seeded), in eval mode.

    Introduced in ``03_loss_comparison`` as the "before training" reference. With
    ``weights="imagenet"`` this is the ImageNet network before fine-tuning.
    """
    profile = _profile(profile, {})
    config.seed_everything(seed)
    return models.build_embedding_net(profile).eval()


def imbalance_summary(history: pd.DataFrame, fraction: float = 0.25) -> dict:
    """Share of the loss from positive pairs early and late in training, and the active fractions late.

    Introduced in ``02_losses_explained`` (the imbalance argument). ``fraction``
    is the part of the iterations counted as "first" and "last".
    """
    n = max(1, int(round(len(history) * fraction)))
    first, last = history.iloc[:n], history.iloc[-n:]

    def share(h: pd.DataFrame) -> float:
        total = h["pos_loss"].sum() + h["neg_loss"].sum()
        return float(h["pos_loss"].sum() / total) if total > 0 else float("nan")

    return {"positive share of the loss, first quarter": share(first),
            "positive share of the loss, last quarter": share(last),
            "active positive pairs, last quarter": float(last["pos_active_frac"].mean()),
            "active negative pairs, last quarter": float(last["neg_active_frac"].mean())}


def margin_sweep(release, pos_margins, neg_margins, init="random", profile=None, *,
                 seed: int = config.DEFAULT_SEED, progress: bool = True, **overrides) -> pd.DataFrame:
    """Final validation mAP of the double margin loss on a grid of (m1, m2); rows m1, columns m2.

    Introduced in ``04_two_stage_training``. ``init`` is passed to
    :func:`train_retrieval`; each cell is a cached run; cells with m1 >= m2 are
    left empty (NaN).
    """
    table = pd.DataFrame(index=pd.Index(pos_margins, name="m1"), columns=pd.Index(neg_margins, name="m2"),
                         dtype=float)
    cells = [(m1, m2) for m1 in pos_margins for m2 in neg_margins if m1 < m2]
    for m1, m2 in tqdm(cells, desc="margin sweep", disable=not progress):
        run = train_retrieval(release, loss="double", init=init, profile=profile, seed=seed, progress=False,
                              pos_margin=m1, neg_margin=m2, **overrides)
        table.loc[m1, m2] = float(run.epochs["val_mAP"].iloc[-1])
    return table


@dataclass
class ToyResult:
    """Outcome of :func:`toy_embedding_experiment`: final unit vectors, labels and all pair distances."""

    embeddings: np.ndarray
    labels: np.ndarray
    pair_distances: np.ndarray
    pair_labels: np.ndarray
    losses: np.ndarray


def _toy_loss(kind: str, emb: torch.Tensor, labels: torch.Tensor, margins: dict) -> torch.Tensor:
    """Balanced loss over all pairs (half weight positives, half negatives) or all valid triplets."""
    if kind == "triplet":
        same = labels[:, None] == labels[None, :]
        a, p, n = torch.nonzero(same[:, :, None] & ~same[:, None, :]
                                & ~torch.eye(len(labels), dtype=torch.bool)[:, :, None], as_tuple=True)
        return losses.triplet_loss(emb[a], emb[p], emb[n], **margins)
    i, j = torch.triu_indices(len(labels), len(labels), 1)
    y = (labels[i] == labels[j]).float()
    fn = losses.contrastive_loss if kind == "single" else losses.double_margin_contrastive_loss
    per_pair = fn(emb[i], emb[j], y, reduction="none", **margins)
    return 0.5 * per_pair[y == 1].mean() + 0.5 * per_pair[y == 0].mean()


def toy_embedding_experiment(kind: str, n_classes: int = 4, per_class: int = 20, steps: int = 300,
                             lr: float = 0.5, dim: int = 2, seed: int = config.DEFAULT_SEED,
                             **margins) -> ToyResult:
    """Move free unit vectors with one loss and return where they end up.

    Introduced in ``02_losses_explained``. Each point is a learnable vector,
    L2-normalised onto the unit circle (``dim=2``); every step uses all pairs
    (positives and negatives weighted equally, as the paper's balanced pairs)
    or all triplets. ``kind`` is ``"single"``, ``"double"`` or ``"triplet"``;
    margins default to the active profile's.
    """
    profile = config.get_profile()
    defaults = {"single": {"margin": profile.single_margin},
                "double": {"pos_margin": profile.pos_margin, "neg_margin": profile.neg_margin},
                "triplet": {"margin": profile.triplet_margin}}
    if kind not in defaults:
        raise ValueError(f"unknown loss {kind!r}; expected one of {sorted(defaults)}")
    margins = {**defaults[kind], **margins}
    generator = torch.Generator().manual_seed(seed)
    raw = torch.randn(n_classes * per_class, dim, generator=generator, dtype=torch.float64).requires_grad_()
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    optimizer = torch.optim.SGD([raw], lr=lr)
    history = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = _toy_loss(kind, F.normalize(raw, dim=1), labels, margins)
        loss.backward()
        optimizer.step()
        history.append(float(loss.detach()))
    emb = F.normalize(raw.detach(), dim=1)
    i, j = torch.triu_indices(len(labels), len(labels), 1)
    return ToyResult(embeddings=emb.numpy(), labels=labels.numpy(),
                     pair_distances=(emb[i] - emb[j]).norm(dim=1).numpy(),
                     pair_labels=(labels[i] == labels[j]).numpy().astype(int), losses=np.array(history))
