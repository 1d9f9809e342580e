"""DistributedDataParallel plumbing: process group, samplers that can resume, and metric reduction.

The same ``headstart train`` runs under ``torchrun --nproc_per_node=N``: NCCL on GPUs, Gloo on CPUs. Every rank
trains on its shard of each epoch's permutation; metrics are summed across ranks; only rank 0 writes files.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Joins the process group when launched by torchrun (``WORLD_SIZE`` > 1); returns (rank, world size)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sums numbers across ranks (identity on one process)."""
    if not is_distributed():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


class EpochSampler(Sampler):
    """A shuffled order that depends only on (seed, epoch), split across ranks: resuming at an epoch replays it.

    With ``shuffle=False`` it is a plain strided shard (every image on exactly one rank, no padding), which keeps
    validation metrics exact when summed across ranks.
    """

    def __init__(self, n: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1,
                 drop_uneven: bool = True):
        self.n, self.shuffle, self.seed, self.rank, self.world = n, shuffle, seed, rank, world_size
        self.epoch = 0
        # DDP needs the same number of steps on every rank, or the all-reduce waits forever.
        self.per_rank = n // world_size if (shuffle and drop_uneven and world_size > 1) else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        mine = order[self.rank::self.world]
        return iter(mine[: self.per_rank] if self.per_rank is not None else mine)

    def __len__(self) -> int:
        if self.per_rank is not None:
            return self.per_rank
        return len(range(self.rank, self.n, self.world))


def broadcast_from_main(value):
    """Rank 0's ``value`` on every rank (itself on one process): a decision one rank makes for all, such as the
    backbone ``train --choose`` picks within a budget, which other ranks' clocks could decide otherwise. Only
    ever sends what headstart's own ranks made (it pickles)."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
