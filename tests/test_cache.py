"""Tests of the caches' integrity: manifests, damaged entries moved aside and made again, file modes, no empty folders.

Every fault is met as a user would meet it: a smoke run (or a feature store)
is made, one of its files is damaged on disk, and the next call must say so in
one line, keep the damaged entry aside and give the same result again.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import shutil
import types
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch

from helpers import config, data, models
from helpers.machinery import cache, features, runs
from helpers.machinery.cache import DamagedEntry, DamagedEntryWarning

try:
    import resource
except ImportError:  # Windows
    resource = None

SMOKE = config.get_profile("smoke")
QUICK = config.get_profile("smoke", ret_epochs=1, pairs_per_category=4, ret_batch_size=16, ret_patience=None)
TWO_EPOCHS = config.get_profile(QUICK, ret_epochs=2, ret_lr_step=1)
SAME = ["epoch", "train_loss", "val_mAP"]
"""The columns of ``Run.epochs`` a retrained run must repeat (``wall_time`` is the clock's)."""


# --------------------------------------------------------------------------- helpers

def truncate(file):
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def empty(file):
    file.write_bytes(b"")


def flip(file):
    """Flip the bits of a few bytes in the middle: same size, other content."""
    content = bytearray(file.read_bytes())
    for i in range(len(content) // 2, min(len(content), len(content) // 2 + 8)):
        content[i] ^= 0xFF
    file.write_bytes(bytes(content))


def one_warning(record, name) -> str:
    """The one :class:`DamagedEntryWarning` of ``record``: one line that names ``name``."""
    messages = [str(w.message) for w in record if issubclass(w.category, DamagedEntryWarning)]
    assert len(messages) == 1, messages
    assert "\n" not in messages[0] and name in messages[0], messages[0]
    return messages[0]


def train(release, profile=QUICK, **kwargs):
    return runs.train_retrieval(release, "double", "imagenet", profile, progress=False, device="cpu", **kwargs)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = data.make_synthetic_release(tmp_path_factory.mktemp("release"), SMOKE, seed=0, progress=False)
    return data.load_firearm_release(root)


@pytest.fixture(scope="module")
def pristine(release, tmp_path_factory):
    """A cache holding one finished smoke run (and the feature stores it made), and that run."""
    root = tmp_path_factory.mktemp("pristine") / "cache"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(config, "CACHE_DIR", root)
        run = train(release)
    return root, run


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "CACHE_DIR", tmp_path / "cache")
    return tmp_path / "cache"


@pytest.fixture
def copied(pristine, cache_root):
    """A private copy of the pristine cache; returns the folder of its run and the run."""
    root, run = pristine
    shutil.copytree(root, cache_root)
    return cache_root / "runs" / run.path.name, run


@pytest.fixture
def umask():
    """Set the umask for one test and restore it after."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


# --------------------------------------------------------------------------- manifests

def test_a_finished_run_has_a_manifest_of_its_files_written_last(copied):
    folder, run = copied
    manifest = json.loads((folder / cache.MANIFEST).read_text(encoding="utf-8"))
    assert [r["name"] for r in manifest["files"]] == list(runs.DATA_FILES)
    for record in manifest["files"]:
        file = folder / record["name"]
        assert record["size"] == file.stat().st_size and record["sha256"] == cache.sha256_of(file)
    assert runs.is_finished(folder)
    assert cache.check_entry(folder) == list(runs.DATA_FILES)
    (folder / cache.MANIFEST).unlink()          # as after a crash before the manifest: not finished
    assert not runs.is_finished(folder)
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        runs.load_run(folder)


@pytest.mark.parametrize("name, damage", [("model.pt", truncate), ("model.pt", empty), ("epochs.csv", truncate),
                                          ("config.json", empty), ("model.pt", flip), ("manifest.json", empty)],
                         ids=["model-truncated", "model-empty", "epochs-truncated", "config-empty",
                              "model-flipped", "manifest-empty"])
def test_a_damaged_run_is_reported_moved_aside_and_trained_again(release, copied, name, damage):
    folder, reference = copied
    damage(folder / name)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        again = train(release)
    one_warning(record, name)
    aside = list(folder.parent.glob(f"{folder.name}.damaged-*"))
    assert len(aside) == 1 and (aside[0] / name).is_file()      # kept, never deleted
    assert not again.from_cache and again.key == reference.key and again.path == folder
    pd.testing.assert_frame_equal(again.epochs[SAME], reference.epochs[SAME])
    loaded = train(release)
    assert loaded.from_cache
    pd.testing.assert_frame_equal(loaded.epochs[SAME], reference.epochs[SAME])


@pytest.mark.parametrize("name, damage, fault", [
    ("model.pt", truncate, "size"), ("model.pt", flip, "content hash differs"), ("epochs.csv", truncate, "size"),
    ("config.json", empty, "size 0 bytes"), ("history.csv", lambda f: f.unlink(), "missing"),
    ("manifest.json", empty, "manifest unreadable")])
def test_load_run_on_a_damaged_folder_raises_one_line(copied, name, damage, fault):
    folder, _ = copied
    damage(folder / name)
    with pytest.raises(DamagedEntry) as raised:
        runs.load_run(folder)
    message = str(raised.value)
    assert "\n" not in message and name in message and fault in message
    error = raised.value                                      # no torch/pandas/json traceback chained to it
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


def test_an_unreadable_file_that_matches_its_manifest_is_damaged_too(copied):
    folder, _ = copied
    (folder / "config.json").write_text("{not json", encoding="utf-8")
    cache.write_manifest(folder, runs.DATA_FILES)     # the record agrees, the content cannot be read
    with pytest.raises(DamagedEntry, match=r"config\.json: unreadable \(JSONDecodeError") as raised:
        runs.load_run(folder)
    assert "\n" not in str(raised.value)


def test_a_damaged_checkpoint_is_moved_aside_and_training_starts_over(release, copied):
    reference = train(release, TWO_EPOCHS, cache=False)

    def stop_after_first_epoch(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt("simulated interruption")

    with pytest.raises(KeyboardInterrupt):
        train(release, TWO_EPOCHS, on_epoch_end=stop_after_first_epoch)
    folder = runs.run_folder("retrieval-double", reference.key)
    truncate(folder / runs.CHECKPOINT_FILE)
    seen = []
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        resumed = train(release, TWO_EPOCHS, on_epoch_end=seen.append)
    one_warning(record, runs.CHECKPOINT_FILE)
    assert [row["epoch"] for row in seen] == [1, 2]                  # started over
    assert list(folder.glob(f"{runs.CHECKPOINT_FILE}.damaged-*"))
    pd.testing.assert_frame_equal(resumed.epochs[SAME], reference.epochs[SAME])
    assert sorted(p.name for p in folder.iterdir() if ".damaged-" not in p.name) == sorted(runs.RUN_FILES)


# --------------------------------------------------------------------------- feature stores

@pytest.fixture(scope="module")
def network():
    return models.build_network(models.ModelSpec.of(SMOKE)).eval()


@pytest.mark.parametrize("damage", [truncate, flip, empty], ids=["truncated", "flipped", "empty"])
def test_a_damaged_training_view_store_is_recomputed_with_the_same_maps(release, network, cache_root, damage):
    paths = release.retrieval_train.paths[:4]
    first = features.train_view_maps(network, paths, SMOKE.train_size_range, 2, progress=False)
    (store,) = (cache_root / "features").glob("*-train-*.pt")
    assert cache.manifest_path(store).is_file() and cache.check_entry(store) == [store.name]
    damage(store)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        again = features.train_view_maps(network, paths, SMOKE.train_size_range, 2, progress=False)
    one_warning(record, store.name)
    assert torch.equal(again, first)
    assert len(list(store.parent.glob(f"{store.name}.damaged-*"))) == 2      # the store and its manifest
    cache.check_entry(store)                                                  # written again, whole


@pytest.mark.parametrize("damage", [truncate, flip], ids=["truncated", "flipped"])
def test_a_damaged_evaluation_shard_is_moved_aside_and_its_maps_recomputed(cache_root, damage):
    images = torch.randn(3, 3, 64, 64)
    first = features.with_cached_frozen(models.build_network(models.ModelSpec.of(SMOKE)).eval()).frozen(images)
    (shard,) = (cache_root / "features").glob("*-eval-*/*.pt")
    damage(shard)
    fresh = features.with_cached_frozen(models.build_network(models.ModelSpec.of(SMOKE)).eval())
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        again = fresh.frozen(images)
    one_warning(record, shard.name)
    assert torch.equal(again, first)
    assert list(shard.parent.glob(f"{shard.name}.damaged-*")) and cache.check_entry(shard) == [shard.name]


# --------------------------------------------------------------------------- modes, folders

@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_written_files_respect_the_umask(copied, tmp_path, umask, mask):
    umask(mask)
    _, run = copied
    target = tmp_path / "saved"
    runs.save_run(dataclasses.replace(run, path=target))
    files = list(target.iterdir())
    assert sorted(p.name for p in files) == sorted(runs.RUN_FILES)
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(0o666 & ~mask)}
    cache.write_text(tmp_path / "note.txt", "hello")
    assert (tmp_path / "note.txt").stat().st_mode & 0o777 == 0o666 & ~mask


def test_a_failed_run_leaves_no_empty_folder(release, copied, cache_root, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure before the first epoch")

    monkeypatch.setattr(runs.train, "fit", broken)
    with pytest.raises(RuntimeError, match="simulated failure"):
        train(release, TWO_EPOCHS)
    folders = [p for p in (cache_root / "runs").iterdir() if p.is_dir()]
    assert all(any(p.iterdir()) for p in folders)
    assert all(runs.is_finished(p) or (p / runs.CHECKPOINT_FILE).is_file() for p in folders)
    assert not runs.run_folder("retrieval-double", "0123456789ab").exists()   # a path, not a folder


def test_move_aside_renames_and_never_deletes(tmp_path):
    entry = tmp_path / "store.pt"
    entry.write_bytes(b"maps")
    cache.write_manifest(entry, [entry.name])
    target = cache.move_aside(entry)
    assert not entry.exists() and target.read_bytes() == b"maps" and ".damaged-" in target.name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, target.name + ".manifest.json"])


# --------------------------------------------------------------------------- writes the disk or the folder refuses

def refuse_rename_to(monkeypatch, name, code=errno.ENOSPC):
    """Make the last step of writing a file called ``name`` fail with ``code``, as a full disk would."""
    real = os.replace

    def replace(source, target, *args, **kwargs):
        if Path(target).name == name:
            raise OSError(code, os.strerror(code), str(target))
        return real(source, target, *args, **kwargs)
    monkeypatch.setattr(os, "replace", replace)


def leftovers(folder):
    """Temporary files left in ``folder`` (none if it is gone)."""
    return [p.name for p in folder.glob("*.tmp")]          # pathlib's * matches hidden names too


def one_line_error(raised, text):
    message = str(raised.value)
    assert message == text and "\n" not in message
    assert raised.value.__cause__ is None and raised.value.__suppress_context__      # no chained traceback


@pytest.mark.parametrize("name", ["config.json", "model.pt", cache.MANIFEST])
def test_a_full_disk_stops_a_save_in_one_line_and_leaves_no_partial_entry(copied, tmp_path, monkeypatch, name):
    _, run = copied
    target = tmp_path / "saved"
    refuse_rename_to(monkeypatch, name)
    with pytest.raises(cache.CacheWriteError) as raised:
        runs.save_run(dataclasses.replace(run, path=target))
    one_line_error(raised, f"cannot write {target / name}: the disk is full")
    assert raised.value.errno == errno.ENOSPC and isinstance(raised.value, OSError)
    assert leftovers(target) == [] and not (target / cache.MANIFEST).exists() and not runs.is_finished(target)


def test_a_full_disk_under_torchs_writer_is_found_by_the_free_space(tmp_path, monkeypatch):
    """torch.save reports a full disk as "unexpected pos"; the free space left says what it was."""
    def save(temporary):
        Path(temporary).write_bytes(b"PK\x03\x04 half a zip")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    store = tmp_path / "features" / "maps.pt"
    store.parent.mkdir()
    with pytest.raises(RuntimeError, match="unexpected pos"):                 # disk not full: torch's error
        cache.atomic_write(store, save)
    assert list(store.parent.iterdir()) == []
    full = types.SimpleNamespace(f_bavail=0, f_bfree=3, f_frsize=4096)
    monkeypatch.setattr(os, "statvfs", lambda path: full)
    with pytest.raises(cache.CacheWriteError) as raised:
        cache.atomic_write(store, save)
    one_line_error(raised, f"cannot write {store}: the disk is full")
    assert list(tmp_path.iterdir()) == []                    # no partial file, and no folder left empty


@pytest.mark.skipif(resource is None, reason="no file size limit on this platform")
def test_the_file_size_limit_is_named_and_leaves_no_partial_file(copied, tmp_path):
    """A real limit (``ulimit -f``): torch's writer and a text write both fail, and say why."""
    _, run = copied
    target = tmp_path / "saved"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))       # model.pt is ~4 MB
    try:
        with pytest.raises(cache.CacheWriteError) as raised:
            runs.save_run(dataclasses.replace(run, path=target))
        with pytest.raises(cache.CacheWriteError) as text:
            cache.write_text(tmp_path / "big.txt", "x" * (2 << 20))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    one_line_error(raised, f"cannot write {target / 'model.pt'}: the file size limit (ulimit -f) is reached")
    assert raised.value.errno == errno.EFBIG and str(text.value).startswith(f"cannot write {tmp_path / 'big.txt'}")
    assert leftovers(target) == [] and leftovers(tmp_path) == [] and not runs.is_finished(target)


