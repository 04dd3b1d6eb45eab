"""Writing a synthetic release: file plan, parallel rendering and an atomic swap into place.

:func:`make_synthetic_release` plans where every image goes (in the layout of
:mod:`helpers.layout`), renders the images serially or in a process pool,
writes them with the ground truth and the metadata into a partial folder
beside the root and renames that folder into place.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from pathlib import Path, PurePosixPath

import numpy as np

from .. import config
from ..layout import DATASET_DIR, RETRIEVAL_SPLITS, RETRIEVAL_TRAIN_DIR, TRAIN_VAL_DIR, split_locations
from ..progress import bar as tqdm
from .catalogue import COUNT_TAIL, DIFFICULTY, FAMILIES, Category, Difficulty, _check_profile, make_categories
from .metadata import METADATA_FILE, read_metadata
from .rendering import render_jpeg

GENERATOR_VERSION = "1.0"
"""Bumped whenever a change to this subpackage changes the rendered bytes."""

PARALLEL_MIN_IMAGES = 500
"""Below this many images a release renders in one process by default (a pool costs more than it saves)."""


def _settings(profile: config.Profile) -> dict:
    """The profile's :func:`helpers.config.synthetic_settings`, as they read back from JSON (tuples as lists)."""
    return {key: list(value) if isinstance(value, tuple) else value
            for key, value in config.synthetic_settings(profile).items()}


def _release_key(profile: config.Profile, seed: int, difficulty: Difficulty) -> dict:
    """Everything that determines the bytes of a release; an existing release is reused when it matches."""
    return {"version": GENERATOR_VERSION, "seed": int(seed), "settings": _settings(profile),
            "difficulty": difficulty.to_dict(), "count_tail": COUNT_TAIL}


def _shuffled_names(items: list, prefix: str, rng: np.random.Generator) -> dict:
    """File names ``<prefix>_00000.jpg`` ... given to ``items`` in a random order."""
    return {items[j]: f"{prefix}_{k:05d}.jpg" for k, j in enumerate(rng.permutation(len(items)))}


def _plan_files(categories: list[Category], queries_per_category: int, seed: int):
    """Where every image goes, and the ground truth of each held-out split.

    Returns ``paths`` (category index -> list, per image, of relative paths) and
    ``ground_truth`` (split -> {query name: [database names]}). Query and
    database names are shuffled so they do not reveal the category.
    """
    paths: dict[int, list[list[str]]] = {}
    ground_truth: dict[str, dict[str, list[str]]] = {}
    for category in categories:
        if category.split == "train":
            paths[category.index] = [[f"{TRAIN_VAL_DIR}/{category.name}/img_{i:04d}.jpg",
                                      f"{DATASET_DIR}/{RETRIEVAL_TRAIN_DIR}/{category.name}/img_{i:04d}.jpg"]
                                     for i in range(category.n_images)]
    for split_id, split in enumerate(RETRIEVAL_SPLITS):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 3, split_id]))
        locations = split_locations(PurePosixPath(DATASET_DIR), split)
        members = [c for c in categories if c.split == split]
        queries = [(c.index, i) for c in members for i in range(queries_per_category)]
        database = [(c.index, i) for c in members for i in range(queries_per_category, c.n_images)]
        query_names = _shuffled_names(queries, "query", rng)
        db_names = _shuffled_names(database, "db", rng)
        for c in members:
            paths[c.index] = [[f"{locations['queries']}/{query_names[(c.index, i)]}"]
                              if i < queries_per_category else
                              [f"{locations['database']}/{db_names[(c.index, i)]}"]
                              for i in range(c.n_images)]
        by_category: dict[int, list[str]] = {}
        for (index, _), name in db_names.items():
            by_category.setdefault(index, []).append(name)
        ground_truth[split] = {name: sorted(by_category[index]) for (index, _), name in query_names.items()}
    return paths, ground_truth


def _render_category_job(job) -> tuple[int, list[bytes]]:
    """Worker entry point: every image of one category, as JPEG bytes."""
    info, seed, size, difficulty = job
    return info["index"], [render_jpeg(info, seed, i, size, difficulty) for i in range(info["n_images"])]


def _rendered(jobs: list, workers: int):
    """Yield ``(category index, jpeg list)`` for each job, serially or from a process pool."""
    if workers <= 1:
        for job in jobs:
            yield _render_category_job(job)
        return
    with multiprocessing.get_context().Pool(workers) as pool:
        yield from pool.imap_unordered(_render_category_job, jobs)


def _write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _write_json(path: Path, payload) -> None:
    """Deterministic JSON: sorted keys, fixed indentation, trailing newline."""
    _write_bytes(path, (json.dumps(payload, indent=1, sort_keys=True, ensure_ascii=True) + "\n").encode("ascii"))


def _is_current(root: Path, key: dict) -> bool:
    """Whether ``root`` already holds a complete release with the same key."""
    try:
        metadata = read_metadata(root)
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        return False
    return all(metadata.get(name) == value for name, value in key.items())


def _check_replaceable(root: Path) -> None:
    """Refuse to overwrite a folder that is neither empty nor a synthetic release."""
    if not root.exists():
        return
    if not root.is_dir():
        raise FileExistsError(f"{root} exists and is not a folder; expected a folder for the synthetic release")
    if any(root.iterdir()) and not (root / METADATA_FILE).is_file():
        raise FileExistsError(f"{root} is not empty and holds no {METADATA_FILE}; refusing to overwrite it "
                              "(expected an empty folder or an earlier synthetic release)")


