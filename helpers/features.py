"""What the trainable network sees: images, or the cached output of a frozen lower trunk.

A profile with ``cut`` set freezes the lower trunk of its pretrained backbone
(the stem and the MBConv blocks before ``cut``). Its output never changes, so
it is computed once per image and view and cached on disk under
``cache/features/``; training, validation and evaluation then run only the
trainable top of the network on those maps. A profile without ``cut`` (the
paper's, full fine-tuning) feeds decoded images through the whole network.
:func:`training_inputs` and :func:`eval_inputs` hide the difference.

**Views.** Training augmentation (random size, flip, rotation, jitter) is
applied before the frozen trunk, so a fixed number of augmented views,
``profile.feature_views``, is cached per training image; every epoch each
image is seen in one of them, drawn at random (seeded by the run's seed and
the epoch). View ``v`` of an image is a pure function of the image's bytes,
``v`` and the settings, so the cache does not depend on which notebook asked
first. Evaluation uses one view through the evaluation transform.

**Keys.** A store of cached maps is keyed by the backbone, the cut point,
the transform and its sizes, the number of views and a hash of the code that
makes them; inside a store every image is found by the SHA-1 of its file, so
the classification and retrieval splits of a release (the same pictures
under two folders) are computed once.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from . import config, data, models, runs
from .progress import bar as tqdm

FEATURE_CODE = ("data", "features", "imagenet", "models")
"""Modules whose source is hashed into every feature store's key."""
BATCH_SIZE = 64


@lru_cache(maxsize=None)
def _code_hash() -> str:
    package = Path(__file__).resolve().parent
    digest = hashlib.sha1()
    for name in FEATURE_CODE:
        digest.update((package / f"{name}.py").read_bytes())
    return digest.hexdigest()[:12]


def file_digest(path) -> str:
    """SHA-1 of a file's bytes: how a cached map finds its image."""
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def store_settings(profile: config.Profile, kind: str) -> dict:
    """What shapes the cached maps of ``kind`` (``"train"`` views or the ``"eval"`` view)."""
    if kind not in ("train", "eval"):
        raise ValueError(f"kind must be 'train' or 'eval', got {kind!r}")
    sizes = list(profile.train_size_range) if kind == "train" else [profile.eval_size]
    return {"backbone": profile.backbone, "weights": profile.weights, "cut": profile.cut, "kind": kind,
            "sizes": sizes, "views": profile.feature_views if kind == "train" else 1, "code": _code_hash()}


class _SeededViews(Dataset):
    """Item ``i`` is view ``view`` of image ``i``: the transform run with torch seeded by (image, view)."""

    def __init__(self, images: data.ImageDataset, digests: list[str], view: int):
        self.images, self.digests, self.view = images, digests, view

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        seed = int(self.digests[i][:12], 16) * 7919 + self.view
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed % 2**63)
            return self.images[i]


@torch.no_grad()
def compute_maps(frozen: nn.Module, images: data.ImageDataset, digests: list[str], views: int,
                 progress: bool = True) -> torch.Tensor:
    """``frozen``'s output for every image in ``views`` seeded views: float16 ``(views, N, C, H, W)``."""
    frozen = frozen.eval().to(memory_format=torch.channels_last)  # depthwise convolutions run faster so on CPU
    out = []
    with tqdm(total=views * len(images), desc="caching frozen features", unit="img", disable=not progress) as bar:
        for view in range(views):
            chunks = []
            for batch, _ in DataLoader(_SeededViews(images, digests, view), batch_size=BATCH_SIZE):
                chunks.append(frozen(batch.contiguous(memory_format=torch.channels_last)).contiguous().half())
                bar.update(len(batch))
            out.append(torch.cat(chunks))
    return torch.stack(out)


def frozen_trunk(profile: config.Profile) -> nn.Module:
    """The frozen lower trunk of ``profile``'s backbone, in eval mode, without gradients."""
    if profile.cut is None:
        raise ValueError(f"profile {profile.name!r} freezes nothing (cut=None): there is no frozen trunk")
    return models.build_frozen_trunk(profile.backbone, profile.weights, profile.cut)