@contextlib.contextmanager
def read_only(root: Path, monkeypatch):
    """``root`` read-only for this process: mode 0o555 for a user, or refused writes (EACCES) for root."""
    if os.geteuid() != 0:
        folders = [root, *(p for p in root.rglob("*") if p.is_dir())]
        for folder in folders:
            folder.chmod(0o555)
        try:
            yield
        finally:
            for folder in folders:
                folder.chmod(0o755)
        return
    inside = lambda path: Path(os.path.abspath(path)).is_relative_to(root)    # noqa: E731
    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def refused(real, test):
        def call(*args, **kwargs):
            if test(*args, **kwargs):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(args[0]))
            return real(*args, **kwargs)
        return call
    with monkeypatch.context() as patch:
        patch.setattr(os, "open", refused(os.open, lambda path, flags, *a, **k: inside(path) and flags & writes))
        for name in ("mkdir", "replace", "rename", "remove", "unlink", "rmdir"):
            patch.setattr(os, name, refused(getattr(os, name), lambda path, *a, **k: inside(path)))
        yield


def test_loading_a_finished_run_writes_nothing(copied, monkeypatch):
    folder, reference = copied
    root = folder.parent.parent
    before = sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))
    with read_only(root, monkeypatch):
        run = runs.load_run(folder)
    assert run.key == reference.key and run.from_cache
    assert sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")) == before


