"""Benchmark: EfficientNet-Lite0 on the CPU, whole and split for the frozen-trunk cache recipe.

Run as ``python benchmarks/bench_lite0.py``. With two threads and batches of
64 random images it prints

(a) eval throughput (img/s) of the whole pretrained network at 96, 128, 160 px;
(b) for cuts at blocks 9, 11, 13, 15 at 96 and 128 px: throughput of the
    frozen lower trunk, the shape of the map it caches and its bytes per
    image in float32 and float16;
(c) at 128 px, img/s of one training step (forward, cross-entropy on the
    1000-class head, backward, SGD step) of the trainable top on cached
    float16 maps, of the same step recomputing the frozen part from images,
    and of the whole network trained on images, with the ratios the cache buys;
(d) the time to cache the active profile's frozen features from scratch (the
    training views of the retrieval training images, and the evaluation view
    of the validation and test images), in a temporary cache;

then the wall time and the peak memory (resident set size) of the process.
Each variant gets one warm-up call, then timed calls for at least 3 s.
``FIREARM_PROFILE=smoke`` only checks that the script runs: batches of 4,
96 px in (a) and (b), cut 11 only, no warm-up, one timed call each (its rates
are not comparable).
"""
from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers import config, imagenet  # noqa: E402

FULL = dict(batch=64, min_seconds=3.0, eval_sizes=(96, 128, 160), cache_sizes=(96, 128),
            cuts=(9, 11, 13, 15), train_cuts=(11, 13, 15))
SMOKE = dict(batch=4, min_seconds=0.0, eval_sizes=(96,), cache_sizes=(96,), cuts=(11,),
             train_cuts=(11,))
TRAIN_SIZE = 128


def images_per_second(step, batch: int, min_seconds: float) -> float:
    """Call ``step()`` once to warm up, then until ``min_seconds`` have passed (once at least).

    Returns images per second, counting ``batch`` images a call. With
    ``min_seconds=0`` (the smoke run) there is no warm-up call.
    """
    if min_seconds > 0:
        step()
    calls, began = 0, time.perf_counter()
    while calls == 0 or time.perf_counter() - began < min_seconds:
        step()
        calls += 1
    return calls * batch / (time.perf_counter() - began)


def batch_of_images(batch: int, size: int) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(size))


def training_step(body, head: nn.Module, optimizer, labels):
    """A step function: ``body()`` gives the input of ``head``; cross-entropy, backward, SGD step."""
    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(head(body()), labels)
        loss.backward()
        optimizer.step()
    return step


def sgd(parameters):
    return torch.optim.SGD([p for p in parameters if p.requires_grad], lr=1e-3, momentum=0.9)


def bench_eval(batch: int, min_seconds: float, eval_sizes, **_) -> None:
    model = imagenet.efficientnet_lite0("imagenet").eval()
    print(f"(a) whole Lite0, eval, batch {batch}")
    with torch.no_grad():
        for size in eval_sizes:
            x = batch_of_images(batch, size)
            rate = images_per_second(lambda: model(x), batch, min_seconds)
            print(f"    {size:3d} px: {rate:7.1f} img/s")


def bench_frozen(batch: int, min_seconds: float, cache_sizes, cuts, **_) -> None:
    model = imagenet.efficientnet_lite0("imagenet").eval()
    print(f"(b) frozen lower trunk, eval, batch {batch}")
    print(f"    {'size':>4} {'cut':>3} {'img/s':>7}  {'cached map':>12} {'KiB fp32':>9} {'KiB fp16':>9}"
          f" {'MiB/10k fp16':>12}")
    with torch.no_grad():
        for size in cache_sizes:
            x = batch_of_images(batch, size)
            for cut in cuts:
                frozen, _ = imagenet.lite0_split(model, cut)
                rate = images_per_second(lambda: frozen(x), batch, min_seconds)
                shape = tuple(frozen(x[:1]).shape[1:])
                assert shape == imagenet.lite0_cut_shape(cut, size)
                values = shape[0] * shape[1] * shape[2]
                print(f"    {size:4d} {cut:3d} {rate:7.1f}  {'x'.join(map(str, shape)):>12} "
                      f"{values * 4 / 1024:9.1f} {values * 2 / 1024:9.1f} {values * 2e4 / 2**20:12.1f}")


