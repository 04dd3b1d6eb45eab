"""Tests of helpers.models: pooling maths against hand computations, shapes, weight loading."""
from __future__ import annotations

import urllib.error

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


def test_l2norm_gives_unit_rows_in_the_same_direction():
    x = torch.tensor([[3.0, 4.0], [0.0, -2.0]])
    torch.testing.assert_close(models.L2Norm()(x), torch.tensor([[0.6, 0.8], [0.0, -1.0]]))


# --------------------------------------------------------------------------- networks

@pytest.mark.parametrize("pooling", ["mac", "spoc", "gem"])
@pytest.mark.parametrize("embedding_dim", [None, 32])
def test_embedding_net_shapes_and_unit_norm(pooling, embedding_dim):
    torch.manual_seed(0)
    net = models.build_embedding_net(SMALL, pooling=pooling, embedding_dim=embedding_dim)
    out = net(torch.rand(5, 3, 40, 40))
    expected_dim = embedding_dim or 256
    assert net.dim == expected_dim
    assert out.shape == (5, expected_dim)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(5))


def test_embedding_net_is_pooling_of_trunk_then_normalised():
    torch.manual_seed(0)
    net = models.build_embedding_net(SMALL).eval()
    x = torch.rand(3, 3, 40, 40)
    with torch.no_grad():
        feats = net.trunk(x)
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


def test_classifier_logits_and_from_classifier_copies_weights():
    torch.manual_seed(0)
    clf = models.build_classifier(7, SMALL, dropout=0.2)
    assert clf(torch.rand(4, 3, 40, 40)).shape == (4, 7)
    with torch.no_grad():  # make the pooling state distinctive too
        clf.trunk[0].weight.add_(1.0)
    emb = models.EmbeddingNet.from_classifier(clf)
    clf_state = {k[len("trunk."):]: v for k, v in clf.state_dict().items() if k.startswith("trunk.")}
    emb_state = emb.trunk.state_dict()
    assert clf_state.keys() == emb_state.keys()
    for name, value in clf_state.items():
        assert torch.equal(value, emb_state[name]), name
    assert not any(k.startswith("head") for k in emb.state_dict())
    # copies, not shared tensors: training the embedding leaves the classifier alone
    assert emb.trunk[0].weight.data_ptr() != clf.trunk[0].weight.data_ptr()
    clf.eval(), emb.eval()
    x = torch.rand(2, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(emb(x), clf.embed(x))


def test_from_classifier_with_projection_and_gem():
    clf = models.build_classifier(3, SMALL, pooling="gem")
    with torch.no_grad():
        clf.pooling.p.fill_(4.5)
    emb = models.EmbeddingNet.from_classifier(clf, embedding_dim=16)
    assert emb.pooling.p.item() == 4.5 and emb.dim == 16
    with pytest.raises(TypeError, match="ClassifierNet"):
        models.EmbeddingNet.from_classifier(emb)


def test_builders_reject_unknown_names():
    with pytest.raises(ValueError, match="unknown backbone 'vgg19'"):
        models.build_backbone("vgg19")
    with pytest.raises(ValueError, match="unknown weights"):
        models.build_backbone("resnet18", weights="places365")
    with pytest.raises(TypeError, match="backbon"):
        models.build_embedding_net("smoke", backbon="small")


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
        models.build_embedding_net(config.get_profile(SMALL, weights="imagenet"))


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


def test_lite0_top_rebuilds_from_its_spec_and_embeds_cached_maps():
    profile = config.get_profile("smoke")
    assert profile.backbone == "efficientnet_lite0" and profile.cut == 15
    net = models.build_embedding_net(profile).eval()
    frozen = models.build_frozen_trunk(profile.backbone, profile.weights, profile.cut)
    images = torch.rand(4, 3, profile.eval_size, profile.eval_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        maps = frozen((images - 0.5) / 0.5)      # what the cache holds: the frozen trunk's output
        emb = net(maps)
    assert maps.shape[1:] == imagenet.lite0_cut_shape(profile.cut, profile.eval_size)
    assert emb.shape == (4, imagenet.LITE0_FEATURE_CHANNELS)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(4))
    spec = models.model_spec(net)
    assert spec == {"type": "embedding", "backbone": "efficientnet_lite0", "cut": 15, "pooling": "mac",
                    "embedding_dim": None}
    rebuilt = models.model_from_spec(spec).eval()
    rebuilt.load_state_dict(net.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(maps), emb)
    # only the top is trainable: block 15 and the head convolution, no frozen part inside
    assert models.count_parameters(net) < models.count_parameters(models.build_embedding_net(profile, cut=None))
    with pytest.raises(ValueError, match="only supported for efficientnet_lite0"):
        models.build_backbone("resnet18", cut=3)

