"""A seeded renderer of a stand-in firearm retrieval dataset, in the authors' release layout.

Introduced in ``01_dataset_exploration``. The real Firearm 14k cannot be
downloaded at run time, so the notebooks default to this synthetic stand-in:
procedural side-view silhouettes drawn with Pillow. Categories come in
fine-grained *families* (handgun, revolver, assault rifle, ...). A category is
its family's template with one to three parts changed (barrel length, stock,
magazine, sights, grip, handguard, muzzle device, accessory, finish), so some
categories are close look-alikes. Every image adds nuisance variation: pose,
scale, position, canvas aspect ratio, background, occluders, lighting, blur
and JPEG artefacts.

:func:`make_synthetic_release` writes the release layout that
:func:`helpers.data.load_firearm_release` reads::

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
"""
from __future__ import annotations

import io
import json
import math
import multiprocessing
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm.auto import tqdm

from . import config

GENERATOR_VERSION = "1.0"
"""Bumped whenever a change to this module changes the rendered bytes."""

METADATA_FILE = "synthetic_metadata.json"
TRAIN_VAL_DIR = "firearm-train-val"
DATASET_DIR = "firearm-dataset"
GROUND_TRUTH_FILE = "ground_truth_info.json"

SUPERSAMPLE = 2
"""Images are drawn at this multiple of the output size and downsampled with LANCZOS."""

COUNT_TAIL = 1.5
"""Shape of the long tail of images per category (1.0: counts fall geometrically with rank;
larger values put more categories near the minimum)."""

ATTRIBUTES = ("barrel", "stock", "magazine", "sight", "grip", "handguard", "muzzle", "accessory", "finish")
"""The part slots a category fills; its family says which values each slot may take."""

BACKGROUNDS = ("plain", "gradient", "texture", "clutter")

PARALLEL_MIN_IMAGES = 500
"""Below this many images a release renders in one process by default (a pool costs more than it saves)."""


# ----------------------------------------------------------------------------------------------
# Difficulty knobs
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Difficulty:
    """Every knob that makes the synthetic task harder or easier, in one place.

    Introduced in ``01_dataset_exploration``. ``nuisance`` scales all the
    per-image variation at once (0 gives clean, centred templates on a plain
    background); the other fields set each nuisance at ``nuisance=1``.
    Recalibrate with ``synthetic.DIFFICULTY = replace(synthetic.DIFFICULTY, nuisance=0.8)``
    or pass ``difficulty=`` to :func:`make_synthetic_release`. The values are
    stored in the release metadata, so a changed difficulty re-renders.
    """

    nuisance: float = 0.5                 # global multiplier on every per-image nuisance below
    part_jitter: float = 0.03             # per-image relative jitter of each part dimension
    category_jitter: float = 0.04         # per-category relative deviation from the family template
    small_rotation_deg: float = 6.0       # standard deviation of the usual, small rotation
    large_rotation_deg: float = 30.0      # bound of the occasional large rotation
    p_large_rotation: float = 0.15
    p_flip: float = 0.5                   # horizontal flip (muzzle pointing left)
    yaw_squash: float = 0.2               # up to this much horizontal foreshortening (off-side views)
    fill: tuple[float, float] = (0.5, 0.95)   # fraction of the canvas the object spans
    aspect: tuple[float, float] = (0.6, 1.0)  # short side / long side of the canvas
    p_portrait: float = 0.15              # canvases taller than wide
    background_weights: tuple[float, float, float, float] = (0.35, 0.25, 0.2, 0.2)  # BACKGROUNDS order
    clutter_shapes: tuple[int, int] = (3, 10)
    p_occluder: float = 0.3               # a hand or a bar over part of the object
    p_shadow: float = 0.5
    brightness: float = 0.3               # +- relative change
    contrast: float = 0.3                 # +- relative change
    colour_cast: float = 0.1              # +- relative change per channel
    finish_jitter: float = 14.0           # +- per-channel change of the finish colours (0-255 scale)
    noise_sd: float = 4.0                 # sensor noise, 0-255 scale
    p_blur: float = 0.35
    blur_max: float = 1.2                 # Gaussian radius at the output size, pixels
    jpeg_quality: tuple[int, int] = (40, 95)

    def to_dict(self) -> dict:
        """Plain-dict view, stored in the release metadata."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}


DIFFICULTY = Difficulty()
"""The difficulty used when none is passed; replace it to recalibrate the whole dataset."""

CLEAN = Difficulty(nuisance=0.0, part_jitter=0.0, p_portrait=0.0, aspect=(0.55, 0.55), p_shadow=0.0,
                   finish_jitter=0.0)
"""No nuisance at all: the category's template, as :func:`render_example` shows it with ``clean=True``."""


# ----------------------------------------------------------------------------------------------
# Families and categories
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """A firearm family: a drawing layout, template dimensions and the values each part slot may take.

    Introduced in ``01_dataset_exploration``. The first value of each option
    list is the family's most common one.
    """

    name: str
    layout: str                       # "long", "handgun", "revolver" or "bullpup"
    geometry: dict[str, float]        # template dimensions in drawing units (receiver height ~ 10)
    options: dict[str, tuple[str, ...]]
    bolt_handle: bool = False


def _family(name, layout, geometry, bolt_handle=False, **options) -> Family:
    """Build a :class:`Family`, checking that every part slot has options."""
    missing = [slot for slot in ATTRIBUTES if slot not in options]
    if missing:
        raise ValueError(f"family {name!r} lacks options for {missing}")
    return Family(name, layout, dict(geometry), {slot: tuple(options[slot]) for slot in ATTRIBUTES}, bolt_handle)


_LONG = dict(handguard_len=0.6, mag_pos=0.5)
FAMILIES: dict[str, Family] = {family.name: family for family in (
    _family("handgun", "handgun",
            dict(recv_len=30, recv_h=10, barrel_len=6, barrel_th=2.4, grip_len=15, grip_w=7.5, mag_len=6, mag_w=7),
            barrel=("medium", "short", "long"), stock=("none",), magazine=("flush", "extended"),
            sight=("iron", "red dot"), grip=("straight", "raked"), handguard=("none",),
            muzzle=("plain", "compensator", "suppressor"), accessory=("none", "light"),
            finish=("black", "tan", "steel", "olive", "wood")),
    _family("revolver", "revolver",
            dict(recv_len=17, recv_h=10, barrel_len=22, barrel_th=3.0, grip_len=14, grip_w=7),
            barrel=("medium", "short", "long"), stock=("none",), magazine=("none",),
            sight=("iron", "scope", "red dot"), grip=("straight", "raked"),
            handguard=("half lug", "full lug", "none"), muzzle=("plain", "compensator"),
            accessory=("none",), finish=("steel", "black", "wood")),
    _family("submachine gun", "long",
            dict(_LONG, recv_len=30, recv_h=8.5, barrel_len=14, barrel_th=2.2, stock_len=24, grip_len=11,
                 grip_w=5.5, mag_len=21, mag_w=5, handguard_len=0.9, mag_pos=0.42),
            barrel=("medium", "short", "long"), stock=("folding", "none", "skeleton", "fixed"),
            magazine=("box", "curved", "drum"), sight=("iron", "red dot"), grip=("straight", "raked"),
            handguard=("slim", "none", "ribbed"), muzzle=("plain", "suppressor", "flash hider"),
            accessory=("none", "foregrip"), finish=("black", "tan", "olive", "steel")),
    _family("carbine", "long",
            dict(_LONG, recv_len=34, recv_h=8.5, barrel_len=34, barrel_th=1.8, stock_len=30, grip_len=11,
                 grip_w=5, mag_len=15, mag_w=6, handguard_len=0.7),
            barrel=("medium", "short", "long"), stock=("collapsible", "fixed", "skeleton", "folding"),
            magazine=("box", "curved"), sight=("carry handle", "red dot", "iron", "scope"),
            grip=("straight", "raked"), handguard=("ribbed", "slim", "thick"),
            muzzle=("flash hider", "brake", "suppressor"), accessory=("none", "foregrip", "bipod"),
            finish=("black", "tan", "olive")),
    _family("assault rifle", "long",
            dict(_LONG, recv_len=38, recv_h=8.5, barrel_len=38, barrel_th=1.8, stock_len=32, grip_len=11,
                 grip_w=5, mag_len=17, mag_w=6.5, handguard_len=0.55),
            barrel=("medium", "short", "long"), stock=("fixed", "folding", "skeleton"),
            magazine=("curved", "box", "drum"), sight=("iron", "red dot", "scope"), grip=("raked", "straight"),
            handguard=("wood", "thick", "ribbed"), muzzle=("brake", "flash hider", "plain"),
            accessory=("none", "foregrip"), finish=("wood", "black", "tan", "olive")),
    _family("battle rifle", "long",
            dict(_LONG, recv_len=44, recv_h=9, barrel_len=46, barrel_th=2.0, stock_len=36, grip_len=12,
                 grip_w=5.5, mag_len=13, mag_w=7.5, handguard_len=0.6),
            barrel=("long", "medium"), stock=("fixed", "folding", "thumbhole"), magazine=("box", "drum"),
            sight=("iron", "scope", "carry handle"), grip=("straight", "raked", "traditional"),
            handguard=("thick", "wood", "ribbed"), muzzle=("flash hider", "brake"), accessory=("none", "bipod"),
            finish=("black", "olive", "wood", "tan")),
    _family("sniper rifle", "long",
            dict(_LONG, recv_len=38, recv_h=8, barrel_len=62, barrel_th=2.2, stock_len=38, grip_len=11,
                 grip_w=5, mag_len=7, mag_w=7, handguard_len=0.5, mag_pos=0.45),
            bolt_handle=True,
            barrel=("long", "medium"), stock=("thumbhole", "fixed", "skeleton"), magazine=("none", "box"),
            sight=("scope", "big scope"), grip=("traditional", "straight"), handguard=("wood", "slim", "none"),
            muzzle=("plain", "brake", "suppressor"), accessory=("bipod", "none"),
            finish=("wood", "olive", "black", "tan")),
    _family("shotgun", "long",
            dict(_LONG, recv_len=32, recv_h=9, barrel_len=56, barrel_th=2.8, stock_len=36, grip_len=11,
                 grip_w=5.5, mag_len=11, mag_w=7, handguard_len=0.4),
            barrel=("long", "medium", "short"), stock=("fixed", "none", "folding", "skeleton"),
            magazine=("tube", "box", "drum"), sight=("iron", "red dot"), grip=("traditional", "straight"),
            handguard=("pump", "wood", "slim"), muzzle=("plain", "brake"), accessory=("none", "light"),
            finish=("wood", "black", "tan", "olive")),
    _family("machine gun", "long",
            dict(_LONG, recv_len=48, recv_h=11, barrel_len=50, barrel_th=3.0, stock_len=34, grip_len=12,
                 grip_w=6, mag_len=13, mag_w=13, handguard_len=0.5, mag_pos=0.4),
            barrel=("long", "medium"), stock=("fixed", "skeleton", "none"), magazine=("belt box", "drum", "box"),
            sight=("iron", "carry handle", "scope"), grip=("straight", "raked"), handguard=("thick", "ribbed", "slim"),
            muzzle=("flash hider", "brake"), accessory=("bipod", "none", "foregrip"),
            finish=("black", "olive", "tan")),
    _family("bullpup rifle", "bullpup",
            dict(recv_len=60, recv_h=11, barrel_len=20, barrel_th=2.0, grip_len=11, grip_w=5, mag_len=15,
                 mag_w=6, handguard_len=0.5),
            barrel=("medium", "short", "long"), stock=("integrated",), magazine=("box", "curved"),
            sight=("carry handle", "scope", "red dot", "iron"), grip=("straight", "raked"),
            handguard=("none", "slim", "ribbed"), muzzle=("flash hider", "brake", "suppressor"),
            accessory=("none", "foregrip"), finish=("black", "olive", "tan")),
)}
"""The ten families; categories are variants of these templates."""

