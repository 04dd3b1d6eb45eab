"""Reading the fair comparison's results: the committed tables, their summary over seeds and the claims.

``make results`` (:mod:`helpers.machinery.protocol`) tunes every loss's
learning rate and margins on the validation split, trains every method with
five seeds and scores them on the test split; it writes :data:`FILES` under
:data:`RESULTS_DIR`. The notebooks read them back with :func:`read_results`
and show them:

* :func:`summary` and :func:`formatted`: the mean of every metric over seeds
  with its 95% Student-t interval (:mod:`helpers.stats`);
* :func:`claims` and :func:`claim_sentence`: each of the paper's claims
  (:data:`CLAIMS`) as a **paired** difference over seeds, its verdict, and a
  bootstrap interval over test categories;
* :func:`tolerance`: how far a committed number may move on another machine,
  and :func:`rerun_verdicts`: which verdicts a rerun changed, and whether
  they were firm;
  :func:`kept_last_share`, :func:`plateau`, :func:`longer_budget_sentence`
  and :func:`validation_noise`: whether the epoch budget reaches a plateau,
  what more epochs give, and how noisy validation is;
* :func:`committed_rows`: one seed's rows, to show a run without retraining it;
* :func:`chosen_settings` and :func:`chosen_sentence`: the learning rates
  and margins the tuning picked;
* :func:`stamp_note`: which profile and code version wrote the results;
* :func:`previous_comparison` and :func:`verdict_changes`: the verdicts of
  the protocol before this one, next to today's.

``DataFrame.to_markdown()`` turns any of these tables into Markdown.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import config, methods, metrics, stats

RESULTS_DIR = config.REPO_ROOT / "results"
FILES = {"tuning": "tuning.csv", "comparison": "comparison.csv", "per_query": "per_query.csv",
         "imbalance": "imbalance.csv", "validation_noise": "validation_noise.csv", "stamp": "stamp.csv"}
"""The tables ``make results`` writes under :data:`RESULTS_DIR`; ``stamp`` says whether they are complete."""
STAGE1_STUDY = "stage 1"
"""The tuning study of stage 1's learning rate (on validation accuracy)."""
TOLERANCE_SIGMAS = 3
"""A committed number holds on another machine within this many standard deviations of a difference."""


def model_name(loss: str, stage: str) -> str:
    """The row name of a method in the comparison table: ``"double, two-stage"``."""
    return f"{loss}, {stage}"


def study_name(loss: str, schedule: str) -> str:
    """The tuning study of ``loss`` trained ``schedule``: ``"double, two-stage"`` (as its model's row name)."""
    return model_name(loss, schedule)


