"""The release loader, image decoding, transforms and samplers, on tiny Pillow-written fixtures."""
from __future__ import annotations

import itertools
import json
import shutil
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TRAIN_CATEGORIES, build_release, write_image
from helpers import config, imagenet, layout, models
from helpers import data as D

# ----------------------------------------------------------------------------------------------
# find_images and the happy path of the loader
# ----------------------------------------------------------------------------------------------


def test_find_images_matches_extensions_case_insensitively_and_ignores_other_files(tmp_path):
    names = ["b.JPG", "a.jpg", "c.Jpeg", "d.PNG", "e.png", "f.jpeg"]
    for name in names:
        write_image(tmp_path / name)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".DS_Store").write_bytes(b"\x00")
    (tmp_path / "._a.jpg").write_bytes(b"\x00")
    (tmp_path / "photo.gif").write_bytes(b"GIF89a")
    (tmp_path / "folder.jpg").mkdir()
    assert [p.name for p in D.find_images(tmp_path)] == sorted(names)


def test_find_images_on_a_missing_folder_names_it(tmp_path):
    with pytest.raises(D.DatasetLayoutError, match="nowhere"):
        D.find_images(tmp_path / "nowhere")


def test_loader_reads_categories_and_counts(release):
    rel = D.load_firearm_release(release.root)
    assert rel.categories == sorted(TRAIN_CATEGORIES)
    assert rel.root == release.root
    counts = rel.retrieval_train.counts()
    assert counts.to_dict() == release.retrieval_train_counts
    # every retrieval training image sits in the folder of its label
    for path, label in zip(rel.retrieval_train.paths, rel.retrieval_train.labels):
        assert path.parent.name == rel.categories[label]
        assert path.suffix.lower() in layout.IMAGE_EXTENSIONS
    # the fixture's split sizes: test 2 + 1 + 1 queries over 3 categories, validation 2 categories
    assert len(rel.test.queries) == 4 and rel.test.n_groups == 3
    assert len(rel.validation.database) == 3 + 4 + 1 and rel.validation.n_groups == 2


def test_classification_split_is_a_per_category_partition(release):
    rel = D.load_firearm_release(release.root)
    train, val = rel.classification_train, rel.classification_val
    assert set(train.paths).isdisjoint(val.paths)
    for c, name in enumerate(rel.categories):
        folder = release.root / "firearm-train-val" / name
        in_train = {p for p, lab in zip(train.paths, train.labels) if lab == c}
        in_val = {p for p, lab in zip(val.paths, val.labels) if lab == c}
        assert in_train | in_val == set(D.find_images(folder))
        n = release.train_val_counts[name]
        assert len(in_val) == int(np.floor(0.3 * n + 0.5))  # 10 -> 3, 7 -> 2, 3 -> 1
        assert all(p.parent == folder for p in in_train | in_val)


def test_ground_truth_positions_point_to_the_right_database_files(release):
    rel = D.load_firearm_release(release.root)
    for split in (rel.validation, rel.test):
        truth = release.read_gt(split.name)
        assert [q.name for q in split.queries] == sorted(truth)
        for query, gt in zip(split.queries, split.ground_truth):
            assert gt.dtype == np.int64
            assert np.all(np.diff(gt) > 0)  # sorted, no duplicates
            assert {split.database[i].name for i in gt} == set(truth[query.name])


def _same_partition(found: np.ndarray, truth: list) -> bool:
    """Whether two labellings define the same grouping (equal up to renaming the groups)."""
    pairs = list(itertools.combinations(range(len(truth)), 2))
    return all((found[a] == found[b]) == (truth[a] == truth[b]) for a, b in pairs)


def test_group_labels_recover_the_unseen_categories(release):
    rel = D.load_firearm_release(release.root)
    for split in (rel.validation, rel.test):
        q_truth = [release.query_category[split.name][q.name] for q in split.queries]
        db_truth = [release.database_category[split.name][d.name] for d in split.database]
        assert _same_partition(split.query_labels, q_truth)
        listed = np.asarray([t is not None for t in db_truth])
        assert np.all(split.database_labels[~listed] == -1)
        assert _same_partition(split.database_labels[listed], [t for t in db_truth if t is not None])
        # a query and a database image share a group exactly when they share a category
        for q, qt in zip(split.query_labels, q_truth):
            for d, dt in zip(split.database_labels, db_truth):
                assert (q == d) == (qt == dt)
        assert split.n_groups == len(set(q_truth))


