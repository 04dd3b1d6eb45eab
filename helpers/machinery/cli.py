"""The command line: ``python -m helpers <command>`` trains, evaluates and indexes runs without a notebook.

Four commands, each a thin layer over the functions the notebooks call:

* ``train-classifier``: stage 1, :func:`helpers.machinery.runs.train_classifier`;
* ``train-retrieval``: stage 2 or one-stage training, :func:`helpers.machinery.runs.train_retrieval`
  (with ``--init classifier`` it trains or loads stage 1 first);
* ``evaluate``: the paper's metrics of a retrieval run on the validation or test split;
* ``build-index``: a FAISS index (:mod:`helpers.search`) over a split's database.

Runs go through the same load-or-train cache as the notebooks (``cache/runs/``,
moved by ``FIREARM_CACHE``): a command asked for a run the notebooks trained
loads it, and the other way round. ``evaluate`` and ``build-index`` take the
options of ``train-retrieval`` and train or load exactly that run. The data
are those of the notebooks: the real Firearm 14k when ``FIREARM_DATA`` is set,
otherwise the profile's synthetic release with data seed
``config.DEFAULT_SEED``; ``--seed`` is the training seed only.

``--set FIELD=VALUE`` overrides a field of :class:`helpers.config.Profile` for
every run of the command (stage 1 included); ``--epochs`` and the margin
options change only the run the command is about. A retrieval run's learning
rate and margins are those ``make results`` tuned for its loss and schedule
(the profile's ``tuned``), unless the command sets them (the margin options,
``--set ret_lr=...`` or ``--set`` of a margin field). What the command prints
and writes about a run is its kept epoch, the one with the best validation
score, whose weights the run holds. ``--out DIR`` writes
``<command>.json`` (what was run: keys, cache folders, metrics) and
``<command>.csv`` (the epochs table of a training command, the metrics of the
others); ``build-index`` also writes ``index.faiss`` and ``database.txt``.

Launched by ``torchrun --nproc_per_node=N -m helpers train-...`` the training
commands train data-parallel (:mod:`helpers.machinery.distributed`): every process
trains its slice of each batch, and only rank 0 prints, writes the cache
entry and the ``--out`` files. The run and its cache key are those of the
same command run in one process.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import struct
import sys
import time
import zlib
from pathlib import Path

from .. import config, methods
from . import cache, lifeline

INIT_NAMES = ("random", "imagenet", "classifier")
SPLITS = ("validation", "test")
INDEX_KINDS = ("exact", "ivf", "ivfpq")
DEFAULT_TOP_K = 100

_EXAMPLES = {
    "train-classifier": "python -m helpers train-classifier --profile tutorial --seed 0",
    "train-retrieval": "python -m helpers train-retrieval --profile tutorial --loss double --init classifier",
    "evaluate": "python -m helpers evaluate --loss triplet --init imagenet --split test --out results/cli",
    "build-index": ("python -m helpers build-index --loss double --init classifier --index ivfpq "
                    "--nprobe 8 --out results/index"),
    "torchrun": ("torchrun --standalone --nproc_per_node=4 -m helpers train-retrieval --profile paper "
                 "--init classifier --device cuda"),
}


# --------------------------------------------------------------------------- argument types
def _converted(text: str, convert, expected: str):
    """``convert(text)``, or the argparse error "expected <expected>, got <text>"."""
    try:
        return convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


def _nonnegative_int(text: str) -> int:
    value = _converted(text, int, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = _nonnegative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _finite_float(text: str, zero_allowed: bool) -> float:
    """A finite number above 0 (or at least 0 when ``zero_allowed``), else an argparse error."""
    bound = ">= 0" if zero_allowed else "> 0"
    value = _converted(text, float, f"a number {bound}")
    if not (value >= 0 if zero_allowed else value > 0) or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number {bound}, got {text!r}")
    return value


def _nonnegative_float(text: str) -> float:
    return _finite_float(text, zero_allowed=True)


def _positive_float(text: str) -> float:
    return _finite_float(text, zero_allowed=False)


def _refine_factor(text: str) -> float:
    value = _positive_float(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a k_factor >= 1, got {text!r}")
    return value


def _out_folder(text: str) -> Path:
    """``--out``: a folder that exists or can be created, checked before any work is done."""
    path = Path(text).expanduser()
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise argparse.ArgumentTypeError(f"{existing} is a file, not a folder to write {path.name or text} into")
    if existing is not None and not os.access(existing, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write into {existing}: permission denied")
    return path


def _device(text: str) -> str:
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"not a torch device: {text!r}; expected e.g. cpu, cuda, cuda:1 "
                                         "or mps") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"{text!r} is a torch device this command cannot train on; expected cpu, "
                                         "cuda, cuda:N or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r} asked for, but CUDA is not available on this machine")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise argparse.ArgumentTypeError(f"{text!r} asked for, but Apple MPS is not available on this machine")
    return text


def _init(text: str) -> str:
    if text in INIT_NAMES:
        return text
    from . import runs

    if not runs.is_finished(Path(text)):
        raise argparse.ArgumentTypeError(
            f"expected one of {', '.join(INIT_NAMES)} or the cache folder of a finished stage-1 run "
            f"(holding {', '.join(runs.RUN_FILES)}); {text!r} is neither")
    return text


_SETTABLE = {f.name: f for f in dataclasses.fields(config.Profile) if f.name != "name"}


def _parse_value(field: dataclasses.Field, text: str):
    """``text`` as a value of a Profile field, following its annotation (e.g. ``int | None``)."""
    annotation = str(field.type).replace("typing.", "").replace(" ", "")
    options = annotation.split("|")
    if text.strip().lower() == "none":
        if "None" in options or "Optional" in annotation:
            return None
        raise ValueError("None is not allowed for this field")
    for option in options:
        if option == "bool":
            if text.lower() in ("true", "1", "yes", "false", "0", "no"):
                return text.lower() in ("true", "1", "yes")
        elif option == "int":
            try:
                return int(text)
            except ValueError:
                pass
        elif option == "float":
            try:
                return float(text)
            except ValueError:
                pass
        elif option.startswith("tuple["):
            try:
                parts = tuple(int(p) for p in text.split(","))
            except ValueError:
                continue
            if len(parts) == option.count(",") + 1:
                return parts
        elif option == "str":
            return text
    raise ValueError(f"cannot read {text!r} as {field.type}")


def _profile_override(text: str) -> tuple[str, object]:
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE, got {text!r}")
    if name not in _SETTABLE:
        hint = "; pick the profile itself with --profile" if name == "name" else ""
        raise argparse.ArgumentTypeError(f"unknown profile field {name!r}{hint}; expected one of "
                                         f"{', '.join(_SETTABLE)}")
    try:
        return name, _parse_value(_SETTABLE[name], value.strip())
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{name}: {error}") from None


# --------------------------------------------------------------------------- the parser
class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the line breaks of descriptions and epilogs; wraps argument help as usual."""


