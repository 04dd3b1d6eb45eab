"""Backbones, global pooling, L2 normalisation and the two networks of the series.

The maths of each pooling
lives in a plain function (:func:`mac`, :func:`spoc`, :func:`gem`,
:func:`l2_normalize`); the ``nn.Module`` classes are thin wrappers around them.

The paper's network is VGG16's convolutional layers up to the ReLU
after ``conv5_3`` (the last max-pool removed), global max pooling (MAC) and L2
normalisation: a 512-d unit vector per image. The ``small`` backbone is a
CPU-friendly stand-in used by the ``smoke`` and ``tutorial`` profiles.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, RandomSampler

from . import config, imagenet
from .progress import bar as tqdm

BACKBONES = ("vgg16", "resnet18", "resnet50", "efficientnet_lite0", "small")
POOLINGS = ("mac", "spoc", "gem")
IMAGENET_ALIASES = ("imagenet", "IMAGENET1K_V1")

# Stages of the ``small`` backbone: (channels, number of conv-BN-ReLU blocks).
SMALL_STAGES = ((32, 1), (64, 1), (128, 1), (256, 2))


# --------------------------------------------------------------------------- pooling maths

def _check_feature_map(x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(
            f"expected a feature map of shape (B, C, H, W), got a tensor of shape {tuple(x.shape)}"
        )


def mac(x: torch.Tensor) -> torch.Tensor:
    """Maximum activation of convolutions: the spatial maximum of each channel, ``(B, C)``.

    The paper's pooling.
    """
    _check_feature_map(x)
    return x.amax(dim=(2, 3))


def spoc(x: torch.Tensor) -> torch.Tensor:
    """Sum-pooled convolutional features (here the spatial mean of each channel), ``(B, C)``.

    The mean differs from the sum only by a
    constant factor, which the L2 normalisation removes.
    """
    _check_feature_map(x)
    return x.mean(dim=(2, 3))


def gem(x: torch.Tensor, p: torch.Tensor | float = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """Generalised mean pooling ``(mean(clamp(x, eps) ** p)) ** (1 / p)`` per channel, ``(B, C)``.

    ``p = 1`` is :func:`spoc` (for
    non-negative inputs) and ``p -> inf`` tends to :func:`mac`. Values are
    clamped at ``eps`` so that fractional powers and gradients stay finite.
    """
    _check_feature_map(x)
    p = torch.as_tensor(p, dtype=x.dtype, device=x.device)
    if torch.any(p <= 0):
        raise ValueError(f"GeM exponent p must be positive, got {p.tolist()}")
    return x.clamp(min=eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Scale every row of ``x`` to unit Euclidean length (rows of zeros stay zero)."""
    return F.normalize(x, p=2.0, dim=1, eps=eps)


class MAC(nn.Module):
    """Global max pooling (:func:`mac`). """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mac(x)


class SPoC(nn.Module):
    """Global average pooling (:func:`spoc`). """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return spoc(x)


class GeM(nn.Module):
    """Generalised mean pooling (:func:`gem`) with a learnable exponent ``p``."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        if p <= 0:
            raise ValueError(f"GeM exponent p must be positive, got {p}")
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gem(x, self.p, self.eps)

    def extra_repr(self) -> str:
        return f"p={self.p.item():.3f}, eps={self.eps}"


class L2Norm(nn.Module):
    """Row-wise L2 normalisation (:func:`l2_normalize`). """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return l2_normalize(x)


def build_pooling(name: str) -> nn.Module:
    """The pooling layer called ``name``: ``"mac"``, ``"spoc"`` or ``"gem"``.
    """
    layers = {"mac": MAC, "spoc": SPoC, "gem": GeM}
    key = str(name).lower()
    if key not in layers:
        raise ValueError(f"unknown pooling {name!r}; expected one of {list(POOLINGS)}")
    return layers[key]()


# --------------------------------------------------------------------------- backbones

def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """A 3x3 convolution (no bias), batch normalisation and ReLU.: the building block of the ``small`` backbone."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def small_backbone(stages: tuple[tuple[int, int], ...] = SMALL_STAGES) -> tuple[nn.Sequential, int]:
    """A small CNN trained from scratch on a CPU; returns ``(trunk, out_channels)``.

    A stride-2 stem halves the input; each
    stage ``(channels, blocks)`` stacks conv-BN-ReLU blocks and all but the last
    end with a 2x2 max-pool, so the trunk ends on a ReLU (ready for MAC). A
    64x64 canvas gives a 4x4 final map with 256 channels; about 1.0 M
    parameters, and several hundred images/s forward+backward on 2 CPU cores.
    """
    if not stages:
        raise ValueError("the small backbone needs at least one stage")
    first = stages[0][0]
    layers: list[nn.Module] = [
        nn.Conv2d(3, first, kernel_size=3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(first),
        nn.ReLU(inplace=True),
    ]
    in_channels = first
    for index, (width, blocks) in enumerate(stages):
        for _ in range(blocks):
            layers.append(conv_bn_relu(in_channels, width))
            in_channels = width
        if index < len(stages) - 1:
            layers.append(nn.MaxPool2d(2))
    trunk = nn.Sequential(*layers)
    _init_small(trunk)
    return trunk, in_channels


def _init_small(module: nn.Module) -> None:
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)


