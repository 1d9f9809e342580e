"""The settings of a training run: one dataclass, the source of the command line's defaults and of ``config.yaml``.

Free of torch: the command line reads its defaults from here before it decides to load anything heavy.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field, fields

from headstart.core.choices import (
    AUGMENTATIONS,
    BALANCE,
    BN_POLICIES,
    CHOICE_PRESETS,
    DEFAULT_MODEL,
    DUPLICATE_MODES,
    HEADS,
    PRECISIONS,
)
from headstart.core.errors import UsageError

MIN_IMAGE_SIZE = 32  # below this every backbone here ends in a 1x1 map after its first stages: chance accuracy


@dataclass
class TrainConfig:
    """Every setting of a training run; saved, resolved, as the run's ``config.yaml``.

    Attributes:
        data: a folder of class subfolders (optionally inside ``train/``, ``val/``, ``test/``) or a CSV manifest.
        out: the run directory to create.
        model: a backbone name (``headstart models``); any timm model as ``timm:<name>``.
        strategy: a registered strategy (:data:`headstart.training.strategy.STRATEGIES`) or ``auto``
            (:mod:`headstart.training.auto`).
        epochs: epochs of the main phase; None: auto's choice, or 10.
        lr: the head's learning rate; None: the strategy's default (pretrained layers learn at a tenth of it).
        image_size: the network's input size; None: the backbone's own.
        batch_size: images per training step.
        weights: a pretrained weights file (``.safetensors``, ``.pth``, ``.pt`` state dict) instead of the zoo's.
        seed: seeds the split, the shuffling, augmentation and initialisation.
        augment: training augmentation (``none``, ``light``, ``strong``).
        patience: early stopping: epochs without a better calibrated validation loss; 0 never stops early.
        val_fraction: share of each class held out for validation when the data has no ``val/`` split.
        workers: image decoding processes; None: half the cores.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``auto`` (what the hardware does fast), ``bf16``, ``fp16`` or ``fp32``.
        overwrite: replace a previous run in ``out`` (its files are removed first).
        lr_decay: layer-wise learning-rate decay (:attr:`headstart.training.strategy.Phase.lr_decay`).
        l2sp: L2-SP strength towards the pretrained backbone (:class:`headstart.training.losses.L2SP`).
        bn: BatchNorm policy (``frozen``, ``train``, ``adabn``); None: the strategy's default.
        unfreeze_every: ``gradual``: epochs between unfreezing one more group.
        label_smoothing, mixup, cutmix: the training loss (:mod:`headstart.training.losses`).
        balance: ``none``, ``weights`` (class-weighted loss) or ``sampler`` (:mod:`headstart.data.balance`).
        head: how phases with ``fit="features"`` fit the head (:data:`headstart.core.choices.HEADS`).
        refit: refit a head fitted on features on train + val with the settings validation chose.
        keep_leaked: keep val/test images that duplicate a training image (given splits).
        duplicates: what counts as a copy (``near``: confirmed near copies too; ``exact``: the same bytes; ``off``).
        max_pixels: images with more pixels are left out (decompression bombs); ``headstart check`` has the same.
        tensorboard: log each epoch (losses, accuracies, every layer group's learning rate) and the test confusion
            matrix to ``RUN/tensorboard`` (needs ``pip install 'headstart[tensorboard]'``).
        report: write ``RUN/report.html`` at the end (``compare`` turns it off and reports its whole folder).
        heatmaps: the report shows a Grad-CAM heat map beside each top loss (a few seconds on a CPU).
        label_delimiter: a multi-label CSV's separator between an image's labels.
        threshold: multi-label: one threshold for every label instead of each label's F1-optimal one on validation.
    """

    data: str
    out: str
    model: str = DEFAULT_MODEL
    strategy: str = "auto"
    epochs: int | None = None
    lr: float | None = None
    image_size: int | None = None
    batch_size: int = 32
    weights: str | None = None
    seed: int = 0
    augment: str = "light"
    patience: int = 3
    val_fraction: float = 0.2
    workers: int | None = None
    device: str = "auto"
    precision: str = "auto"
    overwrite: bool = False
    lr_decay: float | None = None
    l2sp: float = 0.0
    bn: str | None = None
    unfreeze_every: int = 1
    label_smoothing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    balance: str = "none"
    head: str = "logreg"
    refit: bool = True
    keep_leaked: bool = False
    duplicates: str = "near"
    max_pixels: int | None = None
    tensorboard: bool = False
    report: bool = True
    heatmaps: bool = True
    choose: str | None = None
    budget: float | str | None = None
    label_delimiter: str = ";"
    threshold: float | None = None

    @classmethod
    def default(cls, name: str):
        """The default of field ``name`` (the command line's defaults come from here)."""
        return next(f.default for f in fields(cls) if f.name == name)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """A config from a dict that may hold more (a run's ``config.yaml`` records resolved values too)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def check(self) -> TrainConfig:
        """Every option in range, before any work starts: one sentence naming the option otherwise."""
        _positive_int("--batch-size", self.batch_size, 1)
        if self.epochs is not None:
            _positive_int("--epochs", self.epochs, 1)
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise UsageError(f"--lr must be a positive number (fine-tuning works from 1e-5 to 1e-3), got {self.lr}.")
        if self.image_size is not None and self.image_size < MIN_IMAGE_SIZE:
            raise UsageError(f"--image-size must be at least {MIN_IMAGE_SIZE} pixels (the backbones downsample 32x),"
                             f" got {self.image_size}.")
        if not 0 < self.val_fraction < 1:
            raise UsageError(f"--val-fraction must be between 0 and 1 (e.g. 0.2), got {self.val_fraction}.")
        _positive_int("--patience", self.patience, 0)
        if self.workers is not None:
            _positive_int("--workers", self.workers, 0)
        _positive_int("--unfreeze-every", self.unfreeze_every, 1)
        if self.lr_decay is not None and not 0 < self.lr_decay <= 1:
            raise UsageError(f"--lr-decay must be in (0, 1], e.g. 0.75, got {self.lr_decay}.")
        if not 0 <= self.label_smoothing < 1:
            raise UsageError(f"--label-smoothing must be in [0, 1), e.g. 0.1, got {self.label_smoothing}.")
        for name, value in (("--mixup", self.mixup), ("--cutmix", self.cutmix), ("--l2sp", self.l2sp)):
            if not value >= 0:
                raise UsageError(f"{name} must be 0 (off) or positive, got {value}.")
        if self.max_pixels is not None:
            _positive_int("--max-pixels", self.max_pixels, 1)
        if self.threshold is not None and not 0 < self.threshold < 1:
            raise UsageError(f"--threshold must be between 0 and 1 (e.g. 0.5), got {self.threshold}.")
        if not self.label_delimiter:
            raise UsageError("--label-delimiter must be at least one character, e.g. ';'.")
        self.budget = parse_budget(self.budget)
        if self.choose is not None and (self.image_size is not None or self.model != DEFAULT_MODEL):
            raise UsageError("--choose picks the backbone and its image size; leave out --model and --image-size "
                             "(or --choose).")
        if self.tensorboard and importlib.util.find_spec("tensorboard") is None:
            raise UsageError("--tensorboard needs TensorBoard: pip install 'headstart[tensorboard]'.")
        for name, value, allowed in (("--augment", self.augment, AUGMENTATIONS), ("--balance", self.balance, BALANCE),
                                     ("--head", self.head, tuple(HEADS)), ("--precision", self.precision, PRECISIONS),
                                     ("--bn", self.bn, (None, *BN_POLICIES)),
                                     ("--duplicates", self.duplicates, DUPLICATE_MODES),
                                     ("--choose", self.choose, (None, *CHOICE_PRESETS))):
            if value not in allowed:
                raise UsageError(f"{name} must be one of {', '.join(a for a in allowed if a)}, got '{value}'.")
        return self


def parse_budget(text: str | float | None) -> float | None:
    """``90``, ``90s``, ``10m`` or ``1h`` -> seconds; None stays None."""
    if text is None or isinstance(text, (int, float)):
        seconds = None if text is None else float(text)
    else:
        value, unit = (text[:-1], text[-1]) if text[-1:] in ("s", "m", "h") else (text, "s")
        try:
            seconds = float(value) * {"s": 1, "m": 60, "h": 3600}[unit]
        except ValueError:
            raise UsageError(f"--budget takes a time such as 90s, 10m or 1h, got '{text}'.") from None
    if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
        raise UsageError(f"--budget must be a positive time such as 10m, got '{text}'.")
    return seconds


def _positive_int(name: str, value, least: int) -> None:
    if not isinstance(value, int) or value < least:
        raise UsageError(f"{name} must be a whole number of at least {least}, got {value}.")


@dataclass
class CompareConfig:
    """Settings of ``headstart compare``.

    Args:
        data, out: the image folder, and where results go.
        model: the pretrained backbone of every strategy but scratch.
        strategies, labels_per_class, seeds: the grid measured.
        train_images: the budgets of a multi-label CSV instead of ``labels_per_class`` (an image has several labels):
            labelled training images per run, drawn per seed by iterative stratification so that every label keeps
            positives where the number allows. Budgets larger than the pool beside the validation images are left
            out (compare.md says so).
        val_per_class: validation images per class, drawn once per seed (not counted as labels).
        val_images: a multi-label CSV's validation images, drawn once per seed like the training ones (default
            ``val_per_class`` x the number of labels).
        test_fraction, max_test: the held-out test images when DATA has no test split, and a cap on their number.
        epochs, patience: maximum epochs and early-stopping patience of the pretrained strategies.
        scratch_epochs, scratch_patience: the same for scratch, which starts from random weights and needs more.
        scratch_lrs: scratch's learning-rate grid; each rate is a full run, and the lowest validation loss wins.
            1e-3 and 3e-3 (AdamW) each won about half the time on Fashion-MNIST at 5 and 10 labels per class;
            1e-2 sometimes never left chance there (``benchmarks/data_efficiency.py``).
        lrs: the same kind of grid for every pretrained strategy that trains by gradient descent (``linear-probe``
            fits its head in closed form and chooses its own C); None runs each at its default rate, not swept.
        lr_extensions: while a grid's winner is its lowest or highest rate, one more rate a step beyond that edge
            is run, at most this many times; compare.md says when the winner stayed at the edge.
        scratch_model: default resnet20 for images of 64 px or less, else ``model`` (from random weights).
        scratch_image_size: default ``image_size``, so that both sides see the same pixels.
        image_size: input size of the pretrained model (default: its own).
        budget_minutes: stop starting runs after this long.
    """

    data: str
    out: str
    model: str = DEFAULT_MODEL
    strategies: list[str] = field(default_factory=lambda: ["scratch", "linear-probe", "fine-tune"])
    labels_per_class: list[int] = field(default_factory=lambda: [5, 10, 25, 50, 100])
    train_images: list[int] = field(default_factory=lambda: [50, 100, 250, 500, 1000])
    seeds: int = 3
    val_per_class: int = 10
    val_images: int | None = None
    test_fraction: float = 0.3
    max_test: int | None = None
    epochs: int = 10
    patience: int = 3
    scratch_epochs: int = 50
    scratch_patience: int = 10
    scratch_lrs: list[float] = field(default_factory=lambda: [1e-3, 3e-3])
    lrs: list[float] | None = None
    lr_extensions: int = 3
    scratch_model: str | None = None
    scratch_image_size: int | None = None
    image_size: int | None = None
    budget_minutes: float | None = None
    batch_size: int = 32
    workers: int | None = None