def _common_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("common options")
    group.add_argument("--profile", choices=sorted(config.PROFILES), default=None,
                       help=f"profile of sizes and schedules (default: ${config.PROFILE_ENV}, else tutorial)")
    group.add_argument("--seed", type=_nonnegative_int, default=config.DEFAULT_SEED,
                       help=f"training seed (default: {config.DEFAULT_SEED}); the synthetic data keep "
                            f"their seed, {config.DEFAULT_SEED}, as in the notebooks")
    group.add_argument("--out", type=_out_folder, default=None, metavar="DIR",
                       help="folder to write a summary of what was done into: <command>.json and "
                            "<command>.csv (default: print only)")
    group.add_argument("--device", type=_device, default=None,
                       help="torch device to train and embed on, e.g. cpu, cuda, cuda:1, mps "
                            "(default: CUDA, then MPS, then CPU)")
    group.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    group.add_argument("--set", dest="overrides", type=_profile_override, action="append", default=[],
                       metavar="FIELD=VALUE",
                       help="advanced, repeatable: override one field of the profile for every run of the "
                            "command (stage 1 included), which gives the runs new cache keys; e.g. "
                            "--set ret_batch_size=16, --set images_per_category=6,14, "
                            f"--set embedding_dim=none. Fields: {', '.join(_SETTABLE)}")


