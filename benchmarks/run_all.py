"""Run every benchmark in this folder, each in its own process, and print a summary.

Usage: python benchmarks/run_all.py [--profile smoke|tutorial|paper]

The profile defaults to ``FIREARM_PROFILE`` (``make bench`` passes ``smoke``).
At ``smoke`` every benchmark runs at a tiny size: a quick check that they all
still run, whose numbers mean little. At ``tutorial`` (``make bench
PROFILE=tutorial``) they run at full size, which takes a long time (the
notebook benchmark alone re-executes the whole series from an empty cache).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

SMOKE_ARGS = {
    "bench_map.py": ["--queries", "100", "--database", "2000", "--loop-queries", "20", "--repeats", "1"],
    "bench_pair_step.py": ["--pairs", "8", "--reps", "1"],
    "bench_extract.py": ["--images", "32"],
    "bench_synthetic.py": [],
    "bench_search.py": [],
    "bench_lite0.py": [],
    "calibrate_resolution.py": ["--sizes", "64", "--epochs", "1"],
    "ablation_scratch.py": ["--out", "{tmp}/ablation_scratch.csv"],
    "bench_notebooks.py": ["--profiles", "smoke"],
    "results_table.py": ["--seeds", "0", "--profile", "smoke", "--out", "{tmp}/results"],
}
"""Every benchmark, with the arguments that make it quick at the smoke profile."""

FULL_ARGS = {"bench_notebooks.py": ["--profiles", "{profile}"], "results_table.py": ["--profile", "{profile}"]}
# ablation_scratch.py writes results/ablation_scratch.csv, which notebook 04 reads, only at a full size.
"""Arguments at a full-size profile (all others run with their defaults)."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=os.environ.get("FIREARM_PROFILE", "smoke"),
                        choices=["smoke", "tutorial", "paper"])
    args = parser.parse_args()
    missing = sorted(set(p.name for p in HERE.glob("*.py")) - set(SMOKE_ARGS) - {Path(__file__).name})
    if missing:
        print(f"benchmarks not listed in run_all.py: {missing}", file=sys.stderr)
        return 2
    env = dict(os.environ, FIREARM_PROFILE=args.profile, PYTHONHASHSEED="0")
    results = []
    scratch = tempfile.mkdtemp(prefix="bench-")
    for script, smoke_args in SMOKE_ARGS.items():
        chosen = smoke_args if args.profile == "smoke" else FULL_ARGS.get(script, [])
        extra = [a.format(profile=args.profile, tmp=scratch) for a in chosen]
        print(f"\n=== {script} {' '.join(extra)} (FIREARM_PROFILE={args.profile})", flush=True)
        began = time.perf_counter()
        code = subprocess.run([sys.executable, str(HERE / script), *extra], env=env).returncode
        results.append((script, time.perf_counter() - began, "ok" if code == 0 else f"FAILED ({code})"))
    print(f"\nbenchmark              wall (s)  status   [profile {args.profile}]")
    for script, wall, status in results:
        print(f"{script:22s} {wall:8.1f}  {status}")
    print(f"{'total':22s} {sum(w for _, w, _ in results):8.1f}")
    return 0 if all(status == "ok" for *_, status in results) else 1


if __name__ == "__main__":
    sys.exit(main())
