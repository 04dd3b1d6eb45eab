"""Which resolution should the tutorial profile render and train at? Measure it.

Usage: python benchmarks/calibrate_resolution.py [--sizes 96 128] [--epochs 2]

For each size, the active profile (``FIREARM_PROFILE``, default tutorial) with ``render_size`` and ``eval_size`` set
to that size (training sizes from 7/8 of it up) renders its own synthetic
release (in its own folder), caches the frozen EfficientNet-Lite0 features and
trains one-stage double margin from ImageNet for ``--epochs`` epochs. It
prints, per size, the validation mAP (trapezoid) of the ImageNet features
alone and after training, the trained model's mAP on the same validation
images with the firearms left out (background only), a random ranking's mAP,
and the time of each step. Runs and features are cached like the notebooks'
(an empty ``FIREARM_CACHE`` measures from scratch).
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time

import pandas as pd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 128])
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    from helpers import config, data, evaluation, metrics
    from helpers.machinery import runs

    rows = []
    start = time.perf_counter()
    for size in args.sizes:
        profile = config.active_profile(render_size=size, eval_size=size,
                                     train_size_range=(size * 7 // 8, size), ret_epochs=args.epochs,
                                     ret_lr_step=args.epochs)
        began = time.perf_counter()
        release = data.load_active_release(profile, seed=config.DEFAULT_SEED, progress=False)
        render_s = time.perf_counter() - began
        split = release.validation

        began = time.perf_counter()
        q, d = evaluation.embed_split(runs.untrained_model(profile), split, profile, progress=False)
        floor = metrics.mean_average_precision(q, d, split.ground_truth)[0]
        eval_cache_s = time.perf_counter() - began

        began = time.perf_counter()
        run = runs.train_retrieval(release, "double", "imagenet", profile, progress=False)
        train_s = time.perf_counter() - began

        with tempfile.TemporaryDirectory() as folder:
            hidden = evaluation.background_only_split(release, split, folder, profile, progress=False)
            background = metrics.mean_average_precision(*evaluation.embed_split(run.model, hidden, profile,
                                                                                progress=False),
                                                        split.ground_truth)[0]
        rows.append({"size": size, "ImageNet features": floor,
                     "one-stage double": run.best_score,
                     "background only": background, "random ranking": evaluation.random_ranking_map(split),
                     "render s": render_s, "eval features s": eval_cache_s,
                     "train features + training s": train_s})
        print(pd.DataFrame(rows[-1:]).round(3).to_string(index=False), flush=True)
    print(f"\nvalidation mAP (trapezoid), profile {config.active_profile().name} at each size, one-stage double margin "
          f"{args.epochs} epochs from ImageNet")
    print(pd.DataFrame(rows).set_index("size").round(3).to_string())
    print(f"\nwall time {time.perf_counter() - start:.0f} s, peak memory "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
