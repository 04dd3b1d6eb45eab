"""The one registry of the metric-learning methods compared in the series.

A :class:`Method` says everything that differs between the three losses:
its short name (``single``, ``double``, ``triplet``), its display label, its
colour in every figure, which profile fields hold its margins, how many
images one training tuple holds (2 for a pair, 3 for a triplet), its loss and
its loss-against-distance curves. Training, plots and notebooks look the
methods up in :data:`METHODS` (:func:`get`) rather than branching on names.

>>> [m.name for m in METHODS.values()]
['single', 'double', 'triplet']
>>> from helpers import config
>>> get("double").margins(config.PROFILES["paper"])
{'pos_margin': 0.8, 'neg_margin': 1.2}
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from typing import Callable

from . import losses

NEUTRAL_COLOUR = "#666666"
"""Colour of anything that is not one of the methods (a classifier, an untrained network)."""


@dataclass(frozen=True)
class Method:
    """One loss of the comparison.

    ``margin_fields`` maps each keyword margin of the loss to the
    :class:`~helpers.config.Profile` field that holds its value. ``loss`` is
    the plain function of :mod:`helpers.losses` (pairs: ``loss(x1, x2, y,
    **margins, reduction=...)``; triplets: ``loss(anchor, positive, negative,
    **margins, reduction=...)``), and ``curves`` its loss and gradient against
    distance in NumPy.
    """

    name: str
    label: str
    colour: str
    margin_fields: dict
    tuple_size: int
    loss: Callable
    curves: Callable

    @property
    def is_pair_loss(self) -> bool:
        """True for the contrastive losses (pairs with a target ``y``), False for the triplet loss."""
        return self.tuple_size == 2

    def margins(self, profile) -> dict:
        """The loss's keyword margins read from a resolved profile, e.g. ``{"margin": 1.2}``."""
        return {keyword: getattr(profile, field) for keyword, field in self.margin_fields.items()}

    def distance_margins(self, profile) -> dict:
        """Margins that are distances, keyed by symbol, for lines on distance plots: ``{"m1": 0.8, "m2": 1.2}``.

        The triplet margin is a gap between two distances, not a distance, so
        it has none.
        """
        if not self.is_pair_loss:
            return {}
        symbols = {"margin": "m", "pos_margin": "m1", "neg_margin": "m2"}
        return {symbols[k]: v for k, v in self.margins(profile).items()}

    def per_item_loss(self, margins: dict) -> Callable:
        """The loss with ``margins`` bound and ``reduction="none"``: one term per pair or triplet."""
        return partial(self.loss, **margins, reduction="none")

    def describe_margins(self, margins: dict) -> str:
        """Margins as a short label: ``"m = 1.2"`` or ``"m1 = 0.8, m2 = 1.2"``."""
        symbols = {"margin": "m", "pos_margin": "m1", "neg_margin": "m2"}
        return ", ".join(f"{symbols[k]} = {v:g}" for k, v in margins.items())


METHODS: dict[str, Method] = {method.name: method for method in (
    Method(name="single", label="single margin contrastive", colour="#7570b3",
           margin_fields={"margin": "single_margin"}, tuple_size=2,
           loss=losses.contrastive_loss, curves=losses.contrastive_curves),
    Method(name="double", label="double margin contrastive", colour="#1b9e77",
           margin_fields={"pos_margin": "pos_margin", "neg_margin": "neg_margin"}, tuple_size=2,
           loss=losses.double_margin_contrastive_loss, curves=losses.double_margin_curves),
    Method(name="triplet", label="triplet", colour="#e7298a",
           margin_fields={"margin": "triplet_margin"}, tuple_size=3,
           loss=losses.triplet_loss, curves=losses.triplet_curves),
)}
"""Every method, in the order tables and figures list them."""

NAMES = tuple(METHODS)
"""The method names: ``("single", "double", "triplet")``."""


def get(name) -> Method:
    """The :class:`Method` called ``name`` (a Method passes through); a clear error otherwise."""
    if isinstance(name, Method):
        return name
    if name not in METHODS:
        raise ValueError(f"unknown loss {name!r}; expected one of {list(METHODS)}")
    return METHODS[name]


def find(label: str) -> Method | None:
    """The method a run label starts with, or ``None``.

    ``"single, two-stage"``, ``"double (classifier init)"`` and ``"triplet"``
    all name a method by their first word; ``"stage-1 features only"`` names none.
    """
    first = re.match(r"[A-Za-z]+", str(label).strip())
    return METHODS.get(first.group(0).lower()) if first else None


def colour_of(label: str, default: str = NEUTRAL_COLOUR) -> str:
    """The colour of the method a label names (see :func:`find`), else ``default``."""
    method = find(label)
    return method.colour if method is not None else default
