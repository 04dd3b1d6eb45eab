"""Black-box tuning with Optuna: the same number of trials for every study, seeded, resumable, every trial recorded.

A **study** tunes one thing on the validation split: stage 1's learning rate
(on validation accuracy), or one loss's learning rate and margins on one
schedule (on leave-one-out validation mAP). Every study gets the profile's
``tuning_trials`` trials:

* a **TPE sampler** (``optuna.samplers.TPESampler``) whose first
  :data:`STARTUP_TRIALS` trials are random; it is re-seeded before every
  trial from ``(seed, trial number)``, so a trial's suggestion depends only
  on the trials before it, and a study resumed from its recorded trials
  suggests exactly what an uninterrupted one would;
* a **median pruner** (``optuna.pruners.MedianPruner``): after a warm-up, a
  trial whose best score so far is below the median of the finished trials'
  scores at the same epoch stops, which spends the budget on the promising
  settings;
* every finished or pruned trial is handed to ``record`` as one row (its
  settings, its per-epoch validation curve, where it stopped), and a study
  given its recorded rows replays them instead of training them again.

:func:`search_space` states the ranges. Embeddings pass ReLU6 and MAC
pooling, so they are non-negative and L2-normalised: the distance of two of
them is at most sqrt(2) ~ 1.414, and a margin above that keeps every
negative pair active forever. The single margin and the double margin's m2
share one range up to 1.4, and m1 = ratio * m2 with the ratio from 0, so the
double margin's space holds the single margin's exactly (m1 = 0).
"""
from __future__ import annotations

import json
import math
from typing import Callable

import numpy as np
import optuna
import pandas as pd

from .. import methods, report

STARTUP_TRIALS = 3
"""Random trials before TPE models the results."""
DISTANCE_BOUND = math.sqrt(2)
"""The largest distance between two non-negative unit vectors: every margin range is stated against it."""
LOG10_LR = {"stage 1": (-4.5, -1.5), "retrieval": (-5.0, -2.0)}
"""log10 of the learning rate, searched in steps of :data:`LOG10_LR_STEP` (the winner should not sit at an edge)."""
LOG10_LR_STEP = 0.25
MARGIN_STEP = 0.05
MARGIN_RANGE = (0.1, 1.4)
"""The single margin m and the double margin's m2: up to just below the sqrt(2) bound."""
TRIPLET_RANGE = (0.05, 1.4)
POS_RATIO_RANGE = (0.0, 0.9)
POS_RATIO_STEP = 0.1
"""The double margin's m1 = ratio * m2, so m1 < m2 always and m1 = 0 is the single margin."""

optuna.logging.set_verbosity(optuna.logging.WARNING)


class Pruned(Exception):
    """Raised by a trial's reporter when the pruner stops the trial."""


def _lr(trial: optuna.Trial, stage: str) -> float:
    low, high = LOG10_LR[stage]
    return float(f"{10 ** trial.suggest_float('log10_lr', low, high, step=LOG10_LR_STEP):.3g}")


def search_space(stage: str, loss: str | None = None) -> Callable[[optuna.Trial], dict]:
    """``trial -> settings`` for stage 1 (``{"lr"}``) or a retrieval loss (``{"lr", <its margins>}``)."""
    if stage == "stage 1":
        return lambda trial: {"lr": _lr(trial, stage)}
    method = methods.get(loss)

    def suggest(trial: optuna.Trial) -> dict:
        settings = {"lr": _lr(trial, "retrieval")}
        if method.name == "single":
            settings["margin"] = round(trial.suggest_float("margin", *MARGIN_RANGE, step=MARGIN_STEP), 3)
        elif method.name == "double":
            m2 = round(trial.suggest_float("neg_margin", *MARGIN_RANGE, step=MARGIN_STEP), 3)
            ratio = round(trial.suggest_float("pos_ratio", *POS_RATIO_RANGE, step=POS_RATIO_STEP), 3)
            settings.update(pos_margin=round(ratio * m2, 3), neg_margin=m2)
        else:
            settings["margin"] = round(trial.suggest_float("margin", *TRIPLET_RANGE, step=MARGIN_STEP), 3)
        return settings

    return suggest


def _sampler(seed: int, number: int) -> optuna.samplers.TPESampler:
    """The TPE sampler for trial ``number``: seeded from ``(seed, number)`` alone."""
    derived = int(np.random.SeedSequence([seed, number]).generate_state(1)[0])
    return optuna.samplers.TPESampler(seed=derived, n_startup_trials=STARTUP_TRIALS)


