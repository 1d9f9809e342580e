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

:func:`lr_find` sweeps a model in memory; :func:`range_test` is ``headstart lr-find``: a run or a folder of images
in, ``lr_find.json`` and ``lr_find.png`` out. A multi-label CSV, or a run trained on one, is swept on the loss its
training uses (binary cross-entropy per label, with the positive weights ``train`` gives rare labels) from a head
fitted on its frozen features one logistic regression per label (:mod:`headstart.training.multilabel`).
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
from dataclasses import asdict, dataclass, replace
from itertools import chain, repeat
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from matplotlib.figure import Figure  # not pyplot: no global backend or state to set, nothing to close
from torch.utils.data import DataLoader

from headstart.core.choices import DEFAULT_MODEL
from headstart.core.errors import PathNotFoundError, UsageError
from headstart.core.io import write_json
from headstart.core.preprocessing import Preprocessing
from headstart.core.progress import progress
from headstart.core.runtime import Runtime, make_runtime, seed_everything
from headstart.data.check import scan
from headstart.data.dataset import ImageFiles, make_loader
from headstart.data.multilabel import TASK as MULTILABEL
from headstart.data.multilabel import MultiLabelSplits, discover_multilabel, is_multilabel_csv
from headstart.data.rundir import RunDir, refuse_run_files
from headstart.data.sources import DataSplits, Sample, discover
from headstart.data.transforms import eval_transform, train_transform
from headstart.predict.run import load_run
from headstart.training.config import TrainConfig
from headstart.training.loop import param_groups
from headstart.training.losses import make_criterion
from headstart.training.multilabel import MultiLabelObjective, MultiLabelProbe, positive_weights
from headstart.training.probe import fit_linear_probe
from headstart.training.strategy import STRATEGIES, Phase, enter_phase, make_strategy
from headstart.zoo.model import TransferModel, build_model


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
            diverge: float = 4.0, weight_decay: float = 0.05, desc: str = "lr-find",
            criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> LRFinderResult:
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
        criterion: ``(logits, targets) -> loss``, the training loss; default the single-label cross-entropy
            (a multi-label run's is :meth:`headstart.training.multilabel.MultiLabelObjective.criterion`).
    """
    if not 0 < start_lr < end_lr:
        raise UsageError(f"lr-find needs 0 < start lr < end lr, got {start_lr} and {end_lr}.")
    if steps < 2:
        raise UsageError(f"lr-find needs at least 2 steps, got {steps}.")
    if len(loader) == 0:
        raise UsageError("lr-find got no training batches; it needs labelled training images.")
    phase = phase or Phase("lr-find", epochs=1, lr=1.0, train_from=-1)
    with _restored(model):
        enter_phase(model, phase)
        optimizer = torch.optim.AdamW(param_groups(model, replace(phase, lr=start_lr), weight_decay))
        gamma = (end_lr / start_lr) ** (1 / (steps - 1))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: gamma ** step)
        lrs, losses, smoothed, stopped = _sweep(model, loader, runtime, optimizer, scheduler, steps, beta, diverge,
                                                desc, criterion or make_criterion())
    if len(lrs) < 2:
        raise UsageError(f"the loss diverged at the very first steps of lr-find (from lr {start_lr:g}); pass a "
                         "smaller --start-lr.")
    min_lr, steepest = _suggestions(lrs, losses, smoothed)
    return LRFinderResult(lrs, losses, smoothed, min_lr / 10, min_lr, steepest, stopped)


@contextlib.contextmanager
def _restored(model: TransferModel):
    """Puts back the model's weights (BatchNorm statistics included), trainable flags, BatchNorm policy and mode."""
    saved_state = copy.deepcopy(model.state_dict())
    saved_flags = [p.requires_grad for p in model.parameters()]
    saved_policy, was_training = model.bn_policy, model.training
    try:
        yield
    finally:
        model.load_state_dict(saved_state)
        for p, flag in zip(model.parameters(), saved_flags):
            p.requires_grad_(flag)
        model.bn_policy = saved_policy
        model.train(was_training)


def _sweep(model: TransferModel, loader: DataLoader, runtime: Runtime, optimizer, scheduler, steps: int, beta: float,
           diverge: float, desc: str, criterion) -> tuple[list[float], list[float], list[float], bool]:
    """Up to ``steps`` optimizer steps, cycling through ``loader``: each step's head rate, raw loss and smoothed loss
    (bias-corrected exponential average), and whether the loss diverged (not finite, or the smoothed loss past
    ``diverge`` times its minimum) before the last step."""
    lrs, losses, smoothed = [], [], []
    avg, best = 0.0, math.inf
    batches = chain.from_iterable(repeat(loader))
    model.train()
    for step in progress(range(steps), desc, runtime.is_main, unit="step"):
        images, labels = next(batches)
        with runtime.autocast():
            logits = model(runtime.to_input(images))
        loss = criterion(logits, labels.to(runtime.device))
        value = loss.item()
        if not math.isfinite(value):
            return lrs, losses, smoothed, True
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
            return lrs, losses, smoothed, True
    return lrs, losses, smoothed, False


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


@dataclass
class RangeTest:
    """What :func:`range_test` found, and where it wrote it."""

    record: dict  # lr_find.json: source, strategy, phase, suggested_cli_lr and the result's fields
    result: LRFinderResult
    lr_scale: float  # the swept phase's head rate when the strategy's lr is 1 (fine-tune: 0.5)
    numbers: Path  # lr_find.json
    curve: Path  # lr_find.png


def range_test(source: str | Path, out: str | Path | None = None, *, strategy: str | None = None,
               model: str = DEFAULT_MODEL, weights: str | None = None, image_size: int | None = None,
               batch_size: int = 32, steps: int = 100, start_lr: float = 1e-7, end_lr: float = 10.0,
               augment: str = "light", workers: int | None = None, seed: int = 0, device: str = "auto") -> RangeTest:
    """:func:`lr_find` on a run (its weights and training images) or labelled images (a fresh pretrained model),
    sweeping the first gradient-descent phase of ``strategy``; writes ``lr_find.json`` and ``lr_find.png`` into
    ``out``. Multi-label data (a run of it, or its CSV) is swept on its own loss (the module's docstring).

    Args:
        source: a run directory, or labelled images: a folder, a CSV, or a multi-label CSV.
        out: folder for the two files; default the run itself, or ``runs/lr-find-<folder name>`` (a CSV: its name
            without ``.csv``).
        strategy: whose phase is swept; default the run's (fine-tune for a linear probe, which has none), or
            fine-tune. On a fresh model the head a strategy fits on frozen features first is fitted here first too.
        model, weights, image_size: the backbone, its weights file and input size for a folder of images.
        batch_size, augment, workers: the training batches (the probe's eval passes take twice as many images).
        steps, start_lr, end_lr: the sweep (:func:`lr_find`).
        seed: seeds the batches (and the validation split of a folder of images).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    """
    seed_everything(seed)
    source = Path(source)
    is_run = RunDir(source).is_run()
    named = source.resolve().stem if source.is_file() else source.resolve().name  # a CSV: without its .csv
    out = Path(out) if out else (source if is_run else Path("runs") / f"lr-find-{named}")
    numbers, curve = out / RunDir.LR_FIND, out / RunDir.LR_FIND_PLOT
    refuse_run_files([numbers, curve], own=source if is_run else None,
                     allowed=(RunDir.LR_FIND, RunDir.LR_FIND_PLOT))  # another run's curve is that run's record
    if is_run:
        net, runtime, pre, splits, name, balance = _of_run(source, strategy, device)
    else:
        net, runtime, pre, splits, name, balance = _fresh(source, strategy, model, weights, image_size, device, seed)
    multilabel = isinstance(splits, MultiLabelSplits)
    train, bad = scan(splits.train)
    for path, reason in bad:
        print(f"skipping {path}: {reason}", file=sys.stderr)
    phases = make_strategy(name, groups=len(net.group_names)).phases
    swept = next(i for i, p in enumerate(phases) if p.fit == "sgd")
    if not is_run and swept > 0:  # the swept phase starts from a head fitted on frozen features, as in training
        def eval_loader(samples: list[Sample]) -> DataLoader:
            return make_loader(ImageFiles(samples, eval_transform(pre)), batch_size * 2, shuffle=False,
                               workers=workers)

        val = scan(splits.val)[0]
        if multilabel:
            MultiLabelProbe(pre)(net, eval_loader(train), eval_loader(val), runtime)
        else:
            fit_linear_probe(net, eval_loader(train), eval_loader(val), runtime, preprocessing=pre)
    loader = make_loader(ImageFiles(train, train_transform(pre, augment)), batch_size, shuffle=True, seed=seed,
                         workers=workers, drop_last=len(train) > batch_size)
    phase = phases[swept]
    # A multi-label model trains on the loss train_multilabel gives it: BCE with its labels' positive weights.
    objective = MultiLabelObjective(positive_weights(np.array([y for _, y in train]), balance == "weights")) \
        if multilabel else None
    result = lr_find(net, loader, runtime, phase, start_lr=start_lr, end_lr=end_lr, steps=steps,
                     criterion=objective.criterion if objective else None)
    # The swept rate is the phase's head rate; the strategy's lr sets it through its ratio (fine-tune: lr / 2).
    lr_scale = make_strategy(name, lr=1.0).phases[swept].lr
    task = {"task": MULTILABEL, "loss": "binary cross-entropy per label"
            + (", with positive weights" if objective.pos_weight is not None else "")} if objective else {}
    record = {"source": str(source), "strategy": name, "phase": phase.name, **task,
              "suggested_cli_lr": result.suggested_lr / lr_scale, **result.to_dict()}
    out.mkdir(parents=True, exist_ok=True)
    write_json(numbers, record)
    plot_lr_find(result, curve, title=f"lr-find: {name}, phase '{phase.name}'"
                 + (" (multi-label, binary cross-entropy)" if multilabel else ""))
    return RangeTest(record, result, lr_scale, numbers, curve)


def _of_run(source: Path, strategy: str | None,
            device: str) -> tuple[TransferModel, Runtime, Preprocessing, DataSplits | MultiLabelSplits, str, str]:
    """A run's model, runtime, preprocessing and splits, the strategy to sweep (``strategy``, else the run's;
    fine-tune when it has no gradient-descent phase) and its ``--balance``."""
    loaded = load_run(source, device=device)
    splits = RunDir(source).split()  # old relative paths found from any folder
    name = strategy or loaded.config.get("strategy_resolved") or loaded.config.get("strategy")
    if name not in STRATEGIES or name == "linear-probe":
        name = "fine-tune"
    return loaded.model, loaded.runtime, loaded.preprocessing, splits, name, loaded.config.get("balance", "none")


def _fresh(source: Path, strategy: str | None, model: str, weights: str | None, image_size: int | None, device: str,
           seed: int) -> tuple[TransferModel, Runtime, Preprocessing, DataSplits | MultiLabelSplits, str, str]:
    """A new model for the images in ``source`` (a folder, a CSV, or a multi-label CSV; pretrained unless the
    strategy is scratch), with the same as :func:`_of_run` (``train``'s default balance)."""
    if not source.exists():
        raise PathNotFoundError(f"{source} does not exist; pass a run directory or a folder of labelled images.")
    runtime = make_runtime(device)
    splits = discover_multilabel(source, val_fraction=0.2, seed=seed) if is_multilabel_csv(source) \
        else discover(str(source), val_fraction=0.2, seed=seed)
    name = strategy or "fine-tune"
    net = build_model(model, len(splits.classes), pretrained=name != "scratch", weights_file=weights)
    pre = net.spec.preprocessing(image_size)
    runtime.prepare(net)
    return net, runtime, pre, splits, name, TrainConfig.balance  # train's default, not a copy of it
