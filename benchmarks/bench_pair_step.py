"""Benchmark: one batched pair step against a per-sample loop, and against the forward/backward floor.

Run as ``python benchmarks/bench_pair_step.py``. At the tutorial image size
(its ``eval_size`` canvas), with the ``small`` backbone on images (the
tutorial itself trains on cached maps) and B pairs per batch, it times

(a) the batched pair step of ``helpers.train``: one forward pass over the 2B
    images (``torch.cat``), split, double margin loss, backward, SGD step;
(b) a per-sample loop in the style of the authors' code: one pair at a time
    (forward x1, forward x2, loss / B, backward), gradients accumulated over
    the batch, one SGD step;
(c) the floor: forward and backward of the same 2B images with a trivial loss.

It prints the median time per step, the ratios (b)/(a) and (a)/(c), images/s,
the wall time and the peak memory (resident set size) of the process.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers import config, losses, models  # noqa: E402


def make_model_and_optimizer(profile: config.Profile):
    """The tutorial network and its SGD optimiser, seeded."""
    config.seed_everything(0)
    model = models.build_network(models.ModelSpec.of(profile)).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=profile.ret_lr, momentum=profile.momentum,
                                weight_decay=profile.weight_decay)
    return model, optimizer


def batched_step(model, optimizer, x1, x2, y, profile) -> None:
    """(a) Both images of every pair in one forward pass."""
    optimizer.zero_grad(set_to_none=True)
    e1, e2 = model(torch.cat([x1, x2])).split(len(x1))
    loss = losses.double_margin_contrastive_loss(e1, e2, y, profile.pos_margin, profile.neg_margin)
    loss.backward()
    optimizer.step()


def per_sample_step(model, optimizer, x1, x2, y, profile) -> None:
    """(b) One pair at a time, gradients accumulated, one optimiser step per batch."""
    optimizer.zero_grad(set_to_none=True)
    for k in range(len(x1)):
        e1, e2 = model(x1[k:k + 1]), model(x2[k:k + 1])
        loss = losses.double_margin_contrastive_loss(e1, e2, y[k:k + 1], profile.pos_margin, profile.neg_margin)
        (loss / len(x1)).backward()
    optimizer.step()


def floor_step(model, optimizer, x1, x2, y, profile) -> None:
    """(c) Forward and backward of the 2B images with a trivial loss, no optimiser step."""
    optimizer.zero_grad(set_to_none=True)
    model(torch.cat([x1, x2])).sum().backward()


def median_time(step, reps: int, warmup: int, *args) -> float:
    """Median seconds per call of ``step(*args)`` over ``reps`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        step(*args)
    times = []
    for _ in range(reps):
        began = time.perf_counter()
        step(*args)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def main() -> None:
    """Parse the options, time the variants and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=64, help="pairs per batch (B)")
    parser.add_argument("--size", type=int, default=None, help="canvas side (default: tutorial eval_size)")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()

    began = time.perf_counter()
    profile = config.get_profile("tutorial", backbone="small", weights=None, cut=None)  # images, not cached maps
    size = args.size or profile.eval_size
    generator = torch.Generator().manual_seed(0)
    x1 = torch.randn(args.pairs, 3, size, size, generator=generator)
    x2 = torch.randn(args.pairs, 3, size, size, generator=generator)
    y = (torch.arange(args.pairs) % 2).float()
    model, optimizer = make_model_and_optimizer(profile)
    inputs = (model, optimizer, x1, x2, y, profile)

    t_batched = median_time(batched_step, args.reps, 2, *inputs)
    t_loop = median_time(per_sample_step, max(2, args.reps // 2), 1, *inputs)
    t_floor = median_time(floor_step, args.reps, 2, *inputs)

    images = 2 * args.pairs
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, backbone={profile.backbone}, "
          f"canvas {size}x{size}, B={args.pairs} pairs ({images} images), "
          f"{models.count_parameters(model) / 1e6:.2f} M parameters")
    print(f"(a) batched pair step   {1e3 * t_batched:8.1f} ms/step  {images / t_batched:7.0f} images/s")
    print(f"(b) per-sample loop     {1e3 * t_loop:8.1f} ms/step  {images / t_loop:7.0f} images/s")
    print(f"(c) fwd+bwd floor       {1e3 * t_floor:8.1f} ms/step  {images / t_floor:7.0f} images/s")
    print(f"ratio (b)/(a) = {t_loop / t_batched:.1f}x  (batching speed-up)")
    print(f"ratio (a)/(c) = {t_batched / t_floor:.2f}x  (cost of the loss and SGD step over the floor)")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux
    print(f"wall time {time.perf_counter() - began:.1f} s, peak memory {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
