"""``make results``: the fair comparison of the paper's claims, tuned, run and recorded in ``results/``.

The protocol follows *A Metric Learning Reality Check* (Musgrave et al.,
2020) and tunes what matters most, the learning rate, with the same
black-box budget for everything compared (Melis et al., 2018):

1. **stage 1's learning rate**, tuned once on validation accuracy
   (:mod:`.tuning`, the profile's ``tuning_trials`` trials, seed 0); every
   two-stage run starts from a classifier trained at that rate;
2. **each loss on each schedule** (one-stage from ImageNet, two-stage from
   stage 1): its learning rate and margins tuned jointly, with the same
   number of trials, on the leave-one-out validation mAP
   (:func:`helpers.metrics.leave_one_out_map`);
3. every run trains a **fixed number of epochs** (no early stopping) and
   keeps its best validation epoch;
4. **five seeds** of every method at its tuned settings, one-stage and
   two-stage, a **compute-matched** one-stage double margin run that sees as
   many images as stage 1 and stage 2 together
   (:func:`compute_matched_epochs`), and the floors, all scored on the
   **test** split, with every test query's AP kept for the bootstrap over
   categories (:func:`helpers.stats.bootstrap_ci`);
5. the positive share of the contrastive losses per epoch, at the tuned and
   at the paper's margins (:func:`imbalance_rows`), and the validation noise
   of the old query protocol against leave-one-out (:func:`validation_noise_rows`).

Each trial and each run is written to ``results/`` the moment it ends
(:class:`Recorder`), so an interrupted ``make results`` resumes where it
stopped, even on a fresh clone with an empty cache.
``benchmarks/results_table.py`` (``make results``) drives :func:`run_protocol`.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from .. import config, evaluation, loss_analysis, methods, metrics, report
from ..progress import bar as tqdm
from . import runs, tuning

SEEDS = (0, 1, 2, 3, 4)
"""The training seeds of the comparison; seed 0 also runs the tuning."""
NOISE_EPOCHS = 5
"""The last epochs of a run over which :func:`validation_noise_rows` measures the spread of validation mAP."""


# --------------------------------------------------------------------------- recording

TUNED_FIELDS = ("cls_lr", "ret_lr", "pos_margin", "neg_margin", "single_margin", "triplet_margin", "tuned")
"""Profile fields the protocol sets itself: left out of :func:`settings_hash`."""


def settings_hash(profile: config.Profile) -> str:
    """A short hash of every profile field but :data:`TUNED_FIELDS`: recorded rows hold only for the same settings."""
    fields = {k: v for k, v in profile.to_dict().items() if k not in TUNED_FIELDS}
    return hashlib.sha1(json.dumps(fields, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:8]


class Recorder:
    """The tables of ``make results`` in ``folder``, one CSV each, rewritten as every trial or run ends.

    Rows carry the profile's name and the code version, extended by the
    :func:`settings_hash` of the profile (``"<code>-<settings>"``). Rows of
    other profiles are kept as they are; rows of this profile written by
    another code version or other settings are stale and are dropped on the
    first write.
    """

    def __init__(self, folder: Path, profile: str, code: str):
        self.folder, self.profile, self.code = Path(folder), profile, code
        self.tables: dict[str, pd.DataFrame] = {}
        self.began = time.perf_counter()
        self.sitting = len(self.rows("stamp"))

    def _path(self, table: str) -> Path:
        return self.folder / report.FILES[table]

    def _all(self, table: str) -> pd.DataFrame:
        if table not in self.tables:
            path = self._path(table)
            self.tables[table] = (pd.read_csv(path, dtype={"profile": str, "code": str}) if path.is_file()
                                  else pd.DataFrame(columns=["profile", "code"]))
        return self.tables[table]

    def rows(self, table: str) -> pd.DataFrame:
        """This profile's rows of ``table`` written by this code version."""
        every = self._all(table)
        return every[(every["profile"] == self.profile) & (every["code"] == self.code)].reset_index(drop=True)

    def add(self, table: str, rows: list[dict], replacing: dict | None = None) -> None:
        """Append ``rows`` (stamped with the profile and code version) to ``table`` and write it atomically.

        ``replacing`` (column -> value) first drops this profile's rows that
        match all of it. The ``stamp`` table's row of this sitting (its wall
        time so far) is rewritten with every other table.
        """
        every = self._all(table)
        kept = every[(every["profile"] != self.profile) | (every["code"] == self.code)]
        if replacing and len(kept) and all(column in kept for column in replacing):
            match = np.logical_and.reduce([kept[column] == value for column, value in replacing.items()])
            kept = kept[~(match & (kept["profile"] == self.profile))]
        new = pd.DataFrame(rows).assign(profile=self.profile, code=self.code)
        table_rows = pd.concat([kept, new], ignore_index=True) if len(kept) else new
        self.tables[table] = table_rows
        self.folder.mkdir(parents=True, exist_ok=True)
        temporary = self._path(table).with_suffix(".csv.tmp")
        table_rows.to_csv(temporary, index=False, float_format="%.6g")
        os.replace(temporary, self._path(table))
        if table != "stamp":
            self.stamp(complete=False)

    def stamp(self, complete: bool, **extra) -> None:
        """Write this sitting's row of the ``stamp`` table: its wall time so far and whether the results are complete."""
        self.add("stamp", [{"sitting": self.sitting, "wall s": round(time.perf_counter() - self.began),
                            "complete": complete, **extra}], replacing={"sitting": self.sitting})