BARREL_SCALE = {"short": 0.7, "medium": 1.0, "long": 1.35}


@dataclass
class Category:
    """One synthetic category: a family variant with its split and image count.

    Introduced in ``01_dataset_exploration``. ``index`` is the category's
    position in creation order; it seeds the category's images.
    """

    index: int
    name: str
    family: str
    split: str                        # "train", "validation" or "test"
    n_images: int
    attributes: dict[str, str]
    geometry: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain-dict view, as stored in ``synthetic_metadata.json``."""
        return asdict(self)


def _as_profile(profile) -> config.Profile:
    """A :class:`helpers.config.Profile` from a profile, a name, or ``None`` (the active profile)."""
    if isinstance(profile, config.Profile):
        return profile
    if profile is None or isinstance(profile, str):
        if profile is not None and profile not in config.PROFILES:
            raise ValueError(f"unknown profile {profile!r}; expected one of {sorted(config.PROFILES)} "
                             "or a helpers.config.Profile")
        return config.get_profile(profile)
    raise TypeError(f"profile must be a name or a helpers.config.Profile, got {type(profile).__name__}")


def _check_profile(profile: config.Profile) -> None:
    """Reject synthetic settings that cannot produce a valid release, naming the bad value."""
    low, high = profile.images_per_category
    counts = dict(n_train_categories=profile.n_train_categories, n_val_categories=profile.n_val_categories,
                  n_test_categories=profile.n_test_categories)
    for key, value in counts.items():
        if value < 1:
            raise ValueError(f"profile {profile.name!r}: {key}={value}, expected at least 1")
    if profile.queries_per_category < 1:
        raise ValueError(f"profile {profile.name!r}: queries_per_category={profile.queries_per_category}, "
                         "expected at least 1")
    if not 1 <= low <= high:
        raise ValueError(f"profile {profile.name!r}: images_per_category={profile.images_per_category}, "
                         "expected (min, max) with 1 <= min <= max")
    if low <= profile.queries_per_category:
        raise ValueError(f"profile {profile.name!r}: images_per_category min {low} must exceed "
                         f"queries_per_category={profile.queries_per_category}, so every query has a "
                         "database match")
    if profile.render_size < 16:
        raise ValueError(f"profile {profile.name!r}: render_size={profile.render_size}, expected at least 16")


def _family_sizes(n_total: int, rng: np.random.Generator) -> dict[str, int]:
    """How many categories each family gets: about four per family at least, spread evenly."""
    n_families = min(len(FAMILIES), max(2, n_total // 4))
    names = [FAMILIES_ORDER[i] for i in sorted(rng.choice(len(FAMILIES), size=n_families, replace=False))]
    sizes = {name: n_total // n_families for name in names}
    for i in rng.choice(n_families, size=n_total % n_families, replace=False):
        sizes[names[i]] += 1
    return sizes


FAMILIES_ORDER = tuple(FAMILIES)


def _valid_attributes(attributes: dict[str, str]) -> bool:
    """Whether a part combination can be drawn distinctly (a traditional wrist needs a full stock)."""
    traditional = attributes["grip"] == "traditional"
    if traditional and attributes["stock"] not in ("fixed", "thumbhole"):
        return False
    if attributes["stock"] == "thumbhole" and not traditional:
        return False
    return True


def _draw_attributes(family: Family, rng: np.random.Generator, favour_first: float = 0.6) -> dict[str, str]:
    """A random part combination for ``family``, favouring each slot's first (most common) value."""
    attributes = {}
    for slot, values in family.options.items():
        if len(values) == 1 or rng.random() < favour_first:
            attributes[slot] = values[0]
        else:
            attributes[slot] = values[int(rng.integers(1, len(values)))]
    return attributes


def _family_base(family: Family, rng: np.random.Generator) -> dict[str, str]:
    """The family's base variant, a valid combination that every category departs from."""
    for _ in range(1000):
        attributes = _draw_attributes(family, rng)
        if _valid_attributes(attributes):
            return attributes
    raise RuntimeError(f"family {family.name!r} has no valid part combination")


def _variant(family: Family, base: dict[str, str], rng: np.random.Generator) -> dict[str, str]:
    """The base with one to three part slots changed to another of the family's values."""
    slots = [slot for slot, values in family.options.items() if len(values) > 1]
    n_changes = min(len(slots), int(rng.choice([1, 2, 3], p=[0.4, 0.4, 0.2])))
    attributes = dict(base)
    for slot in rng.choice(slots, size=n_changes, replace=False):
        others = [value for value in family.options[slot] if value != base[slot]]
        attributes[str(slot)] = others[int(rng.integers(len(others)))]
    return attributes


def _family_variants(family: Family, n: int, rng: np.random.Generator) -> list[dict[str, str]]:
    """``n`` distinct valid variants of ``family`` (duplicates only if the family runs out of them)."""
    base = _family_base(family, rng)
    variants: list[dict[str, str]] = []
    seen: set[tuple] = set()
    for _ in range(200 * n):
        if len(variants) == n:
            break
        attributes = _variant(family, base, rng)
        key = tuple(attributes[slot] for slot in ATTRIBUTES)
        if _valid_attributes(attributes) and key not in seen:
            seen.add(key)
            variants.append(attributes)
    while len(variants) < n:  # a tiny family asked for many categories: reuse; the geometry still differs
        variants.append(dict(variants[len(variants) % max(1, len(seen))] if variants else base))
    return variants


def _category_geometry(family: Family, rng: np.random.Generator, jitter: float) -> dict[str, float]:
    """The family template with each dimension moved by a small per-category factor."""
    return {key: round(float(value * (1.0 + jitter * rng.standard_normal())), 4)
            for key, value in family.geometry.items()}


def _image_counts(n: int, low: int, high: int, rng: np.random.Generator) -> list[int]:
    """Long-tailed images per category: geometric-like fall from ``high`` to ``low`` over a random rank order."""
    if n == 1:
        return [high]
    ranks = rng.permutation(n)
    quantile = ranks / (n - 1)
    counts = low * (high / low) ** ((1.0 - quantile) ** COUNT_TAIL)
    return [int(min(high, max(low, round(c)))) for c in counts]


