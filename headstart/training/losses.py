"""What a training step minimises: cross-entropy with label smoothing, class weights and mixed (soft) targets, plus
the L2-SP penalty towards the pretrained weights.

- Label smoothing (Szegedy et al. 2016) trains towards ``1 - eps`` on the true class instead of 1: less
  over-confident heads, often a point better when fine-tuning.
- MixUp (Zhang et al. 2018) and CutMix (Yun et al. 2019) blend pairs of images (whole, or a pasted box) and their
  labels in the same proportion; torchvision's ``v2.MixUp`` / ``v2.CutMix`` do it on each batch and return soft
  targets, which ``F.cross_entropy`` takes directly. Regularisers for longer training on more data.
- Class weights ``n / (C * n_c)`` (scikit-learn's "balanced") make every class count the same in the loss when
  the classes are imbalanced; the other option is a sampler that draws them equally often
  (:mod:`headstart.data.balance`).
- L2-SP (Li et al. 2018) penalises ``alpha/2 * ||w - w0||^2``: weight decay towards the pretrained weights w0
  instead of towards zero, so the backbone keeps what it learned unless the data says otherwise.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torchvision.transforms import v2 as T

from headstart.core.errors import UsageError


def make_criterion(label_smoothing: float = 0.0,
                   class_weights: torch.Tensor | None = None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Cross-entropy for class indices or for soft targets (rows of class probabilities, as MixUp makes).

    Args:
        label_smoothing: in [0, 1); 0.1 is the usual value.
        class_weights: one weight per class (see :func:`headstart.data.balance.class_weights`), or None.
    """
    if not 0 <= label_smoothing < 1:
        raise UsageError(f"--label-smoothing must be in [0, 1), e.g. 0.1, got {label_smoothing}.")

    def criterion(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        weight = class_weights.to(logits.device) if class_weights is not None else None
        # Per-image losses averaged over the batch: PyTorch's weighted mean would divide by the batch's summed class
        # weights, undoing the weighting between batches (and it differs for index and soft targets).
        return F.cross_entropy(logits.float(), targets, weight=weight, label_smoothing=label_smoothing,
                               reduction="none").mean()

    return criterion


def make_mixer(num_classes: int, mixup: float = 0.0, cutmix: float = 0.0):
    """A batch transform ``(images, labels) -> (mixed images, soft targets)``, or None when both are off.

    Args:
        num_classes: classes of the task (the soft targets' width).
        mixup: MixUp's Beta(alpha, alpha) parameter; 0 is off (0.2 is a common value).
        cutmix: CutMix's alpha; 0 is off (1.0 is the usual value). With both, each batch uses one of them.
    """
    if mixup < 0 or cutmix < 0:
        raise UsageError(f"--mixup and --cutmix take alpha >= 0 (0 is off, e.g. --mixup 0.2), got {mixup}, {cutmix}.")
    mixers = ([T.MixUp(alpha=mixup, num_classes=num_classes)] if mixup > 0 else []) + \
             ([T.CutMix(alpha=cutmix, num_classes=num_classes)] if cutmix > 0 else [])
    if not mixers:
        return None
    return mixers[0] if len(mixers) == 1 else T.RandomChoice(mixers)


class L2SP:
    """The L2-SP penalty ``alpha/2 * sum ||w - w0||^2`` over the backbone parameters that train.

    Args:
        model: the transfer model; its ``backbone`` parameters are compared with ``reference``.
        reference: the pretrained backbone parameters w0 by name (``model.backbone.named_parameters()``).
        alpha: strength (Li et al. use 0.01 to 0.1 for the backbone with plain SGD).
    """

    def __init__(self, model: torch.nn.Module, reference: dict[str, torch.Tensor], alpha: float):
        params = dict(model.backbone.named_parameters())
        missing = sorted(set(params) - set(reference))
        assert not missing, f"L2-SP reference lacks {missing[:3]}"
        self.pairs = [(p, reference[n].to(p.device, p.dtype)) for n, p in params.items()]
        self.alpha = alpha

    def __call__(self) -> torch.Tensor:
        terms = [((p - w0) ** 2).sum() for p, w0 in self.pairs if p.requires_grad]
        return 0.5 * self.alpha * torch.stack(terms).sum() if terms else torch.zeros(())
