"""Tests of the synthetic release renderer (the helpers.synthetic package)."""
from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import config, data, synthetic
from helpers.synthetic import catalogue
from helpers.synthetic import release as release_module

TINY = config.get_profile("smoke", n_train_categories=6, n_val_categories=2, n_test_categories=2,
                          images_per_category=(4, 7), render_size=32, queries_per_category=1)
SPLITS = ("validation", "test")


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, keyed by relative path."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def image_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*.jpg")}


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("release") / "tiny"
    return synthetic.make_synthetic_release(root, TINY, seed=3, progress=False, workers=1)


@pytest.fixture(scope="module")
def metadata(release) -> dict:
    return json.loads((release / synthetic.METADATA_FILE).read_text())


# --- determinism ------------------------------------------------------------------------------


def test_same_seed_gives_byte_identical_tree(release, tmp_path):
    again = synthetic.make_synthetic_release(tmp_path / "again", TINY, seed=3, progress=False, workers=1)
    first, second = tree_digest(release), tree_digest(again)
    assert len(first) > 40
    assert first == second


def test_different_seed_gives_different_bytes(release, tmp_path):
    other = synthetic.make_synthetic_release(tmp_path / "other", TINY, seed=4, progress=False, workers=1)
    first, second = tree_digest(release), tree_digest(other)
    assert first[synthetic.METADATA_FILE] != second[synthetic.METADATA_FILE]
    shared = set(first) & set(second)
    assert sum(first[k] == second[k] for k in shared if k.endswith(".jpg")) == 0


def test_parallel_output_equals_serial_output(release, tmp_path):
    parallel = synthetic.make_synthetic_release(tmp_path / "parallel", TINY, seed=3, progress=False, workers=2)
    assert tree_digest(parallel) == tree_digest(release)


def test_image_bytes_do_not_depend_on_rendering_order():
    category = synthetic.make_categories(TINY, seed=3)[0]
    forward = [synthetic.render_jpeg(category, 3, i, 32) for i in range(3)]
    backward = [synthetic.render_jpeg(category, 3, i, 32) for i in reversed(range(3))][::-1]
    assert forward == backward
    assert len(set(forward)) == 3


# --- layout -----------------------------------------------------------------------------------


def test_top_level_folders_exist(release):
    for relative in ("firearm-train-val", "firearm-dataset/train", "firearm-dataset/validation/database_image",
                     "firearm-dataset/validation/query_info/query_image", "firearm-dataset/test/database_image",
                     "firearm-dataset/test/query_info/query_image"):
        assert (release / relative).is_dir(), relative
    assert not list(release.parent.glob(".tiny.*")), "no partial or old folders may be left beside the root"


def test_category_counts_per_split_match_profile(release, metadata):
    train_val = sorted(p.name for p in (release / "firearm-train-val").iterdir())
    retrieval = sorted(p.name for p in (release / "firearm-dataset" / "train").iterdir())
    assert len(train_val) == TINY.n_train_categories
    assert train_val == retrieval
    splits = Counter(c["split"] for c in metadata["categories"])
    assert splits == {"train": 6, "validation": 2, "test": 2}


def test_train_val_and_retrieval_train_hold_the_same_images(release):
    a, b = release / "firearm-train-val", release / "firearm-dataset" / "train"
    assert tree_digest(a) == tree_digest(b)


def test_image_counts_within_profile_range(metadata):
    low, high = TINY.images_per_category
    files_per_category = Counter(metadata["files"].values())
    for category in metadata["categories"]:
        copies = 2 if category["split"] == "train" else 1
        assert low <= category["n_images"] <= high
        assert files_per_category[category["name"]] == copies * category["n_images"]


@pytest.mark.parametrize("split", SPLITS)
def test_ground_truth_names_existing_database_files_of_the_query_category(release, metadata, split):
    base = release / "firearm-dataset" / split
    gt = json.loads((base / "query_info" / "ground_truth_info.json").read_text())
    queries = {p.name for p in (base / "query_info" / "query_image").iterdir()}
    database = {p.name for p in (base / "database_image").iterdir()}
    assert set(gt) == queries
    assert not queries & database
    # reference computed another way: the category of every file from the metadata
    category_of = {Path(k).name: v for k, v in metadata["files"].items() if f"/{split}/" in k}
    for query, matches in gt.items():
        assert matches, f"query {query} has no ground truth"
        assert set(matches) <= database
        expected = sorted(name for name in database if category_of[name] == category_of[query])
        assert matches == expected
    n_categories = len({category_of[q] for q in queries})
    assert len(queries) == n_categories * TINY.queries_per_category


@pytest.mark.parametrize("split", SPLITS)
def test_retrieval_file_names_do_not_reveal_the_category(release, metadata, split):
    files = {Path(k).name: v for k, v in metadata["files"].items() if f"/{split}/" in k}
    assert all(re.fullmatch(r"(db|query)_\d{5}\.jpg", name) for name in files)
    database = sorted(name for name in files if name.startswith("db_"))
    in_order = [files[name] for name in database]
    runs = 1 + sum(a != b for a, b in zip(in_order, in_order[1:]))
    assert runs > len(set(in_order)), "database numbering must be shuffled, not grouped by category"