def _assign_splits(families_of: list[str], n_val: int, n_test: int, rng: np.random.Generator) -> list[str]:
    """Hold out validation and test categories round-robin over families, so every split mixes families.

    Each family keeps at least one category in training (unseen categories are
    new variants of known families).
    """
    pools: dict[str, list[int]] = {}
    for index, family in enumerate(families_of):
        pools.setdefault(family, []).append(index)
    for family in pools:
        pools[family] = [int(i) for i in rng.permutation(pools[family])]
    order = [FAMILIES_ORDER[i] for i in rng.permutation(len(FAMILIES_ORDER)) if FAMILIES_ORDER[i] in pools]
    held: list[int] = []
    while len(held) < n_val + n_test:
        before = len(held)
        for family in order:
            if len(held) < n_val + n_test and len(pools[family]) > 1:
                held.append(pools[family].pop())
        if len(held) == before:
            raise ValueError(f"cannot hold out {n_val} + {n_test} categories while keeping one per family "
                             f"in training ({len(families_of)} categories)")
    splits = ["train"] * len(families_of)
    for k, index in enumerate(held):
        splits[index] = "validation" if k < n_val else "test"
    return splits


def make_categories(profile="tutorial", seed: int = 0, difficulty: Difficulty | None = None) -> list[Category]:
    """The categories of a synthetic release: families, part variants, splits and image counts.

    Introduced in ``01_dataset_exploration``. Deterministic in ``(profile, seed)``
    and ``difficulty.category_jitter``; categories are created family by family
    and numbered within their family ("assault rifle 07").
    """
    profile = _as_profile(profile)
    _check_profile(profile)
    difficulty = difficulty or DIFFICULTY
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0]))
    n_total = profile.n_train_categories + profile.n_val_categories + profile.n_test_categories
    categories: list[Category] = []
    for family_name, size in _family_sizes(n_total, rng).items():
        family = FAMILIES[family_name]
        for number, attributes in enumerate(_family_variants(family, size, rng), start=1):
            categories.append(Category(
                index=len(categories), name=f"{family_name} {number:02d}", family=family_name, split="train",
                n_images=0, attributes=attributes,
                geometry=_category_geometry(family, rng, difficulty.category_jitter)))
    splits = _assign_splits([c.family for c in categories], profile.n_val_categories,
                            profile.n_test_categories, rng)
    counts = _image_counts(n_total, *profile.images_per_category, rng)
    for category, split, count in zip(categories, splits, counts):
        category.split, category.n_images = split, count
    return categories


def lookalike_pairs(categories, max_differences: int = 1) -> list[tuple[str, str, list[str]]]:
    """Pairs of same-family categories that differ in at most ``max_differences`` part slots.

    Introduced in ``01_dataset_exploration`` (look-alike categories side by
    side). Accepts :class:`Category` objects or the dicts of
    :func:`category_table`; returns ``(name_a, name_b, differing_slots)``.
    """
    rows = [_category_dict(c) for c in categories]
    pairs = []
    for i, a in enumerate(rows):
        for b in rows[i + 1:]:
            if a["family"] != b["family"]:
                continue
            differing = [slot for slot in ATTRIBUTES if a["attributes"][slot] != b["attributes"][slot]]
            if len(differing) <= max_differences:
                pairs.append((a["name"], b["name"], differing))
    return pairs


def _category_dict(category) -> dict:
    """A category as a dict with ``name``, ``family``, ``attributes`` and ``geometry``."""
    if isinstance(category, Category):
        return category.to_dict()
    if isinstance(category, dict) and {"name", "family", "attributes"} <= set(category):
        return category
    if isinstance(category, dict) and {"name", "family"} <= set(category):
        attributes = {slot: category[slot] for slot in ATTRIBUTES if slot in category}
        if len(attributes) == len(ATTRIBUTES):
            return dict(category, attributes=attributes)
    raise TypeError("expected a synthetic Category or a dict with name, family and attributes "
                    f"(a row of category_table), got {type(category).__name__}")


# ----------------------------------------------------------------------------------------------
# Drawing: parts as polygons in local units (muzzle towards +x, y downwards)
# ----------------------------------------------------------------------------------------------


class Part(NamedTuple):
    """A polygon of the drawing: ``kind`` is solid, detail (dark inset) or hole; ``role`` picks its colour.

    Introduced in ``01_dataset_exploration`` (how a category is drawn).
    """

    kind: str
    role: str
    points: np.ndarray


def _rect(x0, y0, x1, y1) -> np.ndarray:
    """Axis-aligned rectangle corners, clockwise on screen."""
    return np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], dtype=float)


