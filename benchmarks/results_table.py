"""The first results table: four methods, several seeds, on the test split.

Usage: python benchmarks/results_table.py [--seeds 0 1 2] [--profile tutorial]

Trains (or loads from the run cache) one-stage single margin, one-stage double
margin, one-stage triplet and two-stage double margin with the same backbone,
data and stage-2 budget, evaluates each on the test split and prints the mean
and standard deviation over seeds of mAP (trapezoid and standard) and R@1, the
training wall time, and the relative improvement of each method over the
single margin baseline. Seed 0 runs are the ones the notebooks load.
"""
from __future__ import annotations

import argparse
import os
import resource
import time

import pandas as pd

METHODS = [("single, one-stage", "single", False), ("double, one-stage", "double", False),
           ("triplet, one-stage", "triplet", False), ("double, two-stage", "double", True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--profile", default=None, help="defaults to FIREARM_PROFILE or tutorial")
    args = parser.parse_args()
    if args.profile:
        os.environ["FIREARM_PROFILE"] = args.profile
    from helpers import config, data, evaluation, metrics, train

    profile = config.get_profile()
    start = time.perf_counter()
    rows = []
    for seed in args.seeds:
        release = data.load_active_release(profile, seed=0, progress=False)
        stage1 = None
        for name, loss, two_stage in METHODS:
            if two_stage and stage1 is None:
                stage1 = train.train_classifier(release, profile, seed=seed, progress=False)
            run = train.train_retrieval(release, loss=loss, init=stage1 if two_stage else "random",
                                        profile=profile, seed=seed, progress=False)
            q, d = evaluation.embed_split(run.model, release.test, profile, progress=False)
            row = metrics.evaluate(q, d, release.test.ground_truth, name=name)
            row.update(seed=seed, train_s=run.wall_time + (stage1.wall_time if two_stage else 0.0))
            rows.append(row)
            print(f"seed {seed} {name:20s} mAP(trap) {row['mAP (trapezoid)']:.3f} "
                  f"mAP(std) {row['mAP (standard)']:.3f} R@1 {row['R@1']:.3f} train {row['train_s']:.0f} s",
                  flush=True)
    frame = pd.DataFrame(rows)
    cols = ["mAP (trapezoid)", "mAP (standard)", "R@1", "train_s"]
    summary = frame.groupby("name", sort=False)[cols].agg(["mean", "std"])
    base = summary.loc["single, one-stage", ("mAP (trapezoid)", "mean")]
    summary[("rel. to single", "trapezoid")] = summary[("mAP (trapezoid)", "mean")] / base - 1
    pd.set_option("display.width", 200)
    print(f"\nprofile {profile.name}, test split, seeds {args.seeds}; train_s = stage-2 training time "
          f"(plus stage 1 for two-stage)")
    print(summary.round(3).to_string())
    print(f"\nwall time {time.perf_counter() - start:.0f} s, peak memory "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