# --------------------------------------------------------------------------- budgets

def classifier_images_per_epoch(release) -> int:
    """A classifier sees every image of ``release.classification_train`` once an epoch."""
    return len(release.classification_train)


def retrieval_images_per_epoch(release, profile: config.Profile, loss: str) -> int:
    """Images a retrieval epoch goes through: per category with two images or more, its tuples x their size.

    The triplet loss gets as many images as the pair losses, in two thirds as
    many tuples (:func:`helpers.train.tuple_budget`).
    """
    from .. import train

    method = methods.get(loss)
    per_category, _ = train.tuple_budget(method, profile.pairs_per_category, profile.ret_batch_size)
    counts = np.bincount(release.retrieval_train.labels)
    return per_category * method.tuple_size * int((counts >= 2).sum())


def compute_matched_epochs(release, profile: config.Profile) -> int:
    """Retrieval epochs in which one-stage training sees as many images as stage 1 and a two-stage run together."""
    per_epoch = retrieval_images_per_epoch(release, profile, "double")
    total = profile.cls_epochs * classifier_images_per_epoch(release) + profile.ret_epochs * per_epoch
    return max(1, math.ceil(total / per_epoch))


def compute_matched_profile(profile: config.Profile, epochs: int) -> config.Profile:
    """``profile`` stretched to ``epochs`` retrieval epochs, its learning-rate step stretched in proportion.

    The compute-matched run decays its learning rate at the same fraction of
    its budget as the runs it is compared with (after 8 of 12 epochs, say,
    becomes after 13 of 19).
    """
    step = max(1, round(epochs * profile.ret_lr_step / profile.ret_epochs))
    return replace(profile, ret_epochs=epochs, ret_lr_step=step)


# --------------------------------------------------------------------------- tuning

def _trial_outcome(run: runs.Run) -> dict:
    """What a tuning trial records of its run besides the curve: the kept epoch and score, the key, the time."""
    return {"best epoch": run.best_epoch, "best score": run.best_score, "key": run.key,
            "train s": round(run.wall_time, 1)}


def _stage1_trainer(release, profile: config.Profile, seed: int) -> Callable:
    def train(settings: dict, report_epoch: Callable) -> dict:
        run = runs.train_classifier(release, replace(profile, cls_lr=settings["lr"]), seed=seed, progress=False,
                                    on_epoch_end=lambda row: report_epoch(row["epoch"], row["val_accuracy"]))
        return _trial_outcome(run)
    return train