def pruner(epochs: int) -> optuna.pruners.MedianPruner:
    """Median pruning after :data:`STARTUP_TRIALS` finished trials and a warm-up of a quarter of the epochs."""
    return optuna.pruners.MedianPruner(n_startup_trials=STARTUP_TRIALS, n_warmup_steps=max(1, epochs // 4))


def _replay(study: optuna.Study, row: dict) -> None:
    """Add a recorded trial to ``study``: its parameters, distributions, per-epoch curve and outcome."""
    distributions = {name: optuna.distributions.json_to_distribution(text)
                     for name, text in json.loads(row["distributions"]).items()}
    curve = json.loads(row["curve"])
    state = optuna.trial.TrialState.COMPLETE if row["state"] == "complete" else optuna.trial.TrialState.PRUNED
    study.add_trial(optuna.trial.create_trial(
        params=json.loads(row["params"]), distributions=distributions, state=state,
        value=float(row["best score"]) if state == optuna.trial.TrialState.COMPLETE else None,
        intermediate_values={epoch: score for epoch, score in enumerate(curve, start=1)}))


def _reporter(trial: optuna.Trial, curve: list[float]) -> Callable[[int, float], None]:
    """``(epoch, score) -> None``: report to Optuna, keep the curve, raise :class:`Pruned` when told to stop."""
    def report(epoch: int, score: float) -> None:
        curve.append(float(score))
        trial.report(float(score), int(epoch))
        if trial.should_prune():
            raise Pruned(f"trial {trial.number} pruned at epoch {epoch}")
    return report


def run_study(name: str, suggest: Callable[[optuna.Trial], dict], train: Callable, *, epochs: int,
              trials: int, seed: int, recorded: list[dict], record: Callable[[dict], None],
              on_trial: Callable[[dict], None] | None = None) -> pd.DataFrame:
    """Run (or resume) study ``name`` to ``trials`` trials; return one row per trial.

    ``train(settings, report)`` trains one trial with the ``settings`` of
    ``suggest(trial)`` and calls ``report(epoch, score)`` after every
    trained epoch (1, 2, ...); it returns a dict of what to record besides
    (its cache key, its training time), with the kept epoch's ``"best
    epoch"`` and ``"best score"`` where they may be epoch 0, the untrained
    network (else the best of the reported epochs). ``recorded`` holds
    this study's rows from an earlier, interrupted run: they are replayed,
    not trained. Each new row goes to ``record`` as soon as its trial ends,
    and every row (replayed or new) to ``on_trial``.
    """
    study = optuna.create_study(study_name=name, direction="maximize", pruner=pruner(epochs))
    rows = sorted(recorded, key=lambda row: int(row["trial"]))
    for row in rows:
        _replay(study, row)
        if on_trial is not None:
            on_trial(row)
    for number in range(len(rows), trials):
        study.sampler = _sampler(seed, number)
        trial = study.ask()
        settings = suggest(trial)
        curve: list[float] = []
        try:
            extra = train(settings, _reporter(trial, curve))
            state = "complete"
        except Pruned:
            extra, state = {}, "pruned"
        best = {"best epoch": int(np.argmax(curve)) + 1, "best score": max(curve)} if curve else {}
        best.update(extra)  # the trainer's own kept epoch wins: it may be epoch 0, the untrained network
        study.tell(trial, best["best score"] if state == "complete" else None,
                   state=optuna.trial.TrialState.COMPLETE if state == "complete" else optuna.trial.TrialState.PRUNED)
        row = {"study": name, "trial": number, "state": state, **settings, "epochs trained": len(curve), **best,
               "params": json.dumps(trial.params, sort_keys=True),
               "distributions": json.dumps({k: optuna.distributions.distribution_to_json(v)
                                            for k, v in trial.distributions.items()}, sort_keys=True),
               "curve": json.dumps([round(v, 6) for v in curve])}
        record(row)
        rows.append(row)
        if on_trial is not None:
            on_trial(row)
    return pd.DataFrame(rows)


def best_settings(study_rows: pd.DataFrame, setting_names) -> dict:
    """The settings of the finished trial with the best score (the earliest on a tie)."""
    complete = study_rows[study_rows["state"] == "complete"]
    if complete.empty:
        raise ValueError("no trial of the study finished: nothing to choose")
    best = complete.loc[complete["best score"].idxmax()]
    return {name: float(best[name]) for name in setting_names}


def at_edge(value: float, low: float, high: float, step: float) -> bool:
    """Whether ``value`` lies on the first or last step of ``[low, high]``: the search may have wanted to go further."""
    return value <= low + step / 2 or value >= high - step / 2


def chosen_at_edge(chosen: dict) -> list[str]:
    """The chosen settings (:func:`helpers.report.chosen_settings`) on an edge of their search range, each named.

    An edge is the first or last step of a range (:func:`at_edge`); for the
    double margin that includes m1/m2 = 0, where it is the single margin.
    """
    def lr_edge(lr: float, stage: str) -> bool:
        return at_edge(math.log10(lr), *LOG10_LR[stage], LOG10_LR_STEP)

    found = [f"stage 1 lr {report.lr_text(chosen['cls_lr'])}"] if lr_edge(chosen["cls_lr"], "stage 1") else []
    for schedule, by_loss in chosen["tuned"].items():
        for loss, settings in by_loss.items():
            where = f"{schedule} {loss}"
            if lr_edge(settings["lr"], "retrieval"):
                found.append(f"{where} lr {report.lr_text(settings['lr'])}")
            if loss == "double":
                ratio = settings["pos_margin"] / settings["neg_margin"]
                if at_edge(settings["neg_margin"], *MARGIN_RANGE, MARGIN_STEP):
                    found.append(f"{where} m2 {settings['neg_margin']:g}")
                if at_edge(ratio, *POS_RATIO_RANGE, POS_RATIO_STEP):
                    found.append(f"{where} m1/m2 {ratio:.1f}")
            else:
                low, high = TRIPLET_RANGE if loss == "triplet" else MARGIN_RANGE
                if at_edge(settings["margin"], low, high, MARGIN_STEP):
                    found.append(f"{where} m {settings['margin']:g}")
    return found
