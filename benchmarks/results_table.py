"""The fair comparison: tune learning rates and margins on validation, train every method with five seeds, test.

Usage: python benchmarks/results_table.py [--profile tutorial] [--seeds 0 1 2 3 4] [--out results]

``make results`` runs it at the tutorial profile, following
:mod:`helpers.machinery.protocol`: Optuna studies of the same number of
trials for stage 1's learning rate and for each loss's learning rate and
margins on each schedule (seed 0, validation split); then, at the chosen
settings and for every seed, the three losses one-stage and two-stage, a
compute-matched one-stage double margin run and the floors, scored on the
test split; the positive share of the contrastive losses per epoch; and the
noise of validation by the query protocol and by leave-one-out. Every trial
and run is recorded in ``results/`` as it ends, so an interrupted call
resumes. It prints the chosen settings (to copy into the profile's
``tuned``), the mean ± 95% interval over seeds, the paired verdict of each
of the paper's claims with its bootstrap interval, the tolerance of the
committed numbers and the share of runs that kept their last epoch, with the
wall time and peak memory.
"""
from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=None, help="defaults to FIREARM_PROFILE or tutorial")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2 3 4")
    parser.add_argument("--out", type=Path, default=None, help="folder of the CSV files (default: results/)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    import pandas as pd

    from helpers import config, data, report
    from helpers.machinery import protocol, runs

    profile = config.get_profile(args.profile) if args.profile else config.active_profile()
    seeds = tuple(args.seeds) if args.seeds else protocol.SEEDS
    folder = args.out or report.RESULTS_DIR
    began = time.perf_counter()
    release = data.load_active_release(profile, seed=config.DEFAULT_SEED, progress=False)
    tuned = protocol.run_protocol(release, profile, seeds=seeds, folder=folder, progress=not args.no_progress)
    wall = time.perf_counter() - began
    tables = report.read_results(profile, folder)

    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 30)
    print(f"\nprofile {profile.name}, seeds {list(seeds)}, code {runs.code_version()}")
    chosen = report.chosen_settings(tables["tuning"])
    print(f"\nChosen by the tuning (copy into the {profile.name} profile): cls_lr={chosen['cls_lr']!r}, "
          f"tuned={chosen['tuned']!r}")
    if (profile.cls_lr, profile.tuned) != (tuned.cls_lr, tuned.tuned):
        print(f"NOTE: helpers/config.py's {profile.name} profile does not hold these settings yet; the notebooks "
              "train with the profile's.")
    table = report.summary(tables["comparison"], ["mAP (trapezoid)", "mAP (standard)", "R@1", "MAP@R"])
    print("\nTest split, mean and 95% interval over seeds:")
    print(table.round(4).to_string())
    print("\nThe paper's claims (paired over seeds, trapezoid mAP; bootstrap over test categories):")
    print(report.claims(tables["comparison"], per_query=tables["per_query"]).round(4).to_string())
    print(f"\nTolerance of one run's mAP on another machine: {report.tolerance(tables['comparison']):.4f}; "
          f"of a mean over {len(seeds)} seeds: {report.tolerance(tables['comparison'], n_seeds=len(seeds)):.4f}")
    print(f"Retrieval runs that kept their last epoch: {report.kept_last_share(tables['comparison']):.1%}; by group:")
    print(report.plateau(tables["comparison"]).round(4).to_string())
    print("\nValidation noise:")
    print(report.validation_noise(tables["validation_noise"]).round(4).to_string())
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"\nwrote {folder}; wall time {wall:.0f} s ({wall / 60:.1f} min) in this sitting, "
          f"peak memory {peak_gb:.2f} GB")


if __name__ == "__main__":
    main()