def test_unseen_categories_are_disjoint_from_training(metadata):
    by_split = {s: {c["name"] for c in metadata["categories"] if c["split"] == s} for s in ("train",) + SPLITS}
    assert not by_split["train"] & by_split["validation"]
    assert not by_split["train"] & by_split["test"]
    assert not by_split["validation"] & by_split["test"]


def test_images_have_the_profile_longest_side_and_varied_aspect(release):
    sizes = {Image.open(p).size for p in release.rglob("*.jpg")}
    assert all(max(size) == TINY.render_size for size in sizes)
    assert all(min(size) >= 0.6 * TINY.render_size - 1 for size in sizes)
    assert len(sizes) > 3


# --- metadata ---------------------------------------------------------------------------------


def test_metadata_lists_every_written_image(release, metadata):
    assert set(metadata["files"]) == image_files(release)
    assert metadata["seed"] == 3 and metadata["version"] == synthetic.GENERATOR_VERSION
    assert metadata["profile"] == TINY.name
    # the data settings are the profile's SYNTHETIC_FIELDS, written as JSON (tuples as lists)
    assert metadata["settings"] == {"n_train_categories": 6, "n_val_categories": 2, "n_test_categories": 2,
                                    "images_per_category": [4, 7], "render_size": 32, "queries_per_category": 1}


def test_category_table_rows_match_metadata(release, metadata):
    rows = synthetic.category_table(release)
    assert [r["name"] for r in rows] == [c["name"] for c in metadata["categories"]]
    for row in rows:
        assert set(synthetic.ATTRIBUTES) <= set(row)
        assert row["family"] in synthetic.FAMILIES
        assert row["name"].isascii() and " " in row["name"]


def test_read_metadata_names_the_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        synthetic.read_metadata(tmp_path)


# --- caching and atomic writes ----------------------------------------------------------------


def test_existing_current_release_is_returned_without_rendering(release, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("rendered again")

    monkeypatch.setattr(release_module, "_render_into", fail)
    assert synthetic.make_synthetic_release(release, TINY, seed=3, progress=False) == release


def test_changed_seed_replaces_an_old_release(tmp_path):
    root = tmp_path / "data"
    synthetic.make_synthetic_release(root, TINY, seed=0, progress=False, workers=1)
    synthetic.make_synthetic_release(root, TINY, seed=1, progress=False, workers=1)
    assert synthetic.read_metadata(root)["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_interrupted_run_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = []
    real = synthetic.render_jpeg

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) > 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(release_module, "render_jpeg", flaky)
    with pytest.raises(KeyboardInterrupt):
        synthetic.make_synthetic_release(tmp_path / "root", TINY, seed=0, progress=False, workers=1)
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite_a_foreign_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="notes|refusing"):
        synthetic.make_synthetic_release(tmp_path, TINY, seed=0, progress=False, workers=1)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("overrides, message", [
    (dict(images_per_category=(1, 5)), "queries_per_category"),
    (dict(images_per_category=(8, 4)), "images_per_category"),
    (dict(n_val_categories=0), "n_val_categories"),
    (dict(render_size=8), "render_size"),
])
def test_bad_profile_is_rejected_with_the_field_name(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):   # by the profile's own checks, or by the generator's
        synthetic.make_synthetic_release(tmp_path / "x", config.get_profile("smoke", **overrides), progress=False)


@pytest.mark.parametrize("call", [
    lambda root: synthetic.make_synthetic_release(root, "smoke", progress=False),
    lambda root: synthetic.make_categories(None),
    lambda root: synthetic.render_background_only(root, "test", root / "out", "smoke"),
])
def test_a_profile_name_is_not_resolved_below_the_edge(tmp_path, call):
    with pytest.raises(TypeError, match="resolved helpers.config.Profile"):
        call(tmp_path / "x")


def test_overridden_render_size_is_the_size_rendered(tmp_path):
    profile = config.get_profile("smoke", render_size=24)
    assert config.get_profile("smoke").render_size != 24
    root = synthetic.make_synthetic_release(tmp_path / "small", profile, seed=0, progress=False, workers=1)
    sizes = {Image.open(p).size for p in root.rglob("*.jpg")}
    assert sizes and all(max(size) == 24 for size in sizes)
    assert synthetic.read_metadata(root)["settings"]["render_size"] == 24


def test_load_active_release_keeps_data_field_overrides(tmp_path, monkeypatch):
    monkeypatch.delenv(config.DATA_ENV, raising=False)
    monkeypatch.setattr(config, "DATA_DIR", tmp_path)
    profile = config.get_profile("smoke", n_test_categories=3)
    assert config.get_profile("smoke").n_test_categories != 3
    loaded = data.load_active_release(profile, progress=False)
    assert loaded.root.resolve().parent == (tmp_path / "synthetic").resolve()
    assert loaded.test.n_groups == len(set(loaded.test.query_labels.tolist())) == 3
    splits = Counter(c["split"] for c in synthetic.read_metadata(loaded.root)["categories"])
    assert splits["test"] == 3