def _retrieval_options(parser: argparse.ArgumentParser, what: str) -> None:
    group = parser.add_argument_group(f"the retrieval run {what}")
    group.add_argument("--loss", choices=methods.NAMES, default="double",
                       help="the loss: " + ", ".join(f"{m.name} ({m.label})" for m in methods.METHODS.values())
                            + " (default: double)")
    group.add_argument("--init", type=_init, default=None, metavar="{random,imagenet,classifier,PATH}",
                       help="starting weights: random; imagenet (backbones with ImageNet weights); "
                            "classifier (train or load stage 1 first, with the same profile, --set and "
                            "seed); or PATH, the cache folder of a finished stage-1 run (default: imagenet "
                            "if the profile sets weights, else random)")
    group.add_argument("--margin", type=_positive_float, default=None,
                       help="margin of the single margin or triplet loss (default: the one make results tuned for the "
                            "loss and schedule, else the profile's single_margin or triplet_margin)")
    group.add_argument("--pos-margin", type=_nonnegative_float, default=None,
                       help="positive margin m1 of the double margin loss, 0 or more (0 makes it the single "
                            "margin loss; default: the tuned one, else the profile's pos_margin)")
    group.add_argument("--neg-margin", type=_positive_float, default=None,
                       help="negative margin m2 of the double margin loss, above m1 (default: the "
                            "tuned one, else the profile's neg_margin)")
    group.add_argument("--epochs", type=_nonnegative_int, default=None,
                       help="at most this many retrieval epochs (default: the profile's ret_epochs; "
                            "training stops earlier after ret_patience epochs without a better validation "
                            "mAP and keeps its best epoch); 0 keeps the starting weights, e.g. the stage-1 "
                            "features alone")


