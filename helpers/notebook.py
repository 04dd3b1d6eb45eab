"""The first cell of every notebook: :func:`setup`.

It resolves the profile, seeds every random generator, sets the plot style,
prints the versions and the device, and returns what the notebook needs.
"""
from __future__ import annotations

import platform
import re
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
    profile = config.get_profile(None, **overrides)
    config.seed_everything(seed)
    plots.set_style()
    device = config.get_device()
    described = " | ".join(f"{name} {version}" for name, version in versions().items())
    print(f"profile: {profile.name} | seed: {seed} | device: {device.type} | {described}")
    return Session(profile=profile, seed=seed, device=device)


CURSOR_UP = "\x1b[A"
"""The escape sequence nested tqdm bars use to go back to the line above."""


def collapse_carriage_returns(text: str) -> str:
    """What a terminal shows after printing ``text``: each line's last state, cleared lines dropped.

    Text progress bars redraw their line with ``\\r``, and nested bars move
    between lines with ``\\n`` and the cursor-up escape. Replaying the text
    on a small model of a terminal leaves every bar finished; a bar that
    cleared itself on closing (``leave=False``) leaves nothing.
    """
    lines, row, column = [""], 0, 0
    for piece in re.split(r"(\r|\n|\x1b\[A)", text):
        if piece == "\n":
            row, column = row + 1, 0
            if row == len(lines):
                lines.append("")
        elif piece == "\r":
            column = 0
        elif piece == CURSOR_UP:
            row = max(0, row - 1)
        elif piece:
            line = lines[row].ljust(column)
            lines[row] = line[:column] + piece + line[column + len(piece):]
            column += len(piece)
    ends_with_newline = text.endswith("\n")
    kept = [line.rstrip() for line in (lines[:-1] if ends_with_newline else lines)]
    kept = [line for line in kept if line]
    return "\n".join(kept) + ("\n" if kept and ends_with_newline else "")


def _merged_streams(outputs: list) -> list:
    """The outputs with each run of consecutive stream outputs of one name joined into one."""
    merged = []
    for output in outputs:
        previous = merged[-1] if merged else None
        if (output.get("output_type") == "stream" and previous is not None
                and previous.get("output_type") == "stream" and previous["name"] == output["name"]):
            previous["text"] = _text(previous) + _text(output)
        else:
            merged.append(dict(output))
    return merged


def _text(output: dict) -> str:
    return "".join(output["text"]) if isinstance(output["text"], list) else output["text"]


def finalize(path) -> int:
    """Keep the final state of every progress bar in a saved notebook; returns the outputs changed.

    Consecutive stream outputs of a cell are joined, then every line keeps
    only its last redraw (:func:`collapse_carriage_returns`), as Jupyter
    shows it.
    """
    import json
    from pathlib import Path

    path = Path(path)
    book = json.loads(path.read_text(encoding="utf-8"))
    changed = 0
    for cell in book.get("cells", []):
        if "outputs" not in cell:
            continue
        outputs = _merged_streams(cell["outputs"])
        for output in outputs:
            if output.get("output_type") == "stream":
                text = _text(output)
                collapsed = collapse_carriage_returns(text)
                output["text"] = collapsed.splitlines(keepends=True)
                changed += collapsed != text
        changed += len(outputs) != len(cell["outputs"])
        cell["outputs"] = [o for o in outputs if o.get("output_type") != "stream" or _text(o)]
    if changed:
        path.write_text(json.dumps(book, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return changed


if __name__ == "__main__":
    import sys

    for name in sys.argv[1:]:
        print(f"{name}: {finalize(name)} output(s) with redrawn lines collapsed")
