"""Benchmark: FAISS indexes of helpers.search against the exact torch matmul + top-k floor.

Run: ``python benchmarks/bench_search.py`` (``--n-db`` and ``--queries`` resize it;
with ``FIREARM_PROFILE=smoke`` the defaults are 20,000 database vectors and 200
queries, otherwise 1,000,000 and 1,000). ``--csv PATH`` also writes the table,
unrounded, with the run's sizes and library versions in every row;
``results/search_benchmark.csv`` (read by notebook 06) is its output at the
default full size.

Data, seeded: ``--centres`` Gaussian directions (default 4,096 per million
database vectors, so about 244 vectors per centre at any size) normalised
onto the unit sphere of ``--dim`` (128) dimensions; each vector is a uniformly drawn
centre plus isotropic Gaussian noise of standard deviation ``--noise`` per
coordinate, L2-normalised again. The queries are drawn the same way from the
same centres with noise from a separate random stream, so none is a database
vector (both from ``helpers.search.clustered_unit_vectors``).

The floor is exact search with torch (``helpers.search.torch_topk``): ``q @ d.T``
on chunks of queries and ``torch.topk``; its top-10 is the reference for every recall. Each index row
gives: build seconds (k-means training plus adding the vectors), queries/s
for one batched search of all queries (best of up to 3 runs for the fast
ones), queries/s relative to the floor, index memory (``index_memory_bytes``:
the serialised size) and its ratio to the raw float32 vectors, and recall@10
of the exact top-10. Indexes: exact ``IndexFlatIP``; IVF-Flat and IVF-PQ
(``--nlist`` cells, m = 16 and 32 bytes per code) at several ``nprobe``; the
IVF-PQ ones once more with an ``IndexRefineFlat`` step (``--k-factor``). The
IVF-PQ index is built once, inside the refinement wrapper, and searched with
and without it: both rows show that one build time (storing the raw vectors
for refinement is a copy, negligible next to the k-means trainings). Also
printed: wall time and peak memory (max RSS) of the process. Timings are
machine-dependent; the ratios, measured in the same run, are the point.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import resource
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import config, search  # noqa: E402

K = 10


def make_data(n_db: int, n_queries: int, dim: int, n_centres: int, noise: float, seed: int):
    """Clustered unit vectors (database, queries) as the module docstring says, float32."""
    centres = np.random.default_rng([seed, 0]).standard_normal((n_centres, dim))
    centres = (centres / np.linalg.norm(centres, axis=1, keepdims=True)).astype(np.float32)
    return (search.clustered_unit_vectors(centres, n_db, noise, seed=[seed, 1]),
            search.clustered_unit_vectors(centres, n_queries, noise, seed=[seed, 2]))


def best_time(fn, slow: float = 1.0, repeats: int = 3):
    """``(result, seconds)`` of one call; calls faster than ``slow`` s are repeated, best of ``repeats``."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
        if best > slow:
            break
    return result, best


