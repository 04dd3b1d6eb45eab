"""Data-parallel training under ``torchrun``: the process group, each rank's share of a batch, BatchNorm over all ranks.

One process (a notebook, ``python -m helpers``) sees a world of size 1 and
every function here is a no-op. Under ``torchrun --nproc_per_node=N`` the
command line calls :func:`init_from_env`, and training then

* draws the **same** global batches as one process would (:class:`RankBatches`:
  the seeded order is cut into global batches, and rank ``r`` takes the
  ``r``-th contiguous slice of each), so the slices concatenated over ranks
  are exactly the single-process batch;
* weights each rank's loss by its share of the global batch
  (:func:`loss_share`), so that DistributedDataParallel's gradient *average*
  equals the gradient of the global batch mean even when the slices differ
  in size;
* normalises with batch statistics over the whole global batch
  (:func:`sync_batchnorm`): torch's ``SyncBatchNorm`` on CUDA,
  :class:`GlobalBatchNorm2d` on CPU, where ``SyncBatchNorm`` is not supported;
* lets only rank 0 write files (:func:`is_main`).

The pair and triplet losses need no gathering of embeddings across ranks:
every pair (or triplet) is formed by the sampler *before* the split, so both
of its images sit on the same rank.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Sampler

from .. import train


def world() -> tuple[int, int]:
    """``(rank, world size)``: ``(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_distributed() -> bool:
    """Whether this process is one of several in a process group."""
    return world()[1] > 1


def is_main() -> bool:
    """Whether this process is rank 0, the one that writes checkpoints, cache entries and summaries."""
    return world()[0] == 0


def launched_by_torchrun() -> bool:
    """Whether the environment holds torchrun's ``WORLD_SIZE`` with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: torch.device) -> bool:
    """Join torchrun's process group when launched with several processes; return whether we did.

    The backend is NCCL on CUDA (each rank on GPU ``LOCAL_RANK``) and gloo
    on CPU. With one process nothing happens.
    """
    if not launched_by_torchrun() or (dist.is_available() and dist.is_initialized()):
        return is_distributed()
    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed; run with one process")
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return True


def local_device(device: torch.device) -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` on CUDA under torchrun, else ``device``."""
    if device.type == "cuda" and is_distributed():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def shutdown() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op with one process)."""
    if is_distributed():
        dist.barrier()


@contextmanager
def main_first():
    """Run the block on rank 0 first, then on the other ranks (for work that writes a shared cache)."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def broadcast_float(value: float) -> float:
    """Rank 0's ``value`` on every rank, so that decisions (early stopping) agree everywhere."""
    if not is_distributed():
        return value
    box = [float(value)]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over ranks (a copy; ``tensor`` itself with one process)."""
    if not is_distributed():
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total)
    return total


def loss_share(local_weight: float, device) -> float:
    """The factor that turns this rank's batch-mean loss into its share of the global batch mean.

    With ``w_r`` the weight of rank ``r``'s slice (its number of tuples, or its
    summed class weights) and ``W = sum_r w_r``, the factor is ``N w_r / W``:
    DistributedDataParallel averages gradients over the ``N`` ranks, and
    ``(1/N) sum_r (N w_r / W) mean_r = sum_r w_r mean_r / W``, the mean over
    the global batch. It is 1 with one process.
    """
    if not is_distributed():
        return 1.0
    total = all_sum(torch.tensor([float(local_weight)], dtype=torch.float64, device=device)).item()
    return world()[1] * float(local_weight) / total


def rank_slice(size: int, rank: int, world_size: int) -> slice:
    """Rank ``rank``'s contiguous slice of a global batch of ``size`` items (sizes differ by at most 1)."""
    if size < world_size:
        raise ValueError(f"a global batch of {size} items cannot be split over {world_size} processes; "
                         f"use fewer processes or a batch size that leaves no batch smaller than that")
    base, extra = divmod(size, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


class RankBatches(Sampler):
    """This rank's slice of every batch of :func:`helpers.train.epoch_batches`.

    With one process the slices are the whole batches; over ranks
    ``0..N-1`` they concatenate back to them.
    """

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.batches = train.epoch_batches(n, batch_size, seed, epoch)
        self.rank, self.world_size = rank, world_size

    def __iter__(self):
        for batch in self.batches:
            yield batch[rank_slice(len(batch), self.rank, self.world_size)]

    def __len__(self) -> int:
        return len(self.batches)


def epoch_loader(dataset, batch_size: int, seed: int, epoch: int, num_workers: int = 0) -> DataLoader:
    """:func:`helpers.train.epoch_loader`, each process loading its slice of every batch."""
    rank, world_size = world()
    if world_size == 1:
        return train.epoch_loader(dataset, batch_size, seed, epoch, num_workers)
    return DataLoader(dataset, batch_sampler=RankBatches(len(dataset), batch_size, seed, epoch, rank, world_size),
                      num_workers=num_workers)


class _SumOverRanks(torch.autograd.Function):
    """``y = sum over ranks of x``, differentiable: each rank's gradient is the sum of every rank's ``dL/dy``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        total = x.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.contiguous().clone()
        dist.all_reduce(total)
        return total


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose training statistics are those of the global batch, summed over ranks with gloo.

    torch's ``SyncBatchNorm`` runs only on GPUs; this is the same maths for
    CPU processes: per channel, the count, sum and sum of squares are summed
    over ranks by a differentiable all-reduce (so the backward pass sums the
    gradients of the statistics too), then ``x`` is normalised with the
    global mean and biased variance and the running statistics move towards
    the global mean and unbiased variance. Outside training, or with one
    process, it is plain BatchNorm. ``act`` and ``drop`` (timm's
    ``BatchNormAct2d``) are applied after it; parameter names are unchanged.
    """

    act: nn.Module
    drop: nn.Module

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d) -> "GlobalBatchNorm2d":
        new = cls(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                  track_running_stats=bn.track_running_stats)
        new.load_state_dict(bn.state_dict())
        new.act = getattr(bn, "act", nn.Identity())
        new.drop = getattr(bn, "drop", nn.Identity())
        new.train(bn.training)
        return new.to(bn.weight.device if bn.affine else "cpu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            out = super().forward(x)
        else:
            out = self._global_batch_norm(x)
        return self.act(self.drop(out))

    def _global_batch_norm(self, x: torch.Tensor) -> torch.Tensor:
        count = torch.full((1,), x.numel() / x.shape[1], dtype=x.dtype, device=x.device)
        moments = torch.cat([count, x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3))])
        moments = _SumOverRanks.apply(moments)
        n, total, squares = moments[0], moments[1:1 + x.shape[1]], moments[1 + x.shape[1]:]
        mean = total / n
        var = (squares / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
                self.running_var.mul_(1 - momentum).add_(momentum * var.detach() * n / (n - 1))
        out = (x - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return out


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Make every BatchNorm of ``model`` use global-batch statistics when training over several ranks.

    CUDA: timm's ``convert_sync_batchnorm`` (torch's ``SyncBatchNorm``,
    keeping timm's fused activations). CPU: :class:`GlobalBatchNorm2d`. One
    process: ``model`` unchanged. State-dict names stay the same either way.
    """
    if not is_distributed():
        return model
    if device.type == "cuda":
        from timm.layers import convert_sync_batchnorm
        return convert_sync_batchnorm(model)
    return _replace_batchnorm(model)


def _replace_batchnorm(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, GlobalBatchNorm2d):
        return GlobalBatchNorm2d.from_batchnorm(module)
    for name, child in module.named_children():
        module.add_module(name, _replace_batchnorm(child))
    return module


def data_parallel_step(step: Callable, top: nn.Module, device: torch.device, batch_weight: Callable) -> Callable:
    """``step`` run through DistributedDataParallel over the process group (``step`` itself with one process).

    Each process holds a slice of the global batch: its loss is scaled by
    its share of the batch (``batch_weight(batch)``, :func:`loss_share`),
    and the statistics, and the loss recorded, are averaged over the
    processes (the loss is then exactly the global batch's).
    """
    if not is_distributed():
        return step
    from torch.nn.parallel import DistributedDataParallel
    parallel = DistributedDataParallel(top, device_ids=[device.index] if device.type == "cuda" else None)
    world_size = world()[1]

    def shared_step(model: nn.Module, batch):
        loss, stats = step(parallel, batch)
        loss = loss * loss_share(batch_weight(batch), loss.device)
        values = torch.stack([loss.detach().float()] + [torch.as_tensor(v, device=loss.device).float()
                                                        for v in stats.values()])
        values = (all_sum(values) / world_size).tolist()
        return loss, {"loss": values[0], **dict(zip(stats, values[1:]))}
    return shared_step


def agreed(validate: Callable[[nn.Module], float]) -> Callable[[nn.Module], float]:
    """``validate`` whose score is rank 0's on every rank, so that decisions (the kept epoch, stopping) agree."""
    if not is_distributed():
        return validate
    return lambda model: broadcast_float(validate(model))


def plain_batchnorm(top: nn.Module, fresh: Callable[[], nn.Module]) -> nn.Module:
    """``top`` back with plain BatchNorm after data-parallel training: a ``fresh()`` module with its weights."""
    if not is_distributed():
        return top
    plain = fresh()
    plain.load_state_dict(top.state_dict())
    return plain