def cached_maps(paths, profile: config.Profile, kind: str, progress: bool = True) -> torch.Tensor:
    """Frozen-trunk maps of ``paths`` (float16 ``(views, N, C, H, W)``), computed only where not cached."""
    settings = store_settings(profile, kind)
    key = runs.run_key(settings)
    file = config.cache_dir("features") / f"{profile.backbone}-cut{profile.cut}-{kind}-{key}.pt"
    store = torch.load(file, weights_only=True) if file.is_file() else {"digests": [], "maps": None}
    digests = [file_digest(p) for p in paths]
    known = {d: i for i, d in enumerate(store["digests"])}
    missing = list(dict.fromkeys(d for d in digests if d not in known))
    if missing:
        first_path = {d: p for p, d in zip(paths, digests)}
        transform = data.train_transform(profile) if kind == "train" else data.eval_transform(profile)
        images = data.ImageDataset([first_path[d] for d in missing], transform=transform, progress=progress)
        if len(images) != len(missing):
            raise ValueError(f"{len(missing) - len(images)} image(s) could not be decoded; cached features "
                             "need every one of them (see the warning that lists them)")
        new = compute_maps(frozen_trunk(profile), images, missing, settings["views"], progress)
        store = {"digests": store["digests"] + missing,
                 "maps": new if store["maps"] is None else torch.cat([store["maps"], new], dim=1),
                 "settings": json.dumps(settings)}
        runs.atomic_write(file, lambda temporary: torch.save(store, temporary))
        known = {d: i for i, d in enumerate(store["digests"])}
    return store["maps"][:, [known[d] for d in digests]]


class MapDataset(Dataset):
    """Cached maps of one view per image, with labels: item ``i`` is ``(maps[view[i], i] as float32, label)``."""

    def __init__(self, maps: torch.Tensor, labels, view=None):
        self.maps = maps
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        n = maps.shape[1]
        if len(self.labels) != n:
            raise ValueError(f"got {n} cached maps but {len(self.labels)} labels")
        self.view = np.zeros(n, dtype=np.int64) if view is None else np.asarray(view, dtype=np.int64)

    def __len__(self) -> int:
        return self.maps.shape[1]

    def __getitem__(self, i: int):
        return self.maps[self.view[i], i].float(), int(self.labels[i])


@dataclass
class TrainingInputs:
    """The training images as the trainable network sees them: ``for_epoch(epoch)`` gives that epoch's Dataset."""

    labels: np.ndarray
    for_epoch: Callable[[int], Dataset]


def training_inputs(images: data.ImageList, profile: config.Profile, seed: int,
                    progress: bool = True) -> TrainingInputs:
    """Augmented training inputs: decoded images through the training transform, or cached views.

    With cached views, epoch ``e`` shows each image in a view drawn at random
    from ``profile.feature_views``, seeded by ``(seed, e)``.
    """
    if profile.cut is None:
        dataset = data.decoded_dataset(images.paths, images.labels, data.train_transform(profile), progress)
        return TrainingInputs(labels=dataset.labels, for_epoch=lambda epoch: dataset)
    maps = cached_maps(images.paths, profile, "train", progress)

    def for_epoch(epoch: int) -> MapDataset:
        rng = np.random.default_rng([int(seed), int(epoch)])
        return MapDataset(maps, images.labels, view=rng.integers(0, maps.shape[0], size=maps.shape[1]))
    return TrainingInputs(labels=np.asarray(images.labels), for_epoch=for_epoch)


def eval_inputs(paths, labels, profile: config.Profile, progress: bool = True) -> Dataset:
    """Evaluation inputs: decoded images through the evaluation transform, or their cached maps."""
    if profile.cut is None:
        return data.eval_dataset(paths, labels, profile, progress)
    return MapDataset(cached_maps(list(paths), profile, "eval", progress), labels)