# --- categories -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tutorial_categories():
    return synthetic.make_categories(config.get_profile("tutorial"), seed=0)


def test_tutorial_split_sizes_and_unique_ascii_names(tutorial_categories):
    assert Counter(c.split for c in tutorial_categories) == {"train": 127, "validation": 20, "test": 20}
    names = [c.name for c in tutorial_categories]
    assert len(set(names)) == len(names) == 167
    assert all(name.isascii() for name in names)


def test_every_split_mixes_families_known_from_training(tutorial_categories):
    families = {s: {c.family for c in tutorial_categories if c.split == s} for s in ("train",) + SPLITS}
    assert len(families["validation"]) >= 5 and len(families["test"]) >= 5
    assert families["validation"] <= families["train"] and families["test"] <= families["train"]


def test_categories_of_a_family_are_distinct_and_include_lookalikes(tutorial_categories):
    by_family: dict[str, list] = {}
    for c in tutorial_categories:
        by_family.setdefault(c.family, []).append(tuple(c.attributes[s] for s in synthetic.ATTRIBUTES))
    for family, combos in by_family.items():
        assert len(set(combos)) == len(combos), family
    pairs = synthetic.lookalike_pairs(tutorial_categories, max_differences=1)
    assert len(pairs) >= 10
    assert all(len(diff) == 1 for _, _, diff in pairs)


def test_lookalike_pairs_on_a_hand_made_example():
    base = {slot: "a" for slot in synthetic.ATTRIBUTES}
    rows = [dict(name="x 01", family="f", attributes=base),
            dict(name="x 02", family="f", attributes=dict(base, muzzle="b")),
            dict(name="x 03", family="f", attributes=dict(base, muzzle="b", stock="c")),
            dict(name="y 01", family="g", attributes=base)]
    assert synthetic.lookalike_pairs(rows, 1) == [("x 01", "x 02", ["muzzle"]), ("x 02", "x 03", ["stock"])]
    assert len(synthetic.lookalike_pairs(rows, 2)) == 3


def test_image_counts_follow_a_long_tail():
    rng = np.random.default_rng(0)
    counts = catalogue._image_counts(167, 12, 60, rng)
    assert min(counts) == 12 and max(counts) == 60
    ordered = sorted(counts, reverse=True)
    # reference: the closed form evaluated rank by rank in a loop
    expected = [round(12 * 5 ** ((1 - r / 166) ** synthetic.COUNT_TAIL)) for r in range(167)]
    assert ordered == expected
    assert np.median(counts) < np.mean(counts) < (12 + 60) / 2


def test_image_counts_depend_on_the_seed():
    a = synthetic.make_categories(TINY, seed=0)
    b = synthetic.make_categories(TINY, seed=0)
    c = synthetic.make_categories(TINY, seed=1)
    assert [x.to_dict() for x in a] == [x.to_dict() for x in b]
    assert [x.to_dict() for x in a] != [x.to_dict() for x in c]


# --- rendering --------------------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(synthetic.FAMILIES))
def test_every_family_and_part_value_can_be_drawn(family):
    fam = synthetic.FAMILIES[family]
    for slot, values in fam.options.items():
        for value in values:
            attributes = {s: v[0] for s, v in fam.options.items()}
            attributes[slot] = value
            parts = synthetic.build_parts(family, attributes, fam.geometry)
            assert parts and all(p.points.ndim == 2 and p.points.shape[1] == 2 for p in parts)


def test_part_values_change_the_drawing():
    fam = synthetic.FAMILIES["carbine"]
    base = {s: v[0] for s, v in fam.options.items()}
    category = dict(name="carbine 01", family="carbine", index=0, attributes=base, geometry=fam.geometry)
    reference = np.asarray(synthetic.render_example(category, size=96, clean=True), float)
    for slot in ("stock", "magazine", "sight", "muzzle", "barrel"):
        other = dict(category, attributes=dict(base, **{slot: fam.options[slot][1]}))
        changed = np.asarray(synthetic.render_example(other, size=96, clean=True), float)
        assert np.abs(changed - reference).mean() > 0.5, slot


def test_render_example_size_and_clean_determinism(tutorial_categories):
    category = tutorial_categories[5]
    clean = synthetic.render_example(category, seed=0, size=80, clean=True)
    assert max(clean.size) == 80 and clean.mode == "RGB"
    assert np.array_equal(np.asarray(clean), np.asarray(synthetic.render_example(category, 9, 80, clean=True)))
    noisy = [np.asarray(synthetic.render_example(category, seed=s, size=80)) for s in (1, 2)]
    assert noisy[0].shape != noisy[1].shape or not np.array_equal(*noisy)


def test_zero_nuisance_renders_the_centred_template_on_a_plain_background(tutorial_categories):
    calm = synthetic.Difficulty(nuisance=0.0, part_jitter=0.0, p_portrait=0.0, aspect=(0.5, 0.5))
    image = np.asarray(synthetic.render_example(tutorial_categories[0], seed=4, size=64, difficulty=calm), float)
    corners = image[[0, 0, -1, -1], [0, -1, 0, -1]]
    assert np.ptp(corners, axis=0).max() < 3  # one plain colour in all four corners
