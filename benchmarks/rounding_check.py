"""Do the committed verdicts survive another processor's rounding? Retrain with oneDNN off and compare.

Usage: python benchmarks/rounding_check.py [--profile tutorial] [--out results]

Another processor rounds the convolutions differently (by about 1e-6), and
training can then follow another path. Switching oneDNN off
(``torch.backends.mkldnn.enabled = False``) changes the rounding the same
way on this machine, so it stands in for a second one. With oneDNN off, in a
fresh run cache (the frozen trunk's cached maps are shared: only training
rounds differently), the script retrains seed 0's stage-1 classifier and the
one-stage and two-stage double margin runs at the committed tuned settings,
scores them on the test split, and puts their rows in place of the committed
seed-0 rows. It then checks that

* each retrained number is within the one-run tolerance of
  :func:`helpers.report.tolerance` of the committed one, and
* every **firm** claim of :func:`helpers.report.claims` keeps its verdict
  (a fragile or open one may change: that is what those words announce;
  the changes are printed and recorded).

It prints both, with the wall time and peak memory, and writes
``rounding_check.csv`` (one row per retrained model; the rows of other
profiles are kept). It exits with status 1
when a number is out of tolerance or a firm verdict changes.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("double, one-stage", "double, two-stage")


def _fresh_cache_sharing_features() -> Path:
    """A temporary run cache whose ``features/`` is the repository cache's (frozen maps, no training in them)."""
    folder = Path(tempfile.mkdtemp(prefix="rounding-check-"))
    shared = ROOT / "cache" / "features"
    shared.mkdir(parents=True, exist_ok=True)
    (folder / "features").symlink_to(shared, target_is_directory=True)
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=None, help="defaults to FIREARM_PROFILE or tutorial")
    parser.add_argument("--results", type=Path, default=ROOT / "results", help="folder of the committed results")
    parser.add_argument("--out", type=Path, default=None, help="folder of rounding_check.csv (default: --results)")
    args = parser.parse_args()
    os.environ["FIREARM_CACHE"] = str(_fresh_cache_sharing_features())  # read when helpers.config is imported

    import pandas as pd
    import torch

    from helpers import config, data, report
    from helpers.machinery import protocol, runs

    torch.backends.mkldnn.enabled = False
    profile = config.get_profile(args.profile) if args.profile else config.active_profile()
    tables = report.read_results(profile, args.results)
    out = args.out or args.results
    comparison = tables["comparison"]
    chosen = report.chosen_settings(tables["tuning"])
    tuned = config.check_profile(dataclasses.replace(profile, cls_lr=chosen["cls_lr"], tuned=chosen["tuned"]))
    began = time.perf_counter()
    release = data.load_active_release(tuned, seed=config.DEFAULT_SEED, progress=False)
    jobs = dict(protocol.seed_jobs(release, 0, tuned))
    rows = [jobs[name]()[0] for name in ("stage-1 features only", *MODELS)]
    wall = time.perf_counter() - began

    fresh = pd.DataFrame(rows)
    metric = "mAP (trapezoid)"
    allowed = report.tolerance(comparison, metric)
    committed = comparison[comparison["seed"] == 0].set_index("model")[metric]
    check = pd.DataFrame({"committed": committed.loc[fresh["model"]].to_numpy(), "oneDNN off": fresh[metric].to_numpy()},
                         index=fresh["model"])
    check["difference"] = check["oneDNN off"] - check["committed"]
    check["within tolerance"] = check["difference"].abs() <= allowed
    verdicts = report.rerun_verdicts(comparison, fresh.assign(seed=0), metric)
    firm_same = bool(verdicts["allowed"].all())
    pd.set_option("display.width", 200)
    print(f"profile {profile.name}; test {metric} of the seed-0 runs retrained with oneDNN off; "
          f"tolerance of one run {allowed:.4f}")
    print(check.round(4).to_string())
    print("\nVerdicts of the claims:")
    print(verdicts.to_string())
    out.mkdir(parents=True, exist_ok=True)
    path = out / "rounding_check.csv"
    mine = check.reset_index().assign(profile=profile.name, tolerance=allowed, code=runs.code_version(),
                                      **{"verdicts same": bool(verdicts["same"].all()),
                                         "firm verdicts same": firm_same,
                                         "changed": "; ".join(verdicts.index[~verdicts["same"]])})
    others = pd.read_csv(path, dtype={"profile": str}) if path.is_file() else pd.DataFrame(columns=["profile"])
    pd.concat([others[others["profile"] != profile.name], mine], ignore_index=True).to_csv(
        path, index=False, float_format="%.6g")
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"\nwrote {out / 'rounding_check.csv'}; wall time {wall:.0f} s, peak memory {peak_gb:.2f} GB")
    held = bool(check["within tolerance"].all() and firm_same)
    moved = verdicts[~verdicts["same"]]
    if len(moved):
        print(f"{len(moved)} verdict(s) changed, none of them firm: " if firm_same else "A FIRM VERDICT CHANGED: ",
              "; ".join(f"{claim} ({row['firmness']}: {row['committed']} -> {row['with the rerun']})"
                        for claim, row in moved.iterrows()))
    print("every number within tolerance and every firm verdict the same" if held else "A CHECK FAILED")
    return 0 if held else 1


if __name__ == "__main__":
    sys.exit(main())
