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
    """Apply the series' plotting style: seaborn whitegrid, a colour-blind-safe palette, figures at 2x resolution.

    Inline figures are drawn at 72 dpi and sent to the notebook at twice
    that ("retina"), so they keep their size on the page and stay sharp.
    """
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")
    plt.rcParams.update({"figure.dpi": 72, "axes.titleweight": "bold",
                         "figure.autolayout": False})
    try:
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats("retina")
    except ImportError:  # outside IPython: nothing to set
        pass


def save_fig(fig, name: str, folder: Path | None = None, dpi: int = 144) -> Path:
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


SHARE_PARTS = {"loss": ("pos_loss", "neg_loss"), "gradient": ("pos_grad", "neg_grad")}
"""The history columns :func:`loss_share_plot` splits: the loss's two parts, or the pairs' summed gradient norms."""


def loss_share_plot(history: pd.DataFrame, window: int = 10, ax=None, title: str | None = None, of: str = "loss"):
    """Stacked share of the loss (or of the gradient) coming from positive and from negative pairs, per iteration.

    The paper's imbalance argument: :func:`helpers.loss_analysis.positive_share`
    of the two parts averaged over the last ``window`` iterations. ``of`` is
    ``"loss"`` or ``"gradient"`` (:data:`SHARE_PARTS`: the summed gradient norms
    that :func:`helpers.train.pair_step` records).
    """
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 3.6))
    else:
        fig = ax.figure
    positive, negative = SHARE_PARTS[of]
    smoothed = history[[positive, negative]].rolling(window, min_periods=1).mean()
    share = loss_analysis.positive_share(smoothed[positive], smoothed[negative])
    x = np.arange(len(history))
    ax.stackplot(x, share, 1 - share, labels=["positive pairs", "negative pairs"],
                 colors=[POSITIVE_COLOUR, NEGATIVE_COLOUR], alpha=0.85)
    ax.set_ylim(0, 1)
    ax.set_xlim(0, max(len(history) - 1, 1))
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"share of the {of}")
    ax.set_title(title or f"Where the {of} comes from")
    ax.legend(loc="lower left", fontsize=8)
    return fig