def _subparser(subparsers, name: str, help: str, description: str) -> argparse.ArgumentParser:
    return subparsers.add_parser(name, help=help, description=description, formatter_class=_Formatter,
                                 epilog=f"example:\n  {_EXAMPLES[name]}")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of the command line, with one subparser per command."""
    parser = argparse.ArgumentParser(
        prog=prog, formatter_class=_Formatter,
        description="Train, evaluate and index the DeepFirearm models without a notebook.\n\n"
                    "Runs share the notebooks' load-or-train cache (cache/runs/, or $FIREARM_CACHE): asking\n"
                    "for a run that is already trained loads it. Data: $FIREARM_DATA (the real Firearm 14k)\n"
                    "if set, else the profile's synthetic release.",
        epilog="examples:\n" + "\n".join(f"  {example}" for example in _EXAMPLES.values())
               + f"\n\n'{prog or 'python -m helpers'} COMMAND --help' describes the options of a command.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    parser.commands = subparsers.choices  # name -> subparser, for errors about a command's options
    sub = _subparser(subparsers, "train-classifier", "stage 1: train (or load) the classifier",
                     "Stage 1: train a classifier of the training categories (class-weighted cross entropy),\n"
                     "or load it from the cache.")
    _common_options(sub)
    group = sub.add_argument_group("the classifier run")
    group.add_argument("--epochs", type=_positive_int, default=None,
                       help="at most this many classification epochs (default: the profile's cls_epochs; "
                            "training stops earlier after cls_patience epochs without a better validation "
                            "accuracy and keeps its best epoch)")

    sub = _subparser(subparsers, "train-retrieval", "stage 2 or one-stage: train (or load) an embedding",
                     "Train an embedding network with a pair or triplet loss (stage 2 from a classifier, or\n"
                     "one-stage from random or ImageNet weights), or load it from the cache.")
    _common_options(sub)
    _retrieval_options(sub, "to train")

    sub = _subparser(subparsers, "evaluate", "the paper's metrics of a retrieval run on a split",
                     "Train or load the retrieval run that train-retrieval would, embed a split with it and\n"
                     "report mAP (trapezoid and standard AP) and Recall@K for K = "
                     + ", ".join(map(str, _default_ks())) + ".")
    _common_options(sub)
    _retrieval_options(sub, "to evaluate (trained or loaded as train-retrieval would)")
    sub.add_argument_group("the evaluation").add_argument(
        "--split", choices=SPLITS, default="test", help="the split to evaluate on (default: test)")

    sub = _subparser(subparsers, "build-index", "a FAISS index over a split's database",
                     "Train or load the retrieval run that train-retrieval would, embed a split's database\n"
                     "with it and build a FAISS index (exact, IVF or IVF-PQ) written to --out. Reported: how\n"
                     "much of the exact top-k the index returns, and mAP from its top-k against the exact\n"
                     "top-k and the full ranking.")
    _common_options(sub)
    _retrieval_options(sub, "whose embeddings to index (trained or loaded as train-retrieval would)")
    group = sub.add_argument_group("the index")
    group.add_argument("--split", choices=SPLITS, default="test",
                       help="whose database to index and whose queries to score (default: test)")
    group.add_argument("--index", choices=INDEX_KINDS, default="exact",
                       help="exact (IndexFlatIP), ivf (IndexIVFFlat) or ivfpq (IndexIVFPQ) (default: exact)")
    group.add_argument("--nlist", type=_positive_int, default=None,
                       help="IVF cells (default: about 4 sqrt(n), at most n / 39)")
    group.add_argument("--nprobe", type=_positive_int, default=None,
                       help="IVF cells scanned per query, at most nlist (default: min(8, nlist))")
    group.add_argument("--m", type=_positive_int, default=None,
                       help="IVF-PQ sub-quantizers, bytes per vector at 8 bits; must divide the "
                            "embedding dim (default: 16)")
    group.add_argument("--nbits", type=_positive_int, default=None,
                       help="IVF-PQ bits per sub-quantizer, 1 to 16; needs at least 2**nbits database "
                            "vectors (default: 8)")
    group.add_argument("--refine", type=_refine_factor, default=None, metavar="K_FACTOR",
                       help="re-rank K_FACTOR * k candidates of an approximate index by their exact score "
                            "(IndexRefineFlat; default: no re-ranking)")
    group.add_argument("--k", type=_positive_int, default=None,
                       help=f"results per query that the metrics use (default: {DEFAULT_TOP_K}, at most the "
                            "database size)")
    return parser


def _default_ks() -> tuple[int, ...]:
    from ..metrics import DEFAULT_KS

    return DEFAULT_KS


# --------------------------------------------------------------------------- checks across options
def _profile_and_overrides(args, error) -> tuple[config.Profile, dict]:
    """The profile of every run of the command (--profile and --set), and the overrides of its own run."""
    overrides = dict(args.overrides)
    if args.profile is None:  # the edge: the one place the command line resolves the profile
        profile = config.active_profile(**overrides)
    else:
        profile = config.get_profile(args.profile, **overrides)
    own = {}
    if args.command == "train-classifier":
        if args.epochs is not None:
            own["cls_epochs"] = args.epochs
    else:
        method = methods.get(args.loss)
        given = {"margin": args.margin, "pos_margin": args.pos_margin, "neg_margin": args.neg_margin}
        flags = {"margin": "--margin", "pos_margin": "--pos-margin", "neg_margin": "--neg-margin"}
        for keyword, value in given.items():
            if value is None:
                continue
            if keyword not in method.margin_fields:
                fitting = " and ".join(flags[k] for k in method.margin_fields)
                error(f"argument {flags[keyword]}: the {method.name} loss has no such margin; use {fitting}")
            own[method.margin_fields[keyword]] = value
        if args.epochs is not None:
            own["ret_epochs"] = args.epochs
        margins = _retrieval_settings(args, profile, own)["margins"]
        if "pos_margin" in margins and not margins["pos_margin"] < margins["neg_margin"]:
            flag = "--pos-margin" if args.pos_margin is not None else "--neg-margin"
            error(f"argument {flag}: the positive margin m1 must be below the negative margin m2, got "
                  f"m1 = {margins['pos_margin']:g} and m2 = {margins['neg_margin']:g}")
        if args.init == "random" and profile.cut is not None:
            error(f"argument --init: random weights cannot sit under a frozen trunk (profile {profile.name} "
                  f"freezes the blocks below {profile.cut}); add --set cut=None to train the whole network")
        if args.init == "imagenet":
            from .. import models

            try:
                models.check_imagenet_weights(profile.backbone)
            except (ValueError, OSError, ImportError) as err:
                error(f"argument --init: {err} (profile {profile.name} uses backbone {profile.backbone!r})")
    for field in own:
        if field in overrides:
            error(f"argument --set: {field} is also given by a command option; give it once")
    return profile, own


def _check_index_options(args, error) -> None:
    ivf_only = {"--nlist": args.nlist, "--nprobe": args.nprobe, "--refine": args.refine}
    pq_only = {"--m": args.m, "--nbits": args.nbits}
    if args.index == "exact":
        for flag, value in {**ivf_only, **pq_only}.items():
            if value is not None:
                error(f"argument {flag}: only applies to --index ivf or ivfpq, not exact")
    if args.index == "ivf":
        for flag, value in pq_only.items():
            if value is not None:
                error(f"argument {flag}: only applies to --index ivfpq, not ivf")
    if args.nbits is not None and args.nbits > 16:
        error(f"argument --nbits: must be between 1 and 16, got {args.nbits}")
    if args.nlist is not None and args.nprobe is not None and args.nprobe > args.nlist:
        error(f"argument --nprobe: must be at most --nlist ({args.nlist}), got {args.nprobe}")


# --------------------------------------------------------------------------- the data, before any work
def release_images(release) -> list[Path]:
    """Every image file of the release's splits (classification, retrieval training, validation, test), each once."""
    lists = (release.classification_train.paths, release.classification_val.paths, release.retrieval_train.paths,
             release.validation.queries, release.validation.database, release.test.queries, release.test.database)
    return list(dict.fromkeys(Path(path) for paths in lists for path in paths))


