"""Figures for the notebooks: one function per kind of figure, plus ``save_fig``.

Every function returns the matplotlib Figure (or draws on a given Axes) so the
notebooks can tweak titles; every figure carries a title, axis labels and, where
several series are drawn, a legend.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from . import config, loss_analysis, methods

POSITIVE_COLOUR = "#1b9e77"
NEGATIVE_COLOUR = "#d95f02"
HIT_COLOUR = "#1a9850"
MISS_COLOUR = "#d73027"


def set_style() -> None:
    """Apply the series' plotting style (seaborn whitegrid, readable font sizes)."""
    sns.set_theme(context="notebook", style="whitegrid", palette="deep")
    plt.rcParams.update({"figure.dpi": 72, "axes.titleweight": "bold",
                         "figure.autolayout": False})


def save_fig(fig, name: str, folder: Path | None = None, dpi: int = 100) -> Path:
    """Save ``fig`` as ``<folder>/<name>.png`` (default folder: ``figures/`` at the repo root).

    Returns the path written.
    """
    folder = Path(folder) if folder is not None else config.FIGURES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def _as_array(image) -> np.ndarray:
    """A displayable HxWx3 array from a path, a PIL image, a uint8 CHW tensor or an array."""
    if isinstance(image, (str, Path)):
        from .data import load_rgb

        return np.asarray(load_rgb(image))
    if hasattr(image, "detach"):  # torch tensor, CHW
        array = image.detach().cpu().numpy()
        return np.transpose(array, (1, 2, 0)) if array.ndim == 3 else array
    return np.asarray(image)


def _frame(ax, colour: str, width: float = 4.0) -> None:
    """Draw a coloured frame around an image axes (hits and misses in galleries)."""
    for spine in ax.spines.values():
        spine.set_visible(True)
        spine.set_edgecolor(colour)
        spine.set_linewidth(width)


def image_grid(images: Sequence, titles: Sequence[str] | None = None, ncols: int = 8,
               size: float = 1.6, suptitle: str | None = None, frames: Sequence[str | None] | None = None):
    """Show images (paths, PIL images or arrays) in a grid with optional titles and coloured frames."""
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + 0.5), squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.grid(False)
    for i, image in enumerate(images):
        ax = axes.ravel()[i]
        ax.imshow(_as_array(image), interpolation="nearest")
        if titles is not None:
            ax.set_title(titles[i], fontsize=8, fontweight="normal")
        if frames is not None and frames[i]:
            _frame(ax, frames[i])
    if suptitle:
        fig.suptitle(suptitle, fontweight="bold")
    fig.tight_layout()
    return fig


def class_count_plot(counts: pd.Series, title: str = "Images per category", ax=None, hue=None):
    """Bar plot of images per category, sorted descending, to show the long tail.

    ``hue`` (a Series aligned with
    ``counts``) colours the bars, e.g. by family.
    """
    counts = counts.sort_values(ascending=False)
    if ax is None:
        fig, ax = plt.subplots(figsize=(11, 3.6))
    else:
        fig = ax.figure
    frame = pd.DataFrame({"rank": np.arange(len(counts)), "images": counts.to_numpy()})
    if hue is not None:
        frame["group"] = hue.reindex(counts.index).to_numpy()
        sns.barplot(data=frame, x="rank", y="images", hue="group", dodge=False, ax=ax, width=1.0)
        ax.legend(title=hue.name or "group", ncols=2, fontsize=8, loc="upper right")
    else:
        sns.barplot(data=frame, x="rank", y="images", ax=ax, width=1.0, color="#4c72b0")
    ax.set_xticks([])
    ax.set_xlabel(f"category, sorted by count ({len(counts)} categories)")
    ax.set_ylabel("images")
    ax.set_title(title)
    return fig


def loss_curves(histories: Mapping[str, pd.DataFrame], column: str = "loss", window: int = 10,
                ax=None, ylabel: str | None = None, title: str | None = None):
    """Per-iteration curves of ``column`` for several runs, smoothed by a rolling mean.

    The raw values are drawn faintly
    behind the smoothed line.
    """
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 4))
    else:
        fig = ax.figure
    for name, history in histories.items():
        x = np.arange(len(history))
        y = history[column].to_numpy(dtype=float)
        colour = methods.colour_of(name, default=None)
        line, = ax.plot(x, pd.Series(y).rolling(window, min_periods=1).mean(), label=name, color=colour)
        ax.plot(x, y, color=line.get_color(), alpha=0.2, linewidth=0.8)
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel or column)
    ax.set_title(title or f"{column} during training")
    ax.legend()
    return fig


