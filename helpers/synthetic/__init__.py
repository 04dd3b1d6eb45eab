"""A seeded renderer of a stand-in firearm retrieval dataset, in the authors' release layout.

The real Firearm 14k cannot be
downloaded at run time, so the notebooks default to this synthetic stand-in:
procedural side-view silhouettes drawn with Pillow. Categories come in
fine-grained *families* (handgun, revolver, assault rifle, ...). A category is
its family's template with one to three parts changed (barrel length, stock,
magazine, sights, grip, handguard, muzzle device, accessory, finish), so some
categories are close look-alikes. Every image adds nuisance variation: pose,
scale, position, canvas aspect ratio, background, occluders, lighting, blur
and JPEG artefacts.

:func:`make_synthetic_release` writes the release layout of
:mod:`helpers.layout`, which :func:`helpers.data.load_firearm_release` reads::

    root/firearm-train-val/<category>/img_0000.jpg
    root/firearm-dataset/train/<category>/img_0000.jpg            (same images)
    root/firearm-dataset/{validation,test}/database_image/db_00000.jpg
    root/firearm-dataset/{validation,test}/query_info/query_image/query_00000.jpg
    root/firearm-dataset/{validation,test}/query_info/ground_truth_info.json
    root/synthetic_metadata.json

The output is byte-identical for the same profile, seed and :data:`DIFFICULTY`:
each image draws from its own ``numpy`` random stream derived from
``(seed, category index, image index)``, so the rendering order and the number
of worker processes do not matter. Only ``numpy`` and Pillow are used.

The modules, in the order data flows through them: :mod:`.catalogue`
(families, categories, difficulty), :mod:`.drawing` (part polygons),
:mod:`.rendering` (one image), :mod:`.release` (writing a release) and
:mod:`.metadata` (the tables notebooks read back).
"""
from __future__ import annotations

from .catalogue import (ATTRIBUTES, CLEAN, COUNT_TAIL, DIFFICULTY, FAMILIES, Category, Difficulty, Family,
                        lookalike_pairs, make_categories)
from .drawing import BARREL_SCALE, Part, build_parts
from .metadata import METADATA_FILE, attribute_difference, category_table, group_names, is_synthetic, read_metadata
from .release import GENERATOR_VERSION, PARALLEL_MIN_IMAGES, make_synthetic_release, render_background_only
from .rendering import BACKGROUNDS, SUPERSAMPLE, render_example, render_image, render_jpeg

__all__ = ["ATTRIBUTES", "BACKGROUNDS", "BARREL_SCALE", "CLEAN", "COUNT_TAIL", "DIFFICULTY", "FAMILIES",
           "GENERATOR_VERSION", "METADATA_FILE", "PARALLEL_MIN_IMAGES", "SUPERSAMPLE", "Category", "Difficulty",
           "Family", "Part", "attribute_difference", "build_parts", "category_table", "group_names",
           "is_synthetic", "lookalike_pairs", "make_categories", "make_synthetic_release", "read_metadata",
           "render_background_only",
           "render_example", "render_image", "render_jpeg"]
