"""The command line (helpers.machinery.cli): help, bad arguments, and smoke-profile runs that share the notebooks' cache."""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import pytest

from helpers import config, data, evaluation, metrics, search
from helpers.machinery import cache, cli, runs

# Short runs: one retrieval epoch over 4 pairs per category, one classification epoch.
QUICK = {"pairs_per_category": 4, "ret_batch_size": 16, "cls_epochs": 1, "cls_lr_step": 1}
COMMON = ["--profile", "smoke", "--seed", "0", "--device", "cpu", "--no-progress",
          *[arg for field, value in QUICK.items() for arg in ("--set", f"{field}={value}")]]
DOUBLE = ["--loss", "double", "--init", "imagenet", "--epochs", "1"]


pytestmark = pytest.mark.usefixtures("one_faiss_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A smoke release as ``FIREARM_DATA`` and an empty run cache, both in temporary folders."""
    root = data.make_synthetic_release(tmp_path_factory.mktemp("release"), config.get_profile("smoke"), seed=0,
                                      progress=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(config.DATA_ENV, str(root))
        patch.setattr(config, "CACHE_DIR", tmp_path_factory.mktemp("cache"))
        yield {"release": data.load_active_release(config.get_profile("smoke")), "out": tmp_path_factory.mktemp("out")}


def profile():
    """The profile the CLI resolves from COMMON, with the one epoch of DOUBLE."""
    return config.get_profile("smoke", **QUICK, ret_epochs=1)


def run_cli(argv, out: Path | None = None) -> dict:
    """``cli.main(argv)`` must succeed; returns the JSON summary it wrote under ``out``."""
    argv = list(argv) + (["--out", str(out)] if out is not None else [])
    assert cli.main(argv) == 0
    return json.loads((out / f"{argv[0]}.json").read_text()) if out is not None else {}


def usage_error(argv, capsys) -> str:
    """``cli.main(argv)`` must exit with status 2; returns its stderr."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


# --------------------------------------------------------------------------- help
def test_help_of_every_command_documents_every_option(capsys):
    parser = cli.build_parser("python -m helpers")
    assert set(parser.commands) == {"train-classifier", "train-retrieval", "evaluate", "build-index"}
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    top = capsys.readouterr().out
    for command in parser.commands:
        assert command in top and f"python -m helpers {command} " in top  # listed, with an example
    for command, sub in parser.commands.items():
        with pytest.raises(SystemExit) as exit_info:
            cli.main([command, "--help"])
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        assert sub.description and sub.description.split("\n")[0] in text
        assert f"example:\n  python -m helpers {command} " in text
        options = [option for action in sub._actions for option in action.option_strings]
        assert {"--profile", "--seed", "--out", "--device", "--no-progress", "--set"} <= set(options)
        for action in sub._actions:
            assert action.help and len(action.help) > 10, (command, action.option_strings)
            for option in action.option_strings:
                assert option in text, (command, option)
        for choice in config.PROFILES:
            assert choice in text


# --------------------------------------------------------------------------- bad arguments
BAD = [
    ([], ["the following arguments are required: COMMAND"]),
    (["train", "--loss", "double"], ["argument COMMAND: invalid choice: 'train'", "train-retrieval"]),
    (["train-retrieval", "--loss", "quadruplet"], ["argument --loss: invalid choice: 'quadruplet'", "triplet"]),
    (["train-retrieval", "--profile", "huge"], ["argument --profile: invalid choice: 'huge'", "tutorial"]),
    (["evaluate", "--split", "train"], ["argument --split: invalid choice: 'train'", "validation"]),
    (["build-index", "--index", "hnsw"], ["argument --index: invalid choice: 'hnsw'", "ivfpq"]),
    (["train-classifier", "--loss", "double"], ["unrecognized arguments: --loss"]),
    (["train-classifier", "--epochs", "0"], ["argument --epochs: expected an integer >= 1, got 0"]),
    (["train-retrieval", "--seed", "-1"], ["argument --seed: expected an integer >= 0"]),
    (["train-retrieval", "--margin", "-0.5", "--loss", "single"], ["argument --margin: expected a finite number > 0"]),
    (["train-retrieval", "--loss", "single", "--pos-margin", "0.5"],
     ["argument --pos-margin: the single loss has no such margin; use --margin"]),
    (["evaluate", "--loss", "triplet", "--neg-margin", "1.0"], ["argument --neg-margin", "use --margin"]),
    (["train-retrieval", "--loss", "double", "--margin", "0.5"],
     ["argument --margin: the double loss has no such margin; use --pos-margin and --neg-margin"]),
    (["train-retrieval", "--pos-margin", "1.3", "--neg-margin", "1.2"], ["argument --pos-margin", "m1 = 1.3 and m2 = 1.2"]),
    (["train-retrieval", "--set", "colour=red"], ["argument --set: unknown profile field 'colour'", "ret_epochs"]),
    (["train-retrieval", "--set", "name=paper"], ["argument --set", "--profile"]),
    (["train-retrieval", "--set", "ret_epochs=two"], ["argument --set: ret_epochs: cannot read 'two'"]),
    (["train-retrieval", "--set", "ret_epochs"], ["argument --set: expected FIELD=VALUE"]),
    (["train-retrieval", "--set", "ret_epochs=2", "--epochs", "1"], ["argument --set: ret_epochs is also given"]),
    (["train-retrieval", "--init", "nowhere/run"], ["argument --init", "random, imagenet, classifier", "nowhere/run"]),
    (["train-retrieval", "--profile", "smoke", "--init", "random"], ["argument --init", "--set cut=None"]),
    (["train-retrieval", "--profile", "smoke", "--set", "backbone=small", "--set", "cut=None", "--init", "imagenet"],
     ["argument --init", "no ImageNet weights for backbone 'small'"]),
    (["evaluate", "--device", "tpu9"], ["argument --device: not a torch device: 'tpu9'"]),
    (["evaluate", "--device", "meta"], ["argument --device: 'meta' is a torch device this command cannot train on"]),
    (["train-retrieval", "--out", str(config.REPO_ROOT / "README.md")], ["argument --out:", "README.md is a file"]),
    (["train-retrieval", "--out", str(config.REPO_ROOT / "README.md" / "sub")], ["argument --out:", "README.md is a file"]),
    (["build-index", "--nprobe", "4"], ["argument --nprobe: only applies to --index ivf or ivfpq"]),
    (["build-index", "--index", "ivf", "--m", "8"], ["argument --m: only applies to --index ivfpq"]),
    (["build-index", "--index", "ivf", "--nlist", "4", "--nprobe", "5"], ["argument --nprobe: must be at most"]),
    (["build-index", "--index", "ivfpq", "--nbits", "17"], ["argument --nbits: must be between 1 and 16"]),
    (["build-index", "--index", "ivfpq", "--refine", "0.5"], ["argument --refine: expected a k_factor >= 1"]),
]


@pytest.mark.parametrize("argv,messages", BAD, ids=[" ".join(argv) or "nothing" for argv, _ in BAD])
def test_bad_arguments_exit_2_naming_the_argument(argv, messages, capsys):
    err = usage_error(argv, capsys)
    for message in messages:
        assert message in err
    assert "usage: " in err


def test_profile_overrides_follow_the_field_types():
    assert cli._profile_override("images_per_category=6,14") == ("images_per_category", (6, 14))
    assert cli._profile_override("embedding_dim=none") == ("embedding_dim", None)
    assert cli._profile_override("embedding_dim=64") == ("embedding_dim", 64)
    assert cli._profile_override("ret_lr=3e-4") == ("ret_lr", 3e-4)
    assert cli._profile_override("optimizer=sgd") == ("optimizer", "sgd")
    assert cli._profile_override("weights=None") == ("weights", None)


# --------------------------------------------------------------------------- end to end, smoke profile
def test_train_retrieval_shares_the_notebooks_cache(world, capsys):
    out = world["out"] / "train"
    capsys.readouterr()
    summary = run_cli(["train-retrieval", *COMMON, *DOUBLE], out)
    printed = capsys.readouterr().out
    (record,) = summary["runs"]
    assert (summary["profile"], summary["seed"], summary["data_seed"]) == ("smoke", 0, config.DEFAULT_SEED)
    assert summary["profile_overrides"] == QUICK and record["from_cache"] is False
    assert Path(record["path"]).parent == config.CACHE_DIR / "runs"
    epochs = pd.read_csv(out / "train-retrieval.csv")
    assert epochs["epoch"].tolist() == [0, 1] and record["last_epoch"] == 1
    kept = int(epochs["val_mAP"].idxmax())
    assert record["kept_epoch"]["epoch"] == kept and record["kept_epoch"]["val_mAP"] == pytest.approx(
        epochs["val_mAP"].max())
    assert f"kept epoch {kept} of 1: val_mAP {epochs['val_mAP'].max():.4f}" in printed   # the kept model's score

    # the notebooks' call loads the run the command line trained (the other way round: stage 1 below)
    run = runs.train_retrieval(world["release"], "double", "imagenet", profile(), seed=0, device="cpu",
                               progress=False)
    assert run.from_cache and run.key == record["key"] and str(run.path) == record["path"]
    assert run.epochs["val_mAP"].tolist() == pytest.approx(epochs["val_mAP"].tolist())


def test_evaluate_writes_the_metrics_of_the_cached_run(world):
    out = world["out"] / "evaluate"
    summary = run_cli(["evaluate", *COMMON, *DOUBLE, "--split", "test"], out)
    run = runs.train_retrieval(world["release"], "double", "imagenet", profile(), seed=0, device="cpu",
                               progress=False)
    assert run.from_cache and summary["runs"][0]["key"] == run.key  # trained or loaded by the command line
    split = world["release"].test
    query_emb, db_emb = evaluation.embed_split(run.model, split, profile(), progress=False)
    expected = metrics.evaluate(query_emb, db_emb, split.ground_truth)
    assert summary["metrics"] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert set(expected) == {"mAP (trapezoid)", "mAP (standard)", "R@1", "R@2", "R@4", "R@8", "R@16", "R@32",
                             "MAP@R", "R-Precision", "P@1"}
    assert 0 < expected["mAP (trapezoid)"] < 1
    written = pd.read_csv(out / "evaluate.csv").iloc[0]
    assert written["name"] == "double (imagenet init)"
    assert {k: written[k] for k in expected} == pytest.approx(expected, rel=1e-9)
    assert (summary["n_queries"], summary["n_database"]) == (len(split.queries), len(split.database))


def test_build_index_exact_and_ivfpq(world, capsys):
    split = world["release"].validation
    run = runs.train_retrieval(world["release"], "double", "imagenet", profile(), seed=0, device="cpu",
                               progress=False)
    query_emb, db_emb = evaluation.embed_split(run.model, split, profile(), progress=False)
    n_db = len(db_emb)

    # exact index over the whole ranking: the index's metrics are the dense ones, and it is written out
    out = world["out"] / "exact"
    row = run_cli(["build-index", *COMMON, *DOUBLE, "--split", "validation", "--k", str(n_db)], out)["metrics"]
    assert (row["index"], row["n_database"], row["k"]) == ("exact", n_db, n_db)
    assert row[f"recall of exact top-{n_db}"] == 1.0
    for mode in metrics.AP_MODES:
        dense = metrics.mean_average_precision(query_emb, db_emb, split.ground_truth, mode=mode)[0]
        assert row[f"mAP ({mode}) from index top-{n_db}"] == pytest.approx(dense, abs=1e-12)
        assert row[f"mAP ({mode}), full ranking"] == pytest.approx(dense, abs=1e-12)
    index = faiss.read_index(str(out / "index.faiss"))
    assert index.ntotal == n_db
    _, ids = index.search(np.ascontiguousarray(query_emb.numpy()), 5)
    np.testing.assert_array_equal(ids, search.search(search.build_index(db_emb), query_emb, 5)[1])
    assert (out / "database.txt").read_text().splitlines() == [str(p) for p in split.database]

    # IVF-PQ: the reported recall and mAP are those of the same seeded index built directly
    out = world["out"] / "ivfpq"
    row = run_cli(["build-index", *COMMON, *DOUBLE, "--split", "validation", "--index", "ivfpq", "--nlist", "1",
                   "--m", "8", "--nbits", "3", "--k", "10"], out)["metrics"]
    index = search.build_index(db_emb, "ivfpq", nlist=1, m=8, nbits=3, seed=0)
    _, ids = search.search(index, query_emb, 10)
    exact = search.torch_topk(query_emb, db_emb, 10)
    assert (row["m"], row["nbits"], row["nlist"], row["nprobe"]) == (8, 3, 1, 1)
    assert row["recall of exact top-10"] == search.recall_of_exact_topk(ids, exact, 10) < 1.0
    assert row["mAP (trapezoid) from index top-10"] == pytest.approx(
        metrics.mean_average_precision_from_ids(ids, split.ground_truth, n_db)[0], abs=1e-12)
    assert faiss.read_index(str(out / "index.faiss")).ntotal == n_db
    capsys.readouterr()

    # settings that only the database can rule out are still usage errors naming the argument
    err = usage_error(["build-index", *COMMON, *DOUBLE, "--index", "ivfpq", "--m", "7"], capsys)
    assert "argument --m: m must divide the embedding dim" in err
    err = usage_error(["build-index", *COMMON, *DOUBLE, "--k", "100000"], capsys)
    assert "argument --k: must be at most the database size" in err


def test_init_classifier_loads_the_notebooks_stage_1_and_shares_stage_2(world, capsys):
    # stage 1 trained as the notebooks do is loaded by the command line
    classifier = runs.train_classifier(world["release"], config.get_profile("smoke", **QUICK), seed=0, device="cpu",
                                    progress=False)
    assert not classifier.from_cache
    summary = run_cli(["train-retrieval", *COMMON, "--loss", "triplet", "--init", "classifier", "--epochs", "1"],
                      world["out"] / "two-stage")
    stage1, stage2 = summary["runs"]
    assert (stage1["role"], stage1["kind"], stage2["kind"]) == ("stage 1", "classifier", "retrieval")
    assert stage1["from_cache"] is True and stage1["key"] == classifier.key
    assert stage2["from_cache"] is False
    run = runs.train_retrieval(world["release"], "triplet", classifier, profile(), seed=0, device="cpu",
                               progress=False)
    assert run.from_cache and run.key == stage2["key"]
    # the stage-1 folder is as good as "classifier"; a retrieval folder is not a stage-1 run
    summary = run_cli(["train-retrieval", *COMMON, "--loss", "triplet", "--init", stage1["path"], "--epochs", "1"],
                      world["out"] / "from-path")
    assert summary["runs"][-1]["key"] == stage2["key"] and summary["runs"][-1]["from_cache"]
    capsys.readouterr()
    err = usage_error(["train-retrieval", *COMMON, "--init", stage2["path"]], capsys)
    assert f"argument --init: {stage2['path']} holds a retrieval run, not a stage-1 classifier run" in err
    assert runs.is_finished(Path(stage2["path"]))


# --------------------------------------------------------------------------- failures: one line, exit 1, no litter
def failed(argv, capsys) -> str:
    """``cli.main(argv)`` must return 1 and print one line on stderr, no traceback; returns that line."""
    capsys.readouterr()
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


def empty_folders(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_dir() and not any(p.iterdir())]


@pytest.mark.parametrize("split, damage", [("test", "truncated"), ("train", "emptied")])
def test_an_unreadable_image_is_named_before_any_training(world, tmp_path, monkeypatch, capsys, split, damage):
    root = tmp_path / "release"
    shutil.copytree(world["release"].root, root)
    release = data.load_firearm_release(root)
    bad = release.test.database[-1] if split == "test" else release.classification_train.paths[0]
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2] if damage == "truncated" else b"")
    monkeypatch.setenv(config.DATA_ENV, str(root))
    monkeypatch.setattr(config, "CACHE_DIR", tmp_path / "cache")
    line = failed(["train-retrieval", *COMMON, *DOUBLE], capsys)
    assert f"error: unreadable image {bad} (" in line
    assert not (tmp_path / "cache" / "runs").exists()                    # nothing was trained
    assert not list((tmp_path / "cache").rglob("*.ok"))                  # and the release is not marked whole


def test_a_whole_release_is_checked_once(world, monkeypatch):
    cli.check_images(world["release"])
    assert cli.images_checked_marker(world["release"]).is_file()
    monkeypatch.setattr(cli, "image_fault", lambda path: pytest.fail(f"{path} checked again"))
    cli.check_images(world["release"])


def test_a_full_disk_ends_the_command_in_one_line_without_a_partial_entry(world, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(config, "CACHE_DIR", tmp_path / "cache")
    real = os.replace

    def replace(source, target, *args, **kwargs):
        if Path(target).name == runs.CHECKPOINT_FILE:                    # the first file of a run
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
        return real(source, target, *args, **kwargs)
    monkeypatch.setattr(os, "replace", replace)
    line = failed(["train-retrieval", *COMMON, *DOUBLE], capsys)
    assert re.search(r"error: cannot write \S+/runs/retrieval-double-\w+/checkpoint\.pt: the disk is full$", line), line
    runs_root = tmp_path / "cache" / "runs"
    assert not list(runs_root.rglob("*.tmp")) and not list(runs_root.rglob(cache.MANIFEST))
    assert empty_folders(runs_root) == []                                # the run's folder went with its file


def test_a_failed_command_leaves_no_empty_folder(world, tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise ValueError("simulated failure before the first epoch")

    monkeypatch.setattr(config, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(runs.train, "fit", broken)
    line = failed(["train-retrieval", *COMMON, *DOUBLE], capsys)
    assert line.endswith("error: simulated failure before the first epoch")
    assert empty_folders(tmp_path / "cache") == []
    assert not list((tmp_path / "cache").glob("runs/*"))                  # no run folder at all


def test_a_damaged_stage_1_folder_given_as_init_is_one_line(world, tmp_path, capsys):
    classifier = runs.train_classifier(world["release"], config.get_profile("smoke", **QUICK), seed=0, device="cpu",
                                       progress=False)
    folder = tmp_path / "stage1"
    shutil.copytree(classifier.path, folder)
    model = folder / "model.pt"
    content = bytearray(model.read_bytes())
    content[len(content) // 2] ^= 0xFF                                   # same size: passes the argument check
    model.write_bytes(bytes(content))
    line = failed(["train-retrieval", *COMMON, "--init", str(folder), "--epochs", "1"], capsys)
    assert f"error: damaged cache file {model}: content hash differs" in line


# --------------------------------------------------------------------------- tuned settings by default
TUNED = {"one-stage": {"double": {"lr": 3e-4, "pos_margin": 0.1, "neg_margin": 1.3}},
         "two-stage": {"single": {"lr": 2e-4, "margin": 0.9}}}
"""Made-up tuned settings: the double margin one-stage and the single margin two-stage only."""


@pytest.mark.parametrize("extra, lr, margins", [
    (["--loss", "double", "--init", "imagenet"], 3e-4, {"pos_margin": 0.1, "neg_margin": 1.3}),
    (["--loss", "double", "--init", "imagenet", "--neg-margin", "1.0"], 3e-4, {"pos_margin": 0.1, "neg_margin": 1.0}),
    (["--loss", "double", "--init", "imagenet", "--set", "ret_lr=1e-3"], 1e-3, {"pos_margin": 0.1, "neg_margin": 1.3}),
    (["--loss", "single", "--init", "classifier"], 2e-4, {"margin": 0.9}),
    (["--loss", "single", "--init", "classifier", "--set", "single_margin=0.5"], 2e-4, {"margin": 0.5}),
    (["--loss", "single", "--init", "imagenet"], "profile", {"margin": "profile"}),  # not tuned one-stage
    (["--loss", "triplet", "--init", "classifier", "--margin", "0.3"], "profile", {"margin": 0.3}),
])
def test_a_retrieval_run_takes_the_tuned_settings_unless_the_command_sets_them(monkeypatch, extra, lr, margins):
    monkeypatch.setitem(config.PROFILES, "smoke", config.get_profile("smoke", tuned=TUNED))
    args = cli.build_parser().parse_args(["train-retrieval", "--profile", "smoke", *extra])
    profile, own = cli._profile_and_overrides(args, pytest.fail)
    plain = config.get_profile("smoke", **dict(args.overrides))
    method_fields = {"margin": "single_margin" if args.loss == "single" else "triplet_margin"}
    want = {k: getattr(plain, method_fields[k]) if v == "profile" else v for k, v in margins.items()}
    assert cli._retrieval_settings(args, profile, own) == {"lr": plain.ret_lr if lr == "profile" else lr,
                                                          "margins": want}


def test_the_margin_order_is_checked_against_the_tuned_margin(monkeypatch, capsys):
    monkeypatch.setitem(config.PROFILES, "smoke", config.get_profile("smoke", tuned=TUNED))
    err = usage_error(["train-retrieval", "--profile", "smoke", "--init", "imagenet", "--pos-margin", "1.3"], capsys)
    assert "argument --pos-margin" in err and "m1 = 1.3 and m2 = 1.3" in err
