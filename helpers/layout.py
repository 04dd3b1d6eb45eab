"""The authors' release layout, shared by the loader (``data``) and the synthetic writer.

Firearm 14k ships as two archives side by side under one root::

    root/firearm-train-val/<category>/*.jpg                       classification data
    root/firearm-dataset/train/<category>/*.jpg                   retrieval training data
    root/firearm-dataset/{validation,test}/database_image/*.jpg
    root/firearm-dataset/{validation,test}/query_info/query_image/*.jpg
    root/firearm-dataset/{validation,test}/query_info/ground_truth_info.json

The ground-truth JSON maps each query file name to the database file names
that match it. These names are spelt here once.
"""
from __future__ import annotations

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
"""Image files are recognised by these extensions, compared case-insensitively."""

TRAIN_VAL_DIR = "firearm-train-val"
DATASET_DIR = "firearm-dataset"
RETRIEVAL_TRAIN_DIR = "train"
RETRIEVAL_SPLITS = ("validation", "test")
DATABASE_DIR = "database_image"
QUERY_INFO_DIR = "query_info"
QUERY_IMAGE_DIR = "query_image"
GROUND_TRUTH_FILE = "ground_truth_info.json"


def split_locations(dataset_dir, split: str) -> dict:
    """The three places of a retrieval split under ``firearm-dataset/``, relative or absolute.

    Returns ``{"database": ..., "queries": ..., "ground_truth": ...}`` built
    with ``/`` on whatever ``dataset_dir`` is (a ``Path`` or a ``PurePosixPath``).
    """
    split_dir = dataset_dir / split
    return {"database": split_dir / DATABASE_DIR,
            "queries": split_dir / QUERY_INFO_DIR / QUERY_IMAGE_DIR,
            "ground_truth": split_dir / QUERY_INFO_DIR / GROUND_TRUTH_FILE}