def _image_rows(n: int, k: int, size: float):
    """A grid of ``n`` rows of ``k + 1`` image cells (a query, then ``k`` images), without ticks or grid lines."""
    fig, axes = plt.subplots(n, k + 1, figsize=(size * (k + 1), size * n + 0.8), squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
    return fig, axes


def _query_cell(ax, image, label: str) -> None:
    """The first cell of a gallery row: the query image in a dark frame, labelled on its left."""
    ax.imshow(_as_array(image), interpolation="nearest")
    _frame(ax, "#333333", 3)
    ax.set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")


def retrieval_gallery(query_images: Sequence, ranked_images: Sequence[Sequence], relevant: np.ndarray,
                      query_titles: Sequence[str] | None = None, k: int = 8, size: float = 1.1,
                      title: str = "Retrieval results"):
    """One row per query: the query, then its top-k results, each marked as a hit or a miss.

    ``relevant`` is a boolean (queries, k) array. A hit gets a solid green
    frame and a ✓, a miss a dashed red frame and a ✗, so the mark does not
    rest on colour alone; the title says so.
    """
    fig, axes = _image_rows(len(query_images), k, size)
    for row in range(len(query_images)):
        for col in range(k + 1):
            ax = axes[row, col]
            if col == 0:
                label = query_titles[row] if query_titles is not None else f"query {row}"
                _query_cell(ax, query_images[row], label)
                if row == 0:
                    ax.set_title("query", fontsize=9)
            else:
                hit = bool(relevant[row, col - 1])
                ax.imshow(_as_array(ranked_images[row][col - 1]), interpolation="nearest")
                _mark(ax, hit)
                if row == 0:
                    ax.set_title(f"#{col}", fontsize=9)
    fig.suptitle(f"{title}\n{HIT_MISS_LEGEND}", fontweight="bold", fontsize=10)
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
        shown = ", ".join([f"lr {best['lr']:.3g}"] + [f"{k} {best[k]:g}" for k in ("margin", "pos_margin", "neg_margin")
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
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower right", fontsize=9, title="trials")
    return fig


def margin_lines(method, margins: Mapping[str, float]) -> dict:
    """The margins of a pair loss that are distances, by symbol (``{"m1": 0.4, "m2": 1.2}``): lines on distance plots.

    The triplet margin is a gap between two distances, not a distance, so it has none.
    """
    if not method.is_pair_loss:
        return {}
    symbols = {"margin": "m", "pos_margin": "m1", "neg_margin": "m2"}
    return {symbols[k]: float(v) for k, v in margins.items()}


HIT_MISS_LEGEND = "✓ solid green frame: same category as the query · ✗ dashed red frame: another category"


def _mark(ax, hit: bool) -> None:
    """Mark a gallery image as a hit (solid green frame, ✓) or a miss (dashed red frame, ✗)."""
    colour = HIT_COLOUR if hit else MISS_COLOUR
    _frame(ax, colour)
    for spine in ax.spines.values():
        spine.set_linestyle("-" if hit else (0, (2, 1.5)))
    ax.text(0.04, 0.96, "✓" if hit else "✗", transform=ax.transAxes, ha="left", va="top", fontsize=11,
            fontweight="bold", color=colour, bbox=dict(boxstyle="round,pad=0.1", facecolor="white",
                                                       edgecolor="none", alpha=0.85))


def ground_truth_gallery(query_images: Sequence, relevant_images: Sequence[Sequence], n_relevant: Sequence[int],
                         query_titles: Sequence[str] | None = None, k: int = 8, size: float = 1.1,
                         title: str = "Queries and their ground truth"):
    """One row per query: the query, then the first ``k`` database images its ground truth lists.

    Nothing is ranked here: the columns are the ground truth in database
    order, and every image shown is relevant, so none is marked. Each row's
    label gives how many relevant images the query has in all (``n_relevant``);
    a row with fewer than ``k`` leaves the rest of its cells empty.
    """
    fig, axes = _image_rows(len(query_images), k, size)
    for row in range(len(query_images)):
        shown = list(relevant_images[row])[:k]
        for col in range(k + 1):
            ax = axes[row, col]
            if col == 0:
                label = query_titles[row] if query_titles is not None else f"query {row}"
                _query_cell(ax, query_images[row], f"{label}\n{n_relevant[row]} relevant")
            elif col - 1 < len(shown):
                ax.imshow(_as_array(shown[col - 1]), interpolation="nearest")
            else:
                ax.axis("off")
            if row == 0:
                ax.set_title("query" if col == 0 else f"relevant {col}", fontsize=9)
    fig.suptitle(f"{title}\nquery (dark frame), then the first {k} database images of its ground truth, "
                 "in database order (not a ranking)", fontweight="bold", fontsize=10)
    fig.tight_layout()
    return fig


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "p", "h")


def group_styles(groups: Sequence, subgroups: Sequence | None = None,
                 palette: str = "colorblind") -> dict:
    """A (colour, marker) per level: colour by group; marker by subgroup within its group, or by group.

    With ``subgroups`` (e.g. categories inside families) every subgroup gets
    its group's colour and a marker that tells it from the group's other
    subgroups; without, every group gets its own colour and marker, so colour
    is never the only cue. Returns ``{level: (colour, marker)}`` keyed by
    subgroup when given, else by group, in sorted order. Colours repeat after
    the palette's length, but no two levels share both colour and marker
    (up to 100 groups, and ``len(MARKERS)`` subgroups per group).
    """
    groups = np.asarray(groups).astype(str)
    group_levels = sorted(set(groups.tolist()))
    colours = sns.color_palette(palette)
    group_colour = {g: colours[i % len(colours)] for i, g in enumerate(group_levels)}
    if subgroups is None:
        return {g: (group_colour[g], MARKERS[(i // len(colours) + i) % len(MARKERS)])
                for i, g in enumerate(group_levels)}
    subgroups = np.asarray(subgroups).astype(str)
    styles = {}
    for g in group_levels:
        members = sorted(set(subgroups[groups == g].tolist()))
        for j, sub in enumerate(members):
            if sub in styles:
                raise ValueError(f"subgroup {sub!r} belongs to more than one group")
            styles[sub] = (group_colour[g], MARKERS[j % len(MARKERS)])
    return dict(sorted(styles.items()))


def embedding_by_group(coords: np.ndarray, groups: Sequence, subgroups: Sequence | None = None, ax=None,
                       title: str = "", xlabel: str = "dimension 1", ylabel: str = "dimension 2",
                       legend: bool = True, legend_title: str | None = None, s: float = 16):
    """Scatter of 2-D coordinates, coloured by group with a marker per level (see :func:`group_styles`).

    The legend, outside the axes on the right, names every level with its
    colour and marker.
    """
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 5))
    else:
        fig = ax.figure
    coords = np.asarray(coords)
    styles = group_styles(groups, subgroups)
    levels = np.asarray(subgroups if subgroups is not None else groups).astype(str)
    for level, (colour, marker) in styles.items():
        mask = levels == level
        ax.scatter(coords[mask, 0], coords[mask, 1], s=s, color=colour, marker=marker, label=level,
                   alpha=0.75, linewidths=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if legend:
        ax.legend(title=legend_title, fontsize=7, title_fontsize=8, markerscale=1.3, frameon=True,
                  loc="upper left", bbox_to_anchor=(1.01, 1.0), ncols=1 if len(styles) <= 24 else 2)
    return fig


def search_tradeoff(table: pd.DataFrame, recall: str, speed: str = "queries/s",
                    exact: Mapping[str, float] | None = None, title: str | None = None):
    """Three panels for IVF-PQ settings: ``recall`` against nprobe, ``speed`` against nprobe, and the two together.

    ``table`` has columns ``m``, ``re-ranking`` (``"none"`` or e.g. ``"×4"``),
    ``nprobe``, ``recall`` and ``speed``. One colour and one marker per ``m``;
    a solid line with filled markers without re-ranking, a dashed line with
    open markers with it. ``exact`` maps a label to the speed of an exact
    search (recall 1), drawn as reference lines in the speed panels.
    Nothing is written next to the points, so no label can cover another;
    in the nprobe panels each line is shifted sideways by a few per cent of
    an octave, so that two settings with equal values do not hide each other.
    """
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), gridspec_kw={"width_ratios": [1, 1, 1.25]})
    m_levels = sorted(table["m"].unique())
    colours = sns.color_palette("colorblind")
    style = {m: (colours[i % len(colours)], MARKERS[i % len(MARKERS)]) for i, m in enumerate(m_levels)}
    series = list(table.groupby(["m", "re-ranking"], sort=True))
    shifts = np.linspace(-0.15, 0.15, len(series)) if len(series) > 1 else [0.0]
    for ((m, refined), group), shift in zip(series, shifts):
        group = group.sort_values("nprobe")
        nprobe = group["nprobe"].to_numpy(dtype=float) * 2.0 ** shift
        colour, marker = style[m]
        plain = refined == "none"
        kwargs = dict(color=colour, marker=marker, linestyle="-" if plain else "--", markersize=6,
                      markerfacecolor=colour if plain else "white", markeredgecolor=colour, markeredgewidth=1.5,
                      label=f"m = {m}, re-ranking {refined}")
        axes[0].plot(nprobe, group[recall], **kwargs)
        axes[1].plot(nprobe, group[speed], **kwargs)
        axes[2].plot(group[recall], group[speed], **kwargs)
    reference_styles = [("black", ":"), ("0.45", "-.")]
    for (label, value), (colour, linestyle) in zip((exact or {}).items(), reference_styles * 4):
        for ax in axes[1:]:
            ax.axhline(value, color=colour, linestyle=linestyle, linewidth=1.3, label=f"exact: {label}")
    ticks = sorted(table["nprobe"].unique())
    for ax in axes[:2]:
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("nprobe (cells scanned, log scale)")
    axes[0].set(ylim=(0, 1.02), ylabel=recall, title=f"{recall} against nprobe")
    axes[1].set(yscale="log", ylabel="queries per second (log scale)", title="speed against nprobe")
    axes[2].set(yscale="log", xlim=(0, 1.02), xlabel=recall, ylabel="queries per second (log scale)",
                title="recall against speed (one point per nprobe)")
    axes[2].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if title:
        fig.suptitle(title, fontweight="bold")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- notebook 03: the three losses side by side

_LOSS_MARKERS = ("o", "s", "^")
_LOSS_LINES = ("-", "--", "-.")


def loss_cue(name: str) -> dict:
    """Line style of the method a label names: its colour, plus a marker and a dash pattern of its own.

    The marker and dashes follow the method's place in :data:`helpers.methods.NAMES`
    (circle and solid, square and dashed, triangle and dash-dot), so a curve is
    told apart without its colour. Anything else is grey, diamonds, dotted.
    """
    method = methods.find(name)
    if method is None:
        return {"color": methods.NEUTRAL_COLOUR, "marker": "D", "linestyle": ":"}
    i = methods.NAMES.index(method.name) % len(_LOSS_MARKERS)
    return {"color": method.colour, "marker": _LOSS_MARKERS[i], "linestyle": _LOSS_LINES[i]}


def _integer_ticks(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def loss_comparison_curves(histories: Mapping[str, pd.DataFrame], epochs: Mapping[str, pd.DataFrame],
                           kept: Mapping[str, int], window: int = 20, val_column: str = "val_mAP"):
    """One panel of training loss per method, then one of the validation mAP per epoch of all of them.

    ``histories`` and ``epochs`` map a method name to a run's per-iteration and
    per-epoch tables, ``kept`` to the epoch whose weights the run keeps (ringed).
    Each loss panel draws every batch's loss faintly and its rolling mean over
    ``window`` batches; the losses live on different scales, hence one panel each.
    In the last panel each method has its own marker and dashes, and the
    markers shrink from one method to the next, so points that coincide (epoch
    0 is the same ImageNet network for all) stay visible.
    """
    names = list(histories)
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(4.3 * (len(names) + 1), 4.0))
    for ax, name in zip(axes, names):
        method, cue = methods.get(name), loss_cue(name)
        loss = histories[name]["loss"].to_numpy(dtype=float)
        x = np.arange(1, len(loss) + 1)
        ax.plot(x, loss, color=cue["color"], alpha=0.3, linewidth=0.8, label="each batch")
        ax.plot(x, pd.Series(loss).rolling(window, min_periods=1).mean(), color=cue["color"],
                linestyle=cue["linestyle"], linewidth=2, label=f"rolling mean, {window} batches")
        kind = "pairs" if method.is_pair_loss else "triplets"
        ax.set(title=f"{method.label}:\ntraining loss", xlabel=f"iteration (one batch of {kind})",
               ylabel="loss (mean over the batch)")
        _integer_ticks(ax)
        ax.legend(fontsize=8, loc="best")
    ax = axes[-1]
    for i, name in enumerate(names):
        cue, frame = loss_cue(name), epochs[name]
        ax.plot(frame["epoch"], frame[val_column], color=cue["color"], linestyle=cue["linestyle"],
                marker=cue["marker"], markersize=9 - 2 * i, linewidth=2 - 0.3 * i, label=methods.get(name).label)
        best = frame.loc[frame["epoch"] == kept[name]]
        ax.plot(best["epoch"], best[val_column], linestyle="none", marker=cue["marker"], markersize=17,
                markerfacecolor="none", markeredgecolor=cue["color"], markeredgewidth=2)
    ax.plot([], [], linestyle="none", marker="o", markersize=12, markerfacecolor="none", markeredgecolor="0.2",
            markeredgewidth=2, label="epoch kept (best validation)")
    _integer_ticks(ax)
    ax.set(title="Validation mAP per epoch\n(epoch 0: the ImageNet network)", xlabel="epoch",
           ylabel="mAP (trapezoid), validation")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def loss_parts_and_distances(histories: Mapping[str, pd.DataFrame], margins: Mapping[str, Mapping[str, float]],
                             window: int = 20):
    """Top row: the positive and negative parts of each pair loss; bottom row: mean pair distances of every method.

    ``histories`` maps a method name to its run's per-iteration table
    (``loss``, ``pos_loss``, ``neg_loss``, ``pos_dist``, ``neg_dist``),
    ``margins`` to its margins (``{"margin": ...}`` or ``{"pos_margin": ...,
    "neg_margin": ...}``). Every curve is a rolling mean over ``window``
    batches. Positive pairs are green, solid, circles; negative pairs orange,
    dashed, squares; margins that are distances are dotted black lines. The
    triplet loss has no positive and negative parts, so it has no top panel;
    its bottom panel shows ``d(a, p)`` and ``d(a, n)``.
    """
    from matplotlib.gridspec import GridSpec

    names = list(histories)
    pair_names = [name for name in names if methods.get(name).is_pair_loss]
    fig = plt.figure(figsize=(5.2 * len(names), 7.6))
    grid = GridSpec(2, 2 * len(names), figure=fig)
    width = 2 * len(names) // max(1, len(pair_names))
    smooth = lambda column: column.rolling(window, min_periods=1).mean()  # noqa: E731
    positive = dict(color=POSITIVE_COLOUR, linestyle="-", marker="o", linewidth=2)
    negative = dict(color=NEGATIVE_COLOUR, linestyle="--", marker="s", linewidth=2)
    for i, name in enumerate(pair_names):
        ax = fig.add_subplot(grid[0, i * width:(i + 1) * width])
        history = histories[name]
        x = np.arange(1, len(history) + 1)
        every = max(1, len(x) // 12)
        ax.plot(x, smooth(history["pos_loss"]), markevery=every, markersize=5, label="positive pairs' part", **positive)
        ax.plot(x, smooth(history["neg_loss"]), markevery=(every // 2, every), markersize=5,
                label="negative pairs' part", **negative)
        ax.set(title=f"{methods.get(name).label}: where the loss comes from",
               xlabel="iteration (one batch of pairs)", ylabel="contribution to the batch loss")
        _integer_ticks(ax)
        ax.legend(fontsize=8, loc="best")
    for i, name in enumerate(names):
        ax = fig.add_subplot(grid[1, 2 * i:2 * i + 2])
        method, history = methods.get(name), histories[name]
        x = np.arange(1, len(history) + 1)
        every = max(1, len(x) // 12)
        words = ("positive pairs", "negative pairs") if method.is_pair_loss else (
            "anchor to positive, d(a, p)", "anchor to negative, d(a, n)")
        ax.plot(x, smooth(history["pos_dist"]), markevery=every, markersize=5, label=words[0], **positive)
        ax.plot(x, smooth(history["neg_dist"]), markevery=(every // 2, every), markersize=5, label=words[1],
                **negative)
        lines = margin_lines(method, margins[name])
        for j, (symbol, value) in enumerate(sorted(lines.items(), key=lambda item: item[1])):
            below = j == 0 and len(lines) > 1   # the lower of two margins is labelled under its line
            ax.axhline(value, color="black", linestyle=":", linewidth=1.2)
            ax.annotate(f"{symbol} = {value:g}", (1.0, value), xycoords=("axes fraction", "data"),
                        xytext=(-4, -3 if below else 3), textcoords="offset points", ha="right",
                        va="top" if below else "bottom", fontsize=8)
        if not method.is_pair_loss:
            (symbol, value), = margins[name].items()
            ax.text(0.02, 0.04, f"margin {value:g}: a gap d(a, n) − d(a, p), not a distance",
                    transform=ax.transAxes, fontsize=8, color="0.25")
        top = max(np.sqrt(2), *lines.values(), np.nanmax(history[["pos_dist", "neg_dist"]].to_numpy()))
        ax.set_ylim(0, top + 0.1)
        ax.set(title=f"{method.label}:\nmean distance in the batch", xlabel="iteration",
               ylabel="Euclidean distance")
        _integer_ticks(ax)
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def pair_distance_histogram(distances: np.ndarray, y: np.ndarray, ax=None, title: str = "Pair distances",
                            margins: Mapping[str, float] | None = None, auc: float | None = None, bins: int = 40,
                            legend: bool = True):
    """Positive pairs as filled green bars with a solid edge; negative pairs hatched orange, dashed edge.

    The two kinds differ by fill and line as well as by colour, and the
    negative pairs are drawn on top without hiding the positive ones.
    ``margins`` (``{"m1": 0.4, ...}``, see :func:`margin_lines`) are dotted
    vertical lines labelled with their values; ``auc``, when given, is added to the
    title. ``legend=False`` leaves the legend to another panel.
    """
    from matplotlib.patches import Patch

    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3.6))
    else:
        fig = ax.figure
    distances = np.asarray(distances, dtype=float)
    y = np.asarray(y).astype(bool)
    right = max(1.5, float(distances.max()) + 0.05, *[v + 0.1 for v in (margins or {}).values()])
    edges = np.linspace(0, right, bins + 1)
    ax.hist(distances[y], bins=edges, density=True, histtype="stepfilled", facecolor=POSITIVE_COLOUR, alpha=0.45)
    ax.hist(distances[y], bins=edges, density=True, histtype="step", color=POSITIVE_COLOUR, linewidth=1.6)
    ax.hist(distances[~y], bins=edges, density=True, histtype="stepfilled", facecolor="none",
            edgecolor=NEGATIVE_COLOUR, hatch="///", linewidth=0, alpha=0.7)
    ax.hist(distances[~y], bins=edges, density=True, histtype="step", color=NEGATIVE_COLOUR, linestyle="--",
            linewidth=1.6)
    handles = [Patch(facecolor=POSITIVE_COLOUR, alpha=0.6, edgecolor=POSITIVE_COLOUR, label="positive pairs"),
               Patch(facecolor="none", edgecolor=NEGATIVE_COLOUR, hatch="///", linestyle="--",
                     label="negative pairs")]
    for i, (name, value) in enumerate(sorted((margins or {}).items(), key=lambda item: item[1])):
        ax.axvline(value, color="black", linestyle=":", linewidth=1.3)
        ax.annotate(f"{name} = {value:g}", (value, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(-3 if i % 2 == 0 else 3, -4), textcoords="offset points", rotation=90,
                    ha="right" if i % 2 == 0 else "left", va="top", fontsize=8)
    ax.set_xlim(0, right)
    ax.set_xlabel("Euclidean distance between\nunit-length embeddings")
    ax.set_ylabel("density (area 1 per kind)")
    ax.set_title(title if auc is None else f"{title}\nAUC {auc:.3f}")
    if legend:
        ax.legend(handles=handles, fontsize=8, loc="best")
    return fig
