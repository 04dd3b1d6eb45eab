"""The data: the Firearm 14k release, decoded images, the paper's transforms, pair and triplet samplers.

One concept per module, all offered here as ``data.<name>``:

* :mod:`.release`: the release layout and its loader (:func:`load_firearm_release`,
  :func:`load_active_release`), :class:`ImageList`, :class:`RetrievalSplit`,
  :class:`FirearmRelease`;
* :mod:`.images`: decoding once into RAM (:class:`ImageDataset`, :func:`eval_dataset`);
* :mod:`.transforms`: :func:`train_transform` and :func:`eval_transform`;
* :mod:`.samplers`: :class:`PairSampler` and :class:`TripletSampler`.
"""
from ..synthetic import make_synthetic_release
from .images import (DECODED_CACHE_SIZE, ImageDataset, UnreadableImageWarning, decoded_dataset, eval_dataset,
                     image_sizes, load_rgb, read_images, to_rgb)
from .release import (DatasetLayoutError, FirearmRelease, ImageList, RetrievalSplit, find_images,
                      groups_from_ground_truth, load_active_release, load_firearm_release, split_train_val)
from .samplers import PairSampler, TripletSampler
from .transforms import (CanvasCompose, ContrastSaturationJitter, PadToCanvas, RandomLongestSide, eval_transform,
                         train_transform)

__all__ = ["CanvasCompose", "ContrastSaturationJitter", "DECODED_CACHE_SIZE", "DatasetLayoutError", "FirearmRelease",
           "ImageDataset", "ImageList", "PadToCanvas", "PairSampler", "RandomLongestSide", "RetrievalSplit",
           "TripletSampler", "UnreadableImageWarning", "decoded_dataset", "eval_dataset", "eval_transform",
           "find_images", "groups_from_ground_truth", "image_sizes", "load_active_release", "load_firearm_release",
           "load_rgb", "make_synthetic_release", "read_images", "split_train_val", "to_rgb", "train_transform"]