def _remove_stale_partials(root: Path) -> None:
    """Delete partial folders that interrupted runs (of processes no longer alive) left beside ``root``."""
    for partial in root.parent.glob(f".{root.name}.partial-*"):
        pid = partial.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(partial, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    """Whether a process with this id is running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _swap_into_place(partial: Path, root: Path) -> None:
    """Replace ``root`` by the finished ``partial`` folder, keeping the old one until the rename is done."""
    old = None
    if root.exists():
        old = root.parent / f".{root.name}.old-{os.getpid()}"
        root.rename(old)
    partial.rename(root)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def make_synthetic_release(root, profile: config.Profile, seed: int = 0, *, progress: bool = True,
                           workers: int | None = None, difficulty: Difficulty | None = None) -> Path:
    """Render the synthetic stand-in for Firearm 14k under ``root`` in the authors' release layout.

    ``profile`` is a resolved :class:`helpers.config.Profile` (overrides
    included); its :data:`helpers.config.SYNTHETIC_FIELDS` (``n_*_categories``,
    ``images_per_category``, ``render_size`` and ``queries_per_category``) are
    used. The release is written to a sibling folder and renamed into place, so
    an interrupted run leaves nothing half-written. If ``root`` already holds a
    release with the same profile settings, seed, difficulty and generator
    version, it is returned at once. ``workers`` processes render in parallel
    (default ``min(2, cpu count)``, or 1 below :data:`PARALLEL_MIN_IMAGES`
    images); the bytes do not depend on it. Returns
    ``root`` as a :class:`~pathlib.Path`.
    """
    root = Path(root).expanduser().absolute()
    _check_profile(profile)
    difficulty = difficulty or DIFFICULTY
    key = _release_key(profile, seed, difficulty)
    if _is_current(root, key):
        return root
    _check_replaceable(root)
    categories = make_categories(profile, seed, difficulty)
    workers = _default_workers(sum(c.n_images for c in categories)) if workers is None else max(1, int(workers))
    paths, ground_truth = _plan_files(categories, profile.queries_per_category, seed)
    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(root)
    partial = root.parent / f".{root.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        _render_into(partial, categories, paths, seed, profile.render_size, difficulty, workers, progress)
        for split, table in ground_truth.items():
            _write_json(split_locations(partial / DATASET_DIR, split)["ground_truth"], table)
        _write_json(partial / METADATA_FILE, _metadata(key, profile, categories, paths))
        _swap_into_place(partial, root)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return root


def _default_workers(n_images: int) -> int:
    """``min(2, cpu count)`` processes, or one for small releases where starting a pool costs more than it saves."""
    return 1 if n_images < PARALLEL_MIN_IMAGES else min(2, os.cpu_count() or 1)


def _render_into(partial: Path, categories: list[Category], paths: dict, seed: int, size: int,
                 difficulty: Difficulty, workers: int, progress: bool) -> None:
    """Render every category's images and write each to all of its planned paths."""
    order = sorted(categories, key=lambda c: -c.n_images)  # big categories first balances the workers
    jobs = [(c.to_dict(), seed, size, difficulty) for c in order]
    total = sum(c.n_images for c in categories)
    with tqdm(total=total, desc="rendering synthetic images", unit="img", disable=not progress) as bar:
        for index, images in _rendered(jobs, workers):
            for data, targets in zip(images, paths[index]):
                for relative in targets:
                    _write_bytes(partial / relative, data)
            bar.update(len(images))


def _metadata(key: dict, profile: config.Profile, categories: list[Category], paths: dict) -> dict:
    """The release metadata: key, families, categories and the category of every written file."""
    files = {relative: c.name for c in categories for targets in paths[c.index] for relative in targets}
    return dict(key, generator="helpers.synthetic", profile=profile.name,
                families={name: FAMILIES[name].layout for name in sorted({c.family for c in categories})},
                categories=[c.to_dict() for c in sorted(categories, key=lambda c: c.name)],
                splits={split: sorted(c.name for c in categories if c.split == split)
                        for split in ("train",) + RETRIEVAL_SPLITS},
                files=dict(sorted(files.items())))


def render_background_only(root, split: str, out, profile: config.Profile, seed: int = 0, *,
                           difficulty: Difficulty | None = None, progress: bool = True) -> Path:
    """Write the images of one retrieval split of a synthetic release again, with the firearm left out.

    Every file keeps its relative path and everything but the object (the
    background, clutter, occluder, lighting, blur and JPEG quality come from
    the same random draws), so the split's ground truth applies unchanged. A
    network that retrieves the right category from these images is reading
    the backgrounds, not the firearms. ``root`` must hold the release of
    ``profile`` and ``seed``; returns ``out``.
    """
    root, out = Path(root), Path(out)
    _check_profile(profile)
    difficulty = difficulty or DIFFICULTY
    if split not in RETRIEVAL_SPLITS:
        raise ValueError(f"split must be one of {list(RETRIEVAL_SPLITS)}, got {split!r}")
    if not _is_current(root, _release_key(profile, seed, difficulty)):
        raise ValueError(f"{root} does not hold the synthetic release of profile {profile.name!r} and seed {seed}")
    categories = [c for c in make_categories(profile, seed, difficulty) if c.split == split]
    paths, _ = _plan_files(categories, profile.queries_per_category, seed)
    total = sum(c.n_images for c in categories)
    with tqdm(total=total, desc=f"rendering {split} without firearms", unit="img", disable=not progress) as bar:
        for category in categories:
            for index, targets in enumerate(paths[category.index]):
                jpeg = render_jpeg(category.to_dict(), seed, index, profile.render_size, difficulty,
                                   object_visible=False)
                for relative in targets:
                    _write_bytes(out / relative, jpeg)
                bar.update()
    return out