def _ellipse(cx, cy, rx, ry, n: int = 18) -> np.ndarray:
    """Polygon approximation of an ellipse."""
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _bar(p0, p1, width) -> np.ndarray:
    """A straight bar of ``width`` from ``p0`` to ``p1``."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    d = p1 - p0
    n = np.array([-d[1], d[0]]) / (np.hypot(*d) + 1e-9) * width / 2
    return np.array([p0 + n, p1 + n, p1 - n, p0 - n])


def _leaning_corners(x0, top, width, length, angle_deg, taper: float = 0.92):
    """Corners (top-left, top-right, bottom-right, bottom-left) and unit direction of a leaning quad."""
    a = math.radians(angle_deg)
    direction = np.array([-math.sin(a), math.cos(a)])
    tl, tr = np.array([x0, top]), np.array([x0 + width, top])
    br = tr + direction * length
    bl = br - np.array([width * taper * math.cos(a), width * taper * math.sin(a)])
    return tl, tr, br, bl, direction


def _leaning(x0, top, width, length, angle_deg, taper: float = 0.92) -> np.ndarray:
    """A quadrilateral hanging below ``top``, leaning back (towards -x) by ``angle_deg``, rounded below."""
    tl, tr, br, bl, direction = _leaning_corners(x0, top, width, length, angle_deg, taper)
    return np.array([tl, tr, br, (bl + br) / 2 + direction * width * 0.12, bl])


def _solid(role, points) -> Part:
    """A filled part with an outline and highlights."""
    return Part("solid", role, np.asarray(points, float))


def _detail(role, points) -> Part:
    """A dark inset (slot, port, groove) without outline."""
    return Part("detail", role, np.asarray(points, float))


def _hole(points) -> Part:
    """A see-through opening cut into the parts drawn before it."""
    return Part("hole", "none", np.asarray(points, float))


def _grip_angle(grip: str) -> float:
    """Backward lean of a pistol grip, in degrees."""
    return {"straight": 12.0, "raked": 27.0}.get(grip, 12.0)


def _stock_parts(kind: str, grip: str, g: dict, h: float) -> list[Part]:
    """The stock behind the receiver (x < 0)."""
    s, drop = g["stock_len"], 0.12 * h
    if kind == "none":
        return [_solid("metal", _rect(-1.6, -0.9 * h, 0.5, -0.1 * h))]
    if kind == "folding":
        return [_solid("metal", _bar((0.5, -0.72 * h), (-s, -0.62 * h + drop), 0.2 * h)),
                _solid("metal", _bar((0.5, -0.12 * h), (-s, 0.75 * h + drop), 0.2 * h)),
                _solid("metal", _bar((-s, -0.85 * h + drop), (-s, 1.05 * h + drop), 0.3 * h))]
    if kind == "collapsible":
        return [_solid("metal", _rect(-0.65 * s, -0.8 * h, 0.5, -0.42 * h)),
                _solid("furniture", [(-0.5 * s, -0.92 * h), (-s, -0.95 * h + drop), (-s, 1.05 * h + drop),
                                     (-0.86 * s, 1.05 * h + drop), (-0.5 * s, -0.25 * h)]),
                _detail("furniture", _rect(-s, -0.95 * h + drop, -s + 1.0, 1.05 * h + drop))]
    top = [(0.5, -0.9 * h), (-s, -0.82 * h + drop), (-s, 1.2 * h + drop)]
    if grip == "traditional":
        bottom = [(-0.4 * s, 0.45 * h), (-0.14 * s, 0.8 * h), (0.0, 1.05 * h), (0.08 * s, 0.85 * h),
                  (0.08 * s, 0.05 * h)]
    else:
        bottom = [(-0.3 * s, 0.3 * h), (0.5, 0.0)]
    outline = top + bottom
    if kind == "skeleton":
        hole = [(-0.18 * s, -0.55 * h), (-0.82 * s, -0.5 * h + drop), (-0.82 * s, 0.75 * h + drop),
                (-0.35 * s, 0.2 * h), (-0.18 * s, 0.0)]
        return [_solid("furniture", outline), _hole(hole),
                _detail("furniture", _rect(-s, -0.82 * h + drop, -s + 1.0, 1.2 * h + drop))]
    parts = [_solid("furniture", outline), _detail("furniture", _rect(-s, -0.82 * h + drop, -s + 1.0, 1.2 * h + drop))]
    if kind == "thumbhole":
        parts.append(_hole(_ellipse(-0.2 * s, 0.45 * h, 0.09 * s, 0.28 * h, 14)))
    return parts


def _magazine_parts(kind: str, g: dict, xm: float, h: float) -> list[Part]:
    """A magazine hanging below the receiver at ``xm`` (tube magazines are drawn with the barrel)."""
    ml, mw = g.get("mag_len", 10.0), g.get("mag_w", 6.0)
    if kind in ("none", "tube", "flush"):
        return []
    if kind == "box":
        quad = _leaning(xm, -0.1 * h, mw, ml, -6.0, taper=1.0)
        base = _leaning(xm - 0.4 + math.sin(math.radians(6)) * ml * 0.9, -0.1 * h + ml * 0.9, mw + 0.8, ml * 0.12,
                        -6.0, taper=1.0)
        return [_solid("metal", quad), _solid("metal", base)]
    if kind == "curved":
        t = np.linspace(0.0, 1.0, 9)
        centre = np.stack([xm + mw / 2 + 0.5 * ml * t ** 2, -0.1 * h + ml * t], axis=1)
        tangent = np.stack([np.full_like(t, 0.0) + ml * t, np.full_like(t, ml / 2)], axis=1)
        tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
        normal = np.stack([tangent[:, 1], -tangent[:, 0]], axis=1) * mw / 2
        return [_solid("metal", np.concatenate([centre - normal, (centre + normal)[::-1]]))]
    if kind == "drum":
        r = 0.62 * ml
        cy = 0.1 * h + r
        return [_solid("metal", _rect(xm, -0.1 * h, xm + mw, 0.3 * h)),
                _solid("metal", _ellipse(xm + mw / 2, cy, r, r, 22)),
                _detail("metal", _ellipse(xm + mw / 2, cy, 0.35 * r, 0.35 * r, 14))]
    if kind == "belt box":
        box = _rect(xm - 0.2 * mw, 0.0, xm + 0.8 * mw, ml)
        ribs = [_detail("metal", _rect(xm - 0.2 * mw + 1.0, y, xm + 0.8 * mw - 1.0, y + 0.5)) for y in
                (0.3 * ml, 0.6 * ml)]
        return [_solid("metal", box), *ribs]
    raise ValueError(f"unknown magazine kind {kind!r}")


def _grip_parts(kind: str, g: dict, x0: float, top: float) -> list[Part]:
    """A pistol grip below ``top`` at ``x0`` plus the trigger guard in front of it."""
    if kind == "traditional":
        return []
    gw, gl = g["grip_w"], g["grip_len"]
    return [_solid("furniture", _leaning(x0, top - 0.5, gw, gl, _grip_angle(kind)))]


def _trigger_guard(xa: float, top: float, length: float, depth: float) -> list[Part]:
    """A trigger guard ring with a trigger inside, from ``xa`` forward."""
    outer = [(xa, top), (xa + length, top), (xa + length, top + 0.6 * depth), (xa + 0.75 * length, top + depth),
             (xa, top + depth)]
    inner = [(xa + 0.12 * length, top + 0.02), (xa + 0.88 * length, top + 0.02),
             (xa + 0.86 * length, top + 0.52 * depth),
             (xa + 0.68 * length, top + 0.78 * depth), (xa + 0.12 * length, top + 0.78 * depth)]
    trigger = _bar((xa + 0.45 * length, top), (xa + 0.32 * length, top + 0.6 * depth), 0.12 * length)
    return [_solid("metal", outer), _hole(inner), _solid("metal", trigger)]


def _handguard_parts(kind: str, x0: float, length: float, yb: float, t: float, h: float) -> list[Part]:
    """The handguard around the barrel from ``x0``; pump forends sit further forward."""
    x1 = x0 + length
    if kind == "none":
        return []
    if kind == "slim":
        return [_solid("furniture", [(x0, yb - 0.3 * h), (x1 - 0.6, yb - 0.3 * h), (x1, yb - 0.18 * h),
                                     (x1, yb + 0.22 * h), (x0, yb + 0.3 * h)])]
    shape = [(x0, yb - 0.4 * h), (x1 - 1.2, yb - 0.4 * h), (x1, yb - 0.2 * h), (x1, yb + 0.28 * h),
             (x1 - 1.5, yb + 0.45 * h), (x0, yb + 0.48 * h)]
    if kind in ("thick", "wood"):
        return [_solid("wood" if kind == "wood" else "furniture", shape)]
    if kind == "ribbed":
        slots = [_detail("furniture", _rect(x, yb - 0.12 * h, x + 0.07 * length, yb + 0.12 * h))
                 for x in np.linspace(x0 + 0.08 * length, x1 - 0.2 * length, 5)]
        return [_solid("furniture", shape), *slots]
    if kind == "pump":
        px0 = x0 + 0.12 * length
        px1 = px0 + 1.3 * length
        grooves = [_detail("furniture", _rect(x, yb - 0.05 * h, x + 0.35, yb + 0.5 * h))
                   for x in np.linspace(px0 + 1.0, px1 - 1.5, 6)]
        return [_solid("furniture", [(px0, yb - 0.1 * h), (px1, yb - 0.1 * h), (px1 + 0.6, yb + 0.25 * h),
                                     (px1, yb + 0.65 * h), (px0, yb + 0.65 * h)]), *grooves]
    raise ValueError(f"unknown handguard kind {kind!r}")


def _sight_parts(kind: str, xa: float, xb: float, top: float, h: float, front_x: float, front_y: float) -> list[Part]:
    """Sights mounted on the top rail between ``xa`` and ``xb`` (y = ``top``); iron front post at ``front_x``."""
    span = xb - xa
    post = [_solid("metal", [(front_x - 0.8, front_y), (front_x - 0.2, front_y - 0.42 * h),
                             (front_x + 0.2, front_y - 0.42 * h), (front_x + 0.8, front_y)])]
    if kind == "iron":
        return [_solid("metal", _rect(xa + 0.05 * span, top - 0.28 * h, xa + 0.14 * span, top + 0.2)), *post]
    if kind == "red dot":
        x0 = xa + 0.4 * span
        x1 = x0 + max(0.22 * span, 1.2 * h * 0.5)
        return [_solid("metal", _rect(x0 - 0.5, top - 0.15 * h, x1 + 0.5, top + 0.2)),
                _solid("metal", [(x0, top - 0.15 * h), (x0, top - 0.75 * h), (x1 - 0.6, top - 0.8 * h),
                                 (x1, top - 0.6 * h), (x1, top - 0.15 * h)]),
                _solid("glass", _rect(x1 - 0.25, top - 0.62 * h, x1 + 0.2, top - 0.25 * h))]
    if kind in ("scope", "big scope"):
        big = kind == "big scope"
        cy = top - (0.72 if big else 0.6) * h
        r = 0.2 * h
        x0, x1 = xa + 0.04 * span, xa + (1.0 if big else 0.88) * span
        bell = (0.42 if big else 0.32) * h
        rings = [_solid("metal", _rect(x, cy, x + 0.9, top + 0.2))
                 for x in (x0 + 0.3 * (x1 - x0), x0 + 0.68 * (x1 - x0))]
        return [*rings, _solid("metal", _rect(x0 + 0.12 * span, cy - r, x1 - 0.16 * span, cy + r)),
                _solid("metal", [(x0, cy - 0.27 * h), (x0 + 0.12 * span, cy - 0.3 * h), (x0 + 0.16 * span, cy - r),
                                 (x0 + 0.16 * span, cy + r), (x0 + 0.12 * span, cy + 0.3 * h), (x0, cy + 0.27 * h)]),
                _solid("metal", [(x1 - 0.2 * span, cy - r), (x1 - 0.1 * span, cy - bell), (x1, cy - bell),
                                 (x1, cy + bell), (x1 - 0.1 * span, cy + bell), (x1 - 0.2 * span, cy + r)]),
                _solid("metal", _rect(x0 + 0.45 * (x1 - x0), cy - r - 0.3 * h, x0 + 0.53 * (x1 - x0), cy - r + 0.2)),
                _solid("glass", _rect(x1 - 0.3, cy - bell * 0.8, x1 + 0.25, cy + bell * 0.8))]
    if kind == "carry handle":
        x0, x1 = xa + 0.28 * span, xa + 0.88 * span
        outer = [(x0, top + 0.2), (x0 + 0.04 * span, top - 0.72 * h), (x1, top - 0.72 * h), (x1, top + 0.2)]
        inner = [(x0 + 0.1 * span, top - 0.08 * h), (x0 + 0.12 * span, top - 0.45 * h),
                 (x1 - 0.08 * span, top - 0.45 * h),
                 (x1 - 0.08 * span, top - 0.08 * h)]
        tall_post = [_solid("metal", [(front_x - 1.0, front_y + 0.2), (front_x - 0.25, front_y - 0.85 * h),
                                      (front_x + 0.25, front_y - 0.85 * h), (front_x + 1.0, front_y + 0.2)])]
        return [_solid("metal", outer), _hole(inner),
                _solid("metal", _rect(x0, top - 0.95 * h, x0 + 0.09 * span, top - 0.6 * h)), *tall_post]
    raise ValueError(f"unknown sight kind {kind!r}")


def _muzzle_parts(kind: str, xm: float, yb: float, t: float, h: float) -> list[Part]:
    """A muzzle device at the barrel end ``xm`` on the bore axis ``yb``."""
    if kind == "plain":
        return [_solid("metal", _rect(xm - 0.3, yb - 0.6 * t, xm + 0.3, yb + 0.6 * t))]
    if kind == "brake":
        length = 1.6 * t + 2.0
        ports = [_detail("metal", _rect(x, yb - 0.7 * t, x + 0.28 * t + 0.2, yb + 0.7 * t))
                 for x in (xm + 0.25 * length, xm + 0.6 * length)]
        return [_solid("metal", _rect(xm, yb - 1.05 * t, xm + length, yb + 1.05 * t)), *ports]
    if kind == "flash hider":
        length = 2.6 * t + 1.0
        slots = [_detail("metal", _rect(xm + 0.35 * length, y - 0.1 * t, xm + length + 0.1, y + 0.1 * t))
                 for y in (yb - 0.35 * t, yb + 0.35 * t)]
        return [_solid("metal", _rect(xm, yb - 0.75 * t, xm + length, yb + 0.75 * t)), *slots]
    if kind == "suppressor":
        length, r = max(9.0, 1.25 * h), max(0.28 * h, 1.1 * t)
        return [_solid("dark", [(xm - 1.0, yb - r), (xm + length - 0.8, yb - r), (xm + length, yb - 0.7 * r),
                                (xm + length, yb + 0.7 * r), (xm + length - 0.8, yb + r), (xm - 1.0, yb + r)]),
                _detail("dark", _rect(xm + 0.2 * length, yb - r + 0.35, xm + 0.23 * length, yb + r - 0.35))]
    if kind == "compensator":
        length = 1.2 * t + 1.5
        return [_solid("metal", _rect(xm, yb - 0.8 * t, xm + length, yb + 0.75 * t)),
                _detail("metal", _rect(xm + 0.3 * length, yb - 0.8 * t, xm + 0.45 * length, yb - 0.2 * t)),
                _detail("metal", _rect(xm + 0.62 * length, yb - 0.8 * t, xm + 0.77 * length, yb - 0.2 * t))]
    raise ValueError(f"unknown muzzle kind {kind!r}")


def _accessory_parts(kind: str, x: float, yb: float, t: float, h: float) -> list[Part]:
    """An accessory hung under the barrel or handguard around ``x``."""
    if kind == "none":
        return []
    if kind == "bipod":
        foot = yb + 2.9 * h
        return [_solid("dark", _rect(x - 1.0, yb - 0.1 * h, x + 1.0, yb + 0.45 * h)),
                _solid("dark", _bar((x - 0.2, yb + 0.3 * h), (x - 0.22 * h, foot), 0.22 * h)),
                _solid("dark", _bar((x + 0.2, yb + 0.3 * h), (x + 0.3 * h, foot - 0.1 * h), 0.22 * h))]
    if kind == "foregrip":
        return [_solid("furniture", _leaning(x, yb + 0.4 * h, 0.5 * h, 1.2 * h, -4.0))]
    if kind == "light":
        return [_solid("dark", _rect(x, yb + 0.3 * h, x + 1.05 * h, yb + 0.72 * h)),
                _solid("glass", _rect(x + 1.05 * h - 0.2, yb + 0.32 * h, x + 1.05 * h + 0.3, yb + 0.7 * h))]
    raise ValueError(f"unknown accessory kind {kind!r}")


def _long_gun_parts(family: Family, a: dict, g: dict) -> list[Part]:
    """A rifle, carbine, shotgun, submachine or machine gun in side view."""
    length, h, t = g["recv_len"], g["recv_h"], g["barrel_th"]
    barrel = g["barrel_len"] * BARREL_SCALE[a["barrel"]]
    yb, xb = -0.62 * h, length + barrel
    guard = g["handguard_len"] * barrel if a["handguard"] != "pump" else 0.28 * barrel
    grip_x = 0.2 * length if a["grip"] != "traditional" else 0.08 * length
    parts = _stock_parts(a["stock"], a["grip"], g, h)
    parts += _magazine_parts(a["magazine"], g, g["mag_pos"] * length, h)
    parts += _grip_parts(a["grip"], g, grip_x, 0.0)
    parts.append(_solid("metal", _rect(length - 1.0, yb - t / 2, xb, yb + t / 2)))
    if a["magazine"] == "tube":
        parts += [_solid("metal", _rect(length - 1.0, yb + t / 2 - 0.2, length + 0.86 * barrel, yb + t / 2 + 0.3 * h)),
                  _solid("metal", _rect(length + 0.86 * barrel - 0.2, yb + t / 2 - 0.3, length + 0.86 * barrel + 0.9,
                                        yb + t / 2 + 0.34 * h))]
    parts += _handguard_parts(a["handguard"], length, guard, yb, t, h)
    parts.append(_solid("metal", [(0.0, -0.92 * h), (0.06 * length, -h), (length, -h), (length, -0.15 * h),
                                  (0.95 * length, 0.0), (0.0, 0.0)]))
    parts.append(_detail("metal", _rect(0.5 * length, -0.72 * h, 0.68 * length, -0.45 * h)))
    parts += _trigger_guard(grip_x + (g["grip_w"] if a["grip"] != "traditional" else 0.0), 0.0,
                            1.3 * g["grip_w"], 0.42 * h)
    if family.bolt_handle:
        parts += [_solid("metal", _bar((0.28 * length, -0.55 * h), (0.2 * length, 0.4 * h), 0.16 * h)),
                  _solid("metal", _ellipse(0.2 * length, 0.45 * h, 0.22 * h, 0.22 * h, 12))]
    front_x = length + min(barrel - 1.5, max(guard + 1.5, 0.55 * barrel))
    parts += _sight_parts(a["sight"], 0.0, length, -h, h, front_x, yb - t / 2)
    parts += _muzzle_parts(a["muzzle"], xb, yb, t, h)
    parts += _accessory_parts(a["accessory"], length + 0.8 * max(guard, 0.3 * barrel), yb, t, h)
    return parts


def _handgun_parts(a: dict, g: dict) -> list[Part]:
    """A semi-automatic pistol: slide, frame, grip and exposed barrel."""
    m = BARREL_SCALE[a["barrel"]]
    h = g["recv_h"]
    slide = g["recv_len"] * (0.75 + 0.25 * m)
    exposed = g["barrel_len"] * max(0.0, m - 0.85) * 1.6
    yb, t = -0.74 * h, g["barrel_th"]
    gw, gl = g["grip_w"], g["grip_len"]
    angle = _grip_angle(a["grip"]) - 2.0
    _, _, br, bl, direction = _leaning_corners(0.03 * slide, -0.2 * h, gw, gl, angle, taper=1.0)
    bl, br = bl + (br - bl) * 0.08, br - (br - bl) * 0.08
    if a["magazine"] == "extended":
        parts = [_solid("metal", [bl - direction, br - direction, br + direction * g["mag_len"],
                                  bl + direction * g["mag_len"]])]
    else:
        parts = [_solid("metal", [bl - direction, br - direction, br + direction * 0.9, bl + direction * 0.9])]
    parts.append(_solid("furniture", _leaning(0.03 * slide, -0.2 * h, gw, gl, angle, taper=1.0)))
    parts.append(_solid("metal", _rect(slide - 1.0, yb - t / 2, slide + exposed, yb + t / 2)))
    parts.append(_solid("furniture", [(0.02 * slide, -0.5 * h), (0.9 * slide, -0.5 * h), (0.9 * slide, -0.16 * h),
                                      (0.45 * slide, -0.1 * h), (0.35 * slide, 0.02 * h), (0.03 * slide, 0.0)]))
    parts.append(_solid("metal", [(0.0, -h), (slide - 1.2, -h), (slide, -h + 1.2), (slide, -0.48 * h),
                                  (0.0, -0.48 * h)]))
    parts += [_detail("metal", _rect(x, -0.92 * h, x + 0.35, -0.58 * h)) for x in np.linspace(0.05, 0.16, 4) * slide]
    parts.append(_detail("metal", _rect(0.42 * slide, -h + 0.5, 0.6 * slide, -0.8 * h)))
    parts += _trigger_guard(0.03 * slide + gw * 0.92, -0.12 * h, 0.3 * slide, 0.42 * h)
    if a["sight"] == "iron":
        parts += [_solid("metal", _rect(slide - 2.6, -1.14 * h, slide - 1.6, -h + 0.2)),
                  _solid("metal", _rect(0.8, -1.16 * h, 2.4, -h + 0.2))]
    else:
        parts += [_solid("metal", _rect(0.1 * slide, -1.12 * h, 0.36 * slide, -h + 0.2)),
                  _solid("metal", [(0.12 * slide, -1.12 * h), (0.12 * slide, -1.5 * h), (0.3 * slide, -1.5 * h),
                                   (0.34 * slide, -1.12 * h)]),
                  _solid("glass", _rect(0.31 * slide, -1.45 * h, 0.34 * slide, -1.17 * h))]
    parts += _muzzle_parts(a["muzzle"], slide + exposed, yb, t, h)
    parts += _accessory_parts(a["accessory"], 0.58 * slide, -0.55 * h, t, h)
    return parts


def _revolver_grip(lf: float, h: float, gl: float, angle_deg: float) -> np.ndarray:
    """A rounded revolver grip: a bulging back strap from the hammer down, a shorter front strap."""
    a = math.radians(angle_deg)
    down = np.array([-math.sin(a), math.cos(a)])
    forward = np.array([math.cos(a), math.sin(a)])
    back_top, front_top = np.array([-0.02 * lf, -0.55 * h]), np.array([0.3 * lf, 0.2 * h])
    back_end = back_top + down * gl
    front_end = front_top + down * gl * 0.72
    return np.array([front_top, front_end, front_end * 0.5 + back_end * 0.5 + down * 0.1 * gl,
                     back_end - forward * 0.05 * gl, back_top + down * gl * 0.5 - forward * 0.1 * gl, back_top])


def _revolver_parts(a: dict, g: dict) -> list[Part]:
    """A revolver: frame, cylinder, barrel with its lug, hammer spur and a rounded grip."""
    lf, h = g["recv_len"], g["recv_h"]
    barrel = g["barrel_len"] * BARREL_SCALE[a["barrel"]]
    t = g["barrel_th"]
    yb = -h + t / 2
    xb = lf + barrel
    parts = [_solid("furniture", _revolver_grip(lf, h, g["grip_len"], _grip_angle(a["grip"]) + 10.0))]
    parts.append(_solid("metal", [(0.08 * lf, -0.8 * h), (-0.06 * lf, -1.12 * h), (-0.22 * lf, -1.2 * h),
                                  (-0.18 * lf, -1.04 * h), (-0.06 * lf, -0.62 * h)]))
    parts.append(_solid("metal", _rect(lf - 0.5, yb - t / 2, xb, yb + t / 2)))
    lug = {"full lug": barrel - 0.4, "half lug": 0.45 * barrel, "none": 0.0}[a["handguard"]]
    if lug:
        parts.append(_solid("metal", [(lf - 0.5, yb + t / 2 - 0.3), (lf + lug, yb + t / 2 - 0.3),
                                      (lf + lug, yb + t / 2 + 0.22 * h), (lf + lug - 1.0, yb + t / 2 + 0.32 * h),
                                      (lf - 0.5, yb + t / 2 + 0.32 * h)]))
    else:
        parts.append(_solid("metal", _rect(lf - 0.5, yb + t / 2, lf + 0.45 * barrel, yb + t / 2 + 0.1 * h)))
    parts.append(_solid("metal", [(-0.04 * lf, -0.72 * h), (0.1 * lf, -h), (lf, -h), (lf, -0.55 * h),
                                  (0.9 * lf, -0.3 * h), (0.9 * lf, 0.1 * h), (0.62 * lf, 0.22 * h),
                                  (0.3 * lf, 0.24 * h), (0.0, 0.0)]))
    cx0, cx1, cy0, cy1, r = 0.2 * lf, 0.86 * lf, -0.84 * h, 0.1 * h, 0.1 * h
    parts.append(_solid("bright", [(cx0 + r, cy0), (cx1 - r, cy0), (cx1, cy0 + r), (cx1, cy1 - r), (cx1 - r, cy1),
                                   (cx0 + r, cy1), (cx0, cy1 - r), (cx0, cy0 + r)]))
    parts += [_detail("bright", _rect(cx0 + 0.18 * (cx1 - cx0), y, cx1 - 0.1 * (cx1 - cx0), y + 0.09 * h))
              for y in (-0.58 * h, -0.32 * h, -0.06 * h)]
    parts += _trigger_guard(0.3 * lf, 0.2 * h, 0.36 * lf, 0.48 * h)
    if a["sight"] == "iron":
        parts.append(_solid("metal", [(xb - 2.4, yb - t / 2), (xb - 1.6, yb - t / 2 - 0.3 * h),
                                      (xb - 0.5, yb - t / 2 - 0.3 * h), (xb - 0.5, yb - t / 2)]))
        parts.append(_solid("metal", _rect(0.05 * lf, -1.1 * h, 0.2 * lf, -h + 0.2)))
    else:
        parts += _sight_parts(a["sight"], 0.1 * lf, lf + 0.55 * barrel, -h, h, xb - 1.5, yb - t / 2)
    parts += _muzzle_parts(a["muzzle"], xb, yb, t, h)
    return parts


def _bullpup_parts(a: dict, g: dict) -> list[Part]:
    """A bullpup rifle: the magazine sits behind the grip inside a long stocked body."""
    body, h, t = g["recv_len"], g["recv_h"], g["barrel_th"]
    barrel = g["barrel_len"] * BARREL_SCALE[a["barrel"]]
    yb, xb = -0.62 * h, body + barrel
    guard = g["handguard_len"] * barrel
    grip_x = 0.5 * body
    drop = np.array([0.0, 0.55 * h])  # the magazine well sits in the lower stock
    parts = [Part(p.kind, p.role, p.points + drop) for p in _magazine_parts(a["magazine"], g, 0.16 * body, h)]
    parts += _grip_parts(a["grip"], g, grip_x, 0.0)
    parts.append(_solid("metal", _rect(body - 1.0, yb - t / 2, xb, yb + t / 2)))
    parts += _handguard_parts(a["handguard"], body, guard, yb, t, h)
    parts.append(_solid("furniture", [(0.0, -0.85 * h), (0.05 * body, -h), (body, -h), (body, -0.2 * h),
                                      (0.94 * body, 0.0), (0.4 * body, 0.0), (0.34 * body, 0.6 * h),
                                      (0.02 * body, 0.62 * h), (0.0, 0.45 * h)]))
    parts.append(_detail("furniture", _rect(0.0, -0.85 * h, 1.0, 0.45 * h)))
    parts.append(_detail("furniture", _rect(0.22 * body, -0.7 * h, 0.34 * body, -0.45 * h)))
    parts += _trigger_guard(grip_x + g["grip_w"], 0.0, 0.12 * body, 0.45 * h)
    front_x = body + min(barrel - 1.5, max(guard + 1.0, 0.5 * barrel))
    parts += _sight_parts(a["sight"], 0.42 * body, body, -h, h, front_x, yb - t / 2)
    parts += _muzzle_parts(a["muzzle"], xb, yb, t, h)
    parts += _accessory_parts(a["accessory"], body + 0.3 * barrel, yb, t, h)
    return parts


def build_parts(family: str, attributes: dict[str, str], geometry: dict[str, float]) -> list[Part]:
    """The polygons of one firearm in local drawing units, back to front.

    Introduced in ``01_dataset_exploration`` (how a category is drawn). The
    muzzle points towards +x and y grows downwards, as on screen.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {list(FAMILIES)}")
    fam = FAMILIES[family]
    if fam.layout == "handgun":
        return _handgun_parts(attributes, geometry)
    if fam.layout == "revolver":
        return _revolver_parts(attributes, geometry)
    if fam.layout == "bullpup":
        return _bullpup_parts(attributes, geometry)
    return _long_gun_parts(fam, attributes, geometry)