def main() -> None:
    smoke = config.profile_name() == "smoke"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-db", type=int, default=20_000 if smoke else 1_000_000)
    parser.add_argument("--queries", type=int, default=200 if smoke else 1000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--centres", type=int, default=None,
                        help="cluster centres (default 4096 per million vectors, about 244 vectors each)")
    parser.add_argument("--noise", type=float, default=0.08, help="per-coordinate noise std")
    parser.add_argument("--nlist", type=int, default=None, help="IVF cells (default min(1024, n_db // 39))")
    parser.add_argument("--k-factor", type=float, default=4.0, help="IndexRefineFlat candidates per result")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--csv", type=Path, default=None,
                        help="also write the table (unrounded, one row per index setting) to this CSV file")
    args = parser.parse_args()
    wall_start = time.perf_counter()
    nlist = args.nlist or min(1024, args.n_db // 39)
    n_centres = args.centres or max(1, round(4096 * args.n_db / 1_000_000))
    nprobes = sorted({p for p in (1, 4, 16, 64) if p <= nlist})

    database, queries = make_data(args.n_db, args.queries, args.dim, n_centres, args.noise, args.seed)
    raw_bytes = database.nbytes
    print(f"{args.n_db:,} database x {args.queries:,} queries x {args.dim}-d, {n_centres} centres, "
          f"noise {args.noise}; nlist {nlist}, k {K}; faiss {faiss.__version__} "
          f"({faiss.omp_get_max_threads()} threads), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); data made in {time.perf_counter() - wall_start:.1f} s")

    q_t, d_t = torch.from_numpy(queries), torch.from_numpy(database)
    search.torch_topk(q_t[:8], d_t, K)  # warm-up
    exact_ids, t_floor = best_time(lambda: search.torch_topk(q_t, d_t, K))
    floor_qps = args.queries / t_floor
    rows = [{"index": "torch matmul + topk (floor)", "nprobe": "-", "build s": 0.0, "queries/s": floor_qps,
             "memory MB": raw_bytes / 2**20, "recall@10": 1.0}]

    def measure(name: str, index: search.SearchIndex, build_s: float, nprobe_values=(None,)) -> None:
        memory = search.index_memory_bytes(index)
        for nprobe in nprobe_values:
            if nprobe is not None:
                search.set_nprobe(index, nprobe)
            search.search(index, queries[:8], K)  # warm-up
            (_, ids), seconds = best_time(lambda: search.search(index, queries, K))
            rows.append({"index": name, "nprobe": "-" if nprobe is None else str(nprobe), "build s": build_s,
                         "queries/s": args.queries / seconds, "memory MB": memory / 2**20,
                         "recall@10": search.recall_of_exact_topk(ids, exact_ids, K)})
            print(f"  {name:<28} nprobe {rows[-1]['nprobe']:>3}: {rows[-1]['queries/s']:9.0f} queries/s, "
                  f"recall@10 {rows[-1]['recall@10']:.3f}", flush=True)

    def build(*build_args, **build_kwargs):
        start = time.perf_counter()
        index = search.build_index(database, *build_args, seed=args.seed, **build_kwargs)
        return index, time.perf_counter() - start

    measure("IndexFlatIP (exact)", *build("exact"))
    gc.collect()
    measure(f"IVF{nlist},Flat", *build("ivf", nlist=nlist), [p for p in nprobes if p >= 4])
    gc.collect()
    for m in (16, 32):
        # one build serves both rows: without refinement, search the IVF-PQ index inside the wrapper
        refined, build_s = build("ivfpq", nlist=nlist, m=m, refine=args.k_factor)
        measure(f"IVF{nlist},PQ{m}", dataclasses.replace(refined, index=refined.ivf, refine=None), build_s,
                nprobes)
        measure(f"IVF{nlist},PQ{m} + refine x{args.k_factor:g}", refined, build_s,
                [p for p in nprobes if p >= 4])
        del refined
        gc.collect()

    table = pd.DataFrame(rows)
    table.insert(4, "QPS / floor", table["queries/s"] / floor_qps)
    table.insert(6, "memory / raw", table["memory MB"] * 2**20 / raw_bytes)
    print()
    print(table.to_string(index=False, formatters={
        "build s": "{:.1f}".format, "queries/s": "{:,.0f}".format, "QPS / floor": "{:.1f}x".format,
        "memory MB": "{:,.1f}".format, "memory / raw": "{:.3f}".format, "recall@10": "{:.3f}".format}))
    print(f"floor: {t_floor:.2f} s for {args.queries} queries; memory / raw: against the "
          f"{raw_bytes / 2**20:,.0f} MB of float32 vectors")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux
    wall = time.perf_counter() - wall_start
    print(f"wall time {wall:.1f} s, peak memory (max RSS) {peak_mib:,.0f} MiB")
    if args.csv is not None:
        columns = {"index": "index", "nprobe": "nprobe", "build s": "build_s", "queries/s": "queries_per_s",
                   "QPS / floor": "qps_over_floor", "memory MB": "memory_mb", "memory / raw": "memory_over_raw",
                   "recall@10": "recall_at_10"}
        out = table.rename(columns=columns)[list(columns.values())]
        run = {"n_db": args.n_db, "n_queries": args.queries, "dim": args.dim, "n_centres": n_centres,
               "noise": args.noise, "nlist": nlist, "k_factor": args.k_factor, "seed": args.seed,
               "faiss": faiss.__version__, "faiss_threads": faiss.omp_get_max_threads(),
               "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
               "wall_s": round(wall, 1)}
        for name, value in run.items():
            out[name] = value
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        out.to_csv(args.csv, index=False)
        print(f"wrote {args.csv}")


if __name__ == "__main__":
    main()