def test_a_read_only_cache_says_in_one_line_why_it_cannot_write(tmp_path, monkeypatch):
    target = tmp_path / "read-only"
    target.mkdir()
    with read_only(target, monkeypatch):
        with pytest.raises(cache.CacheWriteError) as raised:
            cache.write_text(target / "note.txt", "hello")
    assert str(raised.value).startswith(f"cannot write {target / 'note.txt'}: the cache folder is read-only")
    assert "\n" not in str(raised.value) and list(target.iterdir()) == []


def test_a_damaged_entry_in_a_read_only_cache_is_one_line_too(copied, monkeypatch):
    folder, _ = copied
    truncate(folder / "model.pt")
    with read_only(folder.parent.parent, monkeypatch):
        with pytest.raises(DamagedEntry) as raised:
            cache.set_aside(folder, cache.damaged(folder / "model.pt", "size"))
    message = str(raised.value)
    assert "\n" not in message and "model.pt" in message and "it cannot be made again: cannot move" in message
    assert (folder / "model.pt").is_file()                                     # nothing was moved


def test_a_read_only_cache_serves_the_runs_it_has(release, copied, monkeypatch):
    folder, reference = copied
    with read_only(folder.parent.parent, monkeypatch):
        run = train(release)
    assert run.from_cache and run.key == reference.key


def test_a_read_only_cache_says_in_one_line_why_it_cannot_train_a_new_run(release, copied, monkeypatch):
    folder, _ = copied
    root = folder.parent.parent
    shutil.rmtree(root / "locks", ignore_errors=True)
    shutil.rmtree(folder)
    with read_only(root, monkeypatch):
        with pytest.raises(cache.CacheWriteError) as raised:
            train(release)
    message = str(raised.value)
    assert message.startswith(f"cannot train the run {folder.name} here: the cache folder is read-only")
    assert "\n" not in message and raised.value.__suppress_context__
    assert not folder.exists()
