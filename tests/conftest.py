"""Shared fixtures: a tiny release in the Firearm 14k layout, written with Pillow into tmp_path."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Training categories with the awkward names real data has: spaces, '&', non-ASCII.
TRAIN_CATEGORIES = ["AK-47", "Heckler & Koch MP5", "Škorpion vz. 61"]
# Unseen categories of the retrieval splits: {split: {category: (n_database, n_queries)}}
RETRIEVAL_CATEGORIES = {
    "validation": {"Glock 17": (3, 2), "M1911": (4, 1)},
    "test": {"Mosin–Nagant": (2, 2), "SPAS-12": (3, 1), "Uzi": (2, 1)},
}
EXTENSIONS = [".jpg", ".JPG", ".Jpeg", ".png", ".PNG", ".jpeg"]


def write_image(path: Path, size=(12, 8), color=(90, 140, 200), mode: str = "RGB") -> Path:
    """Write a small solid-colour image; the format follows the extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new(mode, size, color)
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    image.save(path, format=fmt)
    return path


@dataclass
class ReleaseFixture:
    """A written release plus the facts the loader must recover from it."""

    root: Path
    train_val_counts: dict[str, int]
    retrieval_train_counts: dict[str, int]
    # per split: file name -> true category, for database images and for queries
    database_category: dict[str, dict[str, str]] = field(default_factory=dict)
    query_category: dict[str, dict[str, str]] = field(default_factory=dict)

    def split_dir(self, split: str) -> Path:
        return self.root / "firearm-dataset" / split

    def gt_path(self, split: str) -> Path:
        return self.split_dir(split) / "query_info" / "ground_truth_info.json"

    def read_gt(self, split: str) -> dict:
        return json.loads(self.gt_path(split).read_text(encoding="utf-8"))

    def write_gt(self, split: str, mapping: dict) -> None:
        self.gt_path(split).write_text(json.dumps(mapping, ensure_ascii=False), encoding="utf-8")


def _write_category(folder: Path, count: int, colour_seed: int) -> None:
    """``count`` images with mixed extension cases, plus files the loader must ignore."""
    rng = np.random.default_rng(colour_seed)
    for k in range(count):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        write_image(folder / f"img {k:02d}{EXTENSIONS[k % len(EXTENSIONS)]}", color=colour)
    (folder / "notes.txt").write_text("not an image")
    (folder / ".DS_Store").write_bytes(b"\x00\x01")
    (folder / "._img 00.jpg").write_bytes(b"\x00\x05\x16\x07")  # macOS resource fork, not an image


def build_release(root: Path) -> ReleaseFixture:
    """Write a complete, valid tiny release under ``root`` and describe it."""
    train_val_counts = {"AK-47": 10, "Heckler & Koch MP5": 7, "Škorpion vz. 61": 3}
    retrieval_counts = {"AK-47": 4, "Heckler & Koch MP5": 3, "Škorpion vz. 61": 2}
    fixture = ReleaseFixture(root, train_val_counts, retrieval_counts)
    for c, name in enumerate(TRAIN_CATEGORIES):
        _write_category(root / "firearm-train-val" / name, train_val_counts[name], c)
        _write_category(root / "firearm-dataset" / "train" / name, retrieval_counts[name], 100 + c)
    (root / "firearm-train-val" / "README.txt").write_text("stray file at category level")

    for s, (split, categories) in enumerate(RETRIEVAL_CATEGORIES.items()):
        split_dir = root / "firearm-dataset" / split
        db_names, query_names, gt = {}, {}, {}
        for c, (category, (n_db, n_query)) in enumerate(categories.items()):
            tag = f"{s}{c}"
            names = [f"db_{tag}_{k}{'.jpg' if k % 2 == 0 else '.PNG'}" for k in range(n_db)]
            for k, name in enumerate(names):
                write_image(split_dir / "database_image" / name, color=(30 * c, 10 * k, 100))
                db_names[name] = category
            for q in range(n_query):
                query = f"query_{tag}_{q}.JPG"
                write_image(split_dir / "query_info" / "query_image" / query, color=(30 * c, 200, 50))
                query_names[query] = category
                gt[query] = list(reversed(names))  # unsorted on purpose
        distractor = f"zz_distractor_{s}.jpg"  # listed by no query
        write_image(split_dir / "database_image" / distractor)
        db_names[distractor] = None
        (split_dir / "database_image" / "Thumbs.db").write_bytes(b"\x00")
        fixture.database_category[split] = db_names
        fixture.query_category[split] = query_names
        fixture.write_gt(split, gt)
    return fixture


@pytest.fixture
def release(tmp_path) -> ReleaseFixture:
    """A freshly written tiny release (each test may break its own copy)."""
    return build_release(tmp_path / "release")


@pytest.fixture(scope="module")
def one_faiss_thread():
    """Tiny FAISS indexes: OpenMP threads only add overhead, and spin badly on a loaded machine."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)

