"""Run each notebook headless, in order, and print its wall time and peak memory per profile.

Usage: python benchmarks/bench_notebooks.py [--profiles smoke tutorial] [--keep-cache]

Each profile starts from an empty run cache (a temporary FIREARM_CACHE), so the
numbers are those of a first run on a fresh clone: notebook 02 trains the single
and double margin runs that 03 then loads, and so on. The synthetic data is
generated before the first notebook and is not counted in any notebook's time.
Peak memory is the largest resident set of the notebook's whole process tree
(the kernel included), sampled every 0.2 s.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def tree_rss(process: psutil.Process) -> int:
    """Resident memory of a process and all its descendants, in bytes."""
    total = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_notebook(path: Path, env: dict, out_dir: Path) -> tuple[float, int, int]:
    """Execute one notebook to ``out_dir``; return (wall seconds, peak bytes, exit code)."""
    cmd = [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
           "--ExecutePreprocessor.timeout=3600", "--output-dir", str(out_dir), str(path)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    handle = psutil.Process(proc.pid)
    peak = 0
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss(handle))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    done.set()
    sampler.join()
    wall = time.perf_counter() - start
    if proc.returncode:
        print(err[-2000:], file=sys.stderr)
    return wall, peak, proc.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="+", default=["smoke", "tutorial"])
    parser.add_argument("--keep-cache", action="store_true", help="use the repo's cache/ instead of a fresh one")
    args = parser.parse_args()
    rows = []
    for profile in args.profiles:
        with tempfile.TemporaryDirectory() as tmp:
            env = dict(os.environ, FIREARM_PROFILE=profile, PYTHONHASHSEED="0")
            env.pop("MPLBACKEND", None)  # the notebooks need the inline backend
            if not args.keep_cache:
                env["FIREARM_CACHE"] = str(Path(tmp) / "cache")
            subprocess.run([sys.executable, "-c", "from helpers import config, data; data.load_active_release(config.active_profile())"],
                           env=env, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
            for nb in NOTEBOOKS:
                wall, peak, code = run_notebook(nb, env, Path(tmp))
                rows.append((profile, nb.stem, wall, peak / 2**30, "ok" if code == 0 else f"FAILED ({code})"))
                print(f"{profile:9s} {nb.stem:28s} {wall:7.1f} s {peak / 2**30:6.2f} GiB  {rows[-1][-1]}", flush=True)
    print("\nprofile   notebook                      wall (s)  peak (GiB)  status")
    for profile in args.profiles:
        total = 0.0
        for p, name, wall, peak, status in rows:
            if p == profile:
                total += wall
                print(f"{p:9s} {name:28s} {wall:9.1f} {peak:10.2f}  {status}")
        print(f"{profile:9s} {'TOTAL':28s} {total:9.1f}")
    return 0 if all(r[-1] == "ok" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
