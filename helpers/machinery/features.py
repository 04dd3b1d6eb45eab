"""The frozen trunk's maps, computed once and kept on disk under ``cache/features/``.

A network with a cut (:class:`helpers.models.Network`) freezes the lower trunk
of its pretrained backbone. Its output never changes, so it is computed once
per image and kept; training and evaluation then run only the trainable top.
This module is an optimisation: a network gives the same embeddings with or
without it, since its frozen trunk rounds its maps to float16, as they are
stored.

* **Training views** (:func:`train_view_maps`). Augmentation (random size,
  flip, rotation, jitter) runs before the frozen trunk, so a fixed number of
  augmented views is cached per training image; each epoch shows every image
  in one of them, drawn at random (:class:`MapDataset`). View ``v`` of an
  image is a pure function of the image's bytes, ``v`` and the settings.
* **Evaluation** (:class:`CachedFrozen`). A network loaded or trained by
  :mod:`helpers.machinery.runs` has its frozen trunk wrapped so that every
  input it has seen before, recognised by the SHA-1 of the input tensor, is
  answered from the cache.

A store is keyed by the backbone, weights and cut, the transform settings and
the version of the code that makes the maps. Every store file and shard has a
manifest beside it (``<file>.manifest.json``, :func:`.cache.write_manifest`),
checked when it is read: a damaged one is reported in one line, moved aside
and its maps computed again.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .. import config, data, models
from ..progress import bar as tqdm
from .cache import DamagedEntry, atomic_write, check_entry, code_version, manifest_path, parsed, set_aside, \
    write_manifest

FEATURE_CODE = ("data.images", "data.transforms", "imagenet", "models", "machinery.features")
"""Modules whose code shapes the cached maps: part of every store's key."""
BATCH_SIZE = 64


def features_dir() -> Path:
    """``cache/features``, not created until something is written there."""
    return config.CACHE_DIR / "features"


def write_checked(file: Path, payload: dict) -> None:
    """Atomically save ``payload`` to ``file``, then its manifest beside it."""
    file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(file, lambda temporary: torch.save(payload, temporary))
    write_manifest(file, [file.name])


def _load_maps(file: Path) -> dict:
    entry = dict(torch.load(file, weights_only=True))
    maps = 0 if entry["maps"] is None else entry["maps"].shape[-4]
    if len(entry["digests"]) != maps:
        raise ValueError(f"{len(entry['digests'])} image digests for {maps} maps")
    return entry


def read_checked(file: Path) -> dict | None:
    """The store or shard saved in ``file``; ``None`` when it is damaged (reported in one line and moved aside)."""
    try:
        check_entry(file, hashes=True, expected=[file.name])
        return parsed(file, _load_maps)
    except DamagedEntry as error:
        set_aside(file, error)
        return None