def test_groups_from_ground_truth_on_a_hand_worked_example():
    gt = [np.array([0, 1]), np.array([3]), np.array([0, 1]), np.array([4, 3])]
    q, db = D.groups_from_ground_truth(gt, n_database=6)
    assert q.tolist() == [0, 1, 0, 1]
    assert db.tolist() == [0, 0, -1, 1, 1, -1]


# ----------------------------------------------------------------------------------------------
# Broken layouts
# ----------------------------------------------------------------------------------------------


def _remove(path: Path) -> Path:
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    return path


def _break_missing_root(fx):
    return _remove(fx.root)


def _break_json(fx):
    fx.gt_path("validation").write_text("{'query': [not json", encoding="utf-8")
    return fx.gt_path("validation")


def _break_gt_names_missing_database_file(fx):
    gt = fx.read_gt("test")
    first = sorted(gt)[0]
    gt[first] = gt[first] + ["ghost.jpg"]
    fx.write_gt("test", gt)
    return fx.gt_path("test")


def _break_query_without_gt(fx):
    write_image(fx.split_dir("validation") / "query_info" / "query_image" / "orphan.jpg")
    return fx.gt_path("validation")


def _break_gt_for_missing_query(fx):
    gt = fx.read_gt("validation")
    gt["vanished.jpg"] = next(iter(gt.values()))
    fx.write_gt("validation", gt)
    return fx.gt_path("validation")


def _break_empty_gt_list(fx):
    gt = fx.read_gt("test")
    gt[sorted(gt)[-1]] = []
    fx.write_gt("test", gt)
    return fx.gt_path("test")


def _break_empty_category(fx):
    (fx.root / "firearm-train-val" / "Empty Ñ").mkdir()
    (fx.root / "firearm-dataset" / "train" / "Empty Ñ").mkdir()
    return fx.root / "firearm-train-val" / "Empty Ñ"


def _break_empty_retrieval_category(fx):
    folder = fx.root / "firearm-dataset" / "train" / "AK-47"
    for image in D.find_images(folder):
        image.unlink()
    return folder


def _break_category_mismatch(fx):
    train = fx.root / "firearm-dataset" / "train"
    (train / "AK-47").rename(train / "AK-74")
    return train


BROKEN_LAYOUTS = {
    "missing root": _break_missing_root,
    "missing firearm-train-val": lambda fx: _remove(fx.root / "firearm-train-val"),
    "missing firearm-dataset": lambda fx: _remove(fx.root / "firearm-dataset"),
    "missing train": lambda fx: _remove(fx.root / "firearm-dataset" / "train"),
    "missing validation": lambda fx: _remove(fx.split_dir("validation")),
    "missing test": lambda fx: _remove(fx.split_dir("test")),
    "missing database_image": lambda fx: _remove(fx.split_dir("test") / "database_image"),
    "missing query_image": lambda fx: _remove(fx.split_dir("validation") / "query_info" / "query_image"),
    "missing ground truth": lambda fx: _remove(fx.gt_path("test")),
    "invalid json": _break_json,
    "gt names a missing database file": _break_gt_names_missing_database_file,
    "query without gt": _break_query_without_gt,
    "gt for a missing query": _break_gt_for_missing_query,
    "empty gt list": _break_empty_gt_list,
    "empty category": _break_empty_category,
    "empty retrieval category": _break_empty_retrieval_category,
    "categories differ": _break_category_mismatch,
}


@pytest.mark.parametrize("name", list(BROKEN_LAYOUTS))
def test_broken_layout_raises_an_error_naming_the_path(release, name):
    offending = BROKEN_LAYOUTS[name](release)
    with pytest.raises(D.DatasetLayoutError) as error:
        D.load_firearm_release(release.root)
    assert str(offending) in str(error.value)
    assert "expected" in str(error.value)


