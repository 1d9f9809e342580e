"""The learning-rate range test (Smith 2017, "Cyclical Learning Rates for Training Neural Networks"; fastai's
``lr_find``): train for a few hundred steps while the learning rate grows exponentially from tiny to huge, stop when
the smoothed loss diverges, and read a good rate off the curve.

The loss first stays flat (the rate is too small to matter), then falls (the useful range), then explodes. Two
readings are common: the rate of steepest descent, and a tenth of the rate at the minimum (``min/10``, the safer
one: at the minimum itself training is already on the edge). Both are returned; ``min/10`` is the suggestion. Both
are read from a centred moving average of the raw losses (:func:`_loss_curve`), not from the exponential average
that decides when to stop, whose early points are too noisy and whose minimum lags behind the real one. Every rate
here is the swept phase's *head* rate; a strategy whose phase runs at a fraction of ``--lr`` (``fine-tune``: half)
needs ``--lr`` = suggestion / that fraction, which ``headstart lr-find`` prints. The model's weights, BatchNorm
statistics and trainable flags are restored afterwards.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, replace
from itertools import chain, repeat
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure  # not pyplot: no global backend or state to set, nothing to close
from torch.utils.data import DataLoader

from headstart.core.errors import UsageError
from headstart.core.progress import progress
from headstart.core.runtime import Runtime
from headstart.training.loop import param_groups
from headstart.training.losses import make_criterion
from headstart.training.strategy import Phase, enter_phase
from headstart.zoo.model import TransferModel


@dataclass
class LRFinderResult:
    lrs: list[float]  # head learning rate at each step
    losses: list[float]  # raw training loss at each step
    smoothed: list[float]  # exponential moving average, bias-corrected (decides when to stop)
    suggested_lr: float  # min_loss_lr / 10, a head rate
    min_loss_lr: float  # head rate at the minimum of the centred moving average (_loss_curve)
    steepest_lr: float  # head rate of the steepest descent of that average before its minimum
    stopped_early: bool  # the smoothed loss diverged before the last step

    def to_dict(self) -> dict:
        return asdict(self)


def _loss_curve(lrs: list[float], losses: list[float], smoothed: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """The curve the suggestions are read from: a centred moving average of the raw losses over ``max(5, steps /
    10)`` steps (odd), with the rates at the centre of each window.

    The exponential average (``smoothed``, as fastai draws it) is unreliable for this at its start: its first points
    average only a handful of batches, so one lucky batch can make the global minimum appear at a rate far too small
    to train with (measured: a minimum at 3e-7 for a fine-tune whose loss really bottoms out near 5e-4); and it lags,
    so its minimum sits at a larger rate than the loss's. A centred window averages the same number of batches at
    every point. Sweeps too short for it (under ``2 * window`` steps) use ``smoothed`` minus its noisiest ends.
    """
    window = max(5, (len(losses) // 10) | 1)
    if len(losses) < 2 * window:
        lo, hi = (5, len(lrs) - 3) if len(lrs) > 20 else (0, len(lrs))
        return np.array(lrs[lo:hi]), np.array(smoothed[lo:hi])
    half = window // 2
    loss = np.convolve(np.asarray(losses, dtype=np.float64), np.ones(window) / window, mode="valid")
    return np.array(lrs[half:len(lrs) - half]), loss


def _suggestions(lrs: list[float], losses: list[float], smoothed: list[float]) -> tuple[float, float]:
    """(rate at the loss minimum, rate of steepest descent before it), both on :func:`_loss_curve`."""
    lr, loss = _loss_curve(lrs, losses, smoothed)
    i_min = int(np.argmin(loss))
    slope = np.gradient(loss, np.log(lr)) if len(lr) > 1 else np.zeros(1)
    return float(lr[i_min]), float(lr[int(np.argmin(slope[: i_min + 1]))])


def lr_find(model: TransferModel, loader: DataLoader, runtime: Runtime, phase: Phase | None = None,
            start_lr: float = 1e-7, end_lr: float = 10.0, steps: int = 100, beta: float = 0.98,
            diverge: float = 4.0, weight_decay: float = 0.05, desc: str = "lr-find") -> LRFinderResult:
    """Runs the range test on ``model`` with batches from ``loader`` (cycled if it is shorter than ``steps``).

    Args:
        model: the transfer model, on ``runtime.device``; its state is restored afterwards.
        loader: training batches (with the training augmentation).
        runtime: device and precision.
        phase: which groups train and their rates relative to the head (its ``lr`` is ignored); default head only.
        start_lr, end_lr: the head's learning rate at the first and the last step.
        steps: optimizer steps of the sweep (fastai uses 100).
        beta: smoothing of the loss (exponential moving average, bias-corrected).
        diverge: stop once the smoothed loss exceeds ``diverge`` times its minimum.
    """
    if not 0 < start_lr < end_lr:
        raise UsageError(f"lr-find needs 0 < start lr < end lr, got {start_lr} and {end_lr}.")
    if steps < 2:
        raise UsageError(f"lr-find needs at least 2 steps, got {steps}.")
    if len(loader) == 0:
        raise UsageError("lr-find got no training batches; it needs labelled training images.")
    phase = phase or Phase("lr-find", epochs=1, lr=1.0, train_from=-1)
    saved_state = copy.deepcopy(model.state_dict())
    saved_flags = [p.requires_grad for p in model.parameters()]
    saved_policy, was_training = model.bn_policy, model.training
    enter_phase(model, phase)
    optimizer = torch.optim.AdamW(param_groups(model, replace(phase, lr=start_lr), weight_decay))
    gamma = (end_lr / start_lr) ** (1 / (steps - 1))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: gamma ** step)
    criterion = make_criterion()
    lrs, losses, smoothed = [], [], []
    avg, best, stopped = 0.0, math.inf, False
    batches = chain.from_iterable(repeat(loader))
    model.train()
    try:
        for step in progress(range(steps), desc, runtime.is_main, unit="step"):
            images, labels = next(batches)
            with runtime.autocast():
                logits = model(runtime.to_input(images))
            loss = criterion(logits, labels.to(runtime.device))
            value = loss.item()
            if not math.isfinite(value):
                stopped = True
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            lrs.append(optimizer.param_groups[-1]["lr"])
            optimizer.step()
            scheduler.step()
            avg = beta * avg + (1 - beta) * value
            smooth = avg / (1 - beta ** (step + 1))
            losses.append(value)
            smoothed.append(smooth)
            best = min(best, smooth)
            if smooth > diverge * best:
                stopped = True
                break
    finally:
        model.load_state_dict(saved_state)
        for p, flag in zip(model.parameters(), saved_flags):
            p.requires_grad_(flag)
        model.bn_policy = saved_policy
        model.train(was_training)
    if len(lrs) < 2:
        raise UsageError(f"the loss diverged at the very first steps of lr-find (from lr {start_lr:g}); pass a "
                         "smaller --start-lr.")
    min_lr, steepest = _suggestions(lrs, losses, smoothed)
    return LRFinderResult(lrs, losses, smoothed, min_lr / 10, min_lr, steepest, stopped)


def plot_lr_find(result: LRFinderResult, path: str | Path, title: str = "") -> None:
    """The loss against the head's learning rate (log scale): raw, its exponential average, and the centred
    average the suggestions are read from, with its minimum, the suggestion (min/10) and the steepest descent."""
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.subplots()
    ax.plot(result.lrs, result.losses, color="0.8", lw=0.8, label="loss")
    ax.plot(result.lrs, result.smoothed, color="C0", alpha=0.5, label="exponential average")
    curve_lr, curve = _loss_curve(result.lrs, result.losses, result.smoothed)
    ax.plot(curve_lr, curve, color="C0", label="centred average (suggestions read here)")
    ax.axvline(result.min_loss_lr, color="0.4", ls="-.", label=f"its minimum {result.min_loss_lr:.1e}")
    ax.axvline(result.suggested_lr, color="C2", ls="--", label=f"suggested (min/10) {result.suggested_lr:.1e}")
    ax.axvline(result.steepest_lr, color="C1", ls=":", label=f"steepest descent {result.steepest_lr:.1e}")
    ax.set_xscale("log")
    top = max(result.smoothed[0], min(result.smoothed)) * 1.5 if result.smoothed else None
    if top and math.isfinite(top):
        ax.set_ylim(min(result.smoothed) * 0.9, top)
    ax.set_xlabel("learning rate (head)")
    ax.set_ylabel("training loss")
    ax.set_title(title or "learning-rate range test")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