def _retrieval_trainer(release, loss: str, init, profile: config.Profile, seed: int) -> Callable:
    method = methods.get(loss)

    def train(settings: dict, report_epoch: Callable) -> dict:
        margins = {name: settings[name] for name in method.margin_fields}
        run = runs.train_retrieval(release, loss, init, profile, seed=seed, lr=settings["lr"], margins=margins,
                                   progress=False,
                                   on_epoch_end=lambda row: report_epoch(row["epoch"], row["val_mAP"]))
        return _trial_outcome(run)
    return train


def tune_all(release, profile: config.Profile, recorder: Recorder, *, seed: int = 0,
             on_trial: Callable | None = None) -> config.Profile:
    """Run (or resume) every study; return ``profile`` with the chosen ``cls_lr`` and ``tuned`` settings."""
    recorded = recorder.rows("tuning")
    trials = profile.tuning_trials

    def study(name: str, suggest: Callable, train: Callable, epochs: int) -> pd.DataFrame:
        mine = recorded[recorded["study"] == name] if len(recorded) else recorded
        return tuning.run_study(name, suggest, train, epochs=epochs, trials=trials, seed=seed,
                                recorded=mine.to_dict("records"), record=lambda row: recorder.add("tuning", [row]),
                                on_trial=on_trial)

    stage1_rows = study(report.STAGE1_STUDY, tuning.search_space("stage 1"), _stage1_trainer(release, profile, seed),
                        profile.cls_epochs)
    profile = replace(profile, cls_lr=tuning.best_settings(stage1_rows, ["lr"])["lr"])
    stage1 = runs.train_classifier(release, profile, seed=seed, progress=False)
    tuned: dict = {schedule: {} for schedule in config.SCHEDULES}
    for schedule in config.SCHEDULES:
        init = "imagenet" if schedule == "one-stage" else stage1
        for loss in methods.NAMES:
            rows = study(report.study_name(loss, schedule), tuning.search_space("retrieval", loss),
                         _retrieval_trainer(release, loss, init, profile, seed), profile.ret_epochs)
            tuned[schedule][loss] = tuning.best_settings(rows, ["lr", *methods.get(loss).margin_fields])
    return config.check_profile(replace(profile, tuned=tuned))


def n_trials(profile: config.Profile) -> int:
    """Trials of every study together: stage 1 and each loss on each schedule."""
    return profile.tuning_trials * (1 + len(methods.NAMES) * len(config.SCHEDULES))


# --------------------------------------------------------------------------- seeds

def _test_rows(name: str, seed: int, model, release, profile: config.Profile, extra: dict) -> tuple[dict, list[dict]]:
    """A comparison row (every metric of ``model`` on the test split) and its per-query AP rows."""
    query_emb, db_emb = evaluation.embed_split(model, release.test, profile, progress=False)
    row = {"model": name, "seed": seed, **extra, **metrics.evaluate(query_emb, db_emb, release.test.ground_truth)}
    aps = metrics.average_precision(query_emb, db_emb, release.test.ground_truth, mode="trapezoid")
    per_query = [{"model": name, "seed": seed, "query": q, "category": int(label), "AP": float(ap)}
                 for q, (label, ap) in enumerate(zip(release.test.query_labels, aps))]
    return row, per_query


def last_epoch_gain(run: runs.Run) -> float:
    """The last epoch's validation score minus the best score of the epochs before it (epoch 0 included).

    Positive when the run was still improving as its budget ended, so its
    kept epoch is the last one and a longer budget might gain more; zero or
    negative once it has passed its best.
    """
    scores = run.epochs[run.val_column].to_numpy(dtype=float)
    return float(scores[-1] - scores[:-1].max())


def _run_columns(run: runs.Run, images: int) -> dict:
    columns = {"epochs trained": run.last_epoch, "best epoch": run.best_epoch,
               f"best {run.val_column}": run.best_score, "last-epoch gain": last_epoch_gain(run),
               "train s": round(float(run.wall_time), 1), "images seen": images}
    if run.kind == "retrieval":
        method = methods.get(run.config["loss"])
        columns.update(lr=run.config["lr"],
                       margins=method.describe_margins({k: run.config[k] for k in method.margin_fields}))
    return columns