# ----------------------------------------------------------------------------------------------
# Colours and shading
# ----------------------------------------------------------------------------------------------

FINISHES = {
    "black": {"metal": (50, 51, 55), "furniture": (34, 34, 37)},
    "tan": {"metal": (52, 52, 55), "furniture": (178, 152, 108)},
    "olive": {"metal": (56, 57, 53), "furniture": (98, 104, 64)},
    "steel": {"metal": (160, 162, 168), "furniture": (40, 40, 43)},
    "wood": {"metal": (62, 65, 74), "furniture": (132, 80, 42)},
}
_FIXED_ROLES = {"wood": (138, 84, 44), "dark": (30, 30, 33), "glass": (70, 120, 160)}


def _palette(finish: str, rng: np.random.Generator, jitter: float) -> dict[str, tuple[int, int, int]]:
    """Colours of each role for one image: the finish plus a small per-image variation."""
    colours = dict(FINISHES[finish], **_FIXED_ROLES)
    colours["bright"] = tuple(min(255, int(c * 1.2 + 22)) for c in colours["metal"])
    shift = rng.uniform(-jitter, jitter, size=3) if jitter else np.zeros(3)
    return {role: tuple(int(np.clip(c + s, 0, 255)) for c, s in zip(rgb, shift)) for role, rgb in colours.items()}


