"""Reading the fair comparison's results: the committed tables, their summary over seeds and the claims.

``make results`` (:mod:`helpers.machinery.protocol`) tunes every loss's
margins on the validation split, trains every method with several seeds and
scores them on the test split; it writes :data:`FILES` under
:data:`RESULTS_DIR`. The notebooks read them back with :func:`read_results`
and show them:

* :func:`summary` and :func:`formatted`: the mean of every metric over seeds
  with its 95% Student-t interval (:mod:`helpers.stats`);
* :func:`claims` and :func:`claim_sentence`: each of the paper's claims
  (:data:`CLAIMS`) as a **paired** difference over seeds, and its verdict;
* :func:`committed_rows`: one seed's rows, to show a run without retraining it;
* :func:`chosen_margins`: the margins the tuning picked;
* :func:`stamp_note`: which profile and code version wrote a table.

``DataFrame.to_markdown()`` turns any of these tables into Markdown.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import config, methods, metrics, stats

RESULTS_DIR = config.REPO_ROOT / "results"
FILES = {"tuning": "tuning.csv", "comparison": "comparison.csv", "imbalance": "imbalance.csv"}
"""The tables ``make results`` writes under :data:`RESULTS_DIR`."""


def model_name(loss: str, stage: str) -> str:
    """The row name of a method in the comparison table: ``"double, two-stage"``."""
    return f"{loss}, {stage}"


MATCHED = model_name("double", "one-stage, compute-matched")
"""The one-stage double margin run that may see as many images as stage 1 and stage 2 together."""
FLOORS = ("ImageNet features only", "stage-1 features only", "random ranking")
"""The rows that show what no retrieval training scores."""
CLAIMS = (
    ("double margin beats single margin (one-stage)", "double, one-stage", "single, one-stage"),
    ("double margin beats single margin (two-stage)", "double, two-stage", "single, two-stage"),
    ("two-stage double margin beats one-stage triplet", "double, two-stage", "triplet, one-stage"),
    ("two-stage double margin beats two-stage triplet", "double, two-stage", "triplet, two-stage"),
    ("two-stage beats one-stage (double margin)", "double, two-stage", "double, one-stage"),
    ("two-stage beats compute-matched one-stage (double margin)", "double, two-stage", MATCHED),
)
"""(claim, model a, model b): the claim is that ``a`` scores above ``b``."""


def read_results(profile: config.Profile | str, folder: Path = RESULTS_DIR) -> dict[str, pd.DataFrame]:
    """The committed tables of :data:`FILES` for ``profile`` (a resolved profile or its name).

    Raises ``FileNotFoundError`` naming the command that writes them when a
    file is missing or holds no rows for the profile.
    """
    name = profile if isinstance(profile, str) else profile.name
    tables = {}
    for key, file in FILES.items():
        path = Path(folder) / file
        table = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=["profile"])
        table = table[table["profile"] == name]
        if table.empty:
            raise FileNotFoundError(f"{path} holds no results for the {name} profile; "
                                    f"run `make results PROFILE={name}` (python benchmarks/results_table.py)")
        tables[key] = table.reset_index(drop=True)
    return tables


def chosen_margins(tuning: pd.DataFrame) -> dict[str, dict]:
    """Per loss, the margins of its best validation mAP (the first in grid order on ties)."""
    chosen = {}
    for loss, rows in tuning.groupby("loss", sort=False):
        best = rows.loc[rows["best val_mAP"].idxmax()]
        chosen[loss] = {k: float(best[k]) for k in methods.get(loss).margin_fields}
    return chosen


def committed_rows(comparison: pd.DataFrame, seed: int, models, columns) -> pd.DataFrame:
    """The committed test rows of ``models`` for one ``seed``: indexed by model, with ``columns`` in that order.

    How a notebook shows a run of the comparison that it does not retrain.
    Raises ``KeyError`` naming the models (or columns) the table lacks.
    """
    rows = comparison[comparison["seed"] == seed].set_index("model")
    missing = [m for m in models if m not in rows.index]
    absent = [c for c in columns if c not in rows.columns]
    if missing or absent:
        raise KeyError(f"the comparison table has no seed-{seed} rows for {missing} or no columns {absent}; "
                       "run `make results`")
    table = rows.loc[list(models), list(columns)]
    table.index.name = None
    return table


def summary(comparison: pd.DataFrame, columns=None) -> pd.DataFrame:
    """Mean and 95% t-interval half-width over seeds of each model and metric: columns ``(metric, mean|ci)``.

    ``columns`` defaults to every metric of :func:`helpers.metrics.evaluate`;
    models keep their order of first appearance.
    """
    columns = list(columns or ["mAP (trapezoid)", "mAP (standard)", *[f"R@{k}" for k in metrics.DEFAULT_KS],
                               *metrics.REALITY_CHECK])
    order = list(dict.fromkeys(comparison["model"]))
    table = {}
    for model, rows in comparison.groupby("model", sort=False):
        table[model] = {}
        for column in columns:
            result = stats.mean_ci(rows.sort_values("seed")[column])
            table[model][(column, "mean")] = result["mean"]
            table[model][(column, "ci")] = result["ci"]
    out = pd.DataFrame(table).T.loc[order]
    out.columns = pd.MultiIndex.from_tuples(out.columns)
    out.index.name = f"test, {comparison['seed'].nunique()} seeds"
    return out


def claims(comparison: pd.DataFrame, metric: str = "mAP (trapezoid)") -> pd.DataFrame:
    """Each claim of :data:`CLAIMS` as a paired difference over seeds, with its interval and verdict."""
    by_model = comparison.pivot_table(index="seed", columns="model", values=metric)
    rows = []
    for claim, a, b in CLAIMS:
        difference = stats.paired_difference(by_model[a], by_model[b])
        rows.append({"claim": claim, "a": a, "b": b, "mean a": float(by_model[a].mean()),
                     "mean b": float(by_model[b].mean()), "difference": difference["mean"],
                     "ci": difference["ci"], "seeds a wins": f"{difference['wins']}/{difference['n']}",
                     "p": difference["p"], "verdict": stats.verdict(difference)})
    return pd.DataFrame(rows).set_index("claim")


def formatted(summary_table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """A :func:`summary` table as ``"0.556 ± 0.012"`` strings, one column per metric."""
    metrics_ = list(dict.fromkeys(summary_table.columns.get_level_values(0)))
    return pd.DataFrame({m: [f"{mean:.{digits}f} ± {ci:.{digits}f}" if np.isfinite(ci) else f"{mean:.{digits}f}"
                             for mean, ci in zip(summary_table[(m, "mean")], summary_table[(m, "ci")])]
                         for m in metrics_}, index=summary_table.index)


def claim_sentence(claim: str, row: pd.Series, metric: str = "mAP (trapezoid)") -> str:
    """One Markdown bullet that states a claim's verdict from its paired difference (:func:`claims`)."""
    interval = f"[{row['difference'] - row['ci']:+.3f}, {row['difference'] + row['ci']:+.3f}]"
    reading = {"holds": "**holds**: the whole interval is above zero",
               "reversed": "is **reversed**: the whole interval is below zero",
               "not resolved": "is **not resolved**: the interval contains zero"}[row["verdict"]]
    return (f"* *{claim}* {reading}. {metric}: {row['a']} {row['mean a']:.3f} against {row['b']} "
            f"{row['mean b']:.3f}, paired difference {row['difference']:+.3f}, 95% interval {interval}; "
            f"{row['a']} ahead in {row['seeds a wins']} seeds.")


def stamp_note(table: pd.DataFrame, code_version: str) -> str:
    """Where a results table came from: its profile, code version and wall time.

    ``code_version`` is the current one
    (``helpers.machinery.runs.code_version()``): the note says whether the
    table was written by it.
    """
    code, wall = table["code"].iloc[0], float(table["wall s"].iloc[0])
    same = ("the current one" if code == code_version else
            f"**not** the current {code_version}: run `make results` before relying on it")
    return (f"Read from `results/`, written by `make results` for the {table['profile'].iloc[0]} profile in "
            f"{wall / 60:.0f} min (runs already in the cache are loaded, not retrained) by code version {code} "
            f"({same}).")
