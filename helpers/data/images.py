"""Decoding images once into RAM, and serving them through a transform.

Images are decoded into uint8 tensors (:func:`read_images`, :class:`ImageDataset`),
so training never waits on the disk; the transforms
(:mod:`helpers.data.transforms`) then work on those tensors.
"""
from __future__ import annotations

import os
import struct
import warnings
import zlib
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageOps
from torchvision.transforms.v2 import functional as TF

from ..progress import bar as tqdm
from .release import _SHOW, ImageList


class UnreadableImageWarning(UserWarning):
    """Some image files could not be decoded and were skipped."""


# ----------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------


def _high_depth_to_l(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer or float greyscale to 8-bit ``L``.

    16-bit values (and ``I`` images whose maximum exceeds 255) are scaled by
    255/65535; float images whose maximum is at most 1 are taken as [0, 1].
    """
    values = np.asarray(image).astype(np.float64)
    top = float(values.max()) if values.size else 0.0
    if image.mode.startswith("I;16") or (image.mode == "I" and top > 255):
        values = values / 257.0
    elif image.mode == "F" and top <= 1.0:
        values = values * 255.0
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a PIL image of any mode to RGB.

    Transparent images (``LA``,
    ``RGBA``, ``PA``, and ``P`` with a transparency entry) are composited on
    white; 16-bit and float greyscale are scaled to 8 bits; ``L``, ``1``,
    ``P``, ``CMYK`` and ``YCbCr`` go through Pillow's own conversion.
    """
    if image.mode == "RGB":
        return image
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif image.mode.startswith("I") or image.mode == "F":
        image = _high_depth_to_l(image)
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def load_rgb(path, max_side: int | None = None) -> Image.Image:
    """Open an image file fully decoded as RGB, upright per its EXIF orientation.

    Any mode comes back RGB (see
    :func:`to_rgb`). With ``max_side``, the longest side is shrunk to at most
    ``max_side`` pixels (aspect kept; JPEGs are decoded at reduced scale
    first when that is lossless for the result). Unreadable or truncated
    files raise the decoder's error (an ``OSError``, mostly).
    """
    with Image.open(path) as image:
        if max_side is not None:
            image.draft(None, (max_side, max_side))
        image.load()
        image = ImageOps.exif_transpose(image)
        image = to_rgb(image)
    if max_side is not None and max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    return image


_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error,
                  Image.DecompressionBombError)


def _decode(path: Path, max_side: int | None) -> torch.Tensor | str:
    """A uint8 CHW tensor, or the reason the file could not be decoded."""
    try:
        return TF.pil_to_tensor(load_rgb(path, max_side))
    except _DECODE_ERRORS as error:
        return f"{type(error).__name__}: {error}"


def _warn_unreadable(failures: list[tuple[Path, str]], total: int) -> None:
    """One warning that counts the skipped files and names the first few."""
    shown = "; ".join(f"{path} ({reason})" for path, reason in failures[:_SHOW])
    more = f"; and {len(failures) - _SHOW} more" if len(failures) > _SHOW else ""
    warnings.warn(f"skipped {len(failures)} unreadable image(s) of {total}: {shown}{more}",
                  UnreadableImageWarning, stacklevel=3)


def read_images(paths, max_side: int | None = None, progress: bool = True,
                workers: int | None = None) -> tuple[list[torch.Tensor], np.ndarray]:
    """Decode every image into a uint8 CHW tensor; skip unreadable files with one warning.

    The longest side of an image
    larger than ``max_side`` is shrunk to ``max_side`` (aspect kept). Files
    that fail to decode (truncated, corrupt, not an image) are left out and
    reported in a single :class:`UnreadableImageWarning` that counts them.
    Decoding runs on ``workers`` threads (default: up to 8, one per core).
    Returns ``(tensors, kept_indices)`` where ``kept_indices`` are the
    positions in ``paths`` of the decoded images.
    """
    paths = [Path(p) for p in paths]
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(tqdm(pool.map(lambda p: _decode(p, max_side), paths), total=len(paths),
                            desc="decoding images", unit="img", disable=not progress))
    kept = np.asarray([i for i, r in enumerate(results) if isinstance(r, torch.Tensor)], dtype=np.int64)
    failures = [(paths[i], r) for i, r in enumerate(results) if isinstance(r, str)]
    if failures:
        _warn_unreadable(failures, len(paths))
    return [results[i] for i in kept], kept