def _torchvision_spec(name: str):
    """(constructor, weights enum member) of a torchvision backbone."""
    from torchvision import models as tvm

    specs = {
        "vgg16": (tvm.vgg16, tvm.VGG16_Weights.IMAGENET1K_V1),
        "resnet18": (tvm.resnet18, tvm.ResNet18_Weights.IMAGENET1K_V1),
        "resnet50": (tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V1),
    }
    return specs[name]


def imagenet_weights_location(name: str) -> tuple[str, Path, str]:
    """``(file name, cache folder, URL)`` of torchvision's ImageNet weights for backbone ``name``.

    The cache folder is
    ``<torch.hub.get_dir()>/checkpoints`` (``$TORCH_HOME/hub/checkpoints``);
    a file placed there by hand is used without any download.
    """
    if name not in ("vgg16", "resnet18", "resnet50"):
        raise ValueError(
            f"no ImageNet weights for backbone {name!r}; they exist for vgg16, resnet18 and resnet50"
        )
    url = _torchvision_spec(name)[1].url
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    return os.path.basename(urlparse(url).path), folder, url


def load_imagenet_state_dict(name: str, progress: bool = True) -> dict:
    """torchvision's ``IMAGENET1K_V1`` state dict for ``name``, from the hub cache or downloaded.

    Offline and without a cached file
    it raises a ``RuntimeError`` that says which file to put in which folder and
    where to download it; it never falls back to random weights.
    """
    file_name, folder, url = imagenet_weights_location(name)
    try:
        return torch.hub.load_state_dict_from_url(
            url, model_dir=str(folder), progress=progress, file_name=file_name
        )
    except Exception as error:  # network errors, partial or corrupt files
        raise RuntimeError(
            f"could not load the ImageNet weights of {name!r} ({type(error).__name__}: {error}). "
            f"Download {url} on a machine with internet access and put it, named {file_name}, "
            f"in {folder} (set TORCH_HOME to use another cache), then run again."
        ) from error


def _is_imagenet(weights: str | None) -> bool:
    if weights is None:
        return False
    if weights not in IMAGENET_ALIASES:
        raise ValueError(
            f"unknown weights {weights!r}; expected None (random init) or one of {list(IMAGENET_ALIASES)}"
        )
    return True


def check_imagenet_weights(name: str) -> None:
    """Fail early, before any work, when backbone ``name`` has no ImageNet weights to load.

    EfficientNet-Lite0's come with a pip package (checked to be installed);
    torchvision's are looked up or downloaded when the network is built.
    """
    if name == "efficientnet_lite0":
        imagenet.lite0_weights_path()
    else:
        imagenet_weights_location(name)


def _lite0_parts(weights: str | None, cut: int) -> tuple[nn.Module, nn.Module]:
    return imagenet.lite0_split(imagenet.efficientnet_lite0("imagenet" if _is_imagenet(weights) else None),
                                cut, freeze=False)


def build_frozen_trunk(name: str, weights: str | None, cut: int) -> nn.Module:
    """The lower trunk of backbone ``name`` below block ``cut``, frozen: eval mode, no gradients."""
    if name != "efficientnet_lite0":
        raise ValueError(f"a cut is only supported for efficientnet_lite0, not {name!r}")
    frozen, _ = _lite0_parts(weights, cut)
    return frozen.requires_grad_(False).eval()


