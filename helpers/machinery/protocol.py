"""``make results``: the fair comparison of the paper's claims, run and written to ``results/``.

The protocol follows *A Metric Learning Reality Check* (Musgrave et al.,
2020). Every method gets the same backbone, cut, embedding, data and image budget
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
4. the positive share of the contrastive losses per epoch, at the tuned and
   at the paper's margins (:func:`imbalance_rows`).

``benchmarks/results_table.py`` (``make results``) resolves the profile,
runs :func:`run_protocol` and :func:`write_results`; the notebooks read the
tables and state the claims as paired differences over seeds with
:mod:`helpers.report`.
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from .. import config, evaluation, loss_analysis, methods, metrics, report, train
from ..progress import bar as tqdm
from . import runs

TUNING_GRID = {
    "single": {"margin": (0.4, 0.6, 0.8, 1.0, 1.2, 1.4)},
    "double": {"pos_margin": (0.0, 0.4, 0.8), "neg_margin": (1.0, 1.2)},
    "triplet": {"margin": (0.1, 0.2, 0.3, 0.4, 0.6, 0.8)},
}
"""Six margin settings per loss: the same tuning budget for each (the paper's margins are in every grid)."""


def grid_points(loss: str) -> list[dict]:
    """Every margin setting of ``loss`` in :data:`TUNING_GRID`, as keyword dicts, invalid ones left out."""
    grid = TUNING_GRID[methods.get(loss).name]
    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    return [p for p in points if p.get("pos_margin", -math.inf) < p.get("neg_margin", math.inf)]


def _run_summary(run: runs.Run) -> dict:
    """Epochs trained, the best validation epoch and score, and the wall time of a run."""
    return {"epochs trained": run.last_epoch, "best epoch": run.best_epoch,
            f"best {run.val_column}": run.best_score, "train s": float(run.wall_time)}


def tune(release, stage1: runs.Run, profile: config.Profile, *, seed: int = config.DEFAULT_SEED,
         progress: bool = True) -> pd.DataFrame:
    """Train every setting of :data:`TUNING_GRID` from ``stage1`` and score it on the validation split.

    One row per (loss, setting): the margins, the best validation mAP (the
    run keeps that epoch), the epochs trained and the training time.
    """
    rows = []
    points = [(loss, point) for loss in methods.NAMES for point in grid_points(loss)]
    for loss, point in tqdm(points, desc="tuning", unit="run", disable=not progress):
        run = runs.train_retrieval(release, loss, stage1, profile, seed=seed, margins=point, progress=False)
        rows.append({"loss": loss, "margins": methods.get(loss).describe_margins(point), **point,
                     **_run_summary(run), "key": run.key})
    return pd.DataFrame(rows)


def images_seen(run: runs.Run, release, profile: config.Profile) -> int:
    """Training images a run went through: epochs trained x images per epoch.

    A classifier sees every image of ``release.classification_train`` once
    an epoch; a retrieval run sees, per category with at least two images,
    its tuples per category (:func:`helpers.train.tuple_budget`) of
    ``method.tuple_size`` images each.
    """
    if run.kind == "classifier":
        return run.last_epoch * len(release.classification_train)
    method = methods.get(run.config["loss"])
    per_category, _ = train.tuple_budget(method, profile.pairs_per_category, profile.ret_batch_size)
    counts = np.bincount(release.retrieval_train.labels)
    return run.last_epoch * per_category * method.tuple_size * int((counts >= 2).sum())


def compute_matched_epochs(stage1: runs.Run, two_stage: runs.Run, release, profile: config.Profile) -> int:
    """Retrieval epochs in which one-stage training sees as many images as ``stage1`` + ``two_stage`` did."""
    total = images_seen(stage1, release, profile) + images_seen(two_stage, release, profile)
    per_epoch = images_seen(two_stage, release, profile) / max(1, two_stage.last_epoch)
    return max(1, math.ceil(total / per_epoch))


def _score(name: str, seed: int, model, release, profile: config.Profile, extra: dict | None = None) -> dict:
    """A comparison row: ``model`` embedded and scored on the test split (:func:`helpers.metrics.evaluate`)."""
    query_emb, db_emb = evaluation.embed_split(model, release.test, profile, progress=False)
    return {"model": name, "seed": seed, **(extra or {}),
            **metrics.evaluate(query_emb, db_emb, release.test.ground_truth)}


def _retrieval_extra(run: runs.Run, margins: dict, images: int) -> dict:
    """The training columns of a retrieval row: its margins, the images seen and :func:`_run_summary`."""
    return {"margins": methods.get(run.config["loss"]).describe_margins(margins), "images seen": images,
            **_run_summary(run)}


def seed_rows(release, seed: int, profile: config.Profile, tuned: dict[str, dict], *,
              progress: bool = True) -> list[dict]:
    """Every model of the comparison trained (or loaded) with ``seed`` and scored on the test split.

    ``tuned`` maps each loss to its margins (:func:`helpers.report.chosen_margins`).
    Rows: the six methods, the compute-matched one-stage double margin, and
    the floors (ImageNet features, stage-1 features, random rankings).
    """
    rows = []
    stage1 = runs.train_classifier(release, profile, seed=seed, progress=False)
    stage1_row = {"images seen": images_seen(stage1, release, profile), **_run_summary(stage1)}
    jobs = [(loss, stage) for stage in ("one-stage", "two-stage") for loss in methods.NAMES]
    trained = {}
    for loss, stage in tqdm(jobs, desc=f"seed {seed}", unit="run", disable=not progress):
        init = "imagenet" if stage == "one-stage" else stage1
        run = runs.train_retrieval(release, loss, init, profile, seed=seed, margins=tuned[loss], progress=False)
        trained[report.model_name(loss, stage)] = run
        images = images_seen(run, release, profile) + (stage1_row["images seen"] if stage == "two-stage" else 0)
        rows.append(_score(report.model_name(loss, stage), seed, run.model, release, profile,
                           _retrieval_extra(run, tuned[loss], images)))
    epochs = compute_matched_epochs(stage1, trained[report.model_name("double", "two-stage")], release, profile)
    matched_profile = replace(profile, ret_epochs=epochs, ret_lr_step=max(1, epochs // 2), ret_patience=None)
    matched = runs.train_retrieval(release, "double", "imagenet", matched_profile, seed=seed,
                                   margins=tuned["double"], progress=False)
    rows.append(_score(report.MATCHED, seed, matched.model, release, profile,
                       _retrieval_extra(matched, tuned["double"], images_seen(matched, release, profile))))
    rows.append(_score("ImageNet features only", seed, runs.untrained_model(profile, seed=seed), release, profile))
    rows.append(_score("stage-1 features only", seed, stage1.model.embedding().eval(), release, profile,
                       stage1_row))
    chance = evaluation.chance_levels(release.test, seed=seed)
    rows.append({"model": "random ranking", "seed": seed, **chance.to_dict()})
    return rows


def imbalance_rows(release, stage1: runs.Run, profile: config.Profile, tuned: dict[str, dict], *,
                   seed: int = config.DEFAULT_SEED) -> list[dict]:
    """The positive share of the loss per epoch, two-stage, for the contrastive losses at tuned and paper margins.

    The runs are those of :func:`tune` (the paper's margins are in its grid),
    so nothing new is trained. One row per (run, epoch): the share of the
    summed batch losses that comes from positive pairs
    (:func:`helpers.loss_analysis.positive_share`), and the fractions of
    positive and negative pairs with a non-zero loss.
    """
    rows = []
    for method in (m for m in methods.METHODS.values() if m.is_pair_loss):
        for which, margins in (("tuned", tuned[method.name]), ("paper", method.margins(config.PROFILES["paper"]))):
            run = runs.train_retrieval(release, method.name, stage1, profile, seed=seed, margins=margins,
                                       progress=False)
            for epoch, h in run.history.groupby("epoch"):
                rows.append({"loss": method.name, "margins": f"{which}: {method.describe_margins(margins)}",
                             "epoch": int(epoch),
                             "positive share": loss_analysis.positive_share(h["pos_loss"].sum(), h["neg_loss"].sum()),
                             "active positives": float(h["pos_active_frac"].mean()),
                             "active negatives": float(h["neg_active_frac"].mean())})
    return rows


def run_protocol(release, profile: config.Profile, seeds=(0, 1, 2), *,
                 progress: bool = True) -> dict[str, pd.DataFrame]:
    """Tune, train every seed, measure the imbalance: the three tables of :data:`helpers.report.FILES` (not written).

    Every table is stamped with the profile's name, :func:`runs.code_version`
    and the wall time.
    """
    began = time.perf_counter()
    stage1 = runs.train_classifier(release, profile, seed=seeds[0], progress=False)
    tuning = tune(release, stage1, profile, seed=seeds[0], progress=progress)
    tuned = report.chosen_margins(tuning)
    comparison = pd.DataFrame([row for seed in seeds for row in seed_rows(release, seed, profile, tuned,
                                                                             progress=progress)])
    imbalance = pd.DataFrame(imbalance_rows(release, stage1, profile, tuned, seed=seeds[0]))
    stamp = {"profile": profile.name, "code": runs.code_version(), "wall s": round(time.perf_counter() - began)}
    return {name: table.assign(**stamp) for name, table in
            (("tuning", tuning), ("comparison", comparison), ("imbalance", imbalance))}


def write_results(tables: dict[str, pd.DataFrame], folder: Path = report.RESULTS_DIR) -> list[Path]:
    """Write the tables of :func:`run_protocol` as the CSV files of :data:`helpers.report.FILES`; return their paths.

    Rows of other profiles already in a file are kept; those of the tables'
    profile are replaced.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, table in tables.items():
        path = folder / report.FILES[name]
        if path.is_file():
            kept = pd.read_csv(path)
            kept = kept[~kept["profile"].isin(table["profile"].unique())]
            table = pd.concat([kept, table], ignore_index=True) if len(kept) else table
        table.to_csv(path, index=False, float_format="%.6g")
        paths.append(path)
    return paths