# ----------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------


class ImageDataset(torch.utils.data.Dataset):
    """Images decoded once into RAM (uint8), served through a transform.

    Accepts an :class:`ImageList` or a
    list of paths (with optional ``labels``; -1 when absent). Every image is
    decoded at construction by :func:`read_images`, shrunk so its longest side
    is at most ``max_side`` (default: the transform's ``canvas_size``);
    unreadable files are dropped with one warning. Exposes ``paths``,
    ``labels`` and ``images`` after dropping, and ``kept_indices`` into the
    original list. ``dataset[i]`` is ``(transform(image) as float tensor, int label)``;
    without a transform the image is scaled to float in [0, 1].
    """

    def __init__(self, images, labels=None, transform=None, max_side: int | None = None,
                 progress: bool = True):
        if isinstance(images, ImageList):
            if labels is not None:
                raise ValueError("pass labels only with a list of paths; an ImageList carries its own")
            paths, labels, self.classes = images.paths, images.labels, list(images.classes)
        else:
            paths = [Path(p) for p in images]
            labels = np.full(len(paths), -1, dtype=np.int64) if labels is None else np.asarray(labels)
            self.classes = None
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(labels) != len(paths):
            raise ValueError(f"got {len(paths)} images but {len(labels)} labels")
        self.transform = transform
        max_side = max_side or getattr(transform, "canvas_size", None)
        self.images, self.kept_indices = read_images(paths, max_side=max_side, progress=progress)
        self.paths = [paths[i] for i in self.kept_indices]
        self.labels = labels[self.kept_indices]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.transform is None:
            return TF.to_dtype(image, torch.float32, scale=True), int(self.labels[index])
        return self.transform(image), int(self.labels[index])

    def with_transform(self, transform) -> "ImageDataset":
        """A view of the same decoded images through another transform (no decoding, no copy).

        One decoded set serves training and evaluation.
        """
        view = object.__new__(ImageDataset)
        view.__dict__.update(self.__dict__)
        view.transform = transform
        return view


_DECODED: "OrderedDict[tuple, ImageDataset]" = OrderedDict()
DECODED_CACHE_SIZE = 8
"""How many decoded image sets :func:`decoded_dataset` keeps in memory."""


def decoded_dataset(paths, labels, transform, progress: bool = True) -> ImageDataset:
    """An :class:`ImageDataset` of ``paths`` through ``transform``, decoding each set once per process.

    Decoding takes seconds, so the last :data:`DECODED_CACHE_SIZE` decoded
    sets are memoised by ``(paths, labels, transform.canvas_size)``; a second
    call with another transform of the same canvas reuses the decoded images
    (:meth:`ImageDataset.with_transform` copies nothing).
    """
    max_side = int(transform.canvas_size)
    key = (tuple(str(p) for p in paths), tuple(int(v) for v in np.asarray(labels).reshape(-1)), max_side)
    if key in _DECODED:
        _DECODED.move_to_end(key)
    else:
        _DECODED[key] = ImageDataset([Path(p) for p in paths], labels=np.asarray(labels),
                                     max_side=max_side, progress=progress)
        while len(_DECODED) > DECODED_CACHE_SIZE:
            _DECODED.popitem(last=False)
    return _DECODED[key].with_transform(transform)


def eval_dataset(paths, labels, transform, progress: bool = True) -> ImageDataset:
    """Images through an evaluation ``transform``, decoded once per process (:func:`decoded_dataset`).

    Unreadable images would shift the ground-truth positions, so they raise
    here instead of being skipped.
    """
    dataset = decoded_dataset(list(paths), np.asarray(labels), transform, progress)
    if len(dataset) != len(paths):
        raise ValueError(f"{len(paths) - len(dataset)} image(s) could not be decoded; evaluation needs "
                         "every one of them (see the warning that lists them)")
    return dataset


def image_sizes(paths) -> pd.DataFrame:
    """Width and height of every image, read from the file headers only (no decoding).

    Unreadable files get NaN.
    """
    rows = []
    for path in paths:
        try:
            with Image.open(path) as image:
                rows.append(image.size)
        except (OSError, ValueError):
            rows.append((np.nan, np.nan))
    return pd.DataFrame(rows, columns=["width", "height"], index=[str(p) for p in paths])