def bench_training(batch: int, min_seconds: float, train_cuts, **_) -> None:
    x = batch_of_images(batch, TRAIN_SIZE)
    labels = torch.randint(0, 1000, (batch,), generator=torch.Generator().manual_seed(1))
    print(f"(c) training step at {TRAIN_SIZE} px, batch {batch} (img/s)")

    model = imagenet.efficientnet_lite0("imagenet").train()
    head = nn.Sequential(model.global_pool, model.classifier)
    step = training_step(lambda: model.forward_features(x), head, sgd(model.parameters()), labels)
    whole = images_per_second(step, batch, min_seconds)
    print(f"    whole network on images: {whole:7.1f}")

    print(f"    {'cut':>3} {'cached maps':>11} {'frozen recomputed':>17} {'cache/recomputed':>16}"
          f" {'cache/whole':>11}")
    for cut in train_cuts:
        model = imagenet.efficientnet_lite0("imagenet").train()
        frozen, trainable = imagenet.lite0_split(model, cut)  # frozen: no grad, eval mode
        head = nn.Sequential(model.global_pool, model.classifier)
        optimizer = sgd(list(trainable.parameters()) + list(head.parameters()))
        with torch.no_grad():
            cache = frozen(x).half()

        def recomputed():
            with torch.no_grad():
                maps = frozen(x)
            return trainable(maps)

        step = training_step(lambda: trainable(cache.float()), head, optimizer, labels)
        on_cache = images_per_second(step, batch, min_seconds)
        on_images = images_per_second(training_step(recomputed, head, optimizer, labels),
                                      batch, min_seconds)
        print(f"    {cut:3d} {on_cache:11.1f} {on_images:17.1f} {on_cache / on_images:15.1f}x"
              f" {on_cache / whole:10.1f}x")


def bench_caching(**_) -> None:
    """(d) Time to cache the active profile's frozen features from scratch (a temporary cache)."""
    from helpers import data, models
    from helpers.machinery import features, runs

    profile = config.active_profile()
    network = models.build_network(models.ModelSpec.of(profile))
    release = data.load_active_release(profile, progress=False)
    evaluated = [p for split in (release.validation, release.test) for p in split.queries + split.database]
    print(f"(d) caching the {profile.name} profile's frozen features (cut {profile.cut}, "
          f"{profile.feature_views} training views, {profile.eval_size} px)")
    saved = config.CACHE_DIR
    with tempfile.TemporaryDirectory() as folder:
        config.CACHE_DIR = Path(folder)
        try:
            for kind, paths, views in (("train", release.retrieval_train.paths, profile.feature_views),
                                       ("eval", evaluated, 1)):
                began = time.perf_counter()
                if kind == "train":
                    features.train_view_maps(network, paths, profile.train_size_range, views, progress=False)
                else:
                    runs.eval_inputs(features.with_cached_frozen(network), paths, [0] * len(paths), profile,
                                     progress=False)
                seconds = time.perf_counter() - began
                print(f"    {kind:5s}: {len(paths) * views:6d} maps in {seconds:6.1f} s "
                      f"({len(paths) * views / seconds:5.1f} maps/s, decoding included)")
        finally:
            config.CACHE_DIR = saved


def main() -> None:
    """Time every variant and print the tables."""
    began = time.perf_counter()
    torch.set_num_threads(2)
    smoke = config.profile_name() == "smoke"
    settings = SMOKE if smoke else FULL
    timing = ("smoke: no warm-up, one timed call each, rates not comparable" if smoke else
              f"full: one warm-up call, then timed calls for at least {FULL['min_seconds']:.0f} s")
    print(f"EfficientNet-Lite0, {torch.get_num_threads()} threads, batch {settings['batch']}, "
          f"profile {timing}")
    bench_eval(**settings)
    bench_frozen(**settings)
    bench_training(**settings)
    bench_caching(**settings)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux
    print(f"wall time {time.perf_counter() - began:.1f} s, peak memory {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