def _shade(rgb, factor: float, lift: float = 0.0) -> tuple[int, int, int, int]:
    """``rgb`` scaled by ``factor`` plus ``lift``, clipped, as opaque RGBA."""
    return tuple(int(min(255, max(0, c * factor + lift))) for c in rgb) + (255,)


def _shading_edges(parts: list[Part], inset: float):
    """Edges of every solid part that face up (lit) or down (shaded), moved ``inset`` units inwards.

    Returns ``(part number, faces up, segment)`` arrays over all parts at once;
    a segment is two local points.
    """
    solid = [k for k, part in enumerate(parts) if part.kind == "solid"]
    if not solid:
        return np.zeros(0, int), np.zeros(0, bool), np.zeros((0, 2, 2))
    points = np.concatenate([parts[k].points for k in solid])
    sizes = np.array([len(parts[k].points) for k in solid])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    owner = np.repeat(np.arange(len(solid)), sizes)
    following = np.arange(len(points)) + 1
    following[starts + sizes - 1] = starts
    nxt = points[following]
    area = np.add.reduceat(points[:, 0] * nxt[:, 1] - nxt[:, 0] * points[:, 1], starts)
    d = nxt - points
    outward = np.stack([d[:, 1], -d[:, 0]], axis=1) * np.where(area[owner] > 0, 1.0, -1.0)[:, None]
    length = np.linalg.norm(outward, axis=1)
    outward /= np.maximum(length, 1e-9)[:, None]
    up, down = outward[:, 1] < -0.6, outward[:, 1] > 0.6
    keep = (up | down) & (length > 1e-6)
    shift = -outward[keep] * inset
    segments = np.stack([points[keep] + shift, nxt[keep] + shift], axis=1)
    return np.asarray(solid)[owner[keep]], up[keep], segments