def seed_jobs(release, seed: int, profile: config.Profile) -> list[tuple[str, Callable[[], tuple[dict, list]]]]:
    """``(model name, job)`` for every model of the comparison with ``seed``; ``job()`` trains (or loads) and tests it.

    ``profile`` is the tuned profile of :func:`tune_all`. The models: the
    three losses one-stage and two-stage, the compute-matched one-stage
    double margin, the ImageNet and stage-1 features, random rankings. Stage
    1 is trained (or loaded) only when a job needs it.
    """
    stage1_memo: list = []

    def stage1() -> runs.Run:
        if not stage1_memo:
            stage1_memo.append(runs.train_classifier(release, profile, seed=seed, progress=False))
        return stage1_memo[0]

    stage1_images = profile.cls_epochs * classifier_images_per_epoch(release)

    def retrieval(loss: str, schedule: str) -> Callable:
        def job():
            init = "imagenet" if schedule == "one-stage" else stage1()
            run = runs.train_retrieval(release, loss, init, profile, seed=seed, progress=False)
            images = run.last_epoch * retrieval_images_per_epoch(release, profile, loss)
            images += stage1_images if schedule == "two-stage" else 0
            return _test_rows(report.model_name(loss, schedule), seed, run.model, release, profile,
                              _run_columns(run, images))
        return job

    def matched():
        epochs = compute_matched_epochs(release, profile)
        settings = runs.default_settings(profile, "double", "imagenet")
        run = runs.train_retrieval(release, "double", "imagenet", compute_matched_profile(profile, epochs),
                                   seed=seed, lr=settings["lr"], margins=settings["margins"], progress=False)
        images = run.last_epoch * retrieval_images_per_epoch(release, profile, "double")
        return _test_rows(report.MATCHED, seed, run.model, release, profile, _run_columns(run, images))

    def stage1_features():
        run = stage1()
        return _test_rows(report.STAGE1_ROW, seed, run.model.embedding().eval(), release, profile,
                          _run_columns(run, stage1_images))

    def imagenet_features():
        return _test_rows("ImageNet features only", seed, runs.untrained_model(profile, seed=seed), release, profile,
                          {})

    def chance():
        return {"model": "random ranking", "seed": seed,
                **evaluation.chance_levels(release.test, seed=seed).to_dict()}, []

    jobs = [(report.model_name(loss, schedule), retrieval(loss, schedule))
            for schedule in config.SCHEDULES for loss in methods.NAMES]
    return jobs + [(report.MATCHED, matched), ("ImageNet features only", imagenet_features),
                   (report.STAGE1_ROW, stage1_features), ("random ranking", chance)]


# --------------------------------------------------------------------------- what the runs show

def imbalance_rows(release, profile: config.Profile, *, seed: int = 0) -> list[dict]:
    """The positive share of the loss per epoch, two-stage, for the contrastive losses at tuned and paper margins.

    The tuned runs are the comparison's seed-``seed`` runs; the paper-margin
    runs keep the tuned learning rate. One row per (run, epoch): the share of
    the summed batch losses that comes from positive pairs
    (:func:`helpers.loss_analysis.positive_share`), the same share of the
    pairs' gradient norms (:func:`helpers.train.pair_gradient_norms`: how
    hard each kind of pair pulls), and the fractions of positive and
    negative pairs with a non-zero loss.
    """
    stage1 = runs.train_classifier(release, profile, seed=seed, progress=False)
    rows = []
    for method in (m for m in methods.METHODS.values() if m.is_pair_loss):
        tuned = runs.default_settings(profile, method.name, stage1)
        for which, margins in (("tuned", tuned["margins"]), ("paper", method.margins(config.PROFILES["paper"]))):
            run = runs.train_retrieval(release, method.name, stage1, profile, seed=seed, lr=tuned["lr"],
                                       margins=margins, progress=False)
            for epoch, h in run.history.groupby("epoch"):
                rows.append({"loss": method.name, "margins": f"{which}: {method.describe_margins(margins)}",
                             "epoch": int(epoch),
                             "positive share": loss_analysis.positive_share(h["pos_loss"].sum(), h["neg_loss"].sum()),
                             "positive gradient share": loss_analysis.positive_share(h["pos_grad"].sum(),
                                                                                     h["neg_grad"].sum()),
                             "active positives": float(h["pos_active_frac"].mean()),
                             "active negatives": float(h["neg_active_frac"].mean())})
    return rows