def build_backbone(name: str, weights: str | None = None, cut: int | None = None) -> tuple[nn.Module, int]:
    """The convolutional trunk called ``name`` (its trainable part above ``cut``) and its output channels.

    ``name`` is ``"vgg16"`` (conv layers up
    to the ReLU after conv5_3, without the last max-pool, as in the paper; 512
    channels), ``"resnet18"`` (512) or ``"resnet50"`` (2048) up to ``layer4``,
    ``"efficientnet_lite0"`` (1280 channels, see :mod:`helpers.imagenet`), or
    ``"small"`` (:func:`small_backbone`). ``weights=None`` initialises at
    random; ``weights="imagenet"`` loads ImageNet weights (torchvision's
    IMAGENET1K_V1, see :func:`load_imagenet_state_dict`, or Lite0's from its
    pip package). With ``cut`` (Lite0 only) the trunk is the part from MBConv
    block ``cut`` up; the part below comes from :func:`build_frozen_trunk`.
    """
    key = str(name).lower()
    if key not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {list(BACKBONES)}")
    pretrained = _is_imagenet(weights)
    if key == "efficientnet_lite0":
        frozen, trainable = _lite0_parts(weights, 0 if cut is None else cut)
        trunk = trainable if cut is not None else nn.Sequential(frozen, trainable)
        return trunk, imagenet.LITE0_FEATURE_CHANNELS
    if cut is not None:
        raise ValueError(f"a cut is only supported for efficientnet_lite0, not {name!r}")
    if key == "small":
        if pretrained:
            raise ValueError(
                "the 'small' backbone has no ImageNet weights; use weights=None, "
                "or a torchvision backbone (vgg16, resnet18, resnet50) with weights='imagenet'"
            )
        return small_backbone()
    constructor, _ = _torchvision_spec(key)
    network = constructor(weights=None)
    if pretrained:
        network.load_state_dict(load_imagenet_state_dict(key))
    if key == "vgg16":
        return network.features[:-1], 512
    trunk = nn.Sequential(
        network.conv1, network.bn1, network.relu, network.maxpool,
        network.layer1, network.layer2, network.layer3, network.layer4,
    )
    return trunk, network.fc.in_features


# --------------------------------------------------------------------------- networks

