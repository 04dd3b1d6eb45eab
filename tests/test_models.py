"""Tests of helpers.models: pooling maths against hand computations, shapes, weight loading."""
from __future__ import annotations

import dataclasses
import math
import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from helpers import config, imagenet, models

SMALL = config.get_profile("smoke", backbone="small", weights=None, cut=None, render_size=40,
                           train_size_range=(32, 40), eval_size=40)
"""The from-scratch CNN at 40 px."""


@pytest.fixture
def feature_map() -> torch.Tensor:
    """A (2, 3, 2, 2) non-negative feature map with known per-channel statistics."""
    values = torch.tensor([
        [[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 8.0]], [[5.0, 5.0], [5.0, 5.0]]],
        [[[0.5, 0.5], [0.5, 2.5]], [[9.0, 1.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]],
    ])
    return values


# --------------------------------------------------------------------------- pooling maths

def test_mac_and_spoc_match_hand_computation(feature_map):
    expected_max = torch.tensor([[4.0, 8.0, 5.0], [2.5, 9.0, 0.0]])
    expected_mean = torch.tensor([[2.5, 2.0, 5.0], [1.0, 3.0, 0.0]])
    torch.testing.assert_close(models.mac(feature_map), expected_max)
    torch.testing.assert_close(models.spoc(feature_map), expected_mean)
    torch.testing.assert_close(models.MAC()(feature_map), expected_max)
    torch.testing.assert_close(models.SPoC()(feature_map), expected_mean)


def test_gem_matches_a_loop_over_channels(feature_map):
    p, eps = 3.0, 1e-6
    expected = torch.empty(2, 3)
    for b in range(2):
        for c in range(3):
            cells = [max(float(v), eps) ** p for v in feature_map[b, c].flatten()]
            expected[b, c] = (sum(cells) / len(cells)) ** (1 / p)
    torch.testing.assert_close(models.gem(feature_map, p, eps), expected)
    torch.testing.assert_close(models.GeM(p=p, eps=eps)(feature_map), expected)


def test_gem_with_p_one_is_spoc_and_large_p_approaches_mac():
    x = torch.rand(4, 8, 5, 5) + 0.1
    torch.testing.assert_close(models.gem(x, 1.0), models.spoc(x))
    gap_small = (models.mac(x) - models.gem(x, 10.0)).abs().max()
    gap_large = (models.mac(x) - models.gem(x, 200.0)).abs().max()
    assert gap_large < gap_small
    torch.testing.assert_close(models.gem(x.double(), 500.0), models.mac(x.double()), atol=0.02, rtol=0)


def test_gem_p_is_learnable_and_starts_at_three():
    layer = models.GeM()
    assert isinstance(layer.p, nn.Parameter) and layer.p.item() == 3.0
    layer(torch.rand(2, 4, 3, 3)).sum().backward()
    assert layer.p.grad is not None and torch.isfinite(layer.p.grad)


def test_gem_gradient_is_finite_on_zeros():
    x = torch.zeros(1, 2, 3, 3, requires_grad=True)
    models.gem(x, 3.0).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_pooling_rejects_bad_shapes_and_names():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        models.mac(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="unknown pooling 'avg'"):
        models.build_pooling("avg")
    with pytest.raises(ValueError, match="positive"):
        models.GeM(p=0.0)


def test_l2_normalize_gives_unit_rows_in_the_same_direction():
    x = torch.tensor([[3.0, 4.0], [0.0, -2.0]])
    torch.testing.assert_close(models.l2_normalize(x), torch.tensor([[0.6, 0.8], [0.0, -1.0]]))


# --------------------------------------------------------------------------- networks of the small CNN

@pytest.mark.parametrize("pooling", ["mac", "spoc", "gem"])
@pytest.mark.parametrize("embedding_dim", [None, 32])
def test_embedding_network_shapes_and_unit_norm(pooling, embedding_dim):
    torch.manual_seed(0)
    net = models.build_network(models.ModelSpec.of(SMALL, pooling=pooling, embedding_dim=embedding_dim))
    assert isinstance(net.frozen, nn.Identity) and not net.is_classifier   # no cut: nothing frozen
    out = net(torch.rand(5, 3, 40, 40))
    expected_dim = embedding_dim or 256
    assert net.top.dim == expected_dim
    assert out.shape == (5, expected_dim)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(5))
    assert isinstance(net.top.projection, nn.Linear) == (embedding_dim is not None)