def validation_noise_rows(release, profile: config.Profile, *, seed: int = 0, loss: str = "double") -> list[dict]:
    """Validation mAP per epoch of one two-stage run, by the query protocol and by leave-one-out.

    The run is the comparison's seed-``seed`` two-stage ``loss`` run, trained
    again without the cache so that each epoch's network can also be scored
    the way validation used to be: the split's queries (5 per category)
    against its database. One row per epoch with both scores; the spread
    over the last :data:`NOISE_EPOCHS` epochs is the noise a kept-epoch
    decision has to see through (:func:`helpers.report.validation_noise`).
    """
    stage1 = runs.train_classifier(release, profile, seed=seed, progress=False)
    recipe = runs.retrieval_recipe(release, loss, stage1, profile, seed=seed, cache=False, progress=False)
    split = release.validation
    query_protocol: list[float] = []
    prepare = recipe.prepare

    def prepare_with_queries(network):
        loader_for, step, validate, batch_weight = prepare(network)
        queries = runs.eval_inputs(network, split.queries, split.query_labels, profile, False)
        database = runs.eval_inputs(network, split.database, split.database_labels, profile, False)

        def both(top) -> float:
            embed = lambda inputs: runs.embed_inputs(top, inputs, profile, None)
            query_protocol.append(metrics.mean_average_precision(embed(queries), embed(database),
                                                                 split.ground_truth)[0])
            return validate(top)
        return loader_for, step, both, batch_weight

    run = runs.load_or_fit(replace(recipe, prepare=prepare_with_queries), cache=False, progress=False)
    return [{"loss": loss, "epoch": int(epoch), "queries": q, "leave-one-out": float(loo)}
            for epoch, q, loo in zip(run.epochs["epoch"], query_protocol, run.epochs["val_mAP"])]


# --------------------------------------------------------------------------- the whole protocol

def run_protocol(release, profile: config.Profile, seeds=SEEDS, *, folder: Path = report.RESULTS_DIR,
                 progress: bool = True) -> config.Profile:
    """Tune, train every seed, measure imbalance and noise, recording every row in ``folder``; return the tuned profile.

    Whatever ``folder`` already holds for this profile and code version is
    kept and skipped. The ``stamp`` table holds one row per sitting (its
    wall time); the last one, written at the end, marks the results complete.
    """
    recorder = Recorder(folder, profile.name, f"{runs.code_version()}-{settings_hash(profile)}")
    done = recorder.rows("comparison")
    done_keys = set(zip(done["model"], done["seed"])) if len(done) else set()
    total = n_trials(profile) + len(seeds) * len(seed_jobs(release, 0, profile)) + 2
    with tqdm(total=total, desc="make results", unit="job", disable=not progress) as bar:
        def on_trial(row: dict) -> None:
            bar.set_postfix_str(f"{row['study']}: trial {int(row['trial']) + 1}")
            bar.update()
        tuned = tune_all(release, profile, recorder, seed=seeds[0], on_trial=on_trial)
        for seed in seeds:
            for name, job in seed_jobs(release, seed, tuned):
                bar.set_postfix_str(f"seed {seed}: {name}")
                if (name, seed) not in done_keys:
                    row, per_query = job()
                    recorder.add("per_query", per_query, replacing={"model": name, "seed": seed})
                    recorder.add("comparison", [row])
                bar.update()
        for table, make in (("imbalance", lambda: imbalance_rows(release, tuned, seed=seeds[0])),
                            ("validation_noise", lambda: validation_noise_rows(release, tuned, seed=seeds[0]))):
            bar.set_postfix_str(table)
            if recorder.rows(table).empty:
                recorder.add(table, make())
            bar.update()
    recorder.stamp(complete=True, seeds=" ".join(map(str, seeds)), **{"trials per study": profile.tuning_trials})
    return tuned
