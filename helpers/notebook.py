"""The first cell of every notebook: :func:`setup`.

It resolves the profile (one of the edges that read ``FIREARM_PROFILE``,
through :func:`helpers.config.active_profile`), seeds every random
generator, sets the plot style, prints the versions and the device, and
returns what the notebook needs.
"""
from __future__ import annotations

import platform
from dataclasses import dataclass

import torch

from . import config, plots


@dataclass(frozen=True)
class Session:
    """What :func:`setup` hands a notebook: the resolved profile, the seed and the device."""

    profile: config.Profile
    seed: int
    device: torch.device


def versions() -> dict:
    """Versions of Python and of the libraries the series leans on."""
    import numpy
    import pandas
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": numpy.__version__, "pandas": pandas.__version__}


def setup(seed: int = config.DEFAULT_SEED, **overrides) -> Session:
    """Resolve the profile (``FIREARM_PROFILE``, plus ``overrides``), seed, style the plots, print versions.

    Prints one line such as ``profile: tutorial | seed: 0 | device: cpu |
    python 3.11.7 | torch ...`` and returns a :class:`Session`.
    """
    profile = config.active_profile(**overrides)
    config.seed_everything(seed)
    plots.set_style()
    device = config.get_device()
    described = " | ".join(f"{name} {version}" for name, version in versions().items())
    print(f"profile: {profile.name} | seed: {seed} | device: {device.type} | {described}")
    return Session(profile=profile, seed=seed, device=device)
