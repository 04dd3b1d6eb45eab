"""What a synthetic release contains: families, categories, their splits and image counts.

A category is a variant of one of :data:`FAMILIES` with one to three part
slots changed; :func:`make_categories` draws them, assigns the held-out
validation and test categories and the long-tailed image counts. The nuisance
settings of every image live here too (:class:`Difficulty`), as they are part
of what a release is.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .. import config

COUNT_TAIL = 1.5
"""Shape of the long tail of images per category (1.0: counts fall geometrically with rank;
larger values put more categories near the minimum)."""

ATTRIBUTES = ("barrel", "stock", "magazine", "sight", "grip", "handguard", "muzzle", "accessory", "finish")
"""The part slots a category fills; its family says which values each slot may take."""


# ----------------------------------------------------------------------------------------------
# Difficulty knobs
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Difficulty:
    """Every knob that makes the synthetic task harder or easier, in one place.

    ``nuisance`` scales all the per-image variation at once (0 gives clean,
    centred templates on a plain background); the other fields set each
    nuisance at ``nuisance=1``. The default is :data:`DIFFICULTY`; to
    recalibrate, pass ``difficulty=replace(DIFFICULTY, nuisance=0.8)`` to
    :func:`make_synthetic_release`. The values are
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

    The first value of each option
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


@dataclass
class Category:
    """One synthetic category: a family variant with its split and image count.

    ``index`` is the category's
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



def _check_profile(profile: config.Profile) -> None:
    """Reject a profile whose synthetic settings cannot produce a valid release, naming the bad value."""
    if not isinstance(profile, config.Profile):
        raise TypeError(f"profile must be a resolved helpers.config.Profile, got {type(profile).__name__} "
                        f"{profile!r}")
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


def make_categories(profile: config.Profile, seed: int = 0, difficulty: Difficulty | None = None) -> list[Category]:
    """The categories of a synthetic release: families, part variants, splits and image counts.

    ``profile`` is a resolved :class:`helpers.config.Profile`; its
    :data:`helpers.config.SYNTHETIC_FIELDS` are used. Deterministic in
    ``(profile, seed)`` and ``difficulty.category_jitter``; categories are
    created family by family and numbered within their family ("assault rifle 07").
    """
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

    Accepts :class:`Category` objects or the dicts of
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

