"""Benchmark of the synthetic release renderer: time, throughput, disk size and peak memory per profile.

Run ``python benchmarks/bench_synthetic.py`` (add ``--paper`` for the large
paper-profile release). Each measurement runs in a fresh Python process, so
its peak memory is its own; every release is written to a temporary folder and
deleted. The serial / parallel ratio of the smoke profile comes from two runs
made by this same invocation.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def measure(profile: str, workers: int) -> dict:
    """Generate one release in a temporary folder and return its measurements."""
    sys.path.insert(0, str(REPO_ROOT))
    from helpers import config, synthetic

    with tempfile.TemporaryDirectory(prefix="bench-synthetic-") as tmp:
        start = time.perf_counter()
        root = synthetic.make_synthetic_release(Path(tmp) / profile, config.get_profile(profile), seed=0, progress=False,
                                                workers=workers)
        wall = time.perf_counter() - start
        metadata = synthetic.read_metadata(root)
        stats = [p.stat() for p in root.rglob("*") if p.is_file()]
        disk = sum(st.st_size for st in stats)
        blocks = sum(st.st_blocks * 512 for st in stats)
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"profile": profile, "workers": workers, "wall_s": wall,
            "categories": len(metadata["categories"]),
            "images": sum(c["n_images"] for c in metadata["categories"]),
            "files": len(metadata["files"]), "disk_mb": disk / 2**20, "disk_blocks_mb": blocks / 2**20,
            "peak_rss_mb": self_kb / 1024, "peak_worker_rss_mb": children_kb / 1024}


def run_isolated(profile: str, workers: int) -> dict:
    """Run :func:`measure` in a fresh interpreter and parse its JSON line."""
    out = subprocess.run([sys.executable, __file__, "--one", profile, str(workers)], check=True,
                         capture_output=True, text=True, cwd=REPO_ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def print_table(rows: list[dict]) -> None:
    header = (f"{'profile':<9} {'workers':>7} {'categories':>10} {'images':>7} {'files':>7} {'wall s':>7} "
              f"{'img/s':>7} {'disk MB':>8} {'on disk MB':>10} {'peak RSS MB':>12} {'worker RSS MB':>14}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['profile']:<9} {r['workers']:>7} {r['categories']:>10} {r['images']:>7} {r['files']:>7} "
              f"{r['wall_s']:>7.2f} {r['images'] / r['wall_s']:>7.0f} {r['disk_mb']:>8.1f} "
              f"{r['disk_blocks_mb']:>10.1f} "
              f"{r['peak_rss_mb']:>12.0f} {r['peak_worker_rss_mb']:>14.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paper", action="store_true", help="also time the paper profile (large)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="worker processes for the per-profile runs (default: min(2, cpu count))")
    parser.add_argument("--one", nargs=2, metavar=("PROFILE", "WORKERS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]))))
        return
    start = time.perf_counter()
    serial = run_isolated("smoke", 1)
    parallel = run_isolated("smoke", 2)
    rows = [serial, parallel, run_isolated("tutorial", args.workers)]
    if args.paper:
        rows.append(run_isolated("paper", args.workers))
    print_table(rows)
    print("(disk MB: sum of file sizes; on disk MB: allocated blocks; peak RSS: the generating process, "
          "worker RSS: its largest worker)")
    print(f"\nsmoke serial / parallel (2 workers) wall time ratio: {serial['wall_s'] / parallel['wall_s']:.2f}x")
    print(f"benchmark wall time {time.perf_counter() - start:.1f} s; "
          f"this process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
