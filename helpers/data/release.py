"""The Firearm 14k release layout: finding its files, checking it, and loading it into small objects.

One loader, :func:`load_firearm_release`, reads the authors' release layout
(the real data or the synthetic stand-in that
:func:`helpers.synthetic.make_synthetic_release` renders in the same
layout)::

    root/
      firearm-train-val/<category>/*.jpg                  classification data
      firearm-dataset/train/<category>/*.jpg              retrieval training data
      firearm-dataset/{validation,test}/database_image/*.jpg
      firearm-dataset/{validation,test}/query_info/query_image/*.jpg
      firearm-dataset/{validation,test}/query_info/ground_truth_info.json

Everything downstream sees the same small objects: :class:`ImageList` (paths
plus integer labels), :class:`RetrievalSplit` (queries, database and ground
truth as database positions) and :class:`FirearmRelease` (all of them).
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .. import config
from ..layout import (DATABASE_DIR, DATASET_DIR, IMAGE_EXTENSIONS, QUERY_INFO_DIR, RETRIEVAL_TRAIN_DIR,
                      TRAIN_VAL_DIR, split_locations)
from ..synthetic import make_synthetic_release

_IGNORED_FOLDERS = {"__MACOSX"}
_SHOW = 5  # how many offending names an error or warning lists


class DatasetLayoutError(ValueError):
    """The release layout on disk is not what the loader expects.

    Every message names the
    offending path and says what was expected there.
    """


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
