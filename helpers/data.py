"""Loading the Firearm 14k release layout, decoding images, transforms and samplers.

One loader, :func:`load_firearm_release`,
reads the authors' release layout (the real data or the synthetic stand-in that
:func:`make_synthetic_release` renders in the same layout)::

    root/
      firearm-train-val/<category>/*.jpg                  classification data
      firearm-dataset/train/<category>/*.jpg              retrieval training data
      firearm-dataset/{validation,test}/database_image/*.jpg
      firearm-dataset/{validation,test}/query_info/query_image/*.jpg
      firearm-dataset/{validation,test}/query_info/ground_truth_info.json

Everything downstream sees the same small objects: :class:`ImageList` (paths
plus integer labels), :class:`RetrievalSplit` (queries, database and ground
truth as database positions) and :class:`FirearmRelease` (all of them).
Images are decoded once into RAM as uint8 tensors (:class:`ImageDataset`), so
training never waits on the disk; the transforms then work on those tensors.
"""
from __future__ import annotations

import json
import os
import struct
import warnings
import zlib
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageOps
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from . import config
from .layout import (DATABASE_DIR, DATASET_DIR, IMAGE_EXTENSIONS, QUERY_INFO_DIR, RETRIEVAL_TRAIN_DIR,
                     TRAIN_VAL_DIR, split_locations)
from .progress import bar as tqdm
from .synthetic import make_synthetic_release  # also offered here as data.make_synthetic_release

_IGNORED_FOLDERS = {"__MACOSX"}
_SHOW = 5  # how many offending names an error or warning lists


class DatasetLayoutError(ValueError):
    """The release layout on disk is not what the loader expects.

    Every message names the
    offending path and says what was expected there.
    """


class UnreadableImageWarning(UserWarning):
    """Some image files could not be decoded and were skipped."""


# ----------------------------------------------------------------------------------------------
# Labelled image lists and retrieval splits
# ----------------------------------------------------------------------------------------------


@dataclass
class ImageList:
    """A labelled list of image files: ``paths[i]`` belongs to class ``classes[labels[i]]``.

    ``labels`` is an int64 array of
    indices into ``classes``.
    """

    paths: list[Path]
    labels: np.ndarray
    classes: list[str]

    def __post_init__(self):
        self.paths = [Path(p) for p in self.paths]
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(self.labels) != len(self.paths):
            raise ValueError(f"ImageList has {len(self.paths)} paths but {len(self.labels)} labels")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise ValueError(
                f"ImageList labels must lie in [0, {len(self.classes)}); "
                f"got values from {self.labels.min()} to {self.labels.max()}"
            )

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices) -> "ImageList":
        """The images at ``indices`` (integer positions or a boolean mask), same class list."""
        index = np.asarray(indices)
        if index.dtype == bool:
            if index.shape != (len(self),):
                raise ValueError(f"boolean mask has shape {index.shape}; expected ({len(self)},)")
            index = np.flatnonzero(index)
        index = index.astype(np.int64).reshape(-1)
        return ImageList([self.paths[i] for i in index], self.labels[index], list(self.classes))

    def counts(self) -> pd.Series:
        """Images per class as a pandas Series indexed by class name (classes with none give 0)."""
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return pd.Series(counts, index=pd.Index(self.classes, name="category"), name="images")


@dataclass
class RetrievalSplit:
    """Queries, database and ground truth of one retrieval split (``validation`` or ``test``).

    ``ground_truth[q]`` holds the
    sorted int64 positions in ``database`` that match query ``q``.
    ``query_labels`` and ``database_labels`` are group ids recovered from the
    ground truth alone: queries that share matching database images form one
    group (connected components of the query-database graph, which for the
    real data are exactly the unseen categories), each database image takes
    the group of the queries that list it, and -1 marks a database image that
    no query lists.
    """

    name: str
    queries: list[Path]
    database: list[Path]
    ground_truth: list[np.ndarray]
    query_labels: np.ndarray
    database_labels: np.ndarray

    @property
    def n_groups(self) -> int:
        """How many groups (unseen categories) the ground truth defines."""
        return int(self.query_labels.max()) + 1 if len(self.query_labels) else 0


@dataclass
class FirearmRelease:
    """Everything the notebooks need from one release root.

    ``categories`` are the sorted
    training category names; ``classification_train`` / ``classification_val``
    are a deterministic per-category split of ``firearm-train-val``;
    ``retrieval_train`` is ``firearm-dataset/train`` with the same class
    indices; ``validation`` and ``test`` are the retrieval splits over unseen
    categories.
    """

    root: Path
    categories: list[str]
    classification_train: ImageList
    classification_val: ImageList
    retrieval_train: ImageList
    validation: RetrievalSplit
    test: RetrievalSplit


