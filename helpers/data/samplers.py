"""Each epoch's pairs and triplets of training images, drawn per category and seeded."""
from __future__ import annotations

import warnings

import numpy as np

from .release import _short_list


# ----------------------------------------------------------------------------------------------
# Samplers
# ----------------------------------------------------------------------------------------------


class _CategoryIndex:
    """Positions of every category's images, for vectorised random draws."""

    def __init__(self, labels):
        labels = np.asarray(getattr(labels, "labels", labels), dtype=np.int64).reshape(-1)
        self.categories, inverse, self.counts = np.unique(labels, return_inverse=True, return_counts=True)
        if len(self.categories) < 2:
            raise ValueError("pair and triplet sampling needs at least 2 categories; "
                             f"got {len(self.categories)}")
        self.order = np.argsort(inverse, kind="stable")
        self.starts = np.cumsum(self.counts) - self.counts

    def member(self, category: np.ndarray, rank: np.ndarray) -> np.ndarray:
        """Image index of the ``rank``-th image of each (internal) ``category``."""
        return self.order[self.starts[category] + rank]

    def draw(self, rng, category: np.ndarray) -> np.ndarray:
        """One random image of each given category."""
        return self.member(category, rng.integers(0, self.counts[category]))

    def draw_distinct_pair(self, rng, category: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Two different random images of each given category (which must hold >= 2 images)."""
        first = rng.integers(0, self.counts[category])
        second = rng.integers(0, self.counts[category] - 1)
        second = second + (second >= first)
        return self.member(category, first), self.member(category, second)

    def draw_other_category(self, rng, category: np.ndarray) -> np.ndarray:
        """A uniformly random category different from each given one."""
        other = rng.integers(0, len(self.categories) - 1, size=len(category))
        return other + (other >= category)

    def singletons(self) -> list[int]:
        """Labels of categories that hold a single image."""
        return self.categories[self.counts < 2].tolist()


def _warn_singletons(singletons: list[int], what: str) -> None:
    """Warn once that categories with one image give no positives."""
    if singletons:
        warnings.warn(f"{len(singletons)} categor{'y has' if len(singletons) == 1 else 'ies have'} a "
                      f"single image and give no {what}: labels {_short_list(singletons)}",
                      UserWarning, stacklevel=3)


def _epoch_rng(seed: int, epoch: int, regenerate_every: int) -> np.random.Generator:
    """The generator of the regeneration block that ``epoch`` falls in."""
    if epoch < 0:
        raise ValueError(f"epoch={epoch}; expected a non-negative epoch number")
    return np.random.default_rng([int(seed), epoch // regenerate_every])


class PairSampler:
    """The paper's balanced random pairs, redrawn every ``regenerate_every`` epochs.

    For every category, each epoch holds
    ``pairs_per_category`` pairs: half positive (two different images of the
    category) and half negative (an image of the category and an image of
    another category drawn uniformly, then an image drawn uniformly within
    it); an odd count gives the extra pair to the negatives. Categories with
    one image give no positives (one warning at construction). Epochs in the
    same block of ``regenerate_every`` return identical pairs, seeded by
    ``(seed, epoch // regenerate_every)``.
    """

    def __init__(self, labels, pairs_per_category: int, regenerate_every: int = 1, seed: int = 0):
        if pairs_per_category < 1 or regenerate_every < 1:
            raise ValueError(f"pairs_per_category={pairs_per_category} and regenerate_every="
                             f"{regenerate_every} must both be >= 1")
        self.index = _CategoryIndex(labels)
        self.pairs_per_category = int(pairs_per_category)
        self.regenerate_every = int(regenerate_every)
        self.seed = int(seed)
        _warn_singletons(self.index.singletons(), "positive pairs")

    def __len__(self) -> int:
        n_pos = self.pairs_per_category // 2
        n_neg = self.pairs_per_category - n_pos
        return int(n_pos * np.sum(self.index.counts >= 2) + n_neg * len(self.index.categories))

    def pairs(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(i, j, y)`` int64 arrays for ``epoch``, shuffled; ``y = 1`` for a same-category pair."""
        rng = _epoch_rng(self.seed, epoch, self.regenerate_every)
        index, n_pos = self.index, self.pairs_per_category // 2
        n_neg = self.pairs_per_category - n_pos
        all_categories = np.arange(len(index.categories))
        pos_category = np.repeat(all_categories[index.counts >= 2], n_pos)
        pos_i, pos_j = index.draw_distinct_pair(rng, pos_category)
        neg_category = np.repeat(all_categories, n_neg)
        neg_i = index.draw(rng, neg_category)
        neg_j = index.draw(rng, index.draw_other_category(rng, neg_category))
        i = np.concatenate([pos_i, neg_i])
        j = np.concatenate([pos_j, neg_j])
        y = np.concatenate([np.ones(len(pos_i), np.int64), np.zeros(len(neg_i), np.int64)])
        order = rng.permutation(len(i))
        return i[order], j[order], y[order]


class TripletSampler:
    """Random triplets (anchor, positive, negative), redrawn every ``regenerate_every`` epochs.

    For the triplet-loss baseline. Every
    category with at least two images gives ``triplets_per_category``
    triplets per epoch: two different images of the category and one image of
    another category drawn at random. Categories with one image give none
    (one warning). Seeded like :class:`PairSampler`.
    """

    def __init__(self, labels, triplets_per_category: int, regenerate_every: int = 1, seed: int = 0):
        if triplets_per_category < 1 or regenerate_every < 1:
            raise ValueError(f"triplets_per_category={triplets_per_category} and regenerate_every="
                             f"{regenerate_every} must both be >= 1")
        self.index = _CategoryIndex(labels)
        self.triplets_per_category = int(triplets_per_category)
        self.regenerate_every = int(regenerate_every)
        self.seed = int(seed)
        _warn_singletons(self.index.singletons(), "triplets")

    def __len__(self) -> int:
        return int(self.triplets_per_category * np.sum(self.index.counts >= 2))

    def triplets(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(anchor, positive, negative)`` int64 index arrays for ``epoch``, shuffled."""
        rng = _epoch_rng(self.seed, epoch, self.regenerate_every)
        index = self.index
        category = np.repeat(np.flatnonzero(index.counts >= 2), self.triplets_per_category)
        anchor, positive = index.draw_distinct_pair(rng, category)
        negative = index.draw(rng, index.draw_other_category(rng, category))
        order = rng.permutation(len(anchor))
        return anchor[order], positive[order], negative[order]
