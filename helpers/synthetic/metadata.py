"""Queries on the metadata of a synthetic release, for the notebooks.

A synthetic release carries ``synthetic_metadata.json`` beside the authors'
layout: the categories with their families and part slots, and the category
of every written file. The real Firearm 14k has no such file, so notebooks
check :func:`is_synthetic` before using these tables.
"""
from __future__ import annotations

import json
from pathlib import Path

from .catalogue import ATTRIBUTES

METADATA_FILE = "synthetic_metadata.json"
"""The metadata file at the root of a synthetic release."""


def read_metadata(root) -> dict:
    """The parsed ``synthetic_metadata.json`` of a synthetic release.

    Its ``files`` map gives the
    category of every image (to colour embeddings by family in
    ``05_embedding_visualization``).
    """
    path = Path(root) / METADATA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; expected the metadata of a synthetic release "
                                "written by make_synthetic_release")
    return json.loads(path.read_text(encoding="ascii"))


def category_table(root) -> list[dict]:
    """One flat dict per category of a synthetic release: name, family, split, n_images and every part slot.

    ``pandas.DataFrame(category_table(root))``
    gives the table. Rows also carry ``index`` and ``geometry``, so
    :func:`render_example` accepts them.
    """
    rows = []
    for category in read_metadata(root)["categories"]:
        row = {key: category[key] for key in ("name", "family", "split", "n_images")}
        row.update(category["attributes"])
        row.update(index=category["index"], geometry=category["geometry"], attributes=category["attributes"])
        rows.append(row)
    return rows


def is_synthetic(root) -> bool:
    """Whether ``root`` holds a synthetic release (it has ``synthetic_metadata.json``).

    Notebooks use the attribute table
    only when it exists, so the same cells run on the real Firearm 14k.
    """
    return (Path(root) / METADATA_FILE).is_file()


def attribute_difference(rows: list[dict], name_a: str, name_b: str) -> str:
    """The part slots in which two categories differ, as ``"slot: a / b"`` text ("" without metadata).
    """
    by_name = {row["name"]: row for row in rows}
    if name_a not in by_name or name_b not in by_name:
        return ""
    a, b = by_name[name_a], by_name[name_b]
    if a["family"] != b["family"]:
        return f"family: {a['family']} / {b['family']}"
    slots = [f"{slot}: {a['attributes'][slot]} / {b['attributes'][slot]}"
             for slot in ATTRIBUTES if a["attributes"][slot] != b["attributes"][slot]]
    return "; ".join(slots) or "nothing (same parts)"


def group_names(root, split) -> dict[int, str]:
    """Map the ground-truth group ids of a retrieval split to category names.

    The loader derives groups
    from the ground truth alone (the real release has no category folders in
    validation/test); for a synthetic release the metadata names them. Without
    metadata each group is called ``"group <id>"``.
    """
    root = Path(root)
    names: dict[int, str] = {}
    files = read_metadata(root)["files"] if is_synthetic(root) else {}
    for path, label in zip(list(split.queries) + list(split.database),
                           list(split.query_labels) + list(split.database_labels)):
        label = int(label)
        if label in names:
            continue
        relative = Path(path).resolve().relative_to(root.resolve()).as_posix() if files else ""
        names[label] = files.get(relative, f"group {label}")
    return names
