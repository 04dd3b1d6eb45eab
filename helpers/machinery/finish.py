"""Saving an executed notebook as a reader sees it: every progress bar in its final state, figures kept small.

Usage: ``python -m helpers.machinery.finish notebooks/*.ipynb`` (``make run`` does it after executing them).

Text progress bars (:mod:`helpers.progress`) redraw their line with ``\\r``,
and a headless run saves every redraw. :func:`finalize` joins each cell's
consecutive stream outputs (nbconvert's ``CoalesceStreamsPreprocessor``) and
keeps the final state of every line (:func:`collapse_carriage_returns`), as
Jupyter shows it. Figures are drawn at twice the screen resolution
(:func:`helpers.plots.set_style`); a large one is stored with a palette of
256 colours (:func:`shrink_png`), which keeps a notebook near 1 MB.
"""
from __future__ import annotations

import base64
import io
import re
import sys

import nbformat
from nbconvert.preprocessors import CoalesceStreamsPreprocessor

CURSOR_UP = "\x1b[A"
"""The escape sequence nested tqdm bars use to go back to the line above."""
_HIDDEN_CR = "\x00"
"""Stands in for ``\\r`` while nbconvert joins the streams. Its own handling of carriage returns keeps the
text after a line's last ``\\r``, which drops the lines nested bars reach with :data:`CURSOR_UP`."""


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


def _streams(outputs) -> list:
    return [output for output in outputs if output.output_type == "stream"]


def _finish_cell(cell, index: int) -> int:
    """Join the cell's consecutive streams and keep the last state of their lines; returns the changes made."""
    before = len(cell.outputs)
    for output in _streams(cell.outputs):
        output.text = output.text.replace("\r", _HIDDEN_CR)
    CoalesceStreamsPreprocessor().preprocess_cell(cell, {}, index)
    changed = int(len(cell.outputs) != before)
    for output in _streams(cell.outputs):
        joined = output.text.replace(_HIDDEN_CR, "\r")
        output.text = collapse_carriage_returns(joined)
        changed += output.text != joined
    cell.outputs = [output for output in cell.outputs if output.output_type != "stream" or output.text]
    return changed


SHRINK_ABOVE = 100_000
"""Figures whose base64 PNG is larger than this many characters are stored with a 256-colour palette."""


def shrink_png(encoded: str) -> str:
    """A base64 PNG re-encoded with an adaptive palette of 256 colours, when that is smaller; else ``encoded``.

    Charts hold few colours and lose nothing visible; photographs in a
    gallery are dithered. The pixel size is kept, so a figure drawn at 2x
    stays sharp.
    """
    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(encoded)))
    rgba = image.convert("RGBA")
    method = Image.Quantize.FASTOCTREE
    paletted = rgba.quantize(colors=256, method=method) if rgba.getextrema()[3][0] < 255 else \
        rgba.convert("RGB").quantize(colors=256, method=method)
    buffer = io.BytesIO()
    paletted.save(buffer, format="PNG", optimize=True)
    smaller = base64.b64encode(buffer.getvalue()).decode("ascii")
    return smaller if len(smaller) < len(encoded) else encoded


def _shrink_cell(cell) -> int:
    """Shrink the cell's large PNG figures (:func:`shrink_png`); returns how many changed."""
    changed = 0
    for output in cell.outputs:
        encoded = output.get("data", {}).get("image/png")
        if isinstance(encoded, str) and len(encoded) > SHRINK_ABOVE:
            smaller = shrink_png(encoded.replace("\n", ""))
            if smaller != encoded:
                output["data"]["image/png"] = smaller
                changed += 1
    return changed


def finalize(path) -> int:
    """Keep the final state of every progress bar and shrink the large figures; returns the outputs changed."""
    book = nbformat.read(path, as_version=4)
    changed = sum(_finish_cell(cell, index) + _shrink_cell(cell)
                  for index, cell in enumerate(book.cells) if cell.cell_type == "code")
    if changed:
        nbformat.write(book, path)
    return changed


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(f"{name}: {finalize(name)} output(s) with redrawn lines collapsed or figures shrunk")
