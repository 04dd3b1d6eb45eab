"""What ImageNet buys: the same one-stage training from random weights, with the small CNN.

Usage: python benchmarks/ablation_scratch.py [--out results/ablation_scratch.csv]

Trains (or loads from the run cache) one-stage double margin on the active
profile's data (``FIREARM_PROFILE``, default tutorial) twice, with the same
pairs, schedule and seed: once from the profile's ImageNet network (as
notebooks 03 and 04 do) and once from a randomly initialised small CNN that
sees the images themselves (``backbone="small"``, nothing frozen, Adam at lr
1e-3, the setting earlier calibrated for training it from scratch). It prints
and writes the test mAP of both, of the ImageNet features without training,
and of a random ranking, with the training times, the code version and the
wall time. Notebook 04 reads the file; the small CNN trains on images, not
cached maps, which is why it is not part of ``make run``.
"""
from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import pandas as pd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="CSV to write (default: results/ablation_scratch.csv at the repo root)")
    args = parser.parse_args()
    from helpers import config, data, evaluation, metrics
    from helpers.machinery import runs

    start = time.perf_counter()
    profile = config.active_profile()
    release = data.load_active_release(profile, seed=config.DEFAULT_SEED)
    scratch = config.get_profile(profile, backbone="small", weights=None, cut=None, optimizer="adam", ret_lr=1e-3)
    rows = []
    split = release.test

    def score(name: str, model, model_profile, train_s: float) -> None:
        q, d = evaluation.embed_split(model, split, model_profile, progress=False)
        rows.append({"model": name, "backbone": model_profile.backbone, "test mAP (trapezoid)":
                     metrics.mean_average_precision(q, d, split.ground_truth)[0], "training s": train_s})
        print(f"{name:45s} {rows[-1]['test mAP (trapezoid)']:.3f}", flush=True)

    score("ImageNet features, no training", runs.untrained_model(profile), profile, 0.0)
    pretrained = runs.train_retrieval(release, "double", "imagenet", profile)
    score("double margin, one-stage from ImageNet", pretrained.model, profile, pretrained.wall_time)
    from_scratch = runs.train_retrieval(release, "double", "random", scratch)
    score("double margin, one-stage from random weights", from_scratch.model, scratch, from_scratch.wall_time)
    rows.append({"model": "random ranking", "backbone": "", "training s": 0.0,
                 "test mAP (trapezoid)": evaluation.random_ranking_map(split)})
    table = pd.DataFrame(rows)
    table["profile"] = profile.name
    table["code"] = runs.code_version()
    table["wall s"] = round(time.perf_counter() - start, 1)
    out = args.out or config.REPO_ROOT / "results" / "ablation_scratch.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    print(table.round(3).to_string(index=False))
    print(f"\nwrote {out}; wall time {time.perf_counter() - start:.0f} s, peak memory "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
