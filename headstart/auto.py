"""``--strategy auto``: strategy, epochs and layer-wise decay chosen from how many labelled images there are.

The rule, in the spirit of BiT-HyperRule (Kolesnikov et al. 2020, "Big Transfer": the schedule length depends only
on the dataset size, and small datasets get fewer steps), with the strategies' strengths from Kornblith et al. 2019
and the LP-FT / fine-tuning literature:

- fewer than 20 labelled images per class: ``linear-probe``. Too few labels to move pretrained weights without
  overfitting; a regularised linear head on frozen features is the strongest and the fastest choice.
- at least 20 per class and fewer than 20,000 in all: ``full`` (every layer trains, the pretrained ones at a 10x
  lower rate than the new head) for about 300 optimizer steps: ``ceil(300 / steps per epoch)`` epochs, between 5
  and 15. Fine-tuning the whole network is what BiT and fastai's ``fine_tune`` do, and Kornblith et al. 2019 found
  it the best transfer; on Fashion-MNIST with 100 labels per class it beat fine-tuning the later half of the
  backbone by 2.6 points in distribution and 7 points on shifted images (``benchmarks/recipes.py``, 3 seeds; this
  rule picked the later half before that measurement).
- 20,000 or more: ``full`` with layer-wise learning-rate decay 0.75: enough data to adapt every layer, the early
  (generic) ones least; about 3,000 steps, between 3 and 10 epochs.

The learning rate: AdamW at 1e-3 for the new head with batches of 32, scaled by the square root of the batch size
(the square-root rule for Adam; Malladi et al. 2022, "On the SDEs and Scaling Rules for Adaptive Gradient
Algorithms"); pretrained layers learn 10x slower than the head, 1e-4 with the default batch (the usual range for
fine-tuning is 1e-4 to 1e-5). With layer-wise decay the groups below the head are scaled by 0.75 per group instead.

Early stopping on the validation loss still ends any phase sooner. Settings given explicitly (``--epochs``,
``--lr``, ``--lr-decay``) win over the rule. The run's ``config.yaml`` records the choice and the sentence
explaining it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

FEW_PER_CLASS = 20
LARGE = 20_000
BASE_LR, BASE_BATCH = 1e-3, 32


@dataclass
class AutoChoice:
    strategy: str
    epochs: int
    lr_decay: float | None
    reason: str
    lr: float = BASE_LR  # the head's learning rate (the strategy derives the backbone's)

    def to_dict(self) -> dict:
        return asdict(self)


def _epochs_for(steps: int, steps_per_epoch: int, low: int, high: int) -> int:
    return max(low, min(high, math.ceil(steps / steps_per_epoch)))


def choose_strategy(num_images: int, num_classes: int, batch_size: int = 32) -> AutoChoice:
    """Applies the rule in this module's docstring.

    Args:
        num_images: labelled training images (the validation images are not counted).
        num_classes: classes of the task.
        batch_size: the training batch size (sets how many steps an epoch is).
    """
    if num_images < 1 or num_classes < 1:
        raise ValueError(f"auto needs labelled images to choose a strategy; got {num_images} images in "
                         f"{num_classes} classes.")
    per_class = num_images / num_classes
    steps_per_epoch = max(1, math.ceil(num_images / batch_size))
    counted = f"{num_images:,} labelled images in {num_classes} classes ({per_class:.0f} per class)"
    if per_class < FEW_PER_CLASS:
        return AutoChoice("linear-probe", 1, None,
                          f"{counted}: fewer than {FEW_PER_CLASS} per class, so a linear probe on frozen features "
                          "(fine-tuning would overfit so few labels)")
    lr = float(f"{BASE_LR * math.sqrt(batch_size / BASE_BATCH):.2g}")
    rate = f"; head learning rate {lr:g} (1e-3 at batch {BASE_BATCH}, square-root scaled to batch {batch_size})"
    if num_images < LARGE:
        epochs = _epochs_for(300, steps_per_epoch, 5, 15)
        return AutoChoice("full", epochs, None,
                          f"{counted}: at least {FEW_PER_CLASS} per class and fewer than {LARGE:,} in all, so every "
                          f"layer trains, the pretrained ones at a 10x lower rate than the head, for {epochs} epochs "
                          f"(about 300 steps of {batch_size}){rate}", lr)
    epochs = _epochs_for(3000, steps_per_epoch, 3, 10)
    return AutoChoice("full", epochs, 0.75,
                      f"{counted}: {LARGE:,} or more, so every layer trains, with layer-wise learning-rate decay "
                      f"0.75, for {epochs} epochs (about 3,000 steps of {batch_size}){rate}", lr)
