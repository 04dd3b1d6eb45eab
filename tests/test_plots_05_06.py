"""The figures of notebooks 01, 05 and 06: colour is never the only cue, and nothing is hidden or mislabelled."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from helpers import plots  # noqa: E402

IMAGE = np.full((6, 8, 3), 200, np.uint8)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _families(n_families: int, per_family: int):
    family = [f"family {f}" for f in range(n_families) for _ in range(per_family)]
    category = [f"family {f} cat {c}" for f in range(n_families) for c in range(per_family)]
    return np.array(family), np.array(category)


def test_categories_share_their_family_colour_and_differ_by_marker():
    family, category = _families(10, 3)
    styles = plots.group_styles(family, category)
    assert list(styles) == sorted(set(category))
    for f in set(family):
        members = [styles[c] for c in category[family == f]]
        assert len({colour for colour, _ in members}) == 1
        assert len({marker for _, marker in members}) == len(members)
    colours = {styles[f"family {f} cat 0"][0] for f in range(10)}
    assert len(colours) == 10                       # the colour-blind palette has ten colours
    assert len(set(styles.values())) == len(styles)


def test_groups_alone_get_distinct_colour_and_marker_pairs_beyond_the_palette():
    groups = [f"g{i:02d}" for i in range(25)]
    styles = plots.group_styles(groups)
    assert len(set(styles.values())) == 25
    first_ten = [styles[g][1] for g in groups[:10]]
    assert len(set(first_ten)) == 10                # a marker per group, not only a colour


def test_a_subgroup_in_two_groups_is_refused():
    with pytest.raises(ValueError, match="more than one group"):
        plots.group_styles(["a", "b"], ["x", "x"])


def test_embedding_by_group_legend_names_every_category_with_its_marker():
    family, category = _families(3, 2)
    coords = np.random.default_rng(0).normal(size=(len(category), 2))
    fig, ax = plt.subplots()
    plots.embedding_by_group(coords, family, category, ax=ax, title="t", legend_title="category")
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == sorted(set(category))
    styles = plots.group_styles(family, category)
    for collection in ax.collections:
        colour, _ = styles[collection.get_label()]
        assert np.allclose(collection.get_facecolor()[0][:3], mcolors.to_rgb(colour))
        assert len(collection.get_offsets()) == int((category == collection.get_label()).sum())


def test_gallery_marks_hits_and_misses_with_a_sign_and_a_line_style():
    relevant = np.array([[True, False, True], [False, False, True]])
    fig = plots.retrieval_gallery([IMAGE, IMAGE], [[IMAGE] * 3] * 2, relevant, k=3)
    axes = np.array(fig.axes).reshape(2, 4)
    for row in range(2):
        for col in range(3):
            ax, hit = axes[row, col + 1], relevant[row, col]
            assert [t.get_text() for t in ax.texts] == ["✓" if hit else "✗"]
            styles = {str(spine.get_linestyle()) for spine in ax.spines.values()}
            assert len(styles) == 1 and (styles == {"-"}) == hit   # solid for a hit, dashed for a miss
    assert plots.HIT_MISS_LEGEND in fig._suptitle.get_text()


def test_ground_truth_gallery_ranks_nothing_and_counts_the_relevant():
    fig = plots.ground_truth_gallery([IMAGE, IMAGE], [[IMAGE] * 2, [IMAGE] * 5], [2, 17], k=4,
                                     query_titles=["q0", "q1"])
    axes = np.array(fig.axes).reshape(2, 5)
    assert axes[0, 0].get_ylabel() == "q0\n2 relevant" and axes[1, 0].get_ylabel() == "q1\n17 relevant"
    assert not axes[0, 3].axison and not axes[0, 4].axison       # a query with 2 relevant leaves 2 cells empty
    assert all(ax.axison for ax in axes[1])
    assert not any(ax.texts for ax in fig.axes)                  # no hit / miss marks: nothing is ranked
    assert [ax.get_title() for ax in axes[0]] == ["query", "relevant 1", "relevant 2", "relevant 3", "relevant 4"]
    assert "not a ranking" in fig._suptitle.get_text()


def _tradeoff() -> pd.DataFrame:
    rows = []
    for m in (16, 32, 64):
        for refined in ("none", "×4"):
            for nprobe in (1, 2, 4, 8):
                rows.append({"m": m, "re-ranking": refined, "nprobe": nprobe,
                             "neighbour recall@10": min(1.0, 0.1 * m / 16 + 0.05 * nprobe),
                             "queries/s": 1e4 / nprobe / (m / 16)})
    return pd.DataFrame(rows)


def test_tradeoff_one_colour_and_marker_per_m_and_no_point_labels():
    fig = plots.search_tradeoff(_tradeoff(), "neighbour recall@10", exact={"flat": 500.0, "torch": 400.0})
    trade = fig.axes[2]
    lines = [line for line in trade.get_lines() if line.get_label().startswith("m = ")]
    assert len(lines) == 6
    by_m = {}
    for line in lines:
        m = int(line.get_label().split()[2].rstrip(","))
        by_m.setdefault(m, set()).add((mcolors.to_hex(line.get_color()), line.get_marker()))
        assert line.get_linestyle() == ("-" if "none" in line.get_label() else "--")
    assert all(len(styles) == 1 for styles in by_m.values())           # both re-ranking lines of an m match
    assert len({next(iter(s)) for s in by_m.values()}) == 3             # and the m differ in colour and marker
    assert len({next(iter(s))[1] for s in by_m.values()}) == 3
    assert not any(ax.texts for ax in fig.axes)
    legend = [t.get_text() for t in trade.get_legend().get_texts()]
    assert "exact: flat" in legend and "exact: torch" in legend and len(legend) == 8


def test_tradeoff_keeps_equal_series_apart_in_the_nprobe_panels():
    table = _tradeoff()
    table["neighbour recall@10"] = 0.5                                  # every series the same
    fig = plots.search_tradeoff(table, "neighbour recall@10")
    xs = [tuple(line.get_xdata()) for line in fig.axes[0].get_lines()]
    assert len(set(xs)) == len(xs)