MATCHED = model_name("double", "one-stage, compute-matched")
"""The one-stage double margin run that may see as many images as stage 1 and stage 2 together."""
STAGE1_ROW = "stage-1 features only"
"""The comparison row that carries stage 1's run (its epochs and validation accuracy)."""
FLOORS = ("ImageNet features only", STAGE1_ROW, "random ranking")
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
    file is missing, holds no rows for the profile, or the last ``make
    results`` for it has not finished (its ``stamp`` is not complete).
    """
    name = profile if isinstance(profile, str) else profile.name
    command = f"run `make results PROFILE={name}` (python benchmarks/results_table.py)"
    tables = {}
    for key, file in FILES.items():
        path = Path(folder) / file
        table = (pd.read_csv(path, dtype={"profile": str, "code": str}) if path.is_file()
                 else pd.DataFrame(columns=["profile"]))
        table = table[table["profile"] == name]
        if table.empty:
            raise FileNotFoundError(f"{path} holds no results for the {name} profile; {command}")
        tables[key] = table.reset_index(drop=True)
    stamp = tables["stamp"]
    if not bool(stamp["complete"].astype(str).str.lower().eq("true").iloc[-1]):
        raise FileNotFoundError(f"make results for the {name} profile has not finished "
                                f"({len(tables['comparison'])} test rows recorded so far); {command}: it resumes")
    return tables


def chosen_settings(tuning: pd.DataFrame) -> dict:
    """What the tuning chose: ``{"cls_lr": ..., "tuned": {schedule: {loss: {"lr", margins}}}}``.

    Each study's finished trial with the best validation score (the
    earliest on a tie), as :func:`helpers.machinery.protocol.tune_all` picks it.
    """
    def best(study: str) -> pd.Series:
        rows = tuning[(tuning["study"] == study) & (tuning["state"] == "complete")]
        return rows.loc[rows["best score"].idxmax()]

    tuned = {schedule: {loss: {name: float(best(study_name(loss, schedule))[name])
                               for name in ("lr", *methods.get(loss).margin_fields)}
                        for loss in methods.NAMES} for schedule in config.SCHEDULES}
    return {"cls_lr": float(best(STAGE1_STUDY)["lr"]), "tuned": tuned}


def chosen_sentence(chosen: dict, at_edge: list[str]) -> str:
    """The chosen settings (:func:`chosen_settings`) in a few sentences, and which of them sit on an edge of their range.

    ``at_edge`` names those settings
    (:func:`helpers.machinery.tuning.chosen_at_edge`); an empty list is said too.
    """
    def one(loss: str, settings: dict) -> str:
        margins = {name: settings[name] for name in methods.get(loss).margin_fields}
        return f"{loss} lr {lr_text(settings['lr'])} ({methods.get(loss).describe_margins(margins)})"

    schedules = " ".join(f"{schedule.capitalize()}: " + "; ".join(one(loss, s) for loss, s in by_loss.items()) + "."
                         for schedule, by_loss in chosen["tuned"].items())
    edges = (f"On the edge of its range: {', '.join(at_edge)}; the search may have wanted to go further."
             if at_edge else "No winner sits on the edge of its range.")
    return f"Chosen: stage 1 lr {lr_text(chosen['cls_lr'])}. {schedules} {edges}"


def lr_text(lr: float) -> str:
    """A learning rate as it is written: ``3.16e-4``, ``1e-3``."""
    mantissa, exponent = f"{lr:.2e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


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


def _mean_over_seeds_per_query(per_query: pd.DataFrame, model: str) -> pd.Series:
    rows = per_query[per_query["model"] == model]
    return rows.groupby(["category", "query"])["AP"].mean()


def claims(comparison: pd.DataFrame, metric: str = "mAP (trapezoid)",
           per_query: pd.DataFrame | None = None) -> pd.DataFrame:
    """Each claim of :data:`CLAIMS` as a paired difference over seeds, with its interval and verdict.

    The verdict reads the **seed** interval (paired t over training seeds).
    ``tolerance`` is how far the paired difference may move when every seed
    is rerun on another machine (:func:`helpers.stats.rerun_tolerance`,
    :data:`TOLERANCE_SIGMAS` standard deviations), and ``firmness`` says
    whether the verdict survives such a move (:func:`helpers.stats.firmness`:
    firm, fragile or open).
    With ``per_query`` (the per-query test APs, trapezoid) each claim also
    gets ``boot low``/``boot high``: the bootstrap interval over test
    categories of the per-query AP difference averaged over seeds
    (:func:`helpers.stats.bootstrap_ci`), the variation due to which test
    categories were drawn.
    """
    by_model = comparison.pivot_table(index="seed", columns="model", values=metric)
    rows = []
    for claim, a, b in CLAIMS:
        difference = stats.paired_difference(by_model[a], by_model[b])
        allowed = stats.rerun_tolerance(by_model[a] - by_model[b], TOLERANCE_SIGMAS)
        row = {"claim": claim, "a": a, "b": b, "mean a": float(by_model[a].mean()),
               "mean b": float(by_model[b].mean()), "difference": difference["mean"],
               "ci": difference["ci"], "low": difference["low"], "high": difference["high"],
               "seeds a wins": f"{difference['wins']}/{difference['n']}", "p": difference["p"],
               "verdict": stats.verdict(difference), "tolerance": allowed,
               "firmness": stats.firmness(difference, allowed)}
        if per_query is not None:
            gap = _mean_over_seeds_per_query(per_query, a) - _mean_over_seeds_per_query(per_query, b)
            boot = stats.bootstrap_ci(gap.to_numpy(), gap.index.get_level_values("category"))
            row.update({"boot low": boot["low"], "boot high": boot["high"]})
        rows.append(row)
    return pd.DataFrame(rows).set_index("claim")


def rerun_verdicts(comparison: pd.DataFrame, rerun: pd.DataFrame, metric: str = "mAP (trapezoid)") -> pd.DataFrame:
    """The claims' verdicts with some runs trained again (``rerun``: ``model``, ``seed``, ``metric``) in place of theirs.

    One row per claim: the committed verdict and its ``firmness``, the
    verdict with the rerun rows, whether it is the same, and whether the
    change (if any) is allowed: only a **firm** verdict must survive a rerun
    (:func:`helpers.stats.firmness`).
    """
    key = ["model", "seed"]
    replaced = comparison.set_index(key)
    replaced.loc[rerun.set_index(key).index, metric] = rerun.set_index(key)[metric]
    before, after = claims(comparison, metric), claims(replaced.reset_index(), metric)
    out = pd.DataFrame({"committed": before["verdict"], "firmness": before["firmness"],
                        "with the rerun": after["verdict"]})
    out["same"] = out["committed"] == out["with the rerun"]
    out["allowed"] = out["same"] | (out["firmness"] != "firm")
    return out


def seed_spread(comparison: pd.DataFrame, metric: str = "mAP (trapezoid)") -> float:
    """The pooled standard deviation over seeds of ``metric``, over the trained models (floors left out)."""
    trained = comparison[~comparison["model"].isin(FLOORS)]
    variances = trained.groupby("model")[metric].var(ddof=1).dropna()
    sizes = trained.groupby("model")[metric].size().loc[variances.index]
    return float(np.sqrt(((sizes - 1) * variances).sum() / (sizes - 1).sum()))


def tolerance(comparison: pd.DataFrame, metric: str = "mAP (trapezoid)", n_seeds: int = 1) -> float:
    """How far a number may move on another machine: :data:`TOLERANCE_SIGMAS` x sqrt(2) x :func:`seed_spread` / sqrt(n).

    Another processor rounds differently, and a different rounding sends
    training down another path, much as another seed does; two such runs
    differ by about sqrt(2) seed standard deviations. ``n_seeds`` > 1 gives
    the tolerance of a mean over that many seeds.
    """
    return stats.rerun_move(seed_spread(comparison, metric), n_seeds, TOLERANCE_SIGMAS)


def kept_last_share(comparison: pd.DataFrame) -> float:
    """The share of the trained retrieval runs whose kept (best validation) epoch is their last one."""
    runs_ = comparison[comparison["model"].map(run_group).isin([*config.SCHEDULES, "compute-matched"])]
    return float((runs_["best epoch"] == runs_["epochs trained"]).mean())


PLATEAU_TARGET = 0.10
"""The budget should be long enough that fewer than this share of the final runs keep their last epoch."""


def run_group(model: str) -> str | None:
    """Which group of trained runs a comparison row belongs to: a schedule, ``"compute-matched"``, ``"stage 1"`` or None."""
    if model == MATCHED:
        return "compute-matched"
    if model == STAGE1_ROW:
        return "stage 1"
    for schedule in config.SCHEDULES:
        if model in [model_name(loss, schedule) for loss in methods.NAMES]:
            return schedule
    return None


def plateau(comparison: pd.DataFrame) -> pd.DataFrame:
    """Per group of trained runs (:func:`run_group`): how many, the share that kept their last epoch, its gain.

    The last-epoch gain is the last epoch's validation score minus the best
    before it (validation mAP; validation accuracy for stage 1): positive
    while a run still improved as its budget ended. Its median and largest
    value per group are NaN when the results predate that column.
    """
    gain = comparison["last-epoch gain"] if "last-epoch gain" in comparison else np.nan
    groups = (comparison.assign(group=comparison["model"].map(run_group), gain=gain,
                                kept=comparison["best epoch"] == comparison["epochs trained"])
              .dropna(subset=["group"]).groupby("group"))
    table = pd.DataFrame({"runs": groups.size(), "kept last epoch": groups["kept"].mean(),
                          "median last-epoch gain": groups["gain"].median(),
                          "largest last-epoch gain": groups["gain"].max(),
                          "epochs": groups["epochs trained"].median()})
    order = [group for group in (*config.SCHEDULES, "compute-matched", "stage 1") if group in table.index]
    return table.loc[order].rename_axis("group")


def plateau_sentence(comparison: pd.DataFrame) -> str:
    """The plateau check in words: the retrieval runs' kept-last share against the target, then each group's.

    A group reads "one-stage: 87% of 15 runs (12 epochs), median gain
    +0.0019 (largest +0.0049)": the share that kept their last epoch, and
    what that epoch added to the best before it (validation mAP; points of
    validation accuracy for stage 1).
    """
    share = kept_last_share(comparison)
    verdict = (f"under the {PLATEAU_TARGET:.0%} the budget aims at" if share < PLATEAU_TARGET else
               f"more than the {PLATEAU_TARGET:.0%} the budget aims at: a run whose last epoch is its best was "
               "still improving when its budget ended, and its score is a lower bound")
    parts = []
    for group, row in plateau(comparison).iterrows():
        runs_, scale = int(row["runs"]), 100 if group == "stage 1" else 1
        part = f"{group}: {row['kept last epoch']:.0%} of {runs_} run{'s' if runs_ != 1 else ''} ({int(row['epochs'])} epochs)"
        if np.isfinite(row["median last-epoch gain"]):
            digits = 1 if group == "stage 1" else 4
            part += (f", median gain {scale * row['median last-epoch gain']:+.{digits}f} "
                     f"(largest {scale * row['largest last-epoch gain']:+.{digits}f})")
        parts.append(part)
    return (f"{share:.0%} of the retrieval runs kept their last epoch, {verdict}. By group, with what the last epoch "
            "added to the best before it (validation mAP; for stage 1, points of validation accuracy): "
            + "; ".join(parts) + ".")


def longer_budget_sentence(comparison: pd.DataFrame, metric: str = "mAP (trapezoid)") -> str:
    """What more epochs gave the one-stage double margin: the compute-matched run against the one-stage run, in words.

    Both are the one-stage double margin at the same settings; the
    compute-matched run only trains longer. The differences are means over
    the seeds both have, of the best validation mAP and of the test ``metric``.
    """
    short, long = (comparison[comparison["model"] == name].set_index("seed")
                   for name in (model_name("double", "one-stage"), MATCHED))
    seeds = short.index.intersection(long.index)
    if not len(seeds):
        return ""
    val = float((long.loc[seeds, "best val_mAP"] - short.loc[seeds, "best val_mAP"]).mean())
    test = float((long.loc[seeds, metric] - short.loc[seeds, metric]).mean())
    return (f"The compute-matched run is the one-stage double margin trained "
            f"{int(long['epochs trained'].median())} epochs instead of {int(short['epochs trained'].median())}: "
            f"its kept validation mAP is {val:+.3f} above the shorter run's and its test {metric} {test:+.3f} "
            f"(means over {len(seeds)} seeds), a measure of what the one-stage runs still lack at "
            f"{int(short['epochs trained'].median())} epochs.")


def validation_noise(table: pd.DataFrame, last: int = 5) -> pd.DataFrame:
    """Per validation protocol, the spread of validation mAP over a run's ``last`` epochs.

    Columns: the standard deviation over those epochs, the slope of a
    straight line fitted to them (mAP per epoch: whether the run still rises),
    the standard deviation around that line (the noise once the trend is taken
    out) and the mean absolute change from one epoch to the next.
    """
    tail = table.sort_values("epoch").tail(last)
    rows = {}
    for protocol in ("queries", "leave-one-out"):
        values = tail[protocol].to_numpy(dtype=float)
        epochs = tail["epoch"].to_numpy(dtype=float)
        line = np.polyfit(epochs, values, 1)
        residuals = values - np.polyval(line, epochs)
        rows[protocol] = {"std over epochs": float(values.std(ddof=1)), "trend per epoch": float(line[0]),
                          "std around the trend": float(np.sqrt((residuals ** 2).sum() / (len(values) - 2))),
                          "mean epoch-to-epoch change": float(np.abs(np.diff(values)).mean())}
    out = pd.DataFrame(rows).T
    out.index.name = f"validation mAP, last {last} epochs"
    return out


PREVIOUS_DIR = RESULTS_DIR / "previous"
"""The comparison of the protocol before the tuned one, kept to show what tuning changed.

