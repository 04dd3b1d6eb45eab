"""make run stores a large figure with a 256-colour palette: smaller, the same size in pixels, nearly the same image."""
from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nbformat  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from helpers.machinery import finish  # noqa: E402


def _figure_png() -> str:
    fig, ax = plt.subplots(figsize=(8, 5))
    x = np.linspace(0, 10, 500)
    for k in range(6):
        ax.plot(x, np.sin(x + k), label=f"line {k}")
    ax.imshow(np.random.default_rng(0).random((40, 60, 3)), extent=(0, 10, -1, 1), aspect="auto", alpha=0.5)
    ax.legend()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=144)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _pixels(encoded: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded))).convert("RGB"), dtype=float)


def test_a_large_figure_is_paletted_smaller_and_the_same_size(tmp_path):
    encoded = _figure_png()
    assert len(encoded) > finish.SHRINK_ABOVE
    small = finish.shrink_png(encoded)
    assert len(small) < len(encoded)
    before, after = _pixels(encoded), _pixels(small)
    assert before.shape == after.shape
    assert np.abs(before - after).mean() < 8          # out of 255: the same picture to the eye
    assert Image.open(io.BytesIO(base64.b64decode(small))).mode == "P"


def test_finalize_shrinks_only_the_large_figures(tmp_path):
    big, tiny = _figure_png(), base64.b64encode(b"\x89PNG not really").decode("ascii")
    book = nbformat.v4.new_notebook()
    book.cells = [nbformat.v4.new_code_cell("plot()", outputs=[
        nbformat.v4.new_output("display_data", data={"image/png": big, "text/plain": "<Figure>"}),
        nbformat.v4.new_output("display_data", data={"image/png": tiny, "text/plain": "<Figure>"})])]
    path = tmp_path / "book.ipynb"
    nbformat.write(book, path)
    assert finish.finalize(path) == 1
    outputs = nbformat.read(path, as_version=4).cells[0].outputs
    assert len(outputs[0].data["image/png"]) < len(big) and outputs[1].data["image/png"] == tiny
    assert finish.finalize(path) == 0                  # a second pass finds nothing left to shrink