def loss_share_plot(history: pd.DataFrame, window: int = 10, ax=None, title: str | None = None):
    """Stacked share of the loss coming from positive and from negative pairs, per iteration.

    The paper's imbalance argument: :func:`helpers.loss_analysis.positive_share`
    of the losses averaged over the last ``window`` iterations.
    """
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 3.6))
    else:
        fig = ax.figure
    smoothed = history[["pos_loss", "neg_loss"]].rolling(window, min_periods=1).mean()
    share = loss_analysis.positive_share(smoothed["pos_loss"], smoothed["neg_loss"])
    x = np.arange(len(history))
    ax.stackplot(x, share, 1 - share, labels=["positive pairs", "negative pairs"],
                 colors=[POSITIVE_COLOUR, NEGATIVE_COLOUR], alpha=0.85)
    ax.set_ylim(0, 1)
    ax.set_xlim(0, max(len(history) - 1, 1))
    ax.set_xlabel("iteration")
    ax.set_ylabel("share of the loss")
    ax.set_title(title or "Where the loss comes from")
    ax.legend(loc="lower left", fontsize=8)
    return fig


def distance_histograms(distances: np.ndarray, y: np.ndarray, ax=None, title: str = "Pair distances",
                        margins: Mapping[str, float] | None = None, bins: int = 40):
    """Overlaid histograms of positive and negative pair distances, with margins as vertical lines.

    Distances of unit vectors lie in [0, 2].
    """
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3.6))
    else:
        fig = ax.figure
    distances = np.asarray(distances, dtype=float)
    y = np.asarray(y).astype(bool)
    edges = np.linspace(0, 2, bins + 1)
    ax.hist(distances[y], bins=edges, density=True, alpha=0.6, color=POSITIVE_COLOUR, label="positive pairs")
    ax.hist(distances[~y], bins=edges, density=True, alpha=0.6, color=NEGATIVE_COLOUR, label="negative pairs")
    for name, value in (margins or {}).items():
        ax.axvline(value, color="black", linestyle="--", linewidth=1)
        ax.text(value, ax.get_ylim()[1] * 0.95, f" {name}", fontsize=8, va="top")
    ax.set_xlim(0, 2)
    ax.set_xlabel("Euclidean distance between embeddings")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def embedding_scatter(coords: np.ndarray, labels: Sequence, ax=None, title: str = "",
                      legend: bool = True, s: float = 10, palette: str | None = None,
                      xlabel: str = "dimension 1", ylabel: str = "dimension 2", max_legend: int = 12):
    """Scatter plot of 2-D coordinates coloured by label (category or family).

    With many labels the legend
    is dropped and a note gives the number of labels instead.
    """
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 5))
    else:
        fig = ax.figure
    labels = pd.Series(np.asarray(labels)).astype(str)
    levels = sorted(labels.unique())
    colours = sns.color_palette(palette or ("tab20" if len(levels) > 10 else "tab10"), len(levels))
    for level, colour in zip(levels, colours):
        mask = (labels == level).to_numpy()
        ax.scatter(coords[mask, 0], coords[mask, 1], s=s, color=colour, label=level, alpha=0.8, linewidths=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if legend and len(levels) <= max_legend:
        ax.legend(fontsize=7, markerscale=1.5, loc="best", frameon=True)
    elif legend:
        ax.text(0.01, 0.01, f"{len(levels)} categories", transform=ax.transAxes, fontsize=8)
    return fig


def retrieval_gallery(query_images: Sequence, ranked_images: Sequence[Sequence], relevant: np.ndarray,
                      query_titles: Sequence[str] | None = None, k: int = 8, size: float = 1.1,
                      title: str = "Retrieval results"):
    """One row per query: the query, then its top-k results framed green (hit) or red (miss).

    ``relevant`` is a boolean
    (queries, k) array.
    """
    n = len(query_images)
    fig, axes = plt.subplots(n, k + 1, figsize=(size * (k + 1), size * n + 0.6), squeeze=False)
    for row in range(n):
        for col in range(k + 1):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            if col == 0:
                ax.imshow(_as_array(query_images[row]), interpolation="nearest")
                _frame(ax, "#333333", 3)
                label = query_titles[row] if query_titles is not None else f"query {row}"
                ax.set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
                if row == 0:
                    ax.set_title("query", fontsize=9)
            else:
                ax.imshow(_as_array(ranked_images[row][col - 1]), interpolation="nearest")
                _frame(ax, HIT_COLOUR if relevant[row, col - 1] else MISS_COLOUR)
                if row == 0:
                    ax.set_title(f"#{col}", fontsize=9)
    fig.suptitle(f"{title} (green frame: same category, red: different)", fontweight="bold")
    fig.tight_layout()
    return fig


def metric_bars(table: pd.DataFrame, metric: str, ax=None, title: str | None = None,
                error: str | None = None, chance: float | None = None):
    """Horizontal bars of one metric per method, with optional error bars and a chance line.

    ``error`` names a column of half-widths (e.g. a 95% interval over seeds);
    ``chance`` draws the score of a random ranking as a dotted line.
    """
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.5, 0.5 * len(table) + 1.4))
    else:
        fig = ax.figure
    values = table[metric].to_numpy(dtype=float)
    xerr = table[error].to_numpy(dtype=float) if error else None
    colours = [methods.colour_of(i) for i in table.index]
    ax.barh(np.arange(len(table)), values, xerr=xerr, color=colours, alpha=0.9, capsize=3)
    ax.set_yticks(np.arange(len(table)))
    ax.set_yticklabels(table.index)
    ax.invert_yaxis()
    for i, v in enumerate(values):
        offset = 0 if xerr is None or not np.isfinite(xerr[i]) else xerr[i]
        label = f" {v:.3f}" + (f" ± {xerr[i]:.3f}" if xerr is not None and np.isfinite(xerr[i]) else "")
        ax.text(v + offset, i, label, va="center", fontsize=9)
    if chance is not None:  # labelled above the bars, where it covers nothing
        ax.axvline(chance, color="0.3", linestyle=":", linewidth=1.5)
        ax.set_ylim(len(table) - 0.5, -1.1)
        ax.text(chance, -0.75, f" random ranking {chance:.3f}", color="0.3", fontsize=8, va="center", ha="left")
    ax.set_xlabel(metric)
    ax.set_title(title or metric)
    ax.set_xlim(0, max(1.0, float(np.nanmax(values + (0 if xerr is None else np.nan_to_num(xerr)))) * 1.25))
    return fig