def image_fault(path: Path) -> str | None:
    """Why ``path`` cannot be read as an image, or ``None``.

    A PNG has its chunks' checksums verified (nothing is inflated); any other
    format (JPEG) is decoded at its smallest draft scale, which still reads
    every byte, so a truncated file is found.
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.format == "PNG":
                image.verify()
            else:
                image.draft(None, (1, 1))
                image.load()
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error,
            Image.DecompressionBombError) as error:
        return f"{type(error).__name__}: {error}"
    return None


def images_checked_marker(release) -> Path:
    """The file whose presence says the images of this release (by its content fingerprint) were all readable."""
    from . import runs

    return config.CACHE_DIR / "checks" / f"images-{runs.release_fingerprint(release)}.ok"


def check_images(release) -> None:
    """Raise ``ValueError`` naming the first image of the release that cannot be read, and why (one line).

    A release found whole is remembered by its fingerprint (a marker file in
    the cache), so it is checked once; a cache that cannot be written just
    does not remember.
    """
    marker = images_checked_marker(release)
    if marker.is_file():
        return
    paths = release_images(release)
    for path in paths:
        fault = image_fault(path)
        if fault is not None:
            raise ValueError(cache.one_line(f"unreadable image {path} ({fault}); every image of the release is "
                                            "checked before any training"))
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(marker, f"{len(paths)} images readable\n")
    except OSError as error:
        if cache.write_fault(error) is None:
            raise


# --------------------------------------------------------------------------- running the commands
def _kept_scores(run) -> dict:
    """The epochs-table row of the run's kept epoch (the best validation score), as plain numbers."""
    row = run.epochs.loc[run.epochs["epoch"] == run.best_epoch].iloc[0]
    return {k: (None if v != v else float(v)) for k, v in row.to_dict().items()}


