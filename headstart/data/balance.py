"""Imbalanced classes: loss weights per class, or a sampler that draws every class equally often.

With ``--balance weights`` each class's loss is weighted by ``n / (C * n_c)`` (scikit-learn's "balanced"), so
every class contributes the same total weight; with ``--balance sampler`` each epoch draws ``n`` images with
replacement, each class with probability ``1/C`` (PyTorch's ``WeightedRandomSampler``, made resumable and
shardable like :class:`headstart.core.distributed.EpochSampler`). Weights keep every image once per epoch;
the sampler repeats the rare images, which with augmentation is often the better of the two.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from headstart.core.choices import BALANCE  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    import torch

SKEW_HINT = 3.0  # max/min class count above which training suggests --balance


def class_counts(labels, num_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)


def class_weights(labels, num_classes: int) -> torch.Tensor:
    """``n / (C * n_c)`` per class; a class without images gets weight 0 (it never appears as a target)."""
    counts = class_counts(labels, num_classes).astype(np.float64)
    w = np.where(counts > 0, counts.sum() / (num_classes * np.maximum(counts, 1)), 0.0)
    import torch  # torch: not at import time, so the report reads skew() without it

    return torch.tensor(w, dtype=torch.float32)


def skew(labels, num_classes: int) -> float:
    """Largest over smallest non-empty class count (1.0 for balanced data)."""
    counts = class_counts(labels, num_classes)
    counts = counts[counts > 0]
    return float(counts.max() / counts.min()) if len(counts) else 1.0


class BalancedSampler:
    """Draws ``len(labels)`` indices per epoch with replacement, every class equally likely; the draw depends only
    on (seed, epoch), and each rank takes its own equal share, so a resumed or distributed run replays it. A
    sampler for ``DataLoader(sampler=...)``, which needs only ``__iter__`` and ``__len__``."""

    def __init__(self, labels, seed: int = 0, rank: int = 0, world_size: int = 1):
        import torch  # torch: not at import time, so the report reads skew() without it

        labels = np.asarray(labels, dtype=np.int64)
        counts = np.bincount(labels)
        self.weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.float64)
        self.n, self.seed, self.rank, self.world = len(labels), seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        import torch  # torch: not at import time, so the report reads skew() without it

        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.multinomial(self.weights, self.n, replacement=True, generator=g).tolist()
        return iter(order[self.rank::self.world][: len(self)])

    def __len__(self) -> int:
        return self.n // self.world