def curves_by_run(frames: Mapping[str, pd.DataFrame], x: str, y: str, ax=None, title: str | None = None,
                  xlabel: str | None = None, ylabel: str | None = None, marker: str = "o"):
    """One line per run of ``y`` against ``x`` (e.g. validation mAP per epoch, mAP per PCA dimension)."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4))
    else:
        fig = ax.figure
    for name, frame in frames.items():
        colour = methods.colour_of(name, default=None)
        ax.plot(frame[x], frame[y], marker=marker, label=name, color=colour, linestyle=line_style(name))
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or y)
    ax.set_title(title or f"{y} against {x}")
    ax.legend(fontsize=8)
    return fig


def line_style(name: str) -> str:
    """Dashed for a one-stage run, dotted for a compute-matched one, solid otherwise (two-stage, floors)."""
    if "compute-matched" in name:
        return ":"
    return "--" if "one-stage" in name else "-"


def tuning_trials(tuning: pd.DataFrame, studies: Sequence[str], lr_range: tuple[float, float], axes=None):
    """One panel per study: each trial's best validation score against its learning rate.

    ``tuning`` is the ``"tuning"`` table of :func:`helpers.report.read_results`
    (columns ``study``, ``trial``, ``state``, ``lr``, ``best score`` and the
    margins). Finished trials are filled circles, pruned ones open circles at
    the best score they reached before they were stopped; the chosen trial
    (the best finished one) is a star labelled with its settings. The
    x axis spans ``lr_range`` on a log scale, the search's range, so a
    winner at an edge shows as one.
    """
    if axes is None:
        ncols = 4
        nrows = -(-len(studies) // ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
        axes = axes.ravel()
    fig = axes[0].figure
    for ax, study in zip(axes, studies):
        rows = tuning[tuning["study"] == study]
        method = methods.find(study)
        colour = method.colour if method else methods.NEUTRAL_COLOUR
        done, pruned = rows[rows["state"] == "complete"], rows[rows["state"] == "pruned"]
        ax.scatter(done["lr"], done["best score"], color=colour, s=36, label="finished")
        ax.scatter(pruned["lr"], pruned["best score"], facecolors="none", edgecolors=colour, s=36, label="pruned")
        best = done.loc[done["best score"].idxmax()]
        shown = ", ".join([f"lr {best['lr']:.3g}"] + [f"{k} {best[k]:.2f}" for k in ("margin", "pos_margin", "neg_margin")
                                                       if k in best and best[k] == best[k]])
        ax.scatter([best["lr"]], [best["best score"]], marker="*", s=220, color=colour, edgecolors="k", zorder=3,
                   label="chosen")
        ax.set_title(f"{study}\n{shown}", fontsize=9)
        ax.set_xscale("log")
        ax.set_xlim(lr_range[0] / 1.5, lr_range[1] * 1.5)
        ax.grid(alpha=0.3)
        ax.set_xlabel("learning rate")
    for ax in axes[len(studies):]:
        ax.axis("off")
    axes[0].legend(fontsize=8, loc="lower right")
    return fig


def margin_lines(method, margins: Mapping[str, float]) -> dict:
    """The margins of a pair loss that are distances, by symbol (``{"m1": 0.4, "m2": 1.2}``): lines on distance plots.

    The triplet margin is a gap between two distances, not a distance, so it has none.
    """
    if not method.is_pair_loss:
        return {}
    symbols = {"margin": "m", "pos_margin": "m1", "neg_margin": "m2"}
    return {symbols[k]: float(v) for k, v in margins.items()}