def _run_record(role: str, run) -> dict:
    """What the summary says about one run."""
    return {"role": role, "kind": run.kind, "name": run.name, "key": run.key,
            "path": None if run.path is None else str(run.path), "from_cache": bool(run.from_cache),
            "wall_time_s": round(float(run.wall_time), 3), "last_epoch": run.last_epoch,
            "kept_epoch": _kept_scores(run)}


def _say(run, role: str) -> None:
    how = "loaded from the cache" if run.from_cache else f"trained in {run.wall_time:.1f} s"
    print(f"{role}: {run.name}, key {run.key}, {how}; kept epoch {run.best_epoch} of {run.last_epoch}: "
          f"{run.val_column} {run.best_score:.4f}\n  {run.path}", flush=True)


def _retrieval_settings(args, profile: config.Profile, own: dict) -> dict:
    """``{"lr", "margins"}`` of the command's retrieval run.

    The settings ``make results`` tuned for its loss and schedule
    (:func:`helpers.config.tuned_settings`; the profile's ``ret_lr`` and
    margins where none were tuned), each replaced by the command's own choice
    where it makes one: ``--margin``, ``--pos-margin``, ``--neg-margin``, or
    ``--set`` of ``ret_lr`` or a margin field.
    """
    method = methods.get(args.loss)
    init = args.init if args.init is not None else ("imagenet" if profile.weights else "random")
    schedule = "one-stage" if init in ("random", "imagenet") else "two-stage"
    tuned = config.tuned_settings(profile, schedule, method.name) or {}
    chosen = {**dict(args.overrides), **own}
    actual = dataclasses.replace(profile, **own)
    margins = {keyword: getattr(actual, field) if field in chosen or keyword not in tuned else tuned[keyword]
               for keyword, field in method.margin_fields.items()}
    lr = actual.ret_lr if "ret_lr" in chosen or "lr" not in tuned else tuned["lr"]
    return {"lr": lr, "margins": margins}


def _train_runs(args, profile: config.Profile, own: dict, release) -> list[tuple[str, object]]:
    """Train or load the command's run(s): ``[(role, Run), ...]``, the command's own run last."""
    from . import runs

    common = dict(seed=args.seed, device=args.device, progress=not args.no_progress)
    own_profile = dataclasses.replace(profile, **own)
    if args.command == "train-classifier":
        return [("stage 1", runs.train_classifier(release, own_profile, **common))]
    done = []
    init = args.init if args.init is not None else ("imagenet" if profile.weights else "random")
    if init == "classifier":
        init = runs.train_classifier(release, profile, **common)
        done.append(("stage 1", init))
        _say(init, "stage 1")
    elif init not in INIT_NAMES:
        init = runs.load_run(init)
        if init.kind != "classifier":
            raise _UsageError("--init", f"{args.init} holds a {init.kind} run, not a stage-1 classifier run")
        done.append(("stage 1", init))
    settings = _retrieval_settings(args, profile, own)
    run = runs.train_retrieval(release, args.loss, init, own_profile, lr=settings["lr"], margins=settings["margins"],
                               **common)
    done.append(("retrieval", run))
    return done


class _UsageError(Exception):
    """A bad combination found while running: reported as ``argument FLAG: message``, exit status 2."""

    def __init__(self, flag: str, message: str):
        super().__init__(f"argument {flag}: {message}")


def _embed(run, split, profile: config.Profile, args):
    from .. import evaluation

    model = run.model.to(config.get_device(args.device))
    return evaluation.embed_split(model, split, profile, progress=not args.no_progress)


