"""Load-or-train: every trained model is cached under ``cache/runs/`` by a key of how it was made.

A run's **config** is a plain dict: its kind (``classifier`` or a retrieval
method), the seed, the full resolved :class:`~helpers.config.Profile`
(``dataclasses.asdict``), the settings specific to the run (method, margins,
initialisation), a fingerprint of the data, and :func:`code_version`, a hash
of the source files that shape training. Its short SHA-1 is the run's
``key``. Asking for a run whose key is cached loads it; anything that changes
the config, including an edit of the training code, gives a new key, so a
model trained by older code is never loaded.

A finished run lives in ``cache/runs/<kind>-<key>/`` as ``config.json``,
``history.csv`` (one row per iteration), ``epochs.csv`` (one row per epoch,
epoch 0 being the untrained network) and ``model.pt``, written last. While a
run trains, a checkpoint (model, optimiser, scheduler, history and
random-number states) is written atomically after every epoch; a run with the
same key resumes from it.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import config, models

RUN_FILES = ("config.json", "history.csv", "epochs.csv", "model.pt")
CHECKPOINT_FILE = "checkpoint.pt"
TRAINING_MODULES = ("data", "distributed", "features", "imagenet", "losses", "methods", "models", "runs", "train")
"""The modules of ``helpers`` whose source is hashed into :func:`code_version`."""


@dataclass
class Run:
    """One trained (or loaded) model with everything that describes how it was made.

    ``model`` is in eval mode on the CPU; ``history`` has one row per
    iteration and ``epochs`` one row per epoch (epoch 0 is the untrained
    network); ``wall_time`` is the training time in seconds as measured when
    the run was made, also when it is loaded from the cache
    (``from_cache=True``); ``path`` is its cache folder (``None`` with
    ``cache=False``).
    """

    model: nn.Module
    config: dict
    key: str
    history: pd.DataFrame
    epochs: pd.DataFrame
    wall_time: float
    from_cache: bool
    path: Path | None

    @property
    def kind(self) -> str:
        """``"classifier"`` or ``"retrieval"``."""
        return self.config["kind"]

    @property
    def name(self) -> str:
        """A short readable label such as ``"double (random init)"`` or ``"classifier"``."""
        if self.kind == "classifier":
            return "classifier"
        return f"{self.config['loss']} ({self.config['init']} init)"

    def __repr__(self) -> str:
        last = self.epochs.iloc[-1].to_dict() if len(self.epochs) else {}
        metric = {k: round(float(v), 4) for k, v in last.items() if k.startswith("val_")}
        return (f"Run({self.name}, key={self.key}, epochs={int(last.get('epoch', 0))}, {metric}, "
                f"wall_time={self.wall_time:.1f}s, from_cache={self.from_cache})")


# --------------------------------------------------------------------------- keys

@lru_cache(maxsize=None)
def code_version() -> str:
    """SHA-1 (12 hex digits) of the source of :data:`TRAINING_MODULES`: part of every run's key."""
    digest = hashlib.sha1()
    package = Path(__file__).resolve().parent
    for name in TRAINING_MODULES:
        digest.update(name.encode("utf-8"))
        digest.update((package / f"{name}.py").read_bytes())
    return digest.hexdigest()[:12]


def release_fingerprint(release) -> str:
    """SHA-1 over the sorted relative paths and sizes of every file under ``release.root``.

    Cheap (no file is read) and enough to keep runs on the synthetic data of
    each profile and on the real Firearm 14k from ever sharing a cache entry.
    Hidden files are ignored.
    """
    root = Path(release.root)
    if not root.is_dir():
        raise FileNotFoundError(f"release root {root} does not exist; expected the folder the release was loaded from")
    entries = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.startswith("."):
                continue
            path = Path(folder) / name
            entries.append(f"{path.relative_to(root).as_posix()}\t{path.stat().st_size}")
    digest = hashlib.sha1("\n".join(sorted(entries)).encode("utf-8"))
    return digest.hexdigest()