def test_embedding_network_is_pooling_of_trunk_then_normalised():
    torch.manual_seed(0)
    net = models.build_network(models.ModelSpec.of(SMALL)).eval()
    x = torch.rand(3, 3, 40, 40)
    with torch.no_grad():
        feats = net.top.trunk(x)
        by_hand = feats.amax(dim=(2, 3))
        by_hand = by_hand / by_hand.norm(dim=1, keepdim=True)
        torch.testing.assert_close(net(x), by_hand)


def test_small_backbone_size_and_output():
    trunk, channels = models.build_backbone("small")
    assert channels == 256
    assert 500_000 <= models.count_parameters(trunk) <= 1_000_000
    assert trunk(torch.rand(2, 3, 64, 64)).shape == (2, 256, 4, 4)
    assert isinstance(trunk[-1][-1], nn.ReLU)  # MAC is taken after a ReLU, as in the paper


def test_count_parameters_matches_a_manual_sum():
    layer = nn.Linear(7, 3)
    assert models.count_parameters(layer) == 7 * 3 + 3
    layer.bias.requires_grad_(False)
    assert models.count_parameters(layer, trainable_only=True) == 21


def test_classifier_logits_and_embedding_copies_its_trunk():
    torch.manual_seed(0)
    clf = models.build_network(models.ModelSpec.of(SMALL, n_classes=7, dropout=0.2))
    assert clf.is_classifier and clf(torch.rand(4, 3, 40, 40)).shape == (4, 7)
    with torch.no_grad():  # make the trunk distinctive too
        clf.top.trunk[0].weight.add_(1.0)
    emb = clf.embedding()
    assert emb.spec == models.ModelSpec.of(SMALL) and not emb.is_classifier
    clf_state = clf.top.trunk.state_dict()
    emb_state = emb.top.trunk.state_dict()
    assert clf_state.keys() == emb_state.keys()
    for name, value in clf_state.items():
        assert torch.equal(value, emb_state[name]), name
    assert not any("head" in k for k in emb.state_dict())
    # copies, not shared tensors: training the embedding leaves the classifier alone
    assert emb.top.trunk[0].weight.data_ptr() != clf.top.trunk[0].weight.data_ptr()
    clf.eval(), emb.eval()
    x = torch.rand(2, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(emb(x), clf.top.embed(x))
        by_hand = clf.top.trunk(x).amax(dim=(2, 3))
        torch.testing.assert_close(emb(x), by_hand / by_hand.norm(dim=1, keepdim=True))


def test_embedding_with_projection_and_gem():
    clf = models.build_network(models.ModelSpec.of(SMALL, pooling="gem", n_classes=3))
    with torch.no_grad():
        clf.top.pooling.p.fill_(4.5)
    emb = clf.embedding(embedding_dim=16)
    assert emb.top.pooling.p.item() == 4.5 and emb.top.dim == 16
    assert emb.spec.embedding_dim == 16 and emb.spec.n_classes is None and emb.spec.dropout == 0.0
    assert emb(torch.rand(2, 3, 40, 40)).shape == (2, 16)
    with torch.no_grad():
        emb.top.pooling.p.fill_(2.0)
    assert clf.top.pooling.p.item() == 4.5
    with pytest.raises(TypeError, match="embeds already"):
        emb.embedding()


def test_builders_reject_unknown_names():
    with pytest.raises(ValueError, match="unknown backbone 'vgg19'"):
        models.build_backbone("vgg19")
    with pytest.raises(ValueError, match="unknown weights"):
        models.build_backbone("resnet18", weights="places365")
    with pytest.raises(TypeError, match="backbon"):
        models.ModelSpec.of(SMALL, backbon="small")


@pytest.mark.parametrize("fields, message", [
    ({"backbone": "vgg19"}, "unknown backbone 'vgg19'"),
    ({"pooling": "avg"}, "unknown pooling 'avg'"),
    ({"weights": "places365"}, "unknown weights 'places365'"),
    ({"backbone": "resnet18", "cut": 3}, "only supported for efficientnet_lite0, not 'resnet18'"),
    ({"weights": None}, "needs weights='imagenet'"),
    ({"embedding_dim": 0}, "embedding_dim must be a positive integer"),
    ({"embedding_dim": -8}, "embedding_dim must be a positive integer"),
])
def test_model_spec_validation_errors(fields, message):
    base = {"backbone": "efficientnet_lite0", "weights": "imagenet", "cut": 15, "pooling": "mac"}
    models.ModelSpec(**base)  # valid as it is
    with pytest.raises(ValueError, match=message):
        models.ModelSpec(**{**base, **fields})


def test_model_spec_of_a_profile_and_its_dict():
    smoke = config.get_profile("smoke")
    spec = models.ModelSpec.of(smoke)
    assert spec == models.ModelSpec("efficientnet_lite0", "imagenet", 15, "mac")
    assert spec.to_dict() == {"backbone": "efficientnet_lite0", "weights": "imagenet", "cut": 15,
                              "pooling": "mac", "embedding_dim": None, "n_classes": None, "dropout": 0.0}
    assert models.ModelSpec(**spec.to_dict()) == spec
    classifier = models.ModelSpec.of(smoke, n_classes=12, dropout=0.3)
    assert (classifier.n_classes, classifier.dropout, classifier.cut) == (12, 0.3, 15)
    assert models.ModelSpec.of(config.get_profile("paper")) == models.ModelSpec("vgg16", "imagenet", None, "mac")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.cut = 3
    with pytest.raises(ValueError, match="needs weights='imagenet'"):
        models.ModelSpec.of(smoke, weights=None)          # a cut on random weights


LITE0_NORMALIZATION = ((127 / 255,) * 3, (128 / 255,) * 3)
TORCHVISION_NORMALIZATION = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.mark.parametrize("backbone, expected", [
    ("efficientnet_lite0", LITE0_NORMALIZATION),
    ("vgg16", TORCHVISION_NORMALIZATION),
    ("resnet18", TORCHVISION_NORMALIZATION),
    ("resnet50", TORCHVISION_NORMALIZATION),
    ("small", TORCHVISION_NORMALIZATION),
])
def test_input_normalization_per_backbone(backbone, expected):
    mean, std = models.input_normalization(backbone)
    np.testing.assert_allclose(mean, expected[0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(std, expected[1], rtol=0, atol=1e-12)
    assert len(mean) == len(std) == 3
    cut = 15 if backbone == "efficientnet_lite0" else None
    weights = None if backbone == "small" else "imagenet"
    assert models.ModelSpec(backbone, weights, cut, "mac").normalization == (mean, std)


def test_half_precision_maps_round_to_float16():
    x = torch.tensor([1 / 3, 1.0, 1e-3, 70000.0])
    out = models.HalfPrecisionMaps()(x)
    assert out.dtype == torch.float32
    # float16 keeps 11 significant bits: 1/3 -> 0.333251953125 = 1365 / 4096; 70000 overflows
    assert out[0].item() == 1365 / 4096 and out[1].item() == 1.0
    assert abs(out[2].item() - 1e-3) < 1e-3 * 2**-10 and out[2].item() != x[2].item()
    assert math.isinf(out[3].item())


# --------------------------------------------------------------------------- torchvision backbones

@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty torch hub cache and a download function that fails like an offline machine."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "torch-home" / "hub" / "checkpoints"


def test_resnet18_random_init_builds_without_download(offline_hub):
    trunk, channels = models.build_backbone("resnet18", weights=None)
    assert channels == 512
    assert trunk(torch.rand(1, 3, 64, 64)).shape == (1, 512, 2, 2)


def test_vgg16_stops_at_conv5_3_relu(offline_hub):
    trunk, channels = models.build_backbone("vgg16", weights=None)
    assert channels == 512
    convs = [m for m in trunk if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13 and isinstance(trunk[-1], nn.ReLU)
    assert sum(isinstance(m, nn.MaxPool2d) for m in trunk) == 4  # the fifth pool is dropped
    assert trunk(torch.rand(1, 3, 64, 64)).shape == (1, 512, 4, 4)


def test_imagenet_offline_raises_a_clear_runtime_error(offline_hub):
    with pytest.raises(RuntimeError) as info:
        models.build_backbone("resnet18", weights="imagenet")
    message = str(info.value)
    assert "resnet18-f37072fd.pth" in message
    assert str(offline_hub) in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message


def test_imagenet_weights_load_from_the_hub_cache(offline_hub):
    reference, _ = models.build_backbone("resnet18")
    from torchvision.models import resnet18

    torch.manual_seed(123)
    full = resnet18(weights=None)
    offline_hub.mkdir(parents=True)
    torch.save(full.state_dict(), offline_hub / "resnet18-f37072fd.pth")
    trunk, _ = models.build_backbone("resnet18", weights="IMAGENET1K_V1")
    torch.testing.assert_close(trunk[0].weight, full.conv1.weight, rtol=0, atol=0)
    torch.testing.assert_close(trunk[7][1].conv2.weight, full.layer4[1].conv2.weight, rtol=0, atol=0)
    assert not torch.equal(trunk[0].weight, reference[0].weight)


def test_small_backbone_has_no_imagenet_weights():
    with pytest.raises(ValueError, match="no ImageNet weights"):
        models.build_backbone("small", weights="imagenet")
    with pytest.raises(ValueError, match="no ImageNet weights"):
        models.build_network(models.ModelSpec.of(SMALL, weights="imagenet"))


# --------------------------------------------------------------------------- extraction
class _TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                                  nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Dropout(0.5))
        self.frozen = nn.BatchNorm1d(4)

    def forward(self, x):
        return F.normalize(self.frozen(self.body(x)), dim=1)


def test_extract_embeddings_equals_direct_forward_and_restores_modes():
    torch.manual_seed(0)
    model = _TinyNet()
    model.body[1].running_mean.uniform_(-1, 1)  # eval-mode BatchNorm must use these statistics
    model.train()
    model.frozen.eval()  # a submodule kept in eval mode must stay so
    images = torch.randn(10, 3, 8, 8)
    dataset = TensorDataset(images, torch.arange(10))
    emb = models.extract_embeddings(model, dataset, batch_size=3, progress=False)
    assert model.training and model.body[1].training and not model.frozen.training
    model.eval()
    with torch.no_grad():
        expected = model(images)
    assert emb.dtype == torch.float32 and emb.device.type == "cpu" and emb.shape == (10, 4)
    torch.testing.assert_close(emb, expected)
    loader = DataLoader(dataset, batch_size=4, shuffle=False)
    torch.testing.assert_close(models.extract_embeddings(model, loader, progress=False), expected)
    assert not emb.requires_grad


def test_extract_embeddings_rejects_shuffled_loader_and_bad_outputs():
    dataset = TensorDataset(torch.randn(4, 3, 8, 8), torch.arange(4))
    with pytest.raises(ValueError, match="shuffles"):
        models.extract_embeddings(_TinyNet(), DataLoader(dataset, shuffle=True), progress=False)
    with pytest.raises(ValueError, match="\\(batch, dim\\)"):
        models.extract_embeddings(nn.Identity(), dataset, progress=False)
    with pytest.raises(TypeError, match="Dataset"):
        models.extract_embeddings(_TinyNet(), [1, 2, 3], progress=False)


# --------------------------------------------------------------------------- Lite0 networks (frozen trunk + top)

SMOKE = config.get_profile("smoke")


@pytest.fixture(scope="module")
def lite0_classifier() -> models.Network:
    """The smoke profile's stage-1 classifier: Lite0 frozen below block 15, a trainable top."""
    torch.manual_seed(0)
    return models.build_network(models.ModelSpec.of(SMOKE, n_classes=5))


def _images(n: int = 3, seed: int = 0) -> torch.Tensor:
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in LITE0_NORMALIZATION)
    images = torch.rand(n, 3, SMOKE.eval_size, SMOKE.eval_size, generator=torch.Generator().manual_seed(seed))
    return (images - mean) / std


def test_network_frozen_trunk_stays_in_eval_and_gets_no_gradients(lite0_classifier):
    net = lite0_classifier
    assert isinstance(net.frozen[-1], models.HalfPrecisionMaps)
    net.train()
    assert net.training and net.top.training
    assert all(not m.training for m in net.frozen.modules())
    frozen_params = list(net.frozen.parameters())
    assert frozen_params and not any(p.requires_grad for p in frozen_params)
    assert all(p.requires_grad for p in net.top.parameters())
    assert models.count_parameters(net, trainable_only=True) == models.count_parameters(net.top)
    # BatchNorm statistics of the frozen trunk do not move in training mode
    stats = {k: v.clone() for k, v in net.frozen.state_dict().items()}
    net.zero_grad()
    net(_images()).logsumexp(dim=1).sum().backward()
    assert all(p.grad is None for p in frozen_params)
    assert all(p.grad is not None for p in net.top.head.parameters())
    assert all(torch.equal(v, net.frozen.state_dict()[k]) for k, v in stats.items())
    net.eval()
    assert not net.training and not net.top.training


def test_network_forward_is_top_of_frozen_rounded_to_float16(lite0_classifier):
    net = lite0_classifier.eval()
    x = _images()
    with torch.no_grad():
        maps = net.frozen[0](x)
        rounded = net.frozen(x)
        assert tuple(maps.shape[1:]) == imagenet.lite0_cut_shape(SMOKE.cut, SMOKE.eval_size)
        torch.testing.assert_close(rounded, maps.to(torch.float16).to(torch.float32), rtol=0, atol=0)
        assert not torch.equal(rounded, maps)
        logits = net(x)
        torch.testing.assert_close(logits, net.top(rounded), rtol=0, atol=0)
    assert logits.shape == (3, 5)


def test_embedding_shares_the_frozen_trunk_and_copies_the_top(lite0_classifier):
    clf = lite0_classifier.eval()
    emb = clf.embedding()
    assert emb.frozen is clf.frozen
    assert emb.spec == models.ModelSpec.of(SMOKE)
    for (name, a), (_, b) in zip(clf.top.trunk.named_parameters(), emb.top.trunk.named_parameters()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr(), name
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    x = _images(4, seed=1)
    with torch.no_grad():
        start = emb(x)
    # one SGD step on the embedding network changes it, and nothing of the classifier
    emb.train()
    emb.zero_grad()
    optimizer = torch.optim.SGD([p for p in emb.parameters() if p.requires_grad], lr=10.0)
    (emb(x) @ torch.ones(emb.top.dim)).sum().backward()
    optimizer.step()
    emb.eval()
    with torch.no_grad():
        assert not torch.allclose(emb(x), start)
    after = clf.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())


def test_lite0_embedding_is_unit_norm_and_non_negative_mac_over_relu6(lite0_classifier):
    emb = lite0_classifier.embedding().eval()
    x = _images(4, seed=2)
    with torch.no_grad():
        out = emb(x)
        features = emb.top.trunk(emb.frozen(x))
    assert out.shape == (4, imagenet.LITE0_FEATURE_CHANNELS)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(4))
    assert (out >= 0).all() and (out > 0).any()
    # the trunk ends on ReLU6: every activation lies in [0, 6], some at each bound
    assert features.min() >= 0 and features.max() <= 6
    assert (features == 0).any() and (features == 6).any()
    pooled = features.amax(dim=(2, 3))
    torch.testing.assert_close(out, pooled / pooled.norm(dim=1, keepdim=True))


def test_lite0_network_rebuilds_from_its_spec():
    torch.manual_seed(0)
    net = models.build_network(models.ModelSpec.of(SMOKE)).eval()
    x = _images()
    with torch.no_grad():
        emb = net(x)
    spec = models.ModelSpec(**net.spec.to_dict())
    rebuilt = models.build_network(spec, pretrained_top=False).eval()
    with torch.no_grad():
        assert not torch.allclose(rebuilt(x), emb)           # a random top until the weights are loaded
    rebuilt.load_state_dict(net.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), emb)
    # only the top is trainable: block 15 and the head convolution, no frozen part inside
    whole = models.build_network(models.ModelSpec.of(SMOKE, cut=None))
    assert isinstance(whole.frozen, nn.Identity)
    assert models.count_parameters(net, trainable_only=True) < models.count_parameters(whole, trainable_only=True)
    with pytest.raises(ValueError, match="only supported for efficientnet_lite0"):
        models.build_backbone("resnet18", cut=3)