def _evaluate(args, profile, run, release) -> tuple[dict, "object"]:
    from .. import evaluation

    split = getattr(release, args.split)
    query_emb, db_emb = _embed(run, split, profile, args)
    table = evaluation.results_table({run.name: (query_emb, db_emb)}, split.ground_truth)
    print(f"\n{args.split} split: {len(split.queries)} queries, {len(split.database)} database images")
    print(table.round(4).to_string())
    row = {k: float(v) for k, v in table.iloc[0].items()}
    return {"split": args.split, "n_queries": len(split.queries), "n_database": len(split.database),
            "metrics": row}, table.reset_index()


def _build_index(args, profile, run, release) -> tuple[dict, "object"]:
    import faiss
    import pandas as pd

    from .. import metrics, search

    split = getattr(release, args.split)
    query_emb, db_emb = _embed(run, split, profile, args)
    n_db = len(db_emb)
    k = min(DEFAULT_TOP_K, n_db) if args.k is None else args.k
    if k > n_db:
        raise _UsageError("--k", f"must be at most the database size of the {args.split} split ({n_db}), got {k}")
    settings = {name: value for name, value in
                (("nlist", args.nlist), ("nprobe", args.nprobe), ("m", args.m), ("nbits", args.nbits),
                 ("refine", args.refine)) if value is not None}
    began = time.perf_counter()
    try:
        index = search.build_index(db_emb, args.index, seed=args.seed, **settings)
    except ValueError as err:
        text = str(err)
        flag = next((f"--{name}" for name in ("nprobe", "nlist", "nbits", "m", "refine")
                     if text.startswith(f"{name} ") or f" {name}=" in text or f"2**{name}" in text), "--index")
        raise _UsageError(flag, f"{text} (the {args.split} database holds {n_db} vectors of dim "
                                f"{db_emb.shape[1]})") from None
    build_s = time.perf_counter() - began
    began = time.perf_counter()
    _, ids = search.search(index, query_emb, k)
    search_s = time.perf_counter() - began
    exact_ids = search.torch_topk(query_emb, db_emb, k)  # embeddings are unit vectors already
    ground_truth = split.ground_truth
    row = {"index": args.index, "n_database": n_db, "n_queries": len(query_emb), "dim": index.dim, "k": k,
           "nlist": index.nlist, "nprobe": index.nprobe, "m": index.m, "nbits": index.nbits,
           "refine": index.refine, "build_s": build_s, "search_s": search_s,
           "memory_bytes": search.index_memory_bytes(index),
           f"recall of exact top-{k}": search.recall_of_exact_topk(ids, exact_ids, k)}
    for mode in metrics.AP_MODES:
        row[f"mAP ({mode}) from index top-{k}"] = metrics.mean_average_precision_from_ids(
            ids, ground_truth, n_db, mode=mode)[0]
        row[f"mAP ({mode}) from exact top-{k}"] = metrics.mean_average_precision_from_ids(
            exact_ids, ground_truth, n_db, mode=mode)[0]
        row[f"mAP ({mode}), full ranking"] = metrics.mean_average_precision(
            query_emb, db_emb, ground_truth, mode=mode)[0]
    ks = tuple(K for K in metrics.DEFAULT_KS if K <= k)
    row.update({f"R@{K} from index": value
                for K, value in metrics.recall_at_k_from_ids(ids, ground_truth, ks, n_db=n_db).items()})
    print(f"\n{args.index} index over the {args.split} database: {n_db} vectors of dim {index.dim}, "
          f"built in {build_s:.2f} s, {len(query_emb)} queries searched in {search_s * 1e3:.1f} ms")
    print(pd.Series({name: value for name, value in row.items() if name not in ("index",)}).to_string())
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        faiss.write_index(index.index, str(args.out / "index.faiss"))
        (args.out / "database.txt").write_text("".join(f"{path}\n" for path in split.database), encoding="utf-8")
        print(f"wrote {args.out / 'index.faiss'} and {args.out / 'database.txt'} (database image of each id)")
    return {"split": args.split, "metrics": row,
            "index_file": None if args.out is None else str(args.out / "index.faiss")}, pd.DataFrame([row])


