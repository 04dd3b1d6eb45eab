"""Load or train: the two stages wired to data, cached, resumable and data-parallel.

:func:`train_classifier` (stage 1) and :func:`train_retrieval` (stage 2, or
one-stage training) build the network, each epoch's data, the step and the
validation, and hand them to :func:`helpers.train.fit`, the loop a notebook
reads. Around it this module adds what a learner does not need to read:

* **the cache.** A run's config is a plain dict of what shapes it: its kind,
  the seed, the settings of its stage (:func:`stage_settings`, not the whole
  profile), a fingerprint of the data and :func:`code_version`. Its short
  SHA-1 is the run's key, and a finished run lives in
  ``cache/runs/<kind>-<key>/`` as ``config.json``, ``history.csv`` (one row
  per iteration), ``epochs.csv`` (one row per epoch, epoch 0 being the
  untrained network) and ``model.pt`` (the trainable top and the
  :class:`~helpers.models.ModelSpec`), then ``manifest.json`` (each file's
  size and SHA-256, :func:`.cache.write_manifest`), written last: only a
  folder with a valid manifest holds a finished run. Asking for a cached key
  loads it; a damaged entry is reported in one line, moved aside and trained
  again.
* **checkpoints.** After every epoch the state needed to resume (weights,
  optimiser, scheduler, history, random-number states) is written
  atomically, with a manifest of its own; a run with the same key resumes
  from it (a damaged checkpoint is moved aside and training starts over).
* **data-parallel training** under ``torchrun`` (:mod:`.distributed`).
* **cached frozen features** (:mod:`.features`): with a cut, training runs
  the trainable top on cached views of the frozen trunk's maps.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import filelock
import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from .. import config, data, methods, metrics, models, train
from . import distributed, features
from . import cache
from .cache import MANIFEST, WRITE_FAULTS, CacheWriteError, DamagedEntry, atomic_write, set_aside, write_text

DATA_FILES = ("config.json", "history.csv", "epochs.csv", "model.pt")
"""The files of a finished run that its manifest lists."""
RUN_FILES = DATA_FILES + (MANIFEST,)
"""Every file of a finished run's folder: :data:`DATA_FILES`, then the manifest, written last."""
CHECKPOINT_FILE = "checkpoint.pt"
RUN_CODE = ("config:seed_everything", "data.release", "data.images", "data.transforms", "data.samplers", "imagenet",
            "losses", "methods", "metrics", "models", "train",
            "machinery.runs", "machinery.features", "machinery.distributed")
"""The code that shapes a run's result, hashed into :func:`code_version`: training, the validation
metric that picks the kept epoch, and the seeding."""
INITS = ("random", "imagenet")
"""Starting points of a retrieval run besides a stage-1 classifier."""
VAL_COLUMNS = {"classifier": "val_accuracy", "retrieval": "val_mAP"}


@dataclass
class Run:
    """One trained (or loaded) model with everything that describes how it was made.

    ``model`` is a :class:`~helpers.models.Network` in eval mode on the CPU
    that embeds (or classifies) images; ``history`` has one row per iteration
    and ``epochs`` one row per epoch (epoch 0 is the untrained network);
    the model holds the weights of :attr:`best_epoch`. ``wall_time`` is the
    training time in seconds as measured when the run was made, also when it
    is loaded from the cache (``from_cache=True``); ``path`` is its cache
    folder (``None`` with ``cache=False``).
    """

    model: models.Network
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
        """A short readable label such as ``"double (imagenet init)"`` or ``"classifier"``."""
        if self.kind == "classifier":
            return "classifier"
        return f"{self.config['loss']} ({self.config['init']} init)"

    @property
    def val_column(self) -> str:
        return VAL_COLUMNS[self.kind]

    @property
    def best_epoch(self) -> int:
        """The epoch whose weights the run keeps: the best validation score, the earliest on ties."""
        return int(self.epochs["epoch"].iloc[int(np.argmax(self.epochs[self.val_column].to_numpy()))])

    @property
    def best_score(self) -> float:
        """The validation score of :attr:`best_epoch`."""
        return float(self.epochs[self.val_column].max())

    @property
    def last_epoch(self) -> int:
        return int(self.epochs["epoch"].iloc[-1])

    def __repr__(self) -> str:
        return (f"Run({self.name}, key={self.key}, kept epoch {self.best_epoch} of {self.last_epoch}, "
                f"{self.val_column}={self.best_score:.4f}, wall_time={self.wall_time:.1f}s, "
                f"from_cache={self.from_cache})")


