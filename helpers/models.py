"""Backbones, global pooling, L2 normalisation and the two networks of the series.

The maths of each pooling
lives in a plain function (:func:`mac`, :func:`spoc`, :func:`gem`,
:func:`l2_normalize`); the pooling ``nn.Module`` classes are thin wrappers around them.

The paper's network is VGG16's convolutional layers up to the ReLU
after ``conv5_3`` (the last max-pool removed), global max pooling (MAC) and L2
normalisation: a 512-d unit vector per image. The CPU profiles use
EfficientNet-Lite0 (:mod:`helpers.imagenet`) with its lower trunk frozen; the
``small`` backbone is a CNN for training from scratch (the ablation).

A :class:`Network` is a frozen trunk followed by a trainable ``top``, built
from a :class:`ModelSpec`; it embeds (or classifies) images directly.
"""
from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, RandomSampler

from . import imagenet
from .progress import bar as tqdm

BACKBONES = ("vgg16", "resnet18", "resnet50", "efficientnet_lite0", "small")
POOLINGS = ("mac", "spoc", "gem")
IMAGENET_ALIASES = ("imagenet", "IMAGENET1K_V1")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
"""torchvision's ImageNet statistics, which its pretrained networks (and the ``small`` CNN) expect."""

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


# --------------------------------------------------------------------------- what a network is made of

@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a network before its trained weights are loaded.

    ``backbone`` and ``weights`` (``None`` or ``"imagenet"``) name the trunk;
    with ``cut`` (EfficientNet-Lite0 only) the stem and MBConv blocks below
    ``cut`` form a frozen trunk that keeps its ImageNet weights and is never
    trained. ``pooling`` is ``"mac"``, ``"spoc"`` or ``"gem"``;
    ``embedding_dim`` an optional projection. ``n_classes`` makes it a
    stage-1 classifier (``dropout`` before its head); ``None`` an embedding
    network.
    """

    backbone: str
    weights: str | None
    cut: int | None
    pooling: str
    embedding_dim: int | None = None
    n_classes: int | None = None
    dropout: float = 0.0

    def __post_init__(self):
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; expected one of {list(BACKBONES)}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}; expected one of {list(POOLINGS)}")
        _is_imagenet(self.weights)
        if self.cut is not None and self.backbone != "efficientnet_lite0":
            raise ValueError(f"a cut is only supported for efficientnet_lite0, not {self.backbone!r}")
        if self.cut is not None and not _is_imagenet(self.weights):
            raise ValueError("a frozen trunk (cut) needs weights='imagenet': frozen random weights learn nothing")
        if self.embedding_dim is not None and self.embedding_dim <= 0:
            raise ValueError(f"embedding_dim must be a positive integer or None, got {self.embedding_dim}")

    @classmethod
    def of(cls, profile, **changes) -> "ModelSpec":
        """The spec a profile's model fields describe (``backbone`` ... ``embedding_dim``), with ``changes``."""
        fields = {name: getattr(profile, name) for name in ("backbone", "weights", "cut", "pooling", "embedding_dim")}
        return cls(**{**fields, **changes})

    @property
    def normalization(self) -> tuple[tuple, tuple]:
        """``(mean, std)`` per RGB channel that this backbone expects its [0, 1] inputs normalised with."""
        return input_normalization(self.backbone)

    def to_dict(self) -> dict:
        return asdict(self)


def input_normalization(backbone: str) -> tuple[tuple, tuple]:
    """``(mean, std)`` of a backbone's inputs, as timm's ``pretrained_cfg`` records them.

    EfficientNet-Lite0's weights were trained on ``(x * 255 - 127) / 128``
    (:data:`helpers.imagenet.NORMALIZATION`); torchvision's networks, and
    the ``small`` CNN, use torchvision's ImageNet statistics.
    """
    if backbone == "efficientnet_lite0":
        return imagenet.NORMALIZATION
    return IMAGENET_MEAN, IMAGENET_STD


