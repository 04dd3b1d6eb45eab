"""Benchmark: batched embedding extraction against a per-image loop.

Run as ``python benchmarks/bench_extract.py``. Embeds about 1000 images of the
tutorial canvas size with the ``small`` network, once with
``helpers.models.extract_embeddings`` (batches of ``eval_batch_size``) and
once one image at a time, checks that both give the same embeddings, and
prints the times, the ratio, images/s, the wall time and the peak memory
(resident set size) of the process.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers import config, models  # noqa: E402


@torch.no_grad()
def per_image_embeddings(model, images: torch.Tensor) -> torch.Tensor:
    """One forward pass per image, as a loop over the dataset would do."""
    model.eval()
    return torch.cat([model(images[i:i + 1]) for i in range(len(images))])


def timed(function, *args):
    """``(result, seconds)`` of one call."""
    began = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - began


def main() -> None:
    """Parse the options, time the variants and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=None, help="canvas side (default: tutorial eval_size)")
    args = parser.parse_args()

    began = time.perf_counter()
    profile = config.get_profile("tutorial", backbone="small", weights=None, cut=None)  # images, not cached maps
    size = args.size or profile.eval_size
    config.seed_everything(0)
    model = models.build_network(models.ModelSpec.of(profile)).eval()
    images = torch.randn(args.images, 3, size, size, generator=torch.Generator().manual_seed(0))
    dataset = TensorDataset(images, torch.zeros(args.images, dtype=torch.int64))

    models.extract_embeddings(model, torch.utils.data.Subset(dataset, range(8)), progress=False)  # warm-up
    batched, t_batched = timed(lambda: models.extract_embeddings(
        model, dataset, batch_size=profile.eval_batch_size, progress=False))
    looped, t_loop = timed(per_image_embeddings, model, images)
    gap = (batched - looped).abs().max().item()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, backbone={profile.backbone}, "
          f"{args.images} images of {size}x{size}, batch {profile.eval_batch_size}")
    print(f"batched extract_embeddings {t_batched:7.2f} s  {args.images / t_batched:7.0f} images/s")
    print(f"per-image loop             {t_loop:7.2f} s  {args.images / t_loop:7.0f} images/s")
    print(f"ratio loop/batched = {t_loop / t_batched:.1f}x   (max |difference| of embeddings {gap:.1e})")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux
    print(f"wall time {time.perf_counter() - began:.1f} s, peak memory {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