# --------------------------------------------------------------------------- keys

def code_version() -> str:
    """Hash of the meaning (docstrings and comments left out) of :data:`RUN_CODE`: part of every run's key."""
    return cache.code_version(RUN_CODE)


SMALL_FILE = 64 * 1024
"""Files up to this size count whole in :func:`release_fingerprint`; larger ones by their size and three slices."""


def file_signature(path: Path) -> str:
    """A cheap content signature: the SHA-1 of a small file, or of a large one's size and first, middle and last 16 KiB."""
    size = path.stat().st_size
    digest = hashlib.sha1(str(size).encode("ascii"))
    with open(path, "rb") as handle:
        if size <= SMALL_FILE:
            digest.update(handle.read())
        else:
            for offset in (0, size // 2, size - SMALL_FILE // 4):
                handle.seek(offset)
                digest.update(handle.read(SMALL_FILE // 4))
    return digest.hexdigest()


_FINGERPRINTS: dict[tuple, str] = {}


def _listing(root: Path) -> list[tuple[str, int, int]]:
    """(relative path, size, modification time in ns) of every file under ``root``, hidden ones left out, sorted."""
    entries = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not name.startswith("."):
                stat = (Path(folder) / name).stat()
                entries.append(((Path(folder) / name).relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns))
    return sorted(entries)


def release_fingerprint(release) -> str:
    """SHA-1 over the relative path and :func:`file_signature` of every file under ``release.root``.

    Content-based: an edit that keeps a file's length (a ground-truth file,
    an image) still changes the fingerprint, and with it every run key. The
    result is remembered per listing (paths, sizes, modification times), so
    a process reads the release once. Hidden files are ignored.
    """
    root = Path(release.root)
    if not root.is_dir():
        raise FileNotFoundError(f"release root {root} does not exist; expected the folder the release was loaded from")
    listing = _listing(root)
    memo = (str(root), tuple(listing))
    if memo not in _FINGERPRINTS:
        lines = (f"{name}\t{file_signature(root / name)}" for name, _, _ in listing)
        _FINGERPRINTS[memo] = hashlib.sha1("\n".join(lines).encode("utf-8")).hexdigest()
    return _FINGERPRINTS[memo]


def stage_settings(profile: config.Profile, kind: str) -> dict:
    """The profile fields that shape a run of ``kind`` (``"classifier"`` or ``"retrieval"``), and no others.

    The model and its inputs (backbone, weights, cut, pooling, projection;
    transform sizes; cached views), the optimiser, and the stage's own
    schedule, batch size and stopping rule. A retrieval run adds its pair
    budget; its loss, margins, learning rate and start are added by
    :func:`train_retrieval`.
    """
    shared = ("backbone", "weights", "cut", "pooling", "embedding_dim", "train_size_range", "eval_size",
              "feature_views", "optimizer", "momentum", "weight_decay")
    own = {"classifier": ("cls_lr", "cls_epochs", "cls_lr_step", "cls_batch_size", "cls_patience"),
           "retrieval": ("ret_epochs", "ret_lr_step", "ret_batch_size", "ret_patience", "pairs_per_category",
                         "regenerate_every")}[kind]
    return {name: getattr(profile, name) for name in shared + own}


def run_config(kind: str, release, seed: int, **settings) -> dict:
    """The config dict of a run: kind, seed, code version, data fingerprint and ``settings``.

    It is returned as it reads back from ``config.json`` (tuples become lists),
    so a loaded run's config equals a trained one's.
    """
    entries = {"kind": kind, "seed": int(seed), "code": code_version(), "data": release_fingerprint(release),
               **settings}
    return json.loads(json.dumps(entries, default=str))


def run_key(run_config: dict) -> str:
    """The short (12 hex digits) SHA-1 of a config's canonical JSON: the run's cache key."""
    canonical = json.dumps(run_config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(canonical.encode("utf-8")).hexdigest()[:12]


def run_folder(kind: str, key: str) -> Path:
    """``cache/runs/<kind>-<key>``; not created here, but when its first file (a checkpoint) is written."""
    return config.CACHE_DIR / "runs" / f"{kind}-{key}"


# --------------------------------------------------------------------------- files

def save_run(run: Run) -> None:
    """Write a finished run into ``run.path``; its manifest goes last, so a valid one marks it finished."""
    folder = run.path
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / "config.json", json.dumps(run.config, indent=2, sort_keys=True) + "\n")
    write_text(folder / "history.csv", run.history.to_csv(index=False))
    write_text(folder / "epochs.csv", run.epochs.to_csv(index=False))
    payload = {"state_dict": run.model.top.state_dict(), "spec": run.model.spec.to_dict(), "key": run.key,
               "wall_time": run.wall_time}
    atomic_write(folder / "model.pt", lambda temporary: torch.save(payload, temporary))
    cache.write_manifest(folder, DATA_FILES)
    (folder / CHECKPOINT_FILE).unlink(missing_ok=True)
    cache.manifest_path(folder / CHECKPOINT_FILE).unlink(missing_ok=True)


def is_finished(folder: Path | None) -> bool:
    """Whether ``folder`` holds a finished run: a readable manifest of :data:`DATA_FILES`, sizes matching.

    Cheap: no file is hashed (:func:`load_run` does that).
    """
    if folder is None or not (Path(folder) / MANIFEST).is_file():
        return False
    try:
        cache.check_entry(Path(folder), hashes=False, expected=DATA_FILES)
    except DamagedEntry:
        return False
    return True


def load_run(path) -> Run:
    """Load a finished run from its cache folder (or its ``model.pt``).

    Raises ``FileNotFoundError`` naming the missing files when the folder does
    not hold a finished run (no manifest), and :class:`~.cache.DamagedEntry`,
    one line naming the file and the fault, when a file does not match the
    manifest (size or SHA-256) or cannot be read.
    """
    folder = Path(path)
    if folder.name == "model.pt":
        folder = folder.parent
    missing = [name for name in RUN_FILES if not (folder / name).is_file()]
    if MANIFEST in missing:
        raise FileNotFoundError(f"{folder} does not hold a finished run: missing {missing}; expected "
                                f"the files {list(RUN_FILES)} written by train_classifier/train_retrieval")
    cache.check_entry(folder, hashes=True, expected=DATA_FILES)
    run_config = cache.parsed(folder / "config.json", lambda f: dict(json.loads(f.read_text(encoding="utf-8"))))
    history, epochs = (cache.parsed(folder / name, pd.read_csv) for name in ("history.csv", "epochs.csv"))
    network, payload = cache.parsed(folder / "model.pt", _read_model)
    return Run(model=features.with_cached_frozen(network).eval(), config=run_config, key=payload["key"],
               history=history, epochs=epochs, wall_time=float(payload["wall_time"]), from_cache=True, path=folder)


def _read_model(file: Path) -> tuple[models.Network, dict]:
    payload = torch.load(file, map_location="cpu", weights_only=True)
    network = models.build_network(models.ModelSpec(**payload["spec"]), pretrained_top=False)
    network.top.load_state_dict(payload["state_dict"])
    return network, {"key": str(payload["key"]), "wall_time": float(payload["wall_time"])}


def _rng_states() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _restore_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(folder: Path, key: str, top: nn.Module, optimizer, scheduler, history: train.History) -> None:
    """Atomically write the state needed to resume after the last epoch of ``history``."""
    state = {"key": key, "model": top.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "history": vars(history), "rng": _rng_states()}
    folder.mkdir(parents=True, exist_ok=True)  # the first file of a run creates its folder
    atomic_write(folder / CHECKPOINT_FILE, lambda temporary: torch.save(state, temporary))
    cache.write_manifest(folder / CHECKPOINT_FILE, [CHECKPOINT_FILE])


def restore_checkpoint(folder: Path | None, key: str, top: nn.Module, optimizer, scheduler) -> train.History | None:
    """Load the checkpoint of an unfinished run with this key into the objects; return its history.

    Returns ``None`` when there is none. The random-number states are
    restored too, so the resumed run continues exactly where it stopped. A
    damaged checkpoint is reported in one line and moved aside: training
    starts over.
    """
    file = None if folder is None else folder / CHECKPOINT_FILE
    if file is None or not (file.is_file() or cache.manifest_path(file).is_file()):
        return None
    try:
        cache.check_entry(file, hashes=True, expected=[CHECKPOINT_FILE])
        # our own file, holding NumPy and Python RNG states besides tensors
        state = cache.parsed(file, lambda f: dict(torch.load(f, map_location="cpu", weights_only=False)))
    except DamagedEntry as error:
        if distributed.is_main():
            cache.set_aside(file, error)
        return None
    if state.get("key") != key:
        return None
    top.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _restore_rng_states(state["rng"])
    return train.History(**state["history"])


# --------------------------------------------------------------------------- what the top sees

def device_of(device) -> torch.device:
    return torch.device(device) if device is not None else config.get_device()


def eval_inputs(network: models.Network, paths, labels, profile: config.Profile, progress: bool = True):
    """What ``network.top`` sees of images at evaluation: their frozen maps, or the decoded images themselves."""
    transform = data.eval_transform(profile.eval_size, *network.spec.normalization)
    images = data.eval_dataset(paths, labels, transform, progress)
    if network.spec.cut is None:
        return images
    with torch.no_grad():
        maps = torch.cat([network.frozen(batch) for batch, _ in DataLoader(images, batch_size=profile.eval_batch_size)])
    return features.MapDataset(maps.half()[None], images.labels)


def training_inputs(network: models.Network, images: data.ImageList, profile: config.Profile, seed: int,
                    cache: bool, progress: bool) -> Callable[[int], torch.utils.data.Dataset]:
    """``epoch -> Dataset`` of what ``network.top`` trains on: augmented images, or cached augmented views."""
    spec = network.spec
    if spec.cut is None:
        transform = data.train_transform(profile.train_size_range, *spec.normalization)
        dataset = data.decoded_dataset(images.paths, images.labels, transform, progress)
        return lambda epoch: dataset
    maps = features.train_view_maps(network, images.paths, profile.train_size_range, profile.feature_views,
                                    progress, cache=cache)
    return partial(features.random_views, maps, images.labels, seed)


def embed_inputs(top: nn.Module, inputs, profile: config.Profile, device) -> torch.Tensor:
    """Embeddings (or logits) of ``top`` over inputs of :func:`eval_inputs`."""
    return models.extract_embeddings(top, inputs, batch_size=profile.eval_batch_size, device=device, progress=False)


# --------------------------------------------------------------------------- load or fit

@dataclass
class Recipe:
    """Everything that defines a run before it is trained: its config (and so its key), how to build it, its schedule.

    ``build()`` returns the starting network; ``prepare(network)`` returns
    ``(loader_for, step, validate, batch_weight)`` for
    :func:`helpers.train.fit` (it decodes the data, so it runs only when
    training is needed).
    """

    kind: str
    folder_kind: str
    config: dict
    build: Callable[[], models.Network]
    prepare: Callable[[models.Network], tuple]
    profile: config.Profile
    lr: float
    epochs: int
    lr_step: int
    patience: int | None
    seed: int

    @property
    def key(self) -> str:
        return run_key(self.config)


@dataclass
class Training:
    """A run set up to train: the network, its optimiser and schedule, and what :func:`helpers.train.fit` takes.

    ``loader_for(epoch)`` gives an epoch's batches, ``step(model, batch)``
    one batch's loss and statistics, ``validate(top)`` the validation score;
    the model to train is ``network.top``.
    """

    network: models.Network
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loader_for: Callable
    step: Callable
    validate: Callable
    batch_weight: Callable


def set_up(recipe: Recipe, device=None, cache: bool = True) -> Training:
    """Seed, build the network, prepare the data and the optimiser: a run at its start, as training sees it.

    The network is built after seeding, so a projection or a head starts
    from the same weights every time. With ``cache`` the frozen maps come
    from (and go to) ``cache/features/``.
    """
    device = device_of(device)
    config.seed_everything(recipe.seed)
    network = recipe.build()
    if cache:
        network = features.with_cached_frozen(network)
    with distributed.main_first():  # rank 0 fills the feature cache, the others read it
        loader_for, step, validate, batch_weight = recipe.prepare(network)
    network.top = distributed.sync_batchnorm(network.top, device).to(device)
    profile = recipe.profile
    optimizer = train.build_optimizer(network.top.parameters(), profile.optimizer, recipe.lr, profile.momentum,
                                      profile.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=recipe.lr_step, gamma=0.1)
    return Training(network, optimizer, scheduler, loader_for, step, validate, batch_weight)


@contextlib.contextmanager
def _lock(folder: Path | None):
    """Hold a file lock on the run of ``folder`` (under ``cache/locks/``); none without a cache or under torchrun.

    A second process asking for the same run waits for the first, then
    loads its result instead of training beside it. Under torchrun the
    ranks of one job agree through their own barriers instead. A cache
    that cannot take the lock (read-only, full) raises :class:`CacheWriteError`
    in one line: it cannot hold a new run either.
    """
    if folder is None or distributed.is_distributed():
        yield
        return
    locks = folder.parent.parent / "locks"
    try:
        locks.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(locks / f"{folder.name}.lock")
        lock.acquire()
    except OSError as error:
        code = cache.write_fault(error)
        if code is None:
            raise
        raise CacheWriteError(f"cannot train the run {folder.name} here: {WRITE_FAULTS[code]} ({locks})",
                              code) from None
    try:
        yield
    finally:
        lock.release()


def _epoch_row(history: train.History, index: int, val_column: str) -> dict:
    row = dict(history.epochs[index])
    row[val_column] = row.pop("val")
    return row


def load_or_fit(recipe: Recipe, *, device=None, cache: bool = True, progress: bool = True,
                on_epoch_end: Callable[[dict], None] | None = None) -> Run:
    """Load the cached run of ``recipe``, or train it (resuming from its checkpoint) and cache it.

    ``on_epoch_end(row)`` gets each trained epoch's row of the epochs table
    (epoch 1 on), whether the epoch is trained now, restored from a
    checkpoint or read from the cache, so a caller sees the same sequence
    every time (the tuning prunes on it). Under torchrun every process
    trains its share of each batch, BatchNorm uses the statistics of the
    global batch, and only rank 0 writes the checkpoints and the cache entry.
    """
    folder = run_folder(recipe.folder_kind, recipe.key) if cache else None
    run = _cached(folder)  # a finished run is read without the lock, so a read-only cache serves it
    if run is None:
        with _lock(folder):
            run = _cached(folder)  # another process may have finished it while this one waited
            if run is None:
                return _fit(recipe, folder, device, cache, progress, on_epoch_end)
    for _, row in run.epochs[run.epochs["epoch"] > 0].iterrows():
        if on_epoch_end is not None:
            on_epoch_end(row.to_dict())
    return run


def _cached(folder: Path | None) -> Run | None:
    """The finished run in ``folder``, or ``None`` (a damaged entry is reported in one line and moved aside)."""
    if folder is None or not (folder / MANIFEST).is_file():
        return None
    try:
        return load_run(folder)
    except DamagedEntry as error:
        if distributed.is_main():
            set_aside(folder, error)
        distributed.barrier()
        return None


def _fit(recipe: Recipe, folder: Path | None, device, cache: bool, progress: bool,
         on_epoch_end: Callable[[dict], None] | None) -> Run:
    """Train ``recipe`` from its start or its checkpoint in ``folder``, and cache the finished run there."""
    key = recipe.key
    device = device_of(device)
    training = set_up(recipe, device, cache)
    top, optimizer, scheduler = training.network.top, training.optimizer, training.scheduler
    history = restore_checkpoint(folder, key, top, optimizer, scheduler)
    writes = folder is not None and distributed.is_main()
    val_column = VAL_COLUMNS[recipe.kind]
    if history is not None and on_epoch_end is not None:
        for index in range(1, len(history.epochs)):  # the epochs the checkpoint already holds
            on_epoch_end(_epoch_row(history, index, val_column))

    def after_epoch(history: train.History) -> None:
        if writes:
            save_checkpoint(folder, key, top, optimizer, scheduler, history)
        if on_epoch_end is not None:
            on_epoch_end(_epoch_row(history, -1, val_column))

    history = train.fit(top, optimizer, scheduler, training.loader_for,
                        distributed.data_parallel_step(training.step, top, device, training.batch_weight),
                        distributed.agreed(training.validate), recipe.epochs, patience=recipe.patience,
                        history=history, on_epoch_end=after_epoch, progress=progress and distributed.is_main(),
                        desc=recipe.folder_kind, score_name=val_column)
    network = training.network
    network.top = distributed.plain_batchnorm(top, lambda: recipe.build().top).cpu()
    epochs_table = pd.DataFrame(history.epochs).rename(columns={"val": val_column})
    run = Run(model=network.eval(), config=recipe.config, key=key, history=pd.DataFrame(history.iterations),
              epochs=epochs_table, wall_time=history.wall_time, from_cache=False, path=folder)
    if writes:
        save_run(run)
    distributed.barrier()
    return run


# --------------------------------------------------------------------------- stage 1

def classifier_recipe(release, profile: config.Profile, *, seed: int = config.DEFAULT_SEED,
                      cache: bool = True, progress: bool = True) -> Recipe:
    """The :class:`Recipe` of stage 1 (see :func:`train_classifier`)."""
    n_classes = len(release.classification_train.classes)
    spec = models.ModelSpec.of(profile, n_classes=n_classes)
    if spec.weights:
        models.check_imagenet_weights(spec.backbone)  # fails early, before any work
    settings = run_config("classifier", release, seed, **stage_settings(profile, "classifier"),
                          model=spec.to_dict(), class_weighting="inverse_count_mean_1")

    def prepare(network: models.Network):
        train_images = release.classification_train
        inputs = training_inputs(network, train_images, profile, seed, cache, progress)
        val = eval_inputs(network, release.classification_val.paths, release.classification_val.labels,
                          profile, progress)
        weights = train.class_weights(train_images.labels, n_classes)

        def validate(top: nn.Module) -> float:
            return float((embed_inputs(top, val, profile, None).argmax(dim=1).numpy() == val.labels).mean())

        def loader_for(epoch: int):
            return distributed.epoch_loader(inputs(epoch), profile.cls_batch_size, seed, epoch, profile.num_workers)

        return (loader_for, partial(train.classifier_step, weights=weights), validate,
                lambda batch: float(weights[batch[1]].sum()))

    return Recipe("classifier", "classifier", settings, lambda: models.build_network(spec), prepare, profile,
                  lr=profile.cls_lr, epochs=profile.cls_epochs, lr_step=profile.cls_lr_step,
                  patience=profile.cls_patience, seed=seed)


def train_classifier(release, profile: config.Profile, *, seed: int = config.DEFAULT_SEED, device=None,
                     cache: bool = True, progress: bool = True,
                     on_epoch_end: Callable[[dict], None] | None = None) -> Run:
    """Stage 1: train a classifier over the training categories; load it if already trained.

    Class-weighted cross entropy (:func:`helpers.train.class_weights` of
    ``release.classification_train``), training augmentation,
    ``profile.cls_lr`` x 0.1 every ``cls_lr_step`` epochs for ``cls_epochs``
    epochs of ``cls_batch_size`` images (fewer with ``cls_patience``);
    accuracy on ``release.classification_val`` after every epoch (and at
    epoch 0). The run keeps its best validation epoch.
    """
    recipe = classifier_recipe(release, profile, seed=seed, cache=cache, progress=progress)
    return load_or_fit(recipe, device=device, cache=cache, progress=progress, on_epoch_end=on_epoch_end)


# --------------------------------------------------------------------------- stage 2

def _start(init, profile: config.Profile) -> tuple[dict, Callable[[], models.Network]]:
    """(config entries, network builder) for a start: "random", "imagenet", a stage-1 Run or its folder."""
    if isinstance(init, str) and init in INITS:
        spec = models.ModelSpec.of(profile, weights="imagenet" if init == "imagenet" else None)
        if spec.weights:
            models.check_imagenet_weights(spec.backbone)  # fails early, before any work
        return {"init": init, "init_key": None}, lambda: models.build_network(spec)
    if isinstance(init, (str, Path)):
        init = load_run(init)
    if not isinstance(init, Run):
        raise TypeError(f"init must be one of {list(INITS)}, a stage-1 Run or its folder; got {init!r}")
    if init.kind != "classifier":
        raise ValueError(f"init must be a stage-1 classifier run; run {init.key} is a {init.kind} run")
    classifier = init.model
    return ({"init": "classifier", "init_key": init.key},
            lambda: classifier.embedding(profile.embedding_dim))


def schedule_of(init) -> str:
    """``"one-stage"`` for a start from ImageNet or random weights, ``"two-stage"`` for a start from stage 1."""
    return "one-stage" if isinstance(init, str) and init in INITS else "two-stage"


def default_settings(profile: config.Profile, loss, init) -> dict:
    """``{"lr": ..., "margins": {...}}`` of a retrieval run of ``loss`` from ``init`` when none are given.

    The settings ``make results`` tuned for that loss and schedule
    (:func:`helpers.config.tuned_settings`) where the profile holds them,
    else ``profile.ret_lr`` and the profile's margins.
    """
    method = methods.get(loss)
    tuned = config.tuned_settings(profile, schedule_of(init), method.name)
    if tuned is None:
        return {"lr": profile.ret_lr, "margins": method.margins(profile)}
    return {"lr": tuned["lr"], "margins": {name: tuned[name] for name in method.margin_fields}}


def retrieval_recipe(release, loss, init, profile: config.Profile, *, seed: int = config.DEFAULT_SEED,
                     lr: float | None = None, margins: dict | None = None, cache: bool = True,
                     progress: bool = True) -> Recipe:
    """The :class:`Recipe` of a retrieval run (see :func:`train_retrieval`)."""
    method = methods.get(loss)
    defaults = default_settings(profile, method.name, init)
    margins = dict(defaults["margins"] if margins is None else margins)
    if sorted(margins) != sorted(method.margin_fields):
        raise ValueError(f"the {method.name} loss takes the margins {list(method.margin_fields)}, got {list(margins)}")
    lr = defaults["lr"] if lr is None else float(lr)
    start, build = _start(init, profile)
    settings = run_config("retrieval", release, seed, **stage_settings(profile, "retrieval"),
                          loss=method.name, **margins, lr=lr, **start)

    def prepare(network: models.Network):
        split = release.validation
        inputs = training_inputs(network, release.retrieval_train, profile, seed, cache, progress)
        labels = np.concatenate([split.query_labels, split.database_labels])
        images = eval_inputs(network, list(split.queries) + list(split.database), labels, profile, progress)
        per_category, batch_size = train.tuple_budget(method, profile.pairs_per_category, profile.ret_batch_size)
        tuples = train.training_tuples(method, release.retrieval_train.labels, per_category,
                                       profile.regenerate_every, seed)

        def loader_for(epoch: int):
            indices, targets = tuples(epoch)
            return distributed.epoch_loader(train.TupleDataset(inputs(epoch), indices, targets), batch_size, seed,
                                            epoch, profile.num_workers)

        def validate(top: nn.Module) -> float:
            return metrics.leave_one_out_map(embed_inputs(top, images, profile, None), labels, mode="trapezoid")[0]

        step = partial(train.pair_step if method.is_pair_loss else train.triplet_step,
                       loss=method.per_item_loss(margins))
        return loader_for, step, validate, lambda batch: len(batch[0])

    return Recipe("retrieval", f"retrieval-{method.name}", settings, build, prepare, profile, lr=lr,
                  epochs=profile.ret_epochs, lr_step=profile.ret_lr_step, patience=profile.ret_patience, seed=seed)


def train_retrieval(release, loss, init, profile: config.Profile, *, seed: int = config.DEFAULT_SEED,
                    lr: float | None = None, margins: dict | None = None, device=None, cache: bool = True,
                    progress: bool = True, on_epoch_end: Callable[[dict], None] | None = None) -> Run:
    """Train an embedding network with a pair or triplet loss; load it if already trained.

    ``loss`` names a method of :data:`helpers.methods.METHODS`. ``init`` is
    ``"random"``, ``"imagenet"``, a stage-1 run of :func:`train_classifier`
    or its cache folder. The learning rate and margins are ``lr`` and
    ``margins``, or those tuned for the loss and its schedule
    (:func:`default_settings`).

    Every epoch draws ``pairs_per_category`` pairs per category of
    ``release.retrieval_train`` (half positive, half negative), redrawn every
    ``regenerate_every`` epochs, in batches of ``ret_batch_size`` whose
    images go through the network in one forward pass; the triplet loss gets
    as many images, in two thirds as many triplets
    (:func:`helpers.train.tuple_budget`). Training runs ``ret_epochs``
    epochs (fewer with ``ret_patience``), with the learning rate x 0.1 every
    ``ret_lr_step``; the validation mAP (trapezoid, every image of
    ``release.validation`` a query against all the others:
    :func:`helpers.metrics.leave_one_out_map`) is measured before training
    (epoch 0) and after every epoch, and the run
    keeps the weights of its best validation epoch.
    """
    recipe = retrieval_recipe(release, loss, init, profile, seed=seed, lr=lr, margins=margins, cache=cache,
                              progress=progress)
    return load_or_fit(recipe, device=device, cache=cache, progress=progress, on_epoch_end=on_epoch_end)


def retrieval_training(release, loss, init, profile: config.Profile, *, seed: int = config.DEFAULT_SEED,
                       lr: float | None = None, margins: dict | None = None) -> Training:
    """A retrieval run at its start, exactly as :func:`train_retrieval` would train it: to train by hand.

    Its ``network.top``, ``optimizer`` and ``loader_for(epoch)`` are those
    of the run of the same arguments, so one epoch written out over them
    gives that run's losses, number for number (notebook 03).
    """
    recipe = retrieval_recipe(release, loss, init, profile, seed=seed, lr=lr, margins=margins, progress=False)
    return set_up(recipe, device="cpu")


def untrained_model(profile: config.Profile, seed: int = config.DEFAULT_SEED, cache: bool = True) -> models.Network:
    """The embedding network of ``profile`` with its initial weights (seeded), in eval mode.

    The "before training" reference: with ``weights="imagenet"`` it is the
    ImageNet network before fine-tuning.
    """
    config.seed_everything(seed)
    network = models.build_network(models.ModelSpec.of(profile))
    return (features.with_cached_frozen(network) if cache else network).eval()