def store_key(spec: models.ModelSpec, **settings) -> str:
    """Short SHA-1 of what shapes a store: the frozen trunk, the ``settings`` and the code version."""
    entries = {"backbone": spec.backbone, "weights": spec.weights, "cut": spec.cut, **settings,
               "code": code_version(FEATURE_CODE)}
    return hashlib.sha1(json.dumps(entries, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:12]


def file_digest(path) -> str:
    """SHA-1 of a file's bytes: how a cached training view finds its image."""
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def tensor_digest(tensor: torch.Tensor) -> str:
    """SHA-1 of a tensor's shape and bytes: how an evaluation input finds its cached map."""
    tensor = tensor.detach().cpu().contiguous()
    digest = hashlib.sha1(str(tuple(tensor.shape)).encode("utf-8"))
    digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------- training views

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
def frozen_maps(frozen: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """``frozen``'s float16 output for a batch of images, run in channels-last chunks of :data:`BATCH_SIZE`.

    Depthwise convolutions run faster channels-last on a CPU; the fixed chunk
    size makes the maps of an image the same whichever call computes them.
    """
    frozen = frozen.eval().to(memory_format=torch.channels_last)
    return torch.cat([frozen(chunk.contiguous(memory_format=torch.channels_last)).contiguous().half()
                      for chunk in batch.split(BATCH_SIZE)])


@torch.no_grad()
def compute_views(frozen: nn.Module, images: data.ImageDataset, digests: list[str], views: int,
                  progress: bool = True) -> torch.Tensor:
    """``frozen``'s output for every image in ``views`` seeded views: float16 ``(views, N, C, H, W)``."""
    out = []
    with tqdm(total=views * len(images), desc="caching frozen features", unit="img", disable=not progress) as bar:
        for view in range(views):
            chunks = []
            for batch, _ in DataLoader(_SeededViews(images, digests, view), batch_size=BATCH_SIZE):
                chunks.append(frozen_maps(frozen, batch))
                bar.update(len(batch))
            out.append(torch.cat(chunks))
    return torch.stack(out)


def train_view_maps(network: models.Network, paths, size_range: tuple[int, int], views: int,
                    progress: bool = True, cache: bool = True) -> torch.Tensor:
    """The frozen maps of ``views`` augmented views of every image (float16 ``(views, N, C, H, W)``).

    Computed only for images not yet in the store, which is keyed by
    :func:`store_key` and inside it by each image file's SHA-1 (the
    classification and retrieval splits hold the same pictures under two
    folders: they are computed once). ``cache=False`` computes them all and
    writes nothing.
    """
    spec = network.spec
    if spec.cut is None:
        raise ValueError("the network freezes nothing (cut=None): there are no frozen maps to cache")
    if views < 1:
        raise ValueError(f"feature_views must be at least 1 when a trunk is frozen, got {views}")
    key = store_key(spec, kind="train", sizes=list(size_range), views=views)
    file = features_dir() / f"{spec.backbone}-cut{spec.cut}-train-{key}.pt" if cache else None
    store = read_checked(file) if cache and (file.is_file() or manifest_path(file).is_file()) else None
    store = store or {"digests": [], "maps": None}
    digests = [file_digest(p) for p in paths]
    known = {d: i for i, d in enumerate(store["digests"])}
    missing = list(dict.fromkeys(d for d in digests if d not in known))
    if missing:
        first_path = {d: p for p, d in zip(paths, digests)}
        transform = data.train_transform(size_range, *spec.normalization)
        images = data.ImageDataset([first_path[d] for d in missing], transform=transform, progress=progress)
        if len(images) != len(missing):
            raise ValueError(f"{len(missing) - len(images)} image(s) could not be decoded; cached features "
                             "need every one of them (see the warning that lists them)")
        new = compute_views(inner_frozen(network), images, missing, views, progress)
        store = {"digests": store["digests"] + missing,
                 "maps": new if store["maps"] is None else torch.cat([store["maps"], new], dim=1)}
        if cache:
            write_checked(file, store)
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


def random_views(maps: torch.Tensor, labels, seed: int, epoch: int) -> MapDataset:
    """The training images of one epoch, each in one of its cached views drawn at random, seeded by ``(seed, epoch)``."""
    rng = np.random.default_rng([int(seed), int(epoch)])
    return MapDataset(maps, labels, view=rng.integers(0, maps.shape[0], size=maps.shape[1]))


# --------------------------------------------------------------------------- evaluation

class CachedFrozen(nn.Module):
    """A frozen trunk that answers inputs it has seen before from a store on disk.

    Each input image is recognised by :func:`tensor_digest`; the maps of the
    others are computed by the wrapped trunk (which rounds them to float16)
    and added to the store as one shard file per call. The output is the
    trunk's own, so the cache changes speed, never results.
    """

    def __init__(self, frozen: nn.Module, folder: Path):
        super().__init__()
        self.inner = frozen
        self.folder = Path(folder)
        self._maps: dict[str, torch.Tensor] | None = None

    def _store(self) -> dict[str, torch.Tensor]:
        if self._maps is None:
            self._maps = {}
            for shard in sorted(self.folder.glob("*.pt")) if self.folder.is_dir() else []:
                entry = read_checked(shard)  # a damaged shard is moved aside: its maps are computed again
                if entry is not None:
                    self._maps.update(zip(entry["digests"], entry["maps"]))
        return self._maps

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        store = self._store()
        digests = [tensor_digest(image) for image in images]
        missing = [i for i, d in enumerate(digests) if d not in store]
        if missing:
            maps = frozen_maps(self.inner, images[missing]).cpu()
            fresh = [digests[i] for i in missing]
            store.update(zip(fresh, maps))
            name = hashlib.sha1("".join(fresh).encode("utf-8")).hexdigest()[:16]
            write_checked(self.folder / f"{name}.pt", {"digests": fresh, "maps": maps})
        return torch.stack([store[d] for d in digests]).float().to(images.device)


def inner_frozen(network: models.Network) -> nn.Module:
    """The network's frozen trunk itself, unwrapped from :class:`CachedFrozen` if need be."""
    frozen = network.frozen
    return frozen.inner if isinstance(frozen, CachedFrozen) else frozen


def with_cached_frozen(network: models.Network) -> models.Network:
    """``network`` with its frozen trunk answered from ``cache/features/`` (a network without a cut is unchanged)."""
    spec = network.spec
    if spec.cut is None or isinstance(network.frozen, CachedFrozen):
        return network
    key = store_key(spec, kind="eval")
    network.frozen = CachedFrozen(network.frozen, features_dir() / f"{spec.backbone}-cut{spec.cut}-eval-{key}")
    return network
