"""The paper's transforms on decoded uint8 images: random resizing, flips, rotation, jitter, padding to a canvas."""
from __future__ import annotations

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF


# ----------------------------------------------------------------------------------------------
# Transforms
# ----------------------------------------------------------------------------------------------


class RandomLongestSide(torch.nn.Module):
    """Resize so the longest side is a random integer in ``[low, high]`` (aspect kept).

    Draws from torch's generator, so :func:`config.seed_everything`
    makes it repeatable and DataLoader workers get different draws.
    """

    def __init__(self, low: int, high: int):
        super().__init__()
        if not 0 < low <= high:
            raise ValueError(f"RandomLongestSide needs 0 < low <= high; got low={low}, high={high}")
        self.low, self.high = int(low), int(high)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        side = int(torch.randint(self.low, self.high + 1, ()).item())
        return TF.resize(image, size=None, max_size=side, antialias=True)


class PadToCanvas(torch.nn.Module):
    """Zero-pad a CHW tensor, centred, to a fixed ``size`` x ``size`` canvas.

    The paper fed one image at a time at
    its own size; padding to a fixed canvas lets images of different aspect
    ratios stack into batches. Applied after normalisation, the padding is 0,
    the dataset mean, which max pooling (MAC) over ReLU features mostly ignores.
    """

    def __init__(self, size: int):
        super().__init__()
        self.size = int(size)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        if height > self.size or width > self.size:
            raise ValueError(f"image of {height}x{width} pixels does not fit a "
                             f"{self.size}x{self.size} canvas")
        top, left = (self.size - height) // 2, (self.size - width) // 2
        return torch.nn.functional.pad(image, (left, self.size - width - left, top, self.size - height - top))


class ContrastSaturationJitter(torch.nn.Module):
    """Random contrast and saturation factors in ``[1 - strength, 1 + strength]``, applied in random order.

    The same operation as
    ``v2.ColorJitter(contrast=strength, saturation=strength)`` on float images,
    built on torchvision's ``adjust_contrast`` / ``adjust_saturation``; calling
    them directly halves the per-image cost on small images, where the v2
    class's bookkeeping dominates.
    """

    def __init__(self, strength: float = 0.5):
        super().__init__()
        if not 0.0 <= strength < 1.0:
            raise ValueError(f"jitter strength={strength!r}; expected a number in [0, 1)")
        self.strength = float(strength)

    def draw(self) -> tuple[float, float, bool]:
        """Random ``(contrast, saturation, contrast_first)`` from torch's RNG."""
        contrast, saturation = torch.empty(2).uniform_(1 - self.strength, 1 + self.strength).tolist()
        return contrast, saturation, bool(torch.rand(()) < 0.5)

    @staticmethod
    def apply(image: torch.Tensor, contrast: float, saturation: float, contrast_first: bool) -> torch.Tensor:
        """Adjust contrast and saturation of an RGB image by the given factors, in the given order."""
        if contrast_first:
            return TF.adjust_saturation(TF.adjust_contrast(image, contrast), saturation)
        return TF.adjust_contrast(TF.adjust_saturation(image, saturation), contrast)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.apply(image, *self.draw())


class CanvasCompose(v2.Compose):
    """A ``v2.Compose`` whose output is always ``canvas_size`` x ``canvas_size``.

    :class:`ImageDataset` reads
    ``canvas_size`` to decide how large to keep the decoded images.
    """

    def __init__(self, transforms, canvas_size: int):
        super().__init__(transforms)
        self.canvas_size = int(canvas_size)


def train_transform(size_range: tuple[int, int], mean, std) -> CanvasCompose:
    """The paper's training augmentation (uint8 CHW -> float CHW).

    Longest side resized at random into ``size_range`` (paper: 256-384),
    horizontal flip, rotation within +-5 degrees, contrast and saturation
    jitter of 0.5, normalisation with the backbone's ``mean`` and ``std``
    (:func:`helpers.models.input_normalization`), then zero padding (centred)
    to a square canvas of side ``size_range[1]``. The rotation runs after
    normalisation, so the corners it brings in are 0 (the mean colour) like
    the padding, and the jitter never touches them.
    """
    low, high = size_range
    return CanvasCompose([
        RandomLongestSide(low, high),
        v2.ToDtype(torch.float32, scale=True),
        v2.RandomHorizontalFlip(),
        ContrastSaturationJitter(0.5),
        v2.Normalize(mean, std),
        v2.RandomRotation(5, interpolation=v2.InterpolationMode.BILINEAR, fill=None),
        PadToCanvas(high),
    ], canvas_size=high)


def eval_transform(size: int, mean, std) -> CanvasCompose:
    """The paper's evaluation transform: longest side to ``size``, no crop. Deterministic.

    Resizes (up or down) so the longest side is ``size``, normalises with
    the backbone's ``mean`` and ``std`` and zero-pads (centred) to ``size``
    x ``size``.
    """
    return CanvasCompose([
        v2.Resize(size=None, max_size=size, antialias=True),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean, std),
        PadToCanvas(size),
    ], canvas_size=size)