class _Pose(NamedTuple):
    """Local units to canvas pixels: x squash, flip, rotation, scale and offset."""

    squash: float
    flip: bool
    angle: float
    scale: float
    offset: np.ndarray

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Map local points of shape (n, 2) to canvas pixels."""
        p = points * np.array([self.squash * (-1.0 if self.flip else 1.0), 1.0])
        c, s = math.cos(self.angle), math.sin(self.angle)
        p = p @ np.array([[c, s], [-s, c]])
        return p * self.scale + self.offset


def _fit_pose(parts: list[Part], canvas: tuple[int, int], rng: np.random.Generator, squash: float, flip: bool,
              angle: float, fill: float, centred: bool) -> _Pose:
    """Scale and place the rotated drawing so that it spans ``fill`` of the canvas."""
    points = np.concatenate([p.points for p in parts])
    unit = _Pose(squash, flip, angle, 1.0, np.zeros(2)).apply(points)
    lo, hi = unit.min(axis=0), unit.max(axis=0)
    extent = np.maximum(hi - lo, 1e-6)
    scale = fill * min(canvas[0] / extent[0], canvas[1] / extent[1])
    slack = np.array(canvas) - extent * scale
    position = slack / 2 if centred else rng.uniform(0.0, 1.0, size=2) * slack
    return _Pose(squash, flip, angle, scale, position - lo * scale)


def _draw_gun(size: tuple[int, int], parts: list[Part], pose: _Pose, palette: dict) -> Image.Image:
    """The firearm on a transparent layer: filled parts, dark outlines, highlights on top edges."""
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    width = max(1, int(round(0.28 * pose.scale)))
    sizes = [len(part.points) for part in parts]
    canvas = pose.apply(np.concatenate([part.points for part in parts]))
    polygons = np.split(canvas, np.cumsum(sizes)[:-1])
    owners, faces_up, segments = _shading_edges(parts, 1.3 * width / pose.scale)
    lines = pose.apply(segments.reshape(-1, 2)).reshape(-1, 4).tolist()
    edges_of: dict[int, list[int]] = {}
    for e, k in enumerate(owners.tolist()):
        edges_of.setdefault(k, []).append(e)
    for k, (part, polygon) in enumerate(zip(parts, polygons)):
        xy = polygon.ravel().tolist()
        if part.kind == "hole":
            draw.polygon(xy, fill=(0, 0, 0, 0), outline=_shade(palette["dark"], 1.0), width=width)
            continue
        base = palette[part.role]
        if part.kind == "detail":
            draw.polygon(xy, fill=_shade(base, 0.42))
            continue
        draw.polygon(xy, fill=_shade(base, 1.0), outline=_shade(base, 0.4), width=width)
        lit, shaded = _shade(base, 1.25, 45), _shade(base, 0.72)
        for e in edges_of.get(k, ()):
            draw.line(lines[e], fill=lit if faces_up[e] else shaded, width=width)
    return layer


# ----------------------------------------------------------------------------------------------
# Nuisance: background, occluders, lighting
# ----------------------------------------------------------------------------------------------


def _random_colour(rng: np.random.Generator, light: bool = False) -> np.ndarray:
    """A random RGB colour; ``light`` favours the pale backdrops of product photos."""
    if light:
        return np.clip(rng.uniform(175, 255) + rng.uniform(-18, 18, size=3), 0, 255)
    return rng.uniform(0, 255, size=3)


def _background(size: tuple[int, int], kind: str, rng: np.random.Generator, n_shapes: tuple[int, int]) -> Image.Image:
    """A plain, gradient, low-frequency texture or cluttered backdrop."""
    w, h = size
    if kind == "plain":
        return Image.new("RGB", size, tuple(int(c) for c in _random_colour(rng, light=rng.random() < 0.7)))
    if kind == "gradient":
        a, b = _random_colour(rng, rng.random() < 0.5), _random_colour(rng, rng.random() < 0.5)
        theta = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        ramp = (xx * math.cos(theta) + yy * math.sin(theta))
        ramp = (ramp - ramp.min()) / max(1e-6, float(np.ptp(ramp)))
        arr = a[None, None, :] * (1 - ramp[..., None]) + b[None, None, :] * ramp[..., None]
        return Image.fromarray(arr.astype(np.uint8), "RGB")
    if kind == "texture":
        cells = int(rng.integers(3, 12))
        base = _random_colour(rng, light=rng.random() < 0.5)
        coarse = (base + rng.normal(0, rng.uniform(15, 50), size=(cells, cells, 1))
                  + rng.normal(0, rng.uniform(3, 15), size=(cells, cells, 3)))
        image = Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8), "RGB").resize(size, Image.BICUBIC)
        grain = rng.normal(0, rng.uniform(4, 20), size=(h, w, 1))
        return Image.fromarray(np.clip(np.asarray(image, np.float32) + grain, 0, 255).astype(np.uint8), "RGB")
    if kind == "clutter":
        image = _background(size, "gradient" if rng.random() < 0.5 else "plain", rng, n_shapes)
        _draw_clutter(image, rng, n_shapes)
        return image
    raise ValueError(f"unknown background kind {kind!r}; expected one of {BACKGROUNDS}")


def _draw_clutter(image: Image.Image, rng: np.random.Generator, n_shapes: tuple[int, int]) -> None:
    """Random rectangles, ellipses and long thin bars (distractors shaped like gun parts)."""
    draw = ImageDraw.Draw(image)
    w, h = image.size
    for _ in range(int(rng.integers(n_shapes[0], n_shapes[1] + 1))):
        colour = tuple(int(c) for c in _random_colour(rng))
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        rx, ry = rng.uniform(0.03, 0.25) * w, rng.uniform(0.03, 0.25) * h
        shape = rng.integers(3)
        if shape == 0:
            draw.rectangle([x - rx, y - ry, x + rx, y + ry], fill=colour)
        elif shape == 1:
            draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=colour)
        else:
            theta = rng.uniform(0, np.pi)
            dx, dy = math.cos(theta) * rx * 2, math.sin(theta) * rx * 2
            draw.line([(x - dx, y - dy), (x + dx, y + dy)], fill=colour, width=max(1, int(rng.uniform(0.01, 0.04) * w)))


_SKIN = ((234, 192, 160), (214, 160, 122), (176, 120, 84), (120, 78, 52), (80, 54, 38))


def _draw_occluder(image: Image.Image, centre: np.ndarray, reach: float, rng: np.random.Generator) -> None:
    """A hand-like blob (palm and fingers) or a bar covering part of the object around ``centre``."""
    draw = ImageDraw.Draw(image)
    if rng.random() < 0.6:
        skin = np.array(_SKIN[int(rng.integers(len(_SKIN)))], float) + rng.uniform(-12, 12, size=3)
        fill = tuple(int(c) for c in np.clip(skin, 0, 255))
        edge = tuple(int(c * 0.7) for c in fill)
        r = reach * rng.uniform(0.12, 0.2)
        theta = rng.uniform(0, 2 * np.pi)
        along, across = np.array([math.cos(theta), math.sin(theta)]), np.array([-math.sin(theta), math.cos(theta)])
        palm = centre - along * r * 0.8
        draw.polygon([tuple(p) for p in palm + _ellipse(0, 0, r, r * 0.8, 16) @ np.stack([along, across])],
                     fill=fill, outline=edge)
        for k in range(4):
            base = palm + across * (k - 1.5) * r * 0.5
            tip = base + along * r * rng.uniform(1.4, 1.9)
            draw.line([tuple(base), tuple(tip)], fill=edge, width=max(1, int(r * 0.48)))
            draw.line([tuple(base), tuple(tip)], fill=fill, width=max(1, int(r * 0.36)))
        return
    colour = tuple(int(c) for c in _random_colour(rng))
    theta = rng.uniform(0, np.pi)
    half = reach * rng.uniform(0.3, 0.7)
    d = np.array([math.cos(theta), math.sin(theta)]) * half
    draw.line([tuple(centre - d), tuple(centre + d)], fill=colour, width=max(1, int(reach * rng.uniform(0.05, 0.12))))


def _drop_shadow(background: Image.Image, layer: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A soft shadow of the object's silhouette, offset down-right, under the object."""
    alpha = layer.getchannel("A")
    offset = tuple(int(v) for v in rng.integers(1, max(2, layer.size[0] // 40), size=2))
    shifted = Image.new("L", layer.size, 0)
    shifted.paste(alpha, offset)
    shadow = shifted.filter(ImageFilter.GaussianBlur(max(1.0, layer.size[0] / 120))).point(lambda v: v * 45 // 100)
    return Image.composite(Image.new("RGB", layer.size, (0, 0, 0)), background, shadow)


def _relight(image: Image.Image, rng: np.random.Generator, d: Difficulty, s: float) -> Image.Image:
    """Brightness, contrast, colour cast and sensor noise, all scaled by the nuisance strength ``s``."""
    if s <= 0:
        return image
    arr = np.asarray(image, np.float32)
    mean = arr.mean()
    contrast = 1.0 + rng.uniform(-1, 1) * d.contrast * s
    brightness = 1.0 + rng.uniform(-1, 1) * d.brightness * s
    cast = 1.0 + rng.uniform(-1, 1, size=3) * d.colour_cast * s
    arr = ((arr - mean) * contrast + mean) * brightness * cast
    arr += rng.normal(0.0, d.noise_sd * s * rng.uniform(0, 1), size=arr.shape[:2] + (1,))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


# ----------------------------------------------------------------------------------------------
# One image
# ----------------------------------------------------------------------------------------------


def _canvas_size(size: int, rng: np.random.Generator, d: Difficulty) -> tuple[int, int]:
    """Output (width, height): the long side is ``size``, the short side a random fraction of it."""
    short = int(round(size * rng.uniform(*d.aspect)))
    return (short, size) if rng.random() < d.p_portrait else (size, short)


def _jitter_geometry(geometry: dict[str, float], rng: np.random.Generator, amount: float) -> dict[str, float]:
    """Each dimension moved by a small per-image factor (the same category never looks identical)."""
    if amount <= 0:
        return dict(geometry)
    return {key: value * (1.0 + amount * float(rng.standard_normal())) for key, value in geometry.items()}


def _rotation(rng: np.random.Generator, d: Difficulty, s: float) -> float:
    """Rotation in radians: mostly small, now and then up to the large bound."""
    if rng.random() < d.p_large_rotation * min(1.0, s):
        degrees = rng.uniform(-1, 1) * d.large_rotation_deg * s
    else:
        degrees = rng.normal(0.0, d.small_rotation_deg * s)
    return math.radians(degrees)


def _pick_background(rng: np.random.Generator, d: Difficulty, s: float) -> str:
    """Plain backgrounds at low nuisance, the weighted mix at ``nuisance=1``."""
    if rng.random() >= min(1.0, s):
        return "plain"
    weights = np.asarray(d.background_weights, float)
    return BACKGROUNDS[int(rng.choice(len(BACKGROUNDS), p=weights / weights.sum()))]


def render_image(category, rng: np.random.Generator, size: int, difficulty: Difficulty | None = None,
                 clean: bool = False) -> Image.Image:
    """Render one image of ``category`` (longest side ``size``) with the nuisance drawn from ``rng``.

    Introduced in ``01_dataset_exploration``. ``category`` is a
    :class:`Category` or a row of :func:`category_table`. With ``clean=True`` the
    template is drawn centred, unrotated, on a white background.
    """
    info = _category_dict(category)
    d = CLEAN if clean else (difficulty or DIFFICULTY)
    s = max(0.0, d.nuisance)
    width, height = _canvas_size(size, rng, d)
    big = (width * SUPERSAMPLE, height * SUPERSAMPLE)
    geometry = _jitter_geometry(info["geometry"] or FAMILIES[info["family"]].geometry, rng, d.part_jitter)
    parts = build_parts(info["family"], info["attributes"], geometry)
    fill = 0.9 + (rng.uniform(*d.fill) - 0.9) * min(1.0, s)
    pose = _fit_pose(parts, big, rng, squash=1.0 - rng.uniform(0, d.yaw_squash * s),
                     flip=bool(rng.random() < d.p_flip * min(1.0, s)), angle=_rotation(rng, d, s),
                     fill=float(np.clip(fill, 0.2, 0.98)), centred=clean)
    layer = _draw_gun(big, parts, pose, _palette(info["attributes"]["finish"], rng, d.finish_jitter * s))
    background = (Image.new("RGB", big, (250, 250, 250)) if clean
                  else _background(big, _pick_background(rng, d, s), rng, d.clutter_shapes))
    if rng.random() < d.p_shadow * min(1.0, s):
        background = _drop_shadow(background, layer, rng)
    image = Image.alpha_composite(background.convert("RGBA"), layer).convert("RGB")
    if rng.random() < d.p_occluder * s:
        solid = [p for p in parts if p.kind == "solid"]
        anchor = solid[int(rng.integers(len(solid)))].points.mean(axis=0)
        _draw_occluder(image, pose.apply(anchor[None])[0], pose.scale * 40.0 * pose.squash, rng)
    image = image.resize((width, height), Image.LANCZOS)
    image = _relight(image, rng, d, s)
    if rng.random() < d.p_blur * min(1.0, s):
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, max(0.31, d.blur_max * s))))
    return image


def _jpeg_quality(rng: np.random.Generator, d: Difficulty) -> int:
    """JPEG quality: uniform over the difficulty's range at ``nuisance=1``, near the top at 0."""
    low, high = d.jpeg_quality
    return int(round(high - rng.uniform(0, 1) * (high - low) * min(1.0, max(0.0, d.nuisance))))


def _image_rng(seed: int, category_index: int, image_index: int) -> np.random.Generator:
    """The random stream of one image, independent of rendering order."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), 1, int(category_index), int(image_index)]))


def render_jpeg(category, seed: int, image_index: int, size: int, difficulty: Difficulty | None = None) -> bytes:
    """The JPEG bytes of image ``image_index`` of ``category``, exactly as the release stores them.

    Introduced in ``01_dataset_exploration``.
    """
    d = difficulty or DIFFICULTY
    info = _category_dict(category)
    rng = _image_rng(seed, info["index"], image_index)
    image = render_image(info, rng, size, d)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=_jpeg_quality(rng, d))
    return buffer.getvalue()


def render_example(category, seed: int = 0, size: int = 128, *, clean: bool = False,
                   difficulty: Difficulty | None = None) -> Image.Image:
    """One image of ``category`` for display: its clean template, or a nuisance-augmented sample.

    Introduced in ``01_dataset_exploration`` (a category's template next to its
    augmented samples). ``seed`` picks the sample; ``size`` is the longest side.
    """
    info = _category_dict(category)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 2, int(info.get("index", 0))]))
    return render_image(info, rng, size, difficulty, clean=clean)


# ----------------------------------------------------------------------------------------------
# The release
# ----------------------------------------------------------------------------------------------


def _settings(profile: config.Profile) -> dict:
    """The profile fields the synthetic data depends on."""
    return {key: list(value) if isinstance(value, tuple) else value
            for key, value in profile.to_dict().items()
            if key in ("n_train_categories", "n_val_categories", "n_test_categories", "images_per_category",
                       "render_size", "queries_per_category")}


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
                                      f"{DATASET_DIR}/train/{category.name}/img_{i:04d}.jpg"]
                                     for i in range(category.n_images)]
    for split_id, split in enumerate(("validation", "test")):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 3, split_id]))
        members = [c for c in categories if c.split == split]
        queries = [(c.index, i) for c in members for i in range(queries_per_category)]
        database = [(c.index, i) for c in members for i in range(queries_per_category, c.n_images)]
        query_names = _shuffled_names(queries, "query", rng)
        db_names = _shuffled_names(database, "db", rng)
        for c in members:
            paths[c.index] = [[f"{DATASET_DIR}/{split}/query_info/query_image/{query_names[(c.index, i)]}"]
                              if i < queries_per_category else
                              [f"{DATASET_DIR}/{split}/database_image/{db_names[(c.index, i)]}"]
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


def read_metadata(root) -> dict:
    """The parsed ``synthetic_metadata.json`` of a synthetic release.

    Introduced in ``01_dataset_exploration``; its ``files`` map gives the
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

    Introduced in ``01_dataset_exploration``; ``pandas.DataFrame(category_table(root))``
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


def make_synthetic_release(root, profile="tutorial", seed: int = 0, *, progress: bool = True,
                           workers: int | None = None, difficulty: Difficulty | None = None) -> Path:
    """Render the synthetic stand-in for Firearm 14k under ``root`` in the authors' release layout.

    Introduced in ``01_dataset_exploration``. ``profile`` is a name or a
    :class:`helpers.config.Profile` (its ``n_*_categories``,
    ``images_per_category``, ``render_size`` and ``queries_per_category`` are
    used). The release is written to a sibling folder and renamed into place, so
    an interrupted run leaves nothing half-written. If ``root`` already holds a
    release with the same profile settings, seed, difficulty and generator
    version, it is returned at once. ``workers`` processes render in parallel
    (default ``min(2, cpu count)``, or 1 below :data:`PARALLEL_MIN_IMAGES`
    images); the bytes do not depend on it. Returns
    ``root`` as a :class:`~pathlib.Path`.
    """
    root = Path(root).expanduser().absolute()
    profile = _as_profile(profile)
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
            _write_json(partial / DATASET_DIR / split / "query_info" / GROUND_TRUTH_FILE, table)
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
                        for split in ("train", "validation", "test")},
                files=dict(sorted(files.items())))


def is_synthetic(root) -> bool:
    """Whether ``root`` holds a synthetic release (it has ``synthetic_metadata.json``).

    Introduced in ``01_dataset_exploration``: notebooks use the attribute table
    only when it exists, so the same cells run on the real Firearm 14k.
    """
    return (Path(root) / METADATA_FILE).is_file()


def attribute_difference(rows: list[dict], name_a: str, name_b: str) -> str:
    """The part slots in which two categories differ, as ``"slot: a / b"`` text ("" without metadata).

    Introduced in ``05_embedding_visualization`` (why confused categories look alike).
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

    Introduced in ``05_embedding_visualization``. The loader derives groups
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
