"""Data-parallel training: the rank split of the batches, global BatchNorm, and torchrun against one process."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from timm.layers import BatchNormAct2d
from torch import nn

from helpers import config, train
from helpers.machinery import distributed

TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.mark.parametrize("n, batch_size, world_size", [(10, 4, 2), (192, 32, 2), (2032, 64, 3), (7, 7, 4), (9, 3, 3)])
def test_rank_slices_concatenate_to_the_single_process_batches(n, batch_size, world_size):
    single = list(distributed.RankBatches(n, batch_size, seed=11, epoch=1))
    per_rank = [list(distributed.RankBatches(n, batch_size, seed=11, epoch=1, rank=r, world_size=world_size))
                for r in range(world_size)]
    assert all(len(batches) == len(single) for batches in per_rank)
    for k, batch in enumerate(single):
        assert sum((rank[k] for rank in per_rank), []) == batch
        sizes = [len(rank[k]) for rank in per_rank]
        assert max(sizes) - min(sizes) <= 1
    assert sorted(sum(single, [])) == list(range(n))  # a permutation, cut into batches of batch_size
    assert [len(b) for b in single[:-1]] == [batch_size] * (len(single) - 1)


def test_one_process_gets_the_batches_of_the_learners_loop():
    assert list(distributed.RankBatches(50, 8, seed=3, epoch=2)) == train.epoch_batches(50, 8, seed=3, epoch=2)
    assert list(distributed.RankBatches(50, 8, seed=3, epoch=2)) != list(distributed.RankBatches(50, 8, seed=4, epoch=2))


def test_a_batch_smaller_than_the_world_is_refused():
    with pytest.raises(ValueError, match="cannot be split over 4 processes"):
        list(distributed.RankBatches(9, 4, seed=0, epoch=1, rank=0, world_size=4))  # last batch has 1 item


def test_one_process_is_a_world_of_one():
    assert distributed.world() == (0, 1) and distributed.is_main() and not distributed.is_distributed()
    assert distributed.loss_share(17, "cpu") == 1.0
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    assert distributed.sync_batchnorm(model, torch.device("cpu")) is model
    step = train.pair_step
    assert distributed.data_parallel_step(step, model, torch.device("cpu"), len) is step
    validate = len
    assert distributed.agreed(validate) is validate and distributed.plain_batchnorm(model, None) is model


def test_global_batchnorm_keeps_names_activation_and_single_process_maths():
    torch.manual_seed(0)
    bn = BatchNormAct2d(6, act_layer=nn.ReLU)
    bn.running_mean.uniform_(-1, 1)
    bn.weight.data.uniform_(0.5, 2)
    reference = BatchNormAct2d(6, act_layer=nn.ReLU)
    reference.load_state_dict(bn.state_dict())
    converted = distributed._replace_batchnorm(nn.Sequential(bn))[0]
    assert isinstance(converted, distributed.GlobalBatchNorm2d)
    assert converted.state_dict().keys() == reference.state_dict().keys()
    x = torch.randn(8, 6, 3, 3)
    for mode in (True, False):  # one process: plain BatchNorm (batch statistics in training), then ReLU
        converted.train(mode), reference.train(mode)
        out = converted(x)
        assert torch.allclose(out, reference(x), atol=1e-6) and (out >= 0).all() and (out > 0).any()
        assert torch.allclose(converted.running_mean, reference.running_mean)


def _cli(argv: list[str], cache: Path, nproc: int) -> subprocess.CompletedProcess:
    env = {**os.environ, config.CACHE_ENV: str(cache), "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    launcher = [str(TORCHRUN), "--standalone", f"--nproc_per_node={nproc}", "-m", "helpers"] if nproc > 1 \
        else [sys.executable, "-m", "helpers"]
    done = subprocess.run(launcher + argv, env=env, cwd=config.REPO_ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed next to this Python")
def test_torchrun_with_two_processes_takes_the_steps_of_one_process(tmp_path):
    """Stage 1 and stage 2 (smoke profile) under torchrun/gloo on 2 CPU processes against 1 process.

    The iteration losses (each the loss of the whole global batch, so each
    depends on every earlier step) and the final weights must agree to float
    tolerance: Adam turns float noise in tiny gradients into updates of its
    step size, so a tensor near zero (a BatchNorm bias) differs by ~0.5% of
    its norm, every other by less than 1e-5. Without global BatchNorm the
    losses differ by ~3e-3 and the running variances by ~10.
    """
    argv = ["train-retrieval", "--profile", "smoke", "--loss", "double", "--init", "classifier",
            "--device", "cpu", "--no-progress", "--set", "tuned=None"]  # the profile's lr 1e-4: small steps
    reports = {}
    for nproc in (1, 2):
        out = tmp_path / f"out{nproc}"
        _cli(argv + ["--out", str(out)], tmp_path / f"cache{nproc}", nproc)
        reports[nproc] = json.loads((out / "train-retrieval.json").read_text())
    for (role1, run1), (role2, run2) in zip(*(((r["role"], r) for r in reports[n]["runs"]) for n in (1, 2))):
        assert role1 == role2 and run1["key"] == run2["key"] and not run2["from_cache"]  # the same run, trained
        one, two = Path(run1["path"]), Path(run2["path"])
        h1, h2 = pd.read_csv(one / "history.csv"), pd.read_csv(two / "history.csv")
        assert len(h1) == len(h2) > 0
        assert (h1["loss"] - h2["loss"]).abs().max() < 1e-5, role1
        w1 = torch.load(one / "model.pt", weights_only=True)["state_dict"]
        w2 = torch.load(two / "model.pt", weights_only=True)["state_dict"]
        for name in w1:
            a, b = w1[name].double(), w2[name].double()
            assert (a - b).norm() <= 1e-2 * a.norm() + 1e-5 * a.numel() ** 0.5, (role1, name)
    shutil.rmtree(tmp_path)