def run_config(kind: str, release, profile: config.Profile, seed: int, **settings) -> dict:
    """The config dict of a run: kind, seed, code version, data fingerprint, the whole profile, ``settings``.

    It is returned as it reads back from ``config.json`` (tuples become lists),
    so a loaded run's config equals a trained one's.
    """
    entries = {"kind": kind, "seed": int(seed), "code": code_version(), "data": release_fingerprint(release),
               "profile": asdict(profile), **settings}
    return json.loads(json.dumps(entries, default=str))


def run_key(run_config: dict) -> str:
    """The short (12 hex digits) SHA-1 of a config's canonical JSON: the run's cache key."""
    canonical = json.dumps(run_config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(canonical.encode("utf-8")).hexdigest()[:12]


def run_folder(kind: str, key: str) -> Path:
    """``cache/runs/<kind>-<key>``, created on demand."""
    return config.cache_dir("runs", f"{kind}-{key}")


# --------------------------------------------------------------------------- files

def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write through a temporary file in the same folder, then rename it over ``path``."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def _write_text(path: Path, text: str) -> None:
    def write(temporary: str) -> None:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
    atomic_write(path, write)


def save_run(run: Run) -> None:
    """Write a finished run into ``run.path``; ``model.pt`` goes last, so its presence marks it finished."""
    folder = run.path
    _write_text(folder / "config.json", json.dumps(run.config, indent=2, sort_keys=True) + "\n")
    _write_text(folder / "history.csv", run.history.to_csv(index=False))
    _write_text(folder / "epochs.csv", run.epochs.to_csv(index=False))
    payload = {"state_dict": run.model.state_dict(), "spec": models.model_spec(run.model), "key": run.key,
               "wall_time": run.wall_time}
    atomic_write(folder / "model.pt", lambda temporary: torch.save(payload, temporary))
    (folder / CHECKPOINT_FILE).unlink(missing_ok=True)


def is_finished(folder: Path | None) -> bool:
    """Whether ``folder`` holds every file of a finished run."""
    return folder is not None and all((folder / name).is_file() for name in RUN_FILES)


def load_run(path) -> Run:
    """Load a finished run from its cache folder (or its ``model.pt``).

    Raises ``FileNotFoundError`` naming the missing file when the folder does
    not hold a finished run.
    """
    folder = Path(path)
    if folder.name == "model.pt":
        folder = folder.parent
    missing = [name for name in RUN_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} does not hold a finished run: missing {missing}; expected "
                                f"the files {list(RUN_FILES)} written by train_classifier/train_retrieval")
    run_config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    payload = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
    model = models.model_from_spec(payload["spec"])
    model.load_state_dict(payload["state_dict"])
    return Run(model=model.eval(), config=run_config, key=payload["key"],
               history=pd.read_csv(folder / "history.csv"), epochs=pd.read_csv(folder / "epochs.csv"),
               wall_time=float(payload["wall_time"]), from_cache=True, path=folder)


# --------------------------------------------------------------------------- checkpoints

def _rng_states() -> dict:
    return {
        "python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _restore_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(folder: Path, key: str, epoch: int, model, optimizer, scheduler,
                    history: list, epoch_rows: list, wall_time: float, best: dict | None = None) -> None:
    """Atomically write the state needed to resume after ``epoch``; ``best`` records the best epoch so far."""
    state = {"key": key, "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "history": history, "epochs": epoch_rows,
             "wall_time": wall_time, "best": best or {}, "rng": _rng_states()}
    atomic_write(folder / CHECKPOINT_FILE, lambda temporary: torch.save(state, temporary))


def restore_checkpoint(folder: Path | None, key: str, model, optimizer, scheduler) -> dict | None:
    """Load the checkpoint of an unfinished run with this key into the objects; return its record.

    Returns ``None`` when there is none. The record has ``epoch``,
    ``history``, ``epochs``, ``wall_time`` and ``best`` (the best epoch so far); the random-number states are
    restored too, so the resumed run continues exactly where it stopped.
    """
    if folder is None or not (folder / CHECKPOINT_FILE).is_file():
        return None
    # our own file, holding NumPy and Python RNG states besides tensors
    state = torch.load(folder / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
    if state.get("key") != key:
        return None
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _restore_rng_states(state["rng"])
    return state
