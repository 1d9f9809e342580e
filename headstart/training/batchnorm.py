"""BatchNorm statistics measured on images, and AdaBN's update of them (the core of :mod:`headstart.training.adapt`).

Below the training loop on purpose: a ``--bn adabn`` phase and ``headstart adapt`` both use it. The module
docstring of :mod:`headstart.training.adapt` explains the two methods (classic and aligned) and why aligned is the
default.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader

from headstart.core.errors import UsageError
from headstart.core.progress import progress
from headstart.core.runtime import Runtime


class _Moments:
    """Per-channel mean and variance of a BatchNorm layer's input, pooled over every image seen (batches combined
    by Chan et al.'s parallel update, so large means do not swamp small variances in float32)."""

    def __init__(self):
        self.mean = self.m2 = None
        self.n = self.largest_batch = 0

    def add(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Adds a batch; returns the batch's own mean and (population) variance per channel."""
        x = x.float()
        dims = [d for d in range(x.ndim) if d != 1]
        var, mean = torch.var_mean(x, dims, correction=0)
        k = x.shape[0]
        if self.mean is None:
            self.mean, self.m2 = mean.clone(), var * k
        else:
            delta = mean - self.mean
            total = self.n + k
            self.mean = self.mean + delta * (k / total)
            self.m2 = self.m2 + var * k + delta * delta * (self.n * k / total)
        self.n += k
        self.largest_batch = max(self.largest_batch, k)
        return mean, var

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean, self.m2 / self.n


def batchnorm_layers(model: torch.nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def _run(model, loaders: Iterable[DataLoader], runtime: Runtime, desc: str) -> int:
    seen = 0
    for loader in loaders:
        for images, _ in progress(loader, desc, runtime.is_main):
            with runtime.autocast():
                model(runtime.to_input(images))
            seen += len(images)
    return seen


@torch.no_grad()
def batchnorm_input_statistics(model: torch.nn.Module, loaders: Iterable[DataLoader], runtime: Runtime,
                               desc: str = "statistics") -> dict[_BatchNorm, tuple[torch.Tensor, torch.Tensor]]:
    """Mean and variance of every BatchNorm layer's input over the images of ``loaders``, the model in eval mode
    and unchanged (what the layers see at inference)."""
    bns = batchnorm_layers(model)
    moments = {m: _Moments() for m in bns}

    def record(bn, args):
        moments[bn].add(args[0])

    hooks = [m.register_forward_pre_hook(record) for m in bns]
    model.eval()
    try:
        if _run(model, loaders, runtime, desc) < 2:
            raise UsageError("measuring BatchNorm statistics needs at least 2 images; give it more images.")
    finally:
        for h in hooks:
            h.remove()
    return {m: moments[m].result() for m in bns}


def _aligned(bn: _BatchNorm, original: tuple, source: tuple | None, mean_t: torch.Tensor, var_t: torch.Tensor):
    """The statistics that give target inputs (mean_t, var_t) the normalised distribution the source inputs had
    (the module docstring's formula); classic AdaBN without ``source``."""
    if source is None:
        return mean_t, var_t
    mu0, var0 = original
    mu_s, var_s = source
    sd0 = (var0 + bn.eps).sqrt()
    usable = var_s > 1e-12  # a channel silent on the training images has nothing to align to: left as it was
    a = (mu_s - mu0) / sd0
    b = var_s.clamp_min(1e-12).sqrt() / sd0
    sd = var_t.sqrt() / b
    mean = torch.where(usable, mean_t - a * sd, mu0)
    var = torch.where(usable, (sd * sd - bn.eps).clamp_min(0), var0)
    return mean, var


@torch.no_grad()
def adapt_batchnorm(model: torch.nn.Module, loaders: Iterable[DataLoader], runtime: Runtime,
                    source: Iterable[DataLoader] | None = None, desc: str = "adabn") -> int:
    """Sets every BatchNorm layer's running mean and variance for the images of ``loaders`` (the target domain);
    parameters, dropout and everything else stay as they are. Returns the number of target images seen.

    Without ``source``, classic AdaBN: the statistics become the target's. With ``source`` (loaders of the
    training images), aligned AdaBN: the target's activations are mapped onto the training images' (module
    docstring). The model is left in eval mode.
    """
    bns = batchnorm_layers(model)
    if not bns:
        return 0
    reference = batchnorm_input_statistics(model, source, runtime, desc=f"{desc} (training images)") \
        if source is not None else {}
    original = {m: (m.running_mean.clone(), m.running_var.clone()) for m in bns}
    moments = {m: _Moments() for m in bns}

    def use_batch_statistics(bn, args):
        pooled = moments[bn]
        leftover = len(args[0]) < pooled.largest_batch
        mean, var = pooled.add(args[0])
        if leftover:  # a few images' own statistics are noise (one image's may have no variance at all)
            mean, var = pooled.result()
        new_mean, new_var = _aligned(bn, original[bn], reference.get(bn), mean, var)
        bn.running_mean.copy_(new_mean)
        bn.running_var.copy_(new_var)

    hooks = [m.register_forward_pre_hook(use_batch_statistics) for m in bns]
    model.eval()
    try:
        seen = _run(model, loaders, runtime, desc)
        if seen < 2:
            raise UsageError(f"AdaBN needs at least 2 images to measure statistics, got {seen}; give it more images.")
    except BaseException:
        for bn in bns:  # interrupted: the model is left as it was, not with one batch's statistics
            bn.running_mean.copy_(original[bn][0])
            bn.running_var.copy_(original[bn][1])
        raise
    finally:
        for h in hooks:
            h.remove()
    for bn in bns:
        new_mean, new_var = _aligned(bn, original[bn], reference.get(bn), *moments[bn].result())
        bn.running_mean.copy_(new_mean)
        bn.running_var.copy_(new_var)
    return seen