def test_random_init_differs_from_the_pretrained_weights():
    """Compared with the weights file read directly, tensor by tensor in its stored order.

    The file lists the stem, blocks 0-15, the head convolution and its
    BatchNorm, then the 1000-class layer; a cut network's frozen trunk and
    trainable trunk together hold the same tensors in the same order, less
    that last layer.
    """
    stored = list(imagenet.load_lite0_state_dict().values())[:-2]   # the _fc weight and bias dropped
    spec = models.ModelSpec.of(SMOKE)

    def tensors(network):
        frozen = list(network.frozen.state_dict().values())
        return frozen, list(network.top.trunk.state_dict().values())

    torch.manual_seed(0)
    frozen, top = tensors(models.build_network(spec, pretrained_top=True))
    assert len(frozen) + len(top) == len(stored)
    assert all(torch.equal(a, b) for a, b in zip(frozen + top, stored))      # the comparison can see weights
    torch.manual_seed(0)
    frozen, top = tensors(models.build_network(spec, pretrained_top=False))
    assert all(torch.equal(a, b) for a, b in zip(frozen, stored))            # the frozen trunk is always ImageNet's
    random_weights = [(a, b) for a, b in zip(top, stored[len(frozen):]) if a.dim() == 4]  # the convolutions
    assert len(random_weights) >= 4
    assert not any(torch.equal(a, b) for a, b in random_weights)
    assert not any(torch.allclose(a, b, atol=1e-3) for a, b in random_weights)
    trunk, _ = models.build_backbone("efficientnet_lite0", weights=None)
    weights = [t for t in trunk.state_dict().values()]
    assert len(weights) == len(stored)
    assert not any(torch.equal(a, b) for a, b in zip(weights, stored) if a.dim() == 4)