def test_error_messages_name_the_offending_entries(release):
    _break_gt_names_missing_database_file(release)
    with pytest.raises(D.DatasetLayoutError, match="ghost.jpg"):
        D.load_firearm_release(release.root)
    fx = build_release(release.root.parent / "second")
    _break_query_without_gt(fx)
    with pytest.raises(D.DatasetLayoutError, match="orphan.jpg"):
        D.load_firearm_release(fx.root)
    fx = build_release(release.root.parent / "third")
    _break_category_mismatch(fx)
    with pytest.raises(D.DatasetLayoutError, match="AK-74"):
        D.load_firearm_release(fx.root)


def test_ground_truth_must_map_names_to_lists(release):
    release.gt_path("validation").write_text(json.dumps(["a.jpg"]), encoding="utf-8")
    with pytest.raises(D.DatasetLayoutError, match="expected an object"):
        D.load_firearm_release(release.root)


# ----------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------


def test_split_train_val_is_deterministic_and_a_partition():
    train, val = D.split_train_val(100, 0.3, seed=1, key="AK-47")
    again = D.split_train_val(100, 0.3, seed=1, key="AK-47")
    other_seed = D.split_train_val(100, 0.3, seed=2, key="AK-47")
    other_key = D.split_train_val(100, 0.3, seed=1, key="Uzi")
    assert np.array_equal(train, again[0]) and np.array_equal(val, again[1])
    assert not np.array_equal(val, other_seed[1])
    assert not np.array_equal(val, other_key[1])
    assert len(val) == 30 and len(train) == 70
    assert np.intersect1d(train, val).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(100))
    assert train.dtype == val.dtype == np.int64


@pytest.mark.parametrize("n, fraction, n_val", [
    (0, 0.3, 0), (1, 0.3, 0), (2, 0.3, 1), (3, 0.3, 1), (4, 0.3, 1), (5, 0.3, 2), (10, 0.3, 3),
    (2, 0.1, 1), (4, 0.1, 1), (20, 0.1, 2), (2, 0.9, 1), (5, 0.9, 4), (5, 0.0, 0),
])
def test_split_train_val_keeps_one_image_on_each_side(n, fraction, n_val):
    train, val = D.split_train_val(n, fraction, seed=0, key="x")
    assert (len(train), len(val)) == (n - n_val, n_val)


def test_split_train_val_rejects_bad_fractions():
    with pytest.raises(ValueError, match="val_fraction"):
        D.split_train_val(10, 1.0)


def test_image_list_subset_and_counts():
    images = D.ImageList([Path(f"{i}.jpg") for i in range(5)], [0, 2, 2, 0, 2], ["a", "b", "c"])
    assert images.counts().tolist() == [2, 0, 3]
    assert list(images.counts().index) == ["a", "b", "c"]
    sub = images.subset([4, 0])
    assert [p.name for p in sub.paths] == ["4.jpg", "0.jpg"] and sub.labels.tolist() == [2, 0]
    masked = images.subset(np.array([True, False, False, True, False]))
    assert masked.labels.tolist() == [0, 0]
    with pytest.raises(ValueError, match="labels"):
        D.ImageList([Path("a.jpg")], [3], ["a"])


# ----------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------


def _p_image(transparent: bool) -> Image.Image:
    image = Image.new("P", (6, 4), 1)
    palette = [0, 0, 0, 10, 20, 30] + [0] * (256 * 3 - 6)
    image.putpalette(palette)
    if transparent:
        image.info["transparency"] = 1
    return image


MODE_CASES = {
    # name: (image, file suffix, expected RGB at pixel (0, 0), tolerance)
    "L": (Image.new("L", (6, 4), 100), ".png", (100, 100, 100), 0),
    "L jpeg": (Image.new("L", (8, 8), 100), ".jpg", (100, 100, 100), 2),
    "1": (Image.new("1", (6, 4), 1), ".png", (255, 255, 255), 0),
    "LA transparent": (Image.new("LA", (6, 4), (0, 0)), ".png", (255, 255, 255), 0),
    "LA opaque": (Image.new("LA", (6, 4), (60, 255)), ".png", (60, 60, 60), 0),
    "RGBA half": (Image.new("RGBA", (6, 4), (255, 0, 0, 128)), ".png", (255, 127, 127), 1),
    "P": (_p_image(False), ".png", (10, 20, 30), 0),
    "P transparent": (_p_image(True), ".png", (255, 255, 255), 0),
    "CMYK": (Image.new("CMYK", (8, 8), (0, 255, 255, 0)), ".jpg", (255, 0, 0), 3),
    "I;16": (Image.new("I;16", (6, 4), 25700), ".png", (100, 100, 100), 0),
}