def _write_summary(args, argv: list[str], profile: config.Profile, release, done, result: dict, table) -> None:
    summary = {"command": args.command, "argv": argv, "profile": profile.name,
               "profile_overrides": {name: value for name, value in args.overrides},
               "seed": args.seed, "data_seed": config.DEFAULT_SEED,
               "data": str(release.root), "real_data": config.real_data_root() is not None,
               "cache_dir": str(config.CACHE_DIR),
               "runs": [_run_record(role, run) for role, run in done], **result}
    args.out.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = args.out / f"{args.command}.json", args.out / f"{args.command}.csv"
    json_path.write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    table.to_csv(csv_path, index=False)
    print(f"wrote {json_path} and {csv_path}")


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the command line on ``argv`` (default: ``sys.argv[1:]``); return the exit status.

    Bad arguments exit with status 2 and a message naming the argument
    (argparse's ``SystemExit``); errors while loading data or training end
    the command with status 1 and the error's message.
    """
    if lifeline.is_torchrun_worker():  # first: a worker must not outlive a killed torchrun
        lifeline.watch_launcher()
    argv = list(sys.argv[1:] if argv is None else argv)
    if prog is None:
        name = os.path.basename(sys.argv[0] or "")
        prog = "python -m helpers" if name in ("__main__.py", "-m", "") else name
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    sub = parser.commands[args.command]
    try:
        profile, own = _profile_and_overrides(args, sub.error)
    except ValueError as err:  # e.g. an unknown FIREARM_PROFILE
        sub.error(str(err))
    if args.command == "build-index":
        _check_index_options(args, sub.error)

    from .. import data
    from . import distributed

    if distributed.launched_by_torchrun():
        device = config.get_device(args.device)
        distributed.init_from_env(device)
        args.device = str(distributed.local_device(device))
        if not distributed.is_main():  # rank 0 speaks for all
            args.no_progress, args.out = True, None
            sys.stdout = open(os.devnull, "w")
    try:
        with distributed.main_first():  # rank 0 writes the synthetic release if it is missing
            release = data.load_active_release(profile, seed=config.DEFAULT_SEED, progress=not args.no_progress)
        check_images(release)
        done = _train_runs(args, profile, own, release)
        role, run = done[-1]
        _say(run, role)
        if args.command in ("train-classifier", "train-retrieval"):
            result, table = {}, run.epochs
        elif args.command == "evaluate":
            result, table = _evaluate(args, profile, run, release)
        else:
            result, table = _build_index(args, profile, run, release)
    except _UsageError as err:
        sub.error(str(err))
    except (ValueError, OSError, cache.DamagedEntry) as err:
        return _failed(f"{prog} {args.command}", err)
    finally:
        distributed.shutdown()
    if args.out is not None:
        try:
            _write_summary(args, argv, profile, release, done, result, table)
        except OSError as err:
            return _failed(f"{prog} {args.command}", err)
    return 0


def _failed(who: str, error: Exception) -> int:
    """Print ``error`` as one line ``<who>: error: ...`` on stderr and return the exit status 1.

    An ``OSError`` is reported only when it is one a user can act on: a
    missing file, or a write refused (full disk, read-only or forbidden
    folder); any other is raised again, with its traceback.
    """
    if isinstance(error, OSError) and not isinstance(error, (FileNotFoundError, cache.CacheWriteError)):
        code = cache.write_fault(error)
        if code is None:
            raise error
        where = error.filename or "a file"
        error = cache.cannot_write(where, code) if _in_cache(where) else f"{where}: {error.strerror}"
    print(f"{who}: error: {cache.one_line(error)}", file=sys.stderr)
    return 1


def _in_cache(path) -> bool:
    """Whether ``path`` lies in the cache folder (``config.CACHE_DIR``)."""
    try:
        Path(path).resolve().relative_to(Path(config.CACHE_DIR).resolve())
    except (ValueError, OSError):
        return False
    return True