class HalfPrecisionMaps(nn.Module):
    """Rounds a frozen trunk's maps to float16 and back: what a cache of them in float16 would give.

    The frozen maps are stored in float16 when cached, so rounding them here
    makes a network give the same embeddings whether its frozen maps were
    computed now or read from that cache.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.half().float()


# --------------------------------------------------------------------------- networks

class EmbeddingTop(nn.Module):
    """The trainable part of an embedding network: trunk -> pooling -> optional projection -> L2 norm."""

    def __init__(self, trunk: nn.Module, pooling: nn.Module, in_channels: int, embedding_dim: int | None = None):
        super().__init__()
        self.trunk = trunk
        self.pooling = pooling
        self.projection = nn.Linear(in_channels, embedding_dim) if embedding_dim else None
        self.dim = embedding_dim or in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pooling(self.trunk(x))
        return l2_normalize(self.projection(pooled) if self.projection is not None else pooled)


class ClassifierTop(nn.Module):
    """The trainable part of a stage-1 classifier: trunk -> pooling -> dropout -> linear head."""

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

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised pooled features (no head)."""
        return l2_normalize(self.pooling(self.trunk(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.pooling(self.trunk(x))))


class Network(nn.Module):
    """A frozen trunk (``nn.Identity`` when nothing is frozen) followed by a trainable ``top``.

    ``forward(images)`` is ``top(frozen(images))``: an embedding network
    returns ``(B, dim)`` unit vectors, a classifier ``(B, n_classes)``
    logits. Training updates only ``top``; the frozen trunk stays in eval
    mode whatever ``train()`` is asked. ``spec`` says how it was built.
    """

    def __init__(self, spec: ModelSpec, frozen: nn.Module, top: nn.Module):
        super().__init__()
        self.spec = spec
        self.frozen = frozen.requires_grad_(False).eval()
        self.top = top

    @property
    def is_classifier(self) -> bool:
        return self.spec.n_classes is not None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.top(self.frozen(images))

    def train(self, mode: bool = True) -> "Network":
        super().train(mode)
        self.frozen.eval()
        return self

    def embedding(self, embedding_dim: int | None = None) -> "Network":
        """An embedding network that starts from this classifier: its frozen trunk, a copy of its trunk and pooling.

        The classification head is dropped; the classifier itself is left
        untouched. This is how stage 2 starts from stage 1.
        """
        if not self.is_classifier:
            raise TypeError("embedding() turns a stage-1 classifier into an embedding network; this one embeds already")
        spec = replace(self.spec, n_classes=None, dropout=0.0, embedding_dim=embedding_dim)
        top = EmbeddingTop(copy.deepcopy(self.top.trunk), copy.deepcopy(self.top.pooling),
                           self.top.head.in_features, embedding_dim)
        return Network(spec, self.frozen, top)


def build_network(spec: ModelSpec, pretrained_top: bool = True) -> Network:
    """The network ``spec`` describes, with ImageNet weights where ``spec.weights`` asks for them.

    ``pretrained_top=False`` builds the trainable top at random (its
    weights are about to be loaded from a saved run); the frozen trunk
    always gets its ImageNet weights, since runs do not save it.
    """
    trunk, channels = build_backbone(spec.backbone, spec.weights if pretrained_top else None, spec.cut)
    pooling = build_pooling(spec.pooling)
    if spec.n_classes is not None:
        top = ClassifierTop(trunk, pooling, channels, spec.n_classes, spec.dropout)
    else:
        top = EmbeddingTop(trunk, pooling, channels, spec.embedding_dim)
    frozen = nn.Identity()
    if spec.cut is not None:
        with torch.random.fork_rng(devices=[]):  # its weights are loaded: it must not move the seeded generator
            frozen = nn.Sequential(build_frozen_trunk(spec.backbone, spec.weights, spec.cut), HalfPrecisionMaps())
    return Network(spec, frozen, top)


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