class EmbeddingNet(nn.Module):
    """trunk -> global pooling -> optional linear projection -> L2 normalisation.

    ``forward(x)`` returns ``(B, dim)``
    unit vectors; ``features(x)`` the pooled (and projected) vectors before
    normalisation. ``dim`` is ``embedding_dim`` when a projection is used,
    else the trunk's channel count.
    """

    def __init__(self, trunk: nn.Module, pooling: nn.Module, in_channels: int,
                 embedding_dim: int | None = None):
        super().__init__()
        if embedding_dim is not None and embedding_dim <= 0:
            raise ValueError(f"embedding_dim must be a positive integer or None, got {embedding_dim}")
        self.trunk = trunk
        self.pooling = pooling
        self.projection = nn.Linear(in_channels, embedding_dim) if embedding_dim else None
        self.norm = L2Norm()
        self.in_channels = in_channels
        self.dim = embedding_dim or in_channels

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled (and projected) features of a batch, before L2 normalisation."""
        pooled = self.pooling(self.trunk(x))
        return self.projection(pooled) if self.projection is not None else pooled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.features(x))

    @classmethod
    def from_classifier(cls, classifier: "ClassifierNet", embedding_dim: int | None = None) -> "EmbeddingNet":
        """An embedding network holding copies of a stage-1 classifier's trunk and pooling.

        The classification head is
        dropped; the classifier itself is left untouched.
        """
        if not isinstance(classifier, ClassifierNet):
            raise TypeError(f"expected a ClassifierNet, got {type(classifier).__name__}")
        net = cls(copy.deepcopy(classifier.trunk), copy.deepcopy(classifier.pooling),
                  classifier.in_channels, embedding_dim)
        net.backbone_name, net.cut = getattr(classifier, "backbone_name", None), getattr(classifier, "cut", None)
        return net


class ClassifierNet(nn.Module):
    """trunk -> global pooling -> dropout (optional) -> linear layer to ``n_classes`` logits.

    For stage 1. ``embed(x)`` gives the
    L2-normalised pooled features, i.e. what the stage-2 network starts from.
    """

    def __init__(self, trunk: nn.Module, pooling: nn.Module, in_channels: int, n_classes: int,
                 dropout: float = 0.0):
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got n_classes={n_classes}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.trunk = trunk
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(in_channels, n_classes)
        nn.init.normal_(self.head.weight, std=0.01)  # small logits: the first loss is about ln(n_classes)
        nn.init.zeros_(self.head.bias)
        self.in_channels = in_channels
        self.n_classes = n_classes

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised pooled features (no head)."""
        return l2_normalize(self.pooling(self.trunk(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.pooling(self.trunk(x))))


# --------------------------------------------------------------------------- constructors

def build_embedding_net(profile=None, **overrides) -> EmbeddingNet:
    """The embedding network described by a profile (``backbone``, ``weights``, ``pooling``,
    ``embedding_dim``); ``profile`` goes through :func:`helpers.config.get_profile`.

    Keyword overrides replace profile
    fields, e.g. ``build_embedding_net(pooling="gem", weights=None)``.
    """
    profile = config.get_profile(profile, **overrides)
    trunk, channels = build_backbone(profile.backbone, profile.weights, profile.cut)
    net = EmbeddingNet(trunk, build_pooling(profile.pooling), channels, profile.embedding_dim)
    net.backbone_name, net.cut = profile.backbone, profile.cut
    return net


def build_classifier(n_classes: int, profile=None, *, dropout: float = 0.0, **overrides) -> ClassifierNet:
    """The stage-1 classifier described by a profile (``backbone``, ``weights``, ``pooling``).

    Keyword overrides replace profile fields.
    """
    profile = config.get_profile(profile, **overrides)
    trunk, channels = build_backbone(profile.backbone, profile.weights, profile.cut)
    net = ClassifierNet(trunk, build_pooling(profile.pooling), channels, n_classes, dropout)
    net.backbone_name, net.cut = profile.backbone, profile.cut
    return net


def _pooling_name(pooling: nn.Module) -> str:
    names = {MAC: "mac", SPoC: "spoc", GeM: "gem"}
    if type(pooling) not in names:
        raise ValueError(f"cannot describe pooling {type(pooling).__name__}; expected one of {list(POOLINGS)}")
    return names[type(pooling)]


def model_spec(model: nn.Module) -> dict:
    """What :func:`model_from_spec` needs to rebuild ``model`` (before its weights are loaded)."""
    backbone = getattr(model, "backbone_name", None)
    if backbone is None:
        raise ValueError("the model was not built by build_embedding_net/build_classifier: its backbone is unknown")
    spec = {"backbone": backbone, "cut": getattr(model, "cut", None), "pooling": _pooling_name(model.pooling)}
    if isinstance(model, ClassifierNet):
        dropout = model.dropout.p if isinstance(model.dropout, nn.Dropout) else 0.0
        return {"type": "classifier", **spec, "n_classes": model.n_classes, "dropout": dropout}
    return {"type": "embedding", **spec,
            "embedding_dim": model.projection.out_features if model.projection is not None else None}


def model_from_spec(spec: dict) -> nn.Module:
    """A randomly initialised network of the shape described by :func:`model_spec`."""
    trunk, channels = build_backbone(spec["backbone"], weights=None, cut=spec.get("cut"))
    pooling = build_pooling(spec["pooling"])
    if spec["type"] == "classifier":
        net = ClassifierNet(trunk, pooling, channels, spec["n_classes"], spec["dropout"])
    else:
        net = EmbeddingNet(trunk, pooling, channels, spec["embedding_dim"])
    net.backbone_name, net.cut = spec["backbone"], spec.get("cut")
    return net


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (only those with ``requires_grad`` if asked)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# --------------------------------------------------------------------------- running a model over data

def _model_device(model: nn.Module) -> torch.device:
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _as_loader(dataset_or_loader, batch_size: int, num_workers: int, pin_memory: bool) -> DataLoader:
    if isinstance(dataset_or_loader, DataLoader):
        if isinstance(dataset_or_loader.sampler, RandomSampler):
            raise ValueError("the DataLoader shuffles its data: embeddings would not come back in "
                             "dataset order; pass the Dataset or a DataLoader with shuffle=False")
        return dataset_or_loader
    if not isinstance(dataset_or_loader, Dataset):
        raise TypeError("expected a torch Dataset returning (image, label) or a DataLoader, got "
                        f"{type(dataset_or_loader).__name__}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return DataLoader(dataset_or_loader, batch_size=batch_size, shuffle=False,
                      num_workers=num_workers, pin_memory=pin_memory)


def _images_of(batch) -> Tensor:
    images = batch[0] if isinstance(batch, (list, tuple)) else batch
    if not isinstance(images, Tensor):
        raise TypeError(f"expected batches of (image tensor, label), got {type(images).__name__}")
    return images


@torch.no_grad()
def extract_embeddings(model: nn.Module, dataset_or_loader, batch_size: int = 256,
                       device=None, num_workers: int = 0, progress: bool = True) -> Tensor:
    """Embed every image of a dataset with ``model``; return a float32 CPU tensor (N, D).

    ``dataset_or_loader`` is a Dataset
    whose items are ``(image, label)`` (a non-shuffling DataLoader over one is
    accepted as well); rows come back in dataset order. The model runs in eval
    mode under ``torch.no_grad()`` and every submodule's train/eval mode is
    restored afterwards. ``device=None`` uses the device the model is on; an
    explicit device moves the model there. A progress bar is shown unless
    ``progress=False``.
    """
    if device is None:
        device = _model_device(model)
    else:
        device = torch.device(device)
        model.to(device)
    loader = _as_loader(dataset_or_loader, batch_size, num_workers, device.type == "cuda")
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    chunks = []
    try:
        for batch in tqdm(loader, desc="embedding", disable=not progress, leave=False):
            out = model(_images_of(batch).to(device, non_blocking=True))
            if not isinstance(out, Tensor) or out.dim() != 2:
                got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise ValueError(f"the model must return a (batch, dim) embedding tensor, got {got}")
            chunks.append(out.float().cpu())
    finally:
        for module, was_training in modes:
            module.train(was_training)
    if not chunks:
        raise ValueError("the dataset is empty: nothing to embed")
    return torch.cat(chunks)