# ----------------------------------------------------------------------------------------------
# Finding files and checking the layout
# ----------------------------------------------------------------------------------------------


def _is_hidden(path: Path) -> bool:
    """Hidden entries and macOS archive debris (``.DS_Store``, ``._x.jpg``, ``__MACOSX``)."""
    return path.name.startswith(".") or path.name in _IGNORED_FOLDERS


def _short_list(names: Sequence, limit: int = _SHOW) -> str:
    """``'a', 'b', 'c' and 4 more`` for error messages."""
    names = list(names)
    shown = ", ".join(repr(n) if isinstance(n, str) else str(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def find_images(folder: Path) -> list[Path]:
    """The image files directly inside ``folder``, sorted by name.

    Files are recognised by
    extension, case-insensitively (``.jpg``, ``.JPG``, ``.Jpeg``, ``.png`` ...);
    other files and hidden files such as ``.DS_Store`` or ``._x.jpg`` are ignored.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetLayoutError(f"{folder} is not a folder; expected a folder of image files")
    return sorted(
        (p for p in folder.iterdir()
         if p.suffix.lower() in IMAGE_EXTENSIONS and not _is_hidden(p) and p.is_file()),
        key=lambda p: p.name,
    )


def _require_dir(path: Path, expected: str) -> Path:
    """``path`` if it is a folder, else a DatasetLayoutError saying what it should hold."""
    if not path.is_dir():
        state = "is not a folder" if path.exists() else "does not exist"
        raise DatasetLayoutError(f"{path} {state}; expected {expected}")
    return path


def _require_images(folder: Path, expected: str) -> list[Path]:
    """The images of ``folder``; a DatasetLayoutError when there are none."""
    images = find_images(_require_dir(folder, expected))
    if not images:
        raise DatasetLayoutError(
            f"{folder} contains no images; expected {expected} "
            f"(files ending in {', '.join(IMAGE_EXTENSIONS)}, any case)"
        )
    return images


def _category_folders(folder: Path) -> list[str]:
    """Sorted names of the visible sub-folders of ``folder`` (one per category)."""
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not _is_hidden(p))


def _load_labelled_folder(folder: Path, classes: list[str]) -> ImageList:
    """An ImageList over ``folder/<class>/*`` with labels indexing ``classes``."""
    paths, labels = [], []
    for label, name in enumerate(classes):
        images = _require_images(folder / name, f"the images of category {name!r}")
        paths.extend(images)
        labels.extend([label] * len(images))
    return ImageList(paths, np.asarray(labels, dtype=np.int64), list(classes))


def _check_same_categories(first: Path, first_names: list[str],
                           second: Path, second_names: list[str]) -> None:
    """Both training folders must hold the same category sub-folders."""
    only_first = sorted(set(first_names) - set(second_names))
    only_second = sorted(set(second_names) - set(first_names))
    if only_first or only_second:
        parts = []
        if only_first:
            parts.append(f"only in {first}: {_short_list(only_first)}")
        if only_second:
            parts.append(f"only in {second}: {_short_list(only_second)}")
        raise DatasetLayoutError(
            f"{first} and {second} hold different categories ({'; '.join(parts)}); "
            "expected the same category folders in both"
        )


# ----------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------


def split_train_val(n: int, val_fraction: float = 0.3, seed: int = 0,
                    key: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(n)`` at random into sorted (train, val) index arrays.

    The draw is seeded by ``seed``
    and a stable hash (CRC-32) of ``key``, so each category (pass its name as
    ``key``) gets its own split that does not change when other categories
    are added. ``round(n * val_fraction)`` images go to val, clipped so that
    train keeps at least one image and val gets at least one when ``n >= 2``
    and ``val_fraction > 0``.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction!r}; expected a number in [0, 1)")
    if n < 0 or seed < 0:
        raise ValueError(f"n={n} and seed={seed} must both be >= 0")
    n_val = int(np.floor(n * val_fraction + 0.5))
    if val_fraction > 0 and n >= 2:
        n_val = max(n_val, 1)
    n_val = min(n_val, max(n - 1, 0))
    rng = np.random.default_rng([int(seed), zlib.crc32(key.encode("utf-8"))])
    order = rng.permutation(n)
    return np.sort(order[n_val:]).astype(np.int64), np.sort(order[:n_val]).astype(np.int64)


def _split_image_list(images: ImageList, val_fraction: float, seed: int) -> tuple[ImageList, ImageList]:
    """Per-category :func:`split_train_val` of an ImageList into (train, val)."""
    train_parts, val_parts = [], []
    for label, name in enumerate(images.classes):
        members = np.flatnonzero(images.labels == label)
        train, val = split_train_val(len(members), val_fraction, seed, key=name)
        train_parts.append(members[train])
        val_parts.append(members[val])
    return (images.subset(np.concatenate(train_parts)),
            images.subset(np.concatenate(val_parts)))


# ----------------------------------------------------------------------------------------------
# Retrieval splits
# ----------------------------------------------------------------------------------------------


def _read_ground_truth(path: Path) -> dict[str, list[str]]:
    """The JSON mapping of query file name -> list of database file names, validated for shape."""
    if not path.is_file():
        raise DatasetLayoutError(
            f"{path} does not exist; expected a JSON file mapping each query file name "
            "to the list of matching database file names"
        )
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetLayoutError(f"{path} is not valid JSON ({error}); expected an object "
                                 "mapping query file names to lists of database file names") from error
    if not isinstance(mapping, dict):
        raise DatasetLayoutError(f"{path} holds a JSON {type(mapping).__name__}; expected an object "
                                 "mapping query file names to lists of database file names")
    for query, matches in mapping.items():
        if not isinstance(matches, list) or not all(isinstance(m, str) for m in matches):
            raise DatasetLayoutError(f"{path}: the entry for {query!r} is {matches!r}; "
                                     "expected a list of database file names")
        if not matches:
            raise DatasetLayoutError(f"{path}: query {query!r} has an empty ground-truth list; "
                                     "expected at least one matching database file name")
    return mapping


def _ground_truth_positions(mapping: dict[str, list[str]], queries: list[Path],
                            database: list[Path], gt_path: Path, query_dir: Path,
                            database_dir: Path) -> list[np.ndarray]:
    """Translate file names in ``mapping`` into sorted database positions, one array per query."""
    query_names = [p.name for p in queries]
    no_entry = [name for name in query_names if name not in mapping]
    if no_entry:
        raise DatasetLayoutError(f"{gt_path} has no entry for query image(s) {_short_list(no_entry)} "
                                 f"found in {query_dir}; expected one entry per query image")
    no_file = sorted(set(mapping) - set(query_names))
    if no_file:
        raise DatasetLayoutError(f"{gt_path} lists query image(s) {_short_list(no_file)} that are not "
                                 f"in {query_dir}; expected every entry to name a query image file")
    position = {p.name: i for i, p in enumerate(database)}
    missing = sorted({m for matches in mapping.values() for m in matches if m not in position})
    if missing:
        raise DatasetLayoutError(f"{gt_path} names database image(s) {_short_list(missing)} that are "
                                 f"not in {database_dir}; expected names of files in that folder")
    return [np.unique(np.fromiter((position[m] for m in mapping[name]), dtype=np.int64))
            for name in query_names]


def groups_from_ground_truth(ground_truth: Sequence[np.ndarray],
                             n_database: int) -> tuple[np.ndarray, np.ndarray]:
    """Group ids for queries and database images, recovered from the ground truth alone.

    Queries and database images are
    the nodes of a graph with an edge from each query to each of its matches;
    every connected component that holds a query is one group, numbered in
    order of its first query. Queries with the same ground-truth set share a
    group; database images that no query lists get -1.
    """
    n_queries = len(ground_truth)
    rows = np.concatenate([np.full(len(g), q, dtype=np.int64) for q, g in enumerate(ground_truth)]
                          + [np.empty(0, dtype=np.int64)])
    cols = np.concatenate([np.asarray(g, dtype=np.int64) for g in ground_truth]
                          + [np.empty(0, dtype=np.int64)]) + n_queries
    size = n_queries + n_database
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(size, size))
    _, component = connected_components(graph, directed=False)
    _, first = np.unique(component[:n_queries], return_index=True)
    relabel = np.full(size, -1, dtype=np.int64)
    relabel[component[:n_queries][np.sort(first)]] = np.arange(len(first))
    return relabel[component[:n_queries]], relabel[component[n_queries:]]


def _load_retrieval_split(dataset_dir: Path, name: str) -> RetrievalSplit:
    """Read ``firearm-dataset/<name>`` into a RetrievalSplit, checking every cross-reference."""
    _require_dir(dataset_dir / name, f"the {name} retrieval split ({DATABASE_DIR}/ and {QUERY_INFO_DIR}/)")
    places = split_locations(dataset_dir, name)
    database_dir, query_dir, gt_path = places["database"], places["queries"], places["ground_truth"]
    database = _require_images(database_dir, f"the {name} database images")
    queries = _require_images(query_dir, f"the {name} query images")
    mapping = _read_ground_truth(gt_path)
    ground_truth = _ground_truth_positions(mapping, queries, database, gt_path, query_dir, database_dir)
    query_labels, database_labels = groups_from_ground_truth(ground_truth, len(database))
    return RetrievalSplit(name, queries, database, ground_truth, query_labels, database_labels)


# ----------------------------------------------------------------------------------------------
# The loader
# ----------------------------------------------------------------------------------------------


def load_firearm_release(root, val_fraction: float = 0.3, split_seed: int = 0) -> FirearmRelease:
    """Read a release root holding ``firearm-train-val/`` and ``firearm-dataset/``.

    Checks the whole layout and
    raises :class:`DatasetLayoutError` naming the offending path on anything
    unexpected: a missing folder or ground-truth file, invalid JSON, a query
    without ground truth (or ground truth for a missing query), an empty
    ground-truth list, ground truth naming a missing database file, an empty
    category folder, or training folders whose categories differ. The
    classification data is split per category with :func:`split_train_val`.
    """
    root = Path(root).expanduser()
    _require_dir(root, f"a Firearm release root holding {TRAIN_VAL_DIR}/ and {DATASET_DIR}/")
    train_val_dir = _require_dir(root / TRAIN_VAL_DIR, "one folder of classification images per category")
    dataset_dir = _require_dir(root / DATASET_DIR, "train/, validation/ and test/ retrieval folders")
    retrieval_dir = _require_dir(dataset_dir / RETRIEVAL_TRAIN_DIR,
                                 "one folder of retrieval training images per category")

    categories = _category_folders(train_val_dir)
    if not categories:
        raise DatasetLayoutError(f"{train_val_dir} has no category folders; expected one folder per category")
    _check_same_categories(train_val_dir, categories, retrieval_dir, _category_folders(retrieval_dir))

    classification = _load_labelled_folder(train_val_dir, categories)
    classification_train, classification_val = _split_image_list(classification, val_fraction, split_seed)
    return FirearmRelease(
        root=root,
        categories=categories,
        classification_train=classification_train,
        classification_val=classification_val,
        retrieval_train=_load_labelled_folder(retrieval_dir, categories),
        validation=_load_retrieval_split(dataset_dir, "validation"),
        test=_load_retrieval_split(dataset_dir, "test"),
    )


def load_active_release(profile: config.Profile, seed: int = config.DEFAULT_SEED,
                        progress: bool = True) -> FirearmRelease:
    """The release the notebooks use: the real Firearm 14k if ``FIREARM_DATA`` is set, else synthetic.

    With ``FIREARM_DATA`` set, its
    folder must exist. Otherwise the synthetic release of ``profile`` and
    ``seed`` lives under ``data/synthetic/``:
    :func:`make_synthetic_release` renders it on first use (and again only if
    the generator or the profile's data settings changed), then it is loaded.
    """
    real_root = config.real_data_root()
    if real_root is not None:
        _require_dir(real_root, f"the Firearm 14k release (set by {config.DATA_ENV}) holding "
                                f"{TRAIN_VAL_DIR}/ and {DATASET_DIR}/")
        return load_firearm_release(real_root)
    root = config.synthetic_root(profile, seed)
    return load_firearm_release(make_synthetic_release(root, profile=profile, seed=seed, progress=progress))


# ----------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------


def _high_depth_to_l(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer or float greyscale to 8-bit ``L``.

    16-bit values (and ``I`` images whose maximum exceeds 255) are scaled by
    255/65535; float images whose maximum is at most 1 are taken as [0, 1].
    """
    values = np.asarray(image).astype(np.float64)
    top = float(values.max()) if values.size else 0.0
    if image.mode.startswith("I;16") or (image.mode == "I" and top > 255):
        values = values / 257.0
    elif image.mode == "F" and top <= 1.0:
        values = values * 255.0
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a PIL image of any mode to RGB.

    Transparent images (``LA``,
    ``RGBA``, ``PA``, and ``P`` with a transparency entry) are composited on
    white; 16-bit and float greyscale are scaled to 8 bits; ``L``, ``1``,
    ``P``, ``CMYK`` and ``YCbCr`` go through Pillow's own conversion.
    """
    if image.mode == "RGB":
        return image
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif image.mode.startswith("I") or image.mode == "F":
        image = _high_depth_to_l(image)
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def load_rgb(path, max_side: int | None = None) -> Image.Image:
    """Open an image file fully decoded as RGB, upright per its EXIF orientation.

    Any mode comes back RGB (see
    :func:`to_rgb`). With ``max_side``, the longest side is shrunk to at most
    ``max_side`` pixels (aspect kept; JPEGs are decoded at reduced scale
    first when that is lossless for the result). Unreadable or truncated
    files raise the decoder's error (an ``OSError``, mostly).
    """
    with Image.open(path) as image:
        if max_side is not None:
            image.draft(None, (max_side, max_side))
        image.load()
        image = ImageOps.exif_transpose(image)
        image = to_rgb(image)
    if max_side is not None and max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    return image


_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error,
                  Image.DecompressionBombError)


def _decode(path: Path, max_side: int | None) -> torch.Tensor | str:
    """A uint8 CHW tensor, or the reason the file could not be decoded."""
    try:
        return TF.pil_to_tensor(load_rgb(path, max_side))
    except _DECODE_ERRORS as error:
        return f"{type(error).__name__}: {error}"


def _warn_unreadable(failures: list[tuple[Path, str]], total: int) -> None:
    """One warning that counts the skipped files and names the first few."""
    shown = "; ".join(f"{path} ({reason})" for path, reason in failures[:_SHOW])
    more = f"; and {len(failures) - _SHOW} more" if len(failures) > _SHOW else ""
    warnings.warn(f"skipped {len(failures)} unreadable image(s) of {total}: {shown}{more}",
                  UnreadableImageWarning, stacklevel=3)


def read_images(paths, max_side: int | None = None, progress: bool = True,
                workers: int | None = None) -> tuple[list[torch.Tensor], np.ndarray]:
    """Decode every image into a uint8 CHW tensor; skip unreadable files with one warning.

    The longest side of an image
    larger than ``max_side`` is shrunk to ``max_side`` (aspect kept). Files
    that fail to decode (truncated, corrupt, not an image) are left out and
    reported in a single :class:`UnreadableImageWarning` that counts them.
    Decoding runs on ``workers`` threads (default: up to 8, one per core).
    Returns ``(tensors, kept_indices)`` where ``kept_indices`` are the
    positions in ``paths`` of the decoded images.
    """
    paths = [Path(p) for p in paths]
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(tqdm(pool.map(lambda p: _decode(p, max_side), paths), total=len(paths),
                            desc="decoding images", unit="img", disable=not progress))
    kept = np.asarray([i for i, r in enumerate(results) if isinstance(r, torch.Tensor)], dtype=np.int64)
    failures = [(paths[i], r) for i, r in enumerate(results) if isinstance(r, str)]
    if failures:
        _warn_unreadable(failures, len(paths))
    return [results[i] for i in kept], kept


# ----------------------------------------------------------------------------------------------
# Transforms
# ----------------------------------------------------------------------------------------------


class RandomLongestSide(torch.nn.Module):
    """Resize so the longest side is a random integer in ``[low, high]`` (aspect kept).

    Draws from torch's generator, so :func:`config.seed_everything`
    makes it repeatable and DataLoader workers get different draws.
    """

    def __init__(self, low: int, high: int):
        super().__init__()
        if not 0 < low <= high:
            raise ValueError(f"RandomLongestSide needs 0 < low <= high; got low={low}, high={high}")
        self.low, self.high = int(low), int(high)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        side = int(torch.randint(self.low, self.high + 1, ()).item())
        return TF.resize(image, size=None, max_size=side, antialias=True)


class PadToCanvas(torch.nn.Module):
    """Zero-pad a CHW tensor, centred, to a fixed ``size`` x ``size`` canvas.

    The paper fed one image at a time at
    its own size; padding to a fixed canvas lets images of different aspect
    ratios stack into batches. Applied after normalisation, the padding is 0,
    the dataset mean, which max pooling (MAC) over ReLU features mostly ignores.
    """

    def __init__(self, size: int):
        super().__init__()
        self.size = int(size)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        if height > self.size or width > self.size:
            raise ValueError(f"image of {height}x{width} pixels does not fit a "
                             f"{self.size}x{self.size} canvas")
        top, left = (self.size - height) // 2, (self.size - width) // 2
        return torch.nn.functional.pad(image, (left, self.size - width - left, top, self.size - height - top))


class ContrastSaturationJitter(torch.nn.Module):
    """Random contrast and saturation factors in ``[1 - strength, 1 + strength]``, applied in random order.

    The same operation as
    ``v2.ColorJitter(contrast=strength, saturation=strength)`` on float images,
    built on torchvision's ``adjust_contrast`` / ``adjust_saturation``; calling
    them directly halves the per-image cost on small images, where the v2
    class's bookkeeping dominates.
    """

    def __init__(self, strength: float = 0.5):
        super().__init__()
        if not 0.0 <= strength < 1.0:
            raise ValueError(f"jitter strength={strength!r}; expected a number in [0, 1)")
        self.strength = float(strength)

    def draw(self) -> tuple[float, float, bool]:
        """Random ``(contrast, saturation, contrast_first)`` from torch's RNG."""
        contrast, saturation = torch.empty(2).uniform_(1 - self.strength, 1 + self.strength).tolist()
        return contrast, saturation, bool(torch.rand(()) < 0.5)

    @staticmethod
    def apply(image: torch.Tensor, contrast: float, saturation: float, contrast_first: bool) -> torch.Tensor:
        """Adjust contrast and saturation of an RGB image by the given factors, in the given order."""
        if contrast_first:
            return TF.adjust_saturation(TF.adjust_contrast(image, contrast), saturation)
        return TF.adjust_contrast(TF.adjust_saturation(image, saturation), contrast)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.apply(image, *self.draw())


class CanvasCompose(v2.Compose):
    """A ``v2.Compose`` whose output is always ``canvas_size`` x ``canvas_size``.

    :class:`ImageDataset` reads
    ``canvas_size`` to decide how large to keep the decoded images.
    """

    def __init__(self, transforms, canvas_size: int):
        super().__init__(transforms)
        self.canvas_size = int(canvas_size)


def train_transform(size_range: tuple[int, int], mean, std) -> CanvasCompose:
    """The paper's training augmentation (uint8 CHW -> float CHW).

    Longest side resized at random into ``size_range`` (paper: 256-384),
    horizontal flip, rotation within +-5 degrees, contrast and saturation
    jitter of 0.5, normalisation with the backbone's ``mean`` and ``std``
    (:func:`helpers.models.input_normalization`), then zero padding (centred)
    to a square canvas of side ``size_range[1]``. The rotation runs after
    normalisation, so the corners it brings in are 0 (the mean colour) like
    the padding, and the jitter never touches them.
    """
    low, high = size_range
    return CanvasCompose([
        RandomLongestSide(low, high),
        v2.ToDtype(torch.float32, scale=True),
        v2.RandomHorizontalFlip(),
        ContrastSaturationJitter(0.5),
        v2.Normalize(mean, std),
        v2.RandomRotation(5, interpolation=v2.InterpolationMode.BILINEAR, fill=None),
        PadToCanvas(high),
    ], canvas_size=high)


def eval_transform(size: int, mean, std) -> CanvasCompose:
    """The paper's evaluation transform: longest side to ``size``, no crop. Deterministic.

    Resizes (up or down) so the longest side is ``size``, normalises with
    the backbone's ``mean`` and ``std`` and zero-pads (centred) to ``size``
    x ``size``.
    """
    return CanvasCompose([
        v2.Resize(size=None, max_size=size, antialias=True),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean, std),
        PadToCanvas(size),
    ], canvas_size=size)


# ----------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------


class ImageDataset(torch.utils.data.Dataset):
    """Images decoded once into RAM (uint8), served through a transform.

    Accepts an :class:`ImageList` or a
    list of paths (with optional ``labels``; -1 when absent). Every image is
    decoded at construction by :func:`read_images`, shrunk so its longest side
    is at most ``max_side`` (default: the transform's ``canvas_size``);
    unreadable files are dropped with one warning. Exposes ``paths``,
    ``labels`` and ``images`` after dropping, and ``kept_indices`` into the
    original list. ``dataset[i]`` is ``(transform(image) as float tensor, int label)``;
    without a transform the image is scaled to float in [0, 1].
    """

    def __init__(self, images, labels=None, transform=None, max_side: int | None = None,
                 progress: bool = True):
        if isinstance(images, ImageList):
            if labels is not None:
                raise ValueError("pass labels only with a list of paths; an ImageList carries its own")
            paths, labels, self.classes = images.paths, images.labels, list(images.classes)
        else:
            paths = [Path(p) for p in images]
            labels = np.full(len(paths), -1, dtype=np.int64) if labels is None else np.asarray(labels)
            self.classes = None
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(labels) != len(paths):
            raise ValueError(f"got {len(paths)} images but {len(labels)} labels")
        self.transform = transform
        max_side = max_side or getattr(transform, "canvas_size", None)
        self.images, self.kept_indices = read_images(paths, max_side=max_side, progress=progress)
        self.paths = [paths[i] for i in self.kept_indices]
        self.labels = labels[self.kept_indices]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.transform is None:
            return TF.to_dtype(image, torch.float32, scale=True), int(self.labels[index])
        return self.transform(image), int(self.labels[index])

    def with_transform(self, transform) -> "ImageDataset":
        """A view of the same decoded images through another transform (no decoding, no copy).

        One decoded set serves training and evaluation.
        """
        view = object.__new__(ImageDataset)
        view.__dict__.update(self.__dict__)
        view.transform = transform
        return view


_DECODED: "OrderedDict[tuple, ImageDataset]" = OrderedDict()
DECODED_CACHE_SIZE = 8
"""How many decoded image sets :func:`decoded_dataset` keeps in memory."""


def decoded_dataset(paths, labels, transform, progress: bool = True) -> ImageDataset:
    """An :class:`ImageDataset` of ``paths`` through ``transform``, decoding each set once per process.

    Decoding takes seconds, so the last :data:`DECODED_CACHE_SIZE` decoded
    sets are memoised by ``(paths, labels, transform.canvas_size)``; a second
    call with another transform of the same canvas reuses the decoded images
    (:meth:`ImageDataset.with_transform` copies nothing).
    """
    max_side = int(transform.canvas_size)
    key = (tuple(str(p) for p in paths), tuple(int(v) for v in np.asarray(labels).reshape(-1)), max_side)
    if key in _DECODED:
        _DECODED.move_to_end(key)
    else:
        _DECODED[key] = ImageDataset([Path(p) for p in paths], labels=np.asarray(labels),
                                     max_side=max_side, progress=progress)
        while len(_DECODED) > DECODED_CACHE_SIZE:
            _DECODED.popitem(last=False)
    return _DECODED[key].with_transform(transform)


def eval_dataset(paths, labels, transform, progress: bool = True) -> ImageDataset:
    """Images through an evaluation ``transform``, decoded once per process (:func:`decoded_dataset`).

    Unreadable images would shift the ground-truth positions, so they raise
    here instead of being skipped.
    """
    dataset = decoded_dataset(list(paths), np.asarray(labels), transform, progress)
    if len(dataset) != len(paths):
        raise ValueError(f"{len(paths) - len(dataset)} image(s) could not be decoded; evaluation needs "
                         "every one of them (see the warning that lists them)")
    return dataset


# ----------------------------------------------------------------------------------------------
# Samplers
# ----------------------------------------------------------------------------------------------


class _CategoryIndex:
    """Positions of every category's images, for vectorised random draws."""

    def __init__(self, labels):
        labels = np.asarray(getattr(labels, "labels", labels), dtype=np.int64).reshape(-1)
        self.categories, inverse, self.counts = np.unique(labels, return_inverse=True, return_counts=True)
        if len(self.categories) < 2:
            raise ValueError("pair and triplet sampling needs at least 2 categories; "
                             f"got {len(self.categories)}")
        self.order = np.argsort(inverse, kind="stable")
        self.starts = np.cumsum(self.counts) - self.counts

    def member(self, category: np.ndarray, rank: np.ndarray) -> np.ndarray:
        """Image index of the ``rank``-th image of each (internal) ``category``."""
        return self.order[self.starts[category] + rank]

    def draw(self, rng, category: np.ndarray) -> np.ndarray:
        """One random image of each given category."""
        return self.member(category, rng.integers(0, self.counts[category]))

    def draw_distinct_pair(self, rng, category: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Two different random images of each given category (which must hold >= 2 images)."""
        first = rng.integers(0, self.counts[category])
        second = rng.integers(0, self.counts[category] - 1)
        second = second + (second >= first)
        return self.member(category, first), self.member(category, second)

    def draw_other_category(self, rng, category: np.ndarray) -> np.ndarray:
        """A uniformly random category different from each given one."""
        other = rng.integers(0, len(self.categories) - 1, size=len(category))
        return other + (other >= category)

    def singletons(self) -> list[int]:
        """Labels of categories that hold a single image."""
        return self.categories[self.counts < 2].tolist()


def _warn_singletons(singletons: list[int], what: str) -> None:
    """Warn once that categories with one image give no positives."""
    if singletons:
        warnings.warn(f"{len(singletons)} categor{'y has' if len(singletons) == 1 else 'ies have'} a "
                      f"single image and give no {what}: labels {_short_list(singletons)}",
                      UserWarning, stacklevel=3)


def _epoch_rng(seed: int, epoch: int, regenerate_every: int) -> np.random.Generator:
    """The generator of the regeneration block that ``epoch`` falls in."""
    if epoch < 0:
        raise ValueError(f"epoch={epoch}; expected a non-negative epoch number")
    return np.random.default_rng([int(seed), epoch // regenerate_every])


class PairSampler:
    """The paper's balanced random pairs, redrawn every ``regenerate_every`` epochs.

    For every category, each epoch holds
    ``pairs_per_category`` pairs: half positive (two different images of the
    category) and half negative (an image of the category and an image of
    another category drawn uniformly, then an image drawn uniformly within
    it); an odd count gives the extra pair to the negatives. Categories with
    one image give no positives (one warning at construction). Epochs in the
    same block of ``regenerate_every`` return identical pairs, seeded by
    ``(seed, epoch // regenerate_every)``.
    """

    def __init__(self, labels, pairs_per_category: int, regenerate_every: int = 1, seed: int = 0):
        if pairs_per_category < 1 or regenerate_every < 1:
            raise ValueError(f"pairs_per_category={pairs_per_category} and regenerate_every="
                             f"{regenerate_every} must both be >= 1")
        self.index = _CategoryIndex(labels)
        self.pairs_per_category = int(pairs_per_category)
        self.regenerate_every = int(regenerate_every)
        self.seed = int(seed)
        _warn_singletons(self.index.singletons(), "positive pairs")

    def __len__(self) -> int:
        n_pos = self.pairs_per_category // 2
        n_neg = self.pairs_per_category - n_pos
        return int(n_pos * np.sum(self.index.counts >= 2) + n_neg * len(self.index.categories))

    def pairs(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(i, j, y)`` int64 arrays for ``epoch``, shuffled; ``y = 1`` for a same-category pair."""
        rng = _epoch_rng(self.seed, epoch, self.regenerate_every)
        index, n_pos = self.index, self.pairs_per_category // 2
        n_neg = self.pairs_per_category - n_pos
        all_categories = np.arange(len(index.categories))
        pos_category = np.repeat(all_categories[index.counts >= 2], n_pos)
        pos_i, pos_j = index.draw_distinct_pair(rng, pos_category)
        neg_category = np.repeat(all_categories, n_neg)
        neg_i = index.draw(rng, neg_category)
        neg_j = index.draw(rng, index.draw_other_category(rng, neg_category))
        i = np.concatenate([pos_i, neg_i])
        j = np.concatenate([pos_j, neg_j])
        y = np.concatenate([np.ones(len(pos_i), np.int64), np.zeros(len(neg_i), np.int64)])
        order = rng.permutation(len(i))
        return i[order], j[order], y[order]


class TripletSampler:
    """Random triplets (anchor, positive, negative), redrawn every ``regenerate_every`` epochs.

    For the triplet-loss baseline. Every
    category with at least two images gives ``triplets_per_category``
    triplets per epoch: two different images of the category and one image of
    another category drawn at random. Categories with one image give none
    (one warning). Seeded like :class:`PairSampler`.
    """

    def __init__(self, labels, triplets_per_category: int, regenerate_every: int = 1, seed: int = 0):
        if triplets_per_category < 1 or regenerate_every < 1:
            raise ValueError(f"triplets_per_category={triplets_per_category} and regenerate_every="
                             f"{regenerate_every} must both be >= 1")
        self.index = _CategoryIndex(labels)
        self.triplets_per_category = int(triplets_per_category)
        self.regenerate_every = int(regenerate_every)
        self.seed = int(seed)
        _warn_singletons(self.index.singletons(), "triplets")

    def __len__(self) -> int:
        return int(self.triplets_per_category * np.sum(self.index.counts >= 2))

    def triplets(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(anchor, positive, negative)`` int64 index arrays for ``epoch``, shuffled."""
        rng = _epoch_rng(self.seed, epoch, self.regenerate_every)
        index = self.index
        category = np.repeat(np.flatnonzero(index.counts >= 2), self.triplets_per_category)
        anchor, positive = index.draw_distinct_pair(rng, category)
        negative = index.draw(rng, index.draw_other_category(rng, category))
        order = rng.permutation(len(anchor))
        return anchor[order], positive[order], negative[order]


def image_sizes(paths) -> pd.DataFrame:
    """Width and height of every image, read from the file headers only (no decoding).

    Unreadable files get NaN.
    """
    rows = []
    for path in paths:
        try:
            with Image.open(path) as image:
                rows.append(image.size)
        except (OSError, ValueError):
            rows.append((np.nan, np.nan))
    return pd.DataFrame(rows, columns=["width", "height"], index=[str(p) for p in paths])