That protocol tuned the margins alone, on a six-point grid per loss, two-stage;
trained at fixed, untuned learning rates (stage 1 at 1e-3, every retrieval
run at 1e-4); stopped a run after 3 (stage 1) or 2 (retrieval) epochs without
gain in validation, scored on 100 queries; and ran three seeds.
"""


def previous_comparison(profile: config.Profile | str, folder: Path = PREVIOUS_DIR) -> pd.DataFrame:
    """The earlier protocol's comparison rows for ``profile`` (empty when the folder holds none)."""
    name = profile if isinstance(profile, str) else profile.name
    path = Path(folder) / FILES["comparison"]
    if not path.is_file():
        return pd.DataFrame()
    table = pd.read_csv(path, dtype={"profile": str, "code": str})
    return table[table["profile"] == name].reset_index(drop=True)


def verdict_changes(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """Two :func:`claims` tables side by side: each claim's paired difference and verdict, and whether it changed."""
    out = pd.DataFrame({"difference before": before["difference"], "verdict before": before["verdict"],
                        "seeds before": before["seeds a wins"].str.split("/").str[1].astype(int),
                        "difference now": after["difference"], "verdict now": after["verdict"]})
    out["changed"] = out["verdict before"] != out["verdict now"]
    return out


def formatted(summary_table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """A :func:`summary` table as ``"0.556 ± 0.012"`` strings, one column per metric."""
    metrics_ = list(dict.fromkeys(summary_table.columns.get_level_values(0)))
    return pd.DataFrame({m: [f"{mean:.{digits}f} ± {ci:.{digits}f}" if np.isfinite(ci) else f"{mean:.{digits}f}"
                             for mean, ci in zip(summary_table[(m, "mean")], summary_table[(m, "ci")])]
                         for m in metrics_}, index=summary_table.index)


def claim_sentence(claim: str, row: pd.Series, metric: str = "mAP (trapezoid)") -> str:
    """One Markdown bullet that states a claim's verdict from its paired difference (:func:`claims`).

    The verdict is the seed interval's; the bootstrap interval over test
    categories follows it in brackets when the row has one.
    """
    interval = f"[{row['low']:+.3f}, {row['high']:+.3f}]"
    reading = {"holds": "**holds**: the whole interval is above zero",
               "reversed": "is **reversed**: the whole interval is below zero",
               "not resolved": "is **not resolved**: the interval contains zero"}[row["verdict"]]
    return (f"* *{claim}* {reading}. {metric}: {row['a']} {row['mean a']:.3f} against {row['b']} "
            f"{row['mean b']:.3f}, paired difference {row['difference']:+.3f}, 95% interval over seeds {interval}"
            + (f" (over test categories [{row['boot low']:+.3f}, {row['boot high']:+.3f}])" if "boot low" in row
               else "") + f"; {row['a']} ahead in {row['seeds a wins']} seeds." + firmness_note(row))


def firmness_note(row: pd.Series) -> str:
    """What a claim's ``firmness`` (:func:`claims`) means for a rerun on another machine, or "" without one."""
    if "firmness" not in row:
        return ""
    tolerance = f"the difference's tolerance ±{row['tolerance']:.3f}"
    return {"firm": f" Firm: the interval clears zero by more than {tolerance}, so a rerun elsewhere reads the same.",
            "fragile": f" Fragile: the interval clears zero by less than {tolerance}; a rerun on another machine "
                       "may read it as not resolved.",
            "open": " Open: a rerun on another machine, or more seeds, may resolve it either way."}[row["firmness"]]


def stamp_note(stamp: pd.DataFrame, code_version: str) -> str:
    """Where the results came from: the profile, the code version and the wall time of ``make results``.

    ``stamp`` is the ``stamp`` table of :func:`read_results` (one row per
    sitting of ``make results``); ``code_version`` is the current one
    (``helpers.machinery.runs.code_version()``): the note says whether the
    results were written by it.
    """
    code, wall = stamp["code"].iloc[-1].split("-")[0], float(stamp["wall s"].sum())
    same = ("the current one" if code == code_version else
            f"**not** the current {code_version}: run `make results` before relying on it")
    return (f"Read from `results/`, written by `make results` for the {stamp['profile'].iloc[-1]} profile in "
            f"{wall / 60:.0f} min by code version {code} ({same}).")
