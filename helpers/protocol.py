"""The fair comparison of the paper's claims, after *A Metric Learning Reality Check* (Musgrave et al., 2020).

Every method gets the same backbone, cut, embedding, data and image budget
(:func:`helpers.train.tuple_budget`), and

1. **the same tuning budget**: :data:`TUNING_GRID` holds six margin settings
   per loss (the double margin's include m1 = 0, where it *is* the single
   margin), each trained from the seed-0 stage-1 classifier to its validation
   plateau and scored by its best **validation** mAP (:func:`tune`);
2. training to a **validation plateau**: early stopping on validation mAP,
   keeping the best epoch (the profile's ``ret_patience``);
3. **seeds**: every method at its tuned margins with every training seed,
   one-stage (from ImageNet) and two-stage (from that seed's stage-1
   classifier), plus a **compute-matched** one-stage double margin run that
   may see as many images as stage 1 and stage 2 together
   (:func:`compute_matched_epochs`), all scored on the **test** split
   (:func:`seed_rows`);
4. the claims as **paired** differences over seeds (:func:`claims`), with
   Student-t intervals (:mod:`helpers.stats`).

``benchmarks/results_table.py`` (``make results``) runs it and writes
:data:`FILES` under ``results/``; the notebooks read them with
:func:`read_results`.
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from . import config, evaluation, methods, metrics, models, runs, stats, train
from .progress import bar as tqdm

RESULTS_DIR = config.REPO_ROOT / "results"
FILES = {"tuning": "tuning.csv", "comparison": "comparison.csv", "imbalance": "imbalance.csv"}
"""What :func:`write_results` writes under :data:`RESULTS_DIR`."""

TUNING_GRID = {
    "single": {"margin": (0.4, 0.6, 0.8, 1.0, 1.2, 1.4)},
    "double": {"pos_margin": (0.0, 0.4, 0.8), "neg_margin": (1.0, 1.2)},
    "triplet": {"margin": (0.1, 0.2, 0.3, 0.4, 0.6, 0.8)},
}
"""Six margin settings per loss: the same tuning budget for each (the paper's margins are in every grid)."""

MATCHED = "double, one-stage, compute-matched"
FLOORS = ("ImageNet features only", "stage-1 features only", "random ranking")
CLAIMS = (
    ("double margin beats single margin (one-stage)", "double, one-stage", "single, one-stage"),
    ("double margin beats single margin (two-stage)", "double, two-stage", "single, two-stage"),
    ("two-stage double margin beats one-stage triplet", "double, two-stage", "triplet, one-stage"),
    ("two-stage double margin beats two-stage triplet", "double, two-stage", "triplet, two-stage"),
    ("two-stage beats one-stage (double margin)", "double, two-stage", "double, one-stage"),
    ("two-stage beats compute-matched one-stage (double margin)", "double, two-stage", MATCHED),
)
"""(claim, model a, model b): the claim is that ``a`` scores above ``b``."""


def model_name(loss: str, stage: str) -> str:
    """The row name of a method: ``"double, two-stage"``."""
    return f"{loss}, {stage}"


def grid_points(loss: str) -> list[dict]:
    """Every margin setting of ``loss`` in :data:`TUNING_GRID`, as keyword dicts, invalid ones left out."""
    grid = TUNING_GRID[methods.get(loss).name]
    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    return [p for p in points if p.get("pos_margin", -math.inf) < p.get("neg_margin", math.inf)]


def _margin_overrides(loss: str, margins: dict) -> dict:
    """Profile overrides that set ``loss``'s margins: ``{"pos_margin": 0.0, "neg_margin": 1.2}``."""
    return {methods.get(loss).margin_fields[k]: float(v) for k, v in margins.items()}


def _margin_label(loss: str, profile: config.Profile) -> str:
    """``loss``'s margins in ``profile`` as a label: ``"m1 = 0.4, m2 = 1.2"``."""
    method = methods.get(loss)
    return method.describe_margins(method.margins(profile))


def _run_summary(run) -> dict:
    """Epochs trained, the best validation epoch and score, and the wall time of a run."""
    epochs = run.epochs
    val = epochs.columns[2]
    best = int(epochs[val].idxmax())
    return {"epochs trained": int(epochs["epoch"].iloc[-1]), "best epoch": int(epochs["epoch"].iloc[best]),
            f"best {val}": float(epochs[val].iloc[best]), "train s": float(run.wall_time)}


def tune(release, stage1, profile=None, *, seed: int = config.DEFAULT_SEED, progress: bool = True) -> pd.DataFrame:
    """Train every setting of :data:`TUNING_GRID` from ``stage1`` and score it on the validation split.

    One row per (loss, setting): the margins, the best validation mAP (the
    run keeps that epoch), the epochs trained and the training time.
    """
    profile = config.get_profile(profile)
    rows = []
    points = [(loss, point) for loss in methods.NAMES for point in grid_points(loss)]
    for loss, point in tqdm(points, desc="tuning", unit="run", disable=not progress):
        run = train.train_retrieval(release, loss, init=stage1, profile=profile, seed=seed, progress=False,
                                    **_margin_overrides(loss, point))
        rows.append({"loss": loss, "margins": methods.get(loss).describe_margins(point), **point,
                     **_run_summary(run), "key": run.key})
    return pd.DataFrame(rows)


def chosen_margins(tuning: pd.DataFrame) -> dict[str, dict]:
    """Per loss, the margins of its best validation mAP (the first in grid order on ties)."""
    chosen = {}
    for loss, rows in tuning.groupby("loss", sort=False):
        best = rows.loc[rows["best val_mAP"].idxmax()]
        chosen[loss] = {k: float(best[k]) for k in methods.get(loss).margin_fields}
    return chosen


def profile_with_margins(profile, margins: dict[str, dict]) -> config.Profile:
    """``profile`` with every loss's margins set to ``margins[loss]``."""
    overrides = {}
    for loss, values in margins.items():
        overrides.update(_margin_overrides(loss, values))
    return replace(config.get_profile(profile), **overrides)


def images_seen(run, release, profile) -> int:
    """Training images a run went through: epochs trained x images per epoch."""
    profile = config.get_profile(profile)
    epochs = int(run.epochs["epoch"].iloc[-1])
    if run.kind == "classifier":
        return epochs * len(release.classification_train)
    method = methods.get(run.config["loss"])
    per_category, _ = train.tuple_budget(method, profile)
    counts = np.bincount(release.retrieval_train.labels)
    return epochs * per_category * method.tuple_size * int((counts >= 2).sum())


def compute_matched_epochs(stage1, two_stage, release, profile) -> int:
    """Retrieval epochs in which one-stage training sees as many images as ``stage1`` + ``two_stage`` did."""
    total = images_seen(stage1, release, profile) + images_seen(two_stage, release, profile)
    per_epoch = images_seen(two_stage, release, profile) / max(1, int(two_stage.epochs["epoch"].iloc[-1]))
    return max(1, math.ceil(total / per_epoch))


def _score(name: str, seed: int, model, release, profile, extra: dict | None = None) -> dict:
    query_emb, db_emb = evaluation.embed_split(model, release.test, profile, progress=False)
    return {"model": name, "seed": seed, **(extra or {}),
            **metrics.evaluate(query_emb, db_emb, release.test.ground_truth)}


def seed_rows(release, seed: int, profile, *, progress: bool = True) -> list[dict]:
    """Every model of the comparison trained (or loaded) with ``seed`` and scored on the test split.

    ``profile`` carries the tuned margins. Rows: the six methods, the
    compute-matched one-stage double margin, and the floors (ImageNet
    features, stage-1 features, random rankings).
    """
    profile = config.get_profile(profile)
    rows = []
    stage1 = train.train_classifier(release, profile, seed=seed, progress=False)
    stage1_row = {"images seen": images_seen(stage1, release, profile), **_run_summary(stage1)}
    jobs = [(loss, stage) for stage in ("one-stage", "two-stage") for loss in methods.NAMES]
    trained = {}
    for loss, stage in tqdm(jobs, desc=f"seed {seed}", unit="run", disable=not progress):
        init = "imagenet" if stage == "one-stage" else stage1
        run = train.train_retrieval(release, loss, init=init, profile=profile, seed=seed, progress=False)
        trained[model_name(loss, stage)] = run
        extra = {"margins": _margin_label(loss, profile),
                 "images seen": images_seen(run, release, profile)
                 + (stage1_row["images seen"] if stage == "two-stage" else 0),
                 **_run_summary(run)}
        rows.append(_score(model_name(loss, stage), seed, run.model, release, profile, extra))
    epochs = compute_matched_epochs(stage1, trained["double, two-stage"], release, profile)
    matched = train.train_retrieval(release, "double", init="imagenet", profile=profile, seed=seed, progress=False,
                                    ret_epochs=epochs, ret_lr_step=max(1, epochs // 2), ret_patience=None)
    rows.append(_score(MATCHED, seed, matched.model, release, profile,
                       {"margins": _margin_label("double", profile),
                        "images seen": images_seen(matched, release, profile), **_run_summary(matched)}))
    rows.append(_score("ImageNet features only", seed, evaluation.untrained_model(profile, seed=seed), release,
                       profile))
    rows.append(_score("stage-1 features only", seed, models.EmbeddingNet.from_classifier(stage1.model).eval(),
                       release, profile, stage1_row))
    chance = evaluation.chance_levels(release.test, seed=seed)
    rows.append({"model": "random ranking", "seed": seed, **chance.to_dict()})
    return rows


def imbalance_rows(release, stage1, profile, tuned: dict[str, dict], *, seed: int = config.DEFAULT_SEED) -> list[dict]:
    """The positive share of the loss per epoch, two-stage, for the contrastive losses at tuned and paper margins.

    The runs are those of :func:`tune` (the paper's margins are in its grid),
    so nothing new is trained. One row per (run, epoch): the share of the
    summed batch losses that comes from positive pairs, and the fractions of
    positive and negative pairs with a non-zero loss.
    """
    paper = config.get_profile("paper")
    rows = []
    for loss in (m.name for m in methods.METHODS.values() if m.is_pair_loss):
        method = methods.get(loss)
        for which, margins in (("tuned", tuned[loss]), ("paper", method.margins(paper))):
            run = train.train_retrieval(release, loss, init=stage1, profile=profile, seed=seed, progress=False,
                                        **_margin_overrides(loss, margins))
            for epoch, h in run.history.groupby("epoch"):
                total = h["pos_loss"].sum() + h["neg_loss"].sum()
                rows.append({"loss": loss, "margins": f"{which}: {method.describe_margins(margins)}",
                             "epoch": int(epoch), "positive share": float(h["pos_loss"].sum() / total),
                             "active positives": float(h["pos_active_frac"].mean()),
                             "active negatives": float(h["neg_active_frac"].mean())})
    return rows


def run_protocol(release, profile=None, seeds=(0, 1, 2), *, progress: bool = True) -> dict[str, pd.DataFrame]:
    """Tune, train every seed, measure the imbalance: the three tables of :data:`FILES` (not written)."""
    profile = config.get_profile(profile)
    began = time.perf_counter()
    stage1 = train.train_classifier(release, profile, seed=seeds[0], progress=False)
    tuning = tune(release, stage1, profile, seed=seeds[0], progress=progress)
    tuned = chosen_margins(tuning)
    tuned_profile = profile_with_margins(profile, tuned)
    comparison = pd.DataFrame([row for seed in seeds for row in seed_rows(release, seed, tuned_profile,
                                                                             progress=progress)])
    imbalance = pd.DataFrame(imbalance_rows(release, stage1, profile, tuned, seed=seeds[0]))
    stamp = {"profile": profile.name, "code": runs.code_version(), "wall s": round(time.perf_counter() - began)}
    return {name: table.assign(**stamp) for name, table in
            (("tuning", tuning), ("comparison", comparison), ("imbalance", imbalance))}


def write_results(tables: dict[str, pd.DataFrame], folder: Path = RESULTS_DIR) -> list[Path]:
    """Write the tables of :func:`run_protocol` as CSV files; return their paths.

    Rows of other profiles already in a file are kept; those of the tables'
    profile are replaced.
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, table in tables.items():
        path = folder / FILES[name]
        if path.is_file():
            kept = pd.read_csv(path)
            kept = kept[~kept["profile"].isin(table["profile"].unique())]
            table = pd.concat([kept, table], ignore_index=True) if len(kept) else table
        table.to_csv(path, index=False, float_format="%.6g")
        paths.append(path)
    return paths


def read_results(profile=None, folder: Path = RESULTS_DIR) -> dict[str, pd.DataFrame]:
    """The committed tables of ``profile`` (the active one by default).

    Raises ``FileNotFoundError`` naming the command that writes them when a
    file is missing or holds no rows for the profile.
    """
    name = config.get_profile(profile).name
    tables = {}
    for key, file in FILES.items():
        path = folder / file
        table = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=["profile"])
        table = table[table["profile"] == name]
        if table.empty:
            raise FileNotFoundError(f"{path} holds no results for the {name} profile; "
                                    f"run `make results PROFILE={name}` (python benchmarks/results_table.py)")
        tables[key] = table.reset_index(drop=True)
    return tables


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
    """Mean and 95% t-interval half-width over seeds of each model and metric: columns ``(metric, mean|ci)``."""
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


def stamp_note(table: pd.DataFrame) -> str:
    """Where a results table came from: its profile, code version (against the current one) and wall time."""
    code, wall = table["code"].iloc[0], float(table["wall s"].iloc[0])
    current = runs.code_version()
    same = ("the current one" if code == current else
            f"**not** the current {current}: run `make results` before relying on it")
    return (f"Read from `results/`, written by `make results` for the {table['profile'].iloc[0]} profile in "
            f"{wall / 60:.0f} min (runs already in the cache are loaded, not retrained) by code version {code} "
            f"({same}).")


def markdown_table(table: pd.DataFrame) -> str:
    """A DataFrame as a Markdown table (index first), for notebooks' Markdown output and the README."""
    header = [str(table.index.name or "")] + [str(c) for c in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in table.iterrows():
        lines.append("| " + " | ".join([str(name)] + [str(v) for v in row]) + " |")
    return "\n".join(lines)