@pytest.mark.parametrize("name", list(MODE_CASES))
def test_load_rgb_converts_every_mode(tmp_path, name):
    image, suffix, expected, tolerance = MODE_CASES[name]
    path = tmp_path / f"image{suffix}"
    image.save(path)
    rgb = D.load_rgb(path)
    assert rgb.mode == "RGB" and rgb.size == image.size
    assert np.all(np.abs(np.subtract(rgb.getpixel((0, 0)), expected)) <= tolerance), rgb.getpixel((0, 0))


def test_load_rgb_applies_exif_orientation(tmp_path):
    image = Image.new("RGB", (20, 10), (200, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: displays rotated by 90 degrees
    image.save(tmp_path / "rotated.jpg", exif=exif)
    assert D.load_rgb(tmp_path / "rotated.jpg").size == (10, 20)


def _truncated_jpeg(path: Path) -> Path:
    noise = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_read_images_skips_unreadable_files_with_one_counting_warning(tmp_path):
    good = [write_image(tmp_path / f"good{i}.jpg", size=(40, 20)) for i in range(3)]
    truncated = _truncated_jpeg(tmp_path / "truncated.jpg")
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not a png")
    paths = [good[0], truncated, good[1], garbage, good[2]]
    with pytest.warns(D.UnreadableImageWarning) as record:
        images, kept = D.read_images(paths, max_side=16, progress=False)
    assert len(record) == 1
    message = str(record[0].message)
    assert "skipped 2 unreadable image(s) of 5" in message
    assert "truncated.jpg" in message and "garbage.png" in message
    assert kept.tolist() == [0, 2, 4]
    assert all(im.dtype == torch.uint8 and tuple(im.shape) == (3, 8, 16) for im in images)


def test_read_images_only_shrinks(tmp_path):
    path = write_image(tmp_path / "small.png", size=(10, 6), color=(1, 2, 3))
    (image,), kept = D.read_images([path], max_side=64, progress=False)
    assert tuple(image.shape) == (3, 6, 10) and kept.tolist() == [0]
    assert image[:, 0, 0].tolist() == [1, 2, 3]


def test_image_dataset_drops_a_truncated_jpeg(tmp_path):
    paths = [write_image(tmp_path / f"{i}.jpg", size=(30, 20)) for i in range(4)]
    paths.insert(2, _truncated_jpeg(tmp_path / "broken.jpg"))
    with pytest.warns(D.UnreadableImageWarning, match="skipped 1 "):
        dataset = D.ImageDataset(paths, labels=[0, 1, 2, 3, 4], progress=False)
    assert len(dataset) == 4
    assert dataset.labels.tolist() == [0, 1, 3, 4]
    assert "broken.jpg" not in [p.name for p in dataset.paths]


def test_image_dataset_serves_transformed_images_from_memory(release):
    rel = D.load_firearm_release(release.root)
    transform = D.eval_transform(40, models.IMAGENET_MEAN, models.IMAGENET_STD)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every fixture image decodes
        dataset = D.ImageDataset(rel.retrieval_train, transform=transform, progress=False)
    assert len(dataset) == len(rel.retrieval_train)
    assert max(max(im.shape[1:]) for im in dataset.images) <= transform.canvas_size
    shutil.rmtree(release.root)  # nothing is read from disk after construction
    image, label = dataset[3]
    assert image.shape == (3, 40, 40) and image.dtype == torch.float32
    assert label == rel.retrieval_train.labels[3]
    raw = dataset.with_transform(None)
    assert raw.images is dataset.images and raw[3][0].max() <= 1.0


# ----------------------------------------------------------------------------------------------
# Transforms
# ----------------------------------------------------------------------------------------------

# torchvision's ImageNet statistics, written out (not read from the code under test)
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def test_eval_transform_resizes_normalises_and_zero_pads():
    image = torch.full((3, 20, 40), 255, dtype=torch.uint8)  # wide, white
    transform = D.eval_transform(64, models.IMAGENET_MEAN, models.IMAGENET_STD)
    out = transform(image)
    assert out.shape == (3, 64, 64) and out.dtype == torch.float32
    assert torch.equal(out, transform(image))
    # resized to 64 x 32 and centred: rows 16..47 hold the image, the rest is padding
    assert out[:, :16].abs().max() == 0 and out[:, 48:].abs().max() == 0
    assert torch.allclose(out[:, 16:48], ((1 - MEAN) / STD).expand(3, 32, 64), atol=1e-5)


def test_eval_transform_upsizes_small_images():
    out = D.eval_transform(40, models.IMAGENET_MEAN, models.IMAGENET_STD)(torch.zeros((3, 10, 5), dtype=torch.uint8))
    # 5 x 10 becomes 20 x 40: columns 10..29 hold the (black) image
    assert torch.allclose(out[:, :, 10:30], (-MEAN / STD).expand(3, 40, 20), atol=1e-5)
    assert out[:, :, :10].abs().max() == 0 and out[:, :, 30:].abs().max() == 0


def test_train_transform_has_a_fixed_canvas_and_zero_padding():
    torch.manual_seed(0)
    low, high = 48, 64
    transform = D.train_transform((low, high), *models.input_normalization("efficientnet_lite0"))
    assert transform.canvas_size == high
    image = torch.randint(0, 256, (3, 32, 64), dtype=torch.uint8)  # 2:1, so at most 32 rows after resizing
    outs = [transform(image) for _ in range(12)]
    for out in outs:
        assert out.shape == (3, high, high) and out.dtype == torch.float32
        assert out[:, :16].abs().max() == 0 and out[:, -16:].abs().max() == 0
    assert not all(torch.equal(outs[0], o) for o in outs[1:])  # random
    heights = {int((o.abs().sum(dim=(0, 2)) > 0).sum()) for o in outs}
    assert min(heights) >= low // 2 - 1 and max(heights) <= high // 2  # longest side within the range


def test_random_longest_side_stays_in_range():
    torch.manual_seed(1)
    resize = D.RandomLongestSide(48, 64)
    sides = {max(resize(torch.zeros(3, 30, 90, dtype=torch.uint8)).shape[1:]) for _ in range(200)}
    assert sides <= set(range(48, 65)) and {48, 64} <= sides


def test_contrast_saturation_jitter_against_hand_computed_values():
    image = torch.rand(3, 6, 5, generator=torch.Generator().manual_seed(0))
    jitter = D.ContrastSaturationJitter(0.5)
    assert torch.allclose(jitter.apply(image, 1.0, 1.0, True), image)
    luminance = (0.2989 * image[0] + 0.587 * image[1] + 0.114 * image[2]).expand(3, 6, 5)
    assert torch.allclose(jitter.apply(image, 1.0, 0.0, True), luminance, atol=1e-3)
    flat = torch.full((3, 6, 5), luminance.mean().item())  # contrast 0 leaves the mean grey level
    assert torch.allclose(jitter.apply(image, 0.0, 1.0, False), flat, atol=1e-3)
    torch.manual_seed(4)
    draws = [jitter.draw() for _ in range(300)]
    factors = np.array([d[:2] for d in draws])
    assert factors.min() >= 0.5 and factors.max() <= 1.5 and factors.std() > 0.2
    assert 0.3 < np.mean([d[2] for d in draws]) < 0.7
    torch.manual_seed(5)
    params = jitter.draw()
    torch.manual_seed(5)
    assert torch.equal(jitter(image), jitter.apply(image, *params))


def test_lite0_inputs_are_scaled_as_its_weights_expect():
    # EfficientNet-Lite0's ImageNet weights expect (x * 255 - 127) / 128
    assert config.get_profile("smoke").backbone == "efficientnet_lite0"
    image = torch.tensor([0, 127, 255], dtype=torch.uint8).view(3, 1, 1).expand(3, 8, 8)
    for mean, std in (models.input_normalization("efficientnet_lite0"), imagenet.NORMALIZATION,
                      models.ModelSpec.of(config.get_profile("smoke")).normalization):
        out = D.eval_transform(8, mean, std)(image.contiguous())
        np.testing.assert_allclose(out[:, 4, 4].numpy(), [-127 / 128, 0.0, 1.0], atol=1e-6)


@pytest.mark.parametrize("shape, size", [((3, 30, 17), 24), ((3, 9, 40), 20), ((3, 12, 12), 48)])
def test_eval_transform_output_size_and_normalisation_with_given_mean_and_std(shape, size):
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.25, 0.5)
    colour = (51, 204, 255)                      # 0.2, 0.8, 1.0 in [0, 1]
    image = torch.tensor(colour, dtype=torch.uint8).view(3, 1, 1).expand(*shape).contiguous()
    transform = D.eval_transform(size, mean, std)
    assert transform.canvas_size == size
    out = transform(image)
    assert out.shape == (3, size, size) and out.dtype == torch.float32
    # (x - mean) / std by hand: (0.2 - 0.1) / 0.2, (0.8 - 0.5) / 0.25, (1.0 - 0.9) / 0.5
    expected = torch.tensor([0.5, 1.2, 0.2])
    content = (out != 0).any(dim=0)
    rows, cols = content.any(dim=1).nonzero().flatten(), content.any(dim=0).nonzero().flatten()
    height, width = len(rows), len(cols)
    assert max(height, width) == size                      # the longest side fills the canvas
    ratio = shape[1] / shape[2]
    assert abs(height / width - ratio) <= 0.1 * max(ratio, 1)   # aspect kept
    assert rows.diff().eq(1).all() and cols.diff().eq(1).all()  # one centred block ...
    assert abs(int(rows[0]) - (size - int(rows[-1]) - 1)) <= 1 and abs(int(cols[0]) - (size - int(cols[-1]) - 1)) <= 1
    block = out[:, rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    torch.testing.assert_close(block, expected.view(3, 1, 1).expand_as(block), atol=1e-5, rtol=0)
    assert int(content.sum()) == height * width               # ... and zeros elsewhere


def test_eval_dataset_serves_images_in_order_and_refuses_unreadable_files(tmp_path):
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    paths = [write_image(tmp_path / f"{i}.png", size=(8, 8), color=c) for i, c in enumerate(colours)]
    transform = D.eval_transform(8, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    dataset = D.eval_dataset(paths, [5, 6, 7], transform, progress=False)
    assert len(dataset) == 3 and dataset.labels.tolist() == [5, 6, 7]
    for (image, label), colour in zip(dataset, colours):
        torch.testing.assert_close(image[:, 4, 4], torch.tensor(colour, dtype=torch.float32) / 255)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.warns(D.UnreadableImageWarning), pytest.raises(ValueError, match="could not be decoded"):
        D.eval_dataset(paths + [broken], [0, 0, 0, 0], transform, progress=False)


# ----------------------------------------------------------------------------------------------
# Samplers
# ----------------------------------------------------------------------------------------------

# label 2 absent on purpose; shuffled so categories are not contiguous
LABELS = np.random.default_rng(0).permutation(np.array([0] * 5 + [1] * 3 + [3] * 8 + [4] * 2))


def test_pair_sampler_counts_and_labels():
    sampler = D.PairSampler(LABELS, pairs_per_category=10, regenerate_every=3, seed=0)
    i, j, y = sampler.pairs(0)
    assert len(i) == len(sampler) == 40
    assert i.dtype == j.dtype == y.dtype == np.int64
    assert np.array_equal(y == 1, LABELS[i] == LABELS[j])
    assert np.all(i[y == 1] != j[y == 1])
    for category in np.unique(LABELS):
        mine = LABELS[i] == category
        assert np.sum(mine & (y == 1)) == 5 and np.sum(mine & (y == 0)) == 5
    assert y.sum() == 20
    assert not np.all(np.diff(y) >= 0)  # shuffled, not positives then negatives


def test_pair_sampler_negatives_cover_the_other_categories():
    sampler = D.PairSampler(LABELS, pairs_per_category=400, seed=3)
    i, j, y = sampler.pairs(0)
    partners = Counter(LABELS[j[(y == 0) & (LABELS[i] == 0)]])
    assert set(partners) == {1, 3, 4}
    assert all(abs(n - 200 / 3) < 30 for n in partners.values())  # categories drawn uniformly


def test_pair_sampler_regenerates_by_block_and_is_seeded():
    sampler = D.PairSampler(LABELS, pairs_per_category=10, regenerate_every=3, seed=0)
    block0 = [sampler.pairs(e) for e in (0, 1, 2)]
    block1 = sampler.pairs(3)
    for other in block0[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(block0[0], other))
    assert not all(np.array_equal(a, b) for a, b in zip(block0[0], block1))
    same_seed = D.PairSampler(LABELS, 10, regenerate_every=3, seed=0).pairs(4)
    assert all(np.array_equal(a, b) for a, b in zip(block1, same_seed))
    other_seed = D.PairSampler(LABELS, 10, regenerate_every=3, seed=1).pairs(0)
    assert not all(np.array_equal(a, b) for a, b in zip(block0[0], other_seed))


def test_pair_sampler_warns_once_about_single_image_categories():
    labels = np.array([0, 0, 0, 1, 2, 2])
    with pytest.warns(UserWarning, match="1 category has a single image") as record:
        sampler = D.PairSampler(labels, pairs_per_category=6)
    assert len(record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        i, j, y = sampler.pairs(0)
        sampler.pairs(1)
    assert np.sum((labels[i] == 1) & (y == 1)) == 0 and np.sum((labels[i] == 1) & (y == 0)) == 3
    assert np.sum((labels[i] == 0) & (y == 1)) == 3


def test_samplers_need_two_categories():
    with pytest.raises(ValueError, match="at least 2 categories"):
        D.PairSampler(np.zeros(5, dtype=int), 4)


def test_triplet_sampler():
    sampler = D.TripletSampler(LABELS, triplets_per_category=7, regenerate_every=2, seed=5)
    a, p, n = sampler.triplets(0)
    assert len(a) == len(sampler) == 28
    assert np.all(LABELS[a] == LABELS[p]) and np.all(a != p)
    assert np.all(LABELS[a] != LABELS[n])
    assert Counter(LABELS[a].tolist()) == {0: 7, 1: 7, 3: 7, 4: 7}
    assert all(np.array_equal(x, z) for x, z in zip(sampler.triplets(1), (a, p, n)))
    assert not np.array_equal(sampler.triplets(2)[0], a)


# ----------------------------------------------------------------------------------------------
# load_active_release
# ----------------------------------------------------------------------------------------------


def test_load_active_release_reads_the_real_data_when_set(release, monkeypatch):
    smoke = config.get_profile("smoke")
    monkeypatch.setenv(config.DATA_ENV, str(release.root))
    assert D.load_active_release(smoke).categories == sorted(TRAIN_CATEGORIES)
    monkeypatch.setenv(config.DATA_ENV, str(release.root / "missing"))
    with pytest.raises(D.DatasetLayoutError, match="missing"):
        D.load_active_release(smoke)


def test_load_active_release_loads_the_synthetic_release_of_the_profile(tmp_path, monkeypatch):
    monkeypatch.delenv(config.DATA_ENV, raising=False)
    monkeypatch.setattr(config, "DATA_DIR", tmp_path)
    calls = []

    def fake_generator(root, profile, seed, progress):  # renders only when the root is empty
        calls.append((root, profile, seed, progress))
        if not root.exists():
            build_release(root)
        return root

    monkeypatch.setattr(D.release, "make_synthetic_release", fake_generator)
    smoke = config.get_profile("smoke")
    first = D.load_active_release(smoke, seed=3, progress=False)
    monkeypatch.setenv(config.PROFILE_ENV, "tutorial")   # the profile passed in wins; the variable is not read
    second = D.load_active_release(smoke, seed=3, progress=False)
    expected_root = tmp_path / "synthetic" / "smoke-seed3"
    assert calls == [(expected_root, smoke, 3, False)] * 2
    assert first.root == second.root == expected_root
    assert first.categories == sorted(TRAIN_CATEGORIES)
    # a profile whose data fields were overridden gets a release of its own
    bigger = config.get_profile(smoke, render_size=72)
    third = D.load_active_release(bigger, seed=3, progress=False)
    assert calls[-1][:2] == (third.root, bigger) and third.root != expected_root
    with pytest.raises((TypeError, AttributeError)):
        D.load_active_release(seed=3, progress=False)
