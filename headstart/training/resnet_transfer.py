"""The classic three-step ResNet transfer recipe, as public functions.

1. :func:`load_pretrained_resnet`: an ImageNet ResNet whose 1000-class layer is replaced by one for your classes.
2. :func:`freeze_pretrained_layers`: feature extraction. Only the new head learns; with little data this is the
   safest start, because the pretrained features cannot be overwritten by noisy gradients.
3. :func:`fine_tune_resnet`: unfreeze the later stages. ``layer1``/``layer2`` detect edges and textures that any
   image task reuses, so they stay frozen; ``layer3``/``layer4`` encode ImageNet-specific parts and objects, so they
   adapt to the new task, at a learning rate about 10x below the head's so they move, but not far.
"""

from __future__ import annotations

from pathlib import Path

from headstart.core.errors import UsageError
from headstart.training.strategy import Phase, enter_phase
from headstart.zoo.model import TransferModel, build_model


def load_pretrained_resnet(num_classes: int = 10, depth: int = 18, weights_file: str | Path | None = None,
                           own: bool = True) -> TransferModel:
    """A ResNet with ImageNet weights and a new ``num_classes`` head.

    Args:
        num_classes: classes of the new task.
        depth: 18, 34, 50, 101 or 152.
        weights_file: torchvision's ImageNet state dict, if it is not in the torch hub cache (offline machines).
        own: use headstart's own ResNet (identical to torchvision's, key for key); False uses torchvision's class.
    """
    if depth not in (18, 34, 50, 101, 152) or (not own and depth not in (18, 34, 50)):
        raise UsageError(f"depth must be one of 18, 34, 50{', 101, 152' if own else ''}; got {depth}.")
    return build_model(f"{'hs_' if own else ''}resnet{depth}", num_classes, pretrained=True, weights_file=weights_file)


def freeze_pretrained_layers(model: TransferModel, freeze: bool = True) -> TransferModel:
    """Freezes every pretrained layer (feature extraction) or, with ``freeze=False``, unfreezes them all.

    Frozen BatchNorm layers keep their ImageNet statistics in training mode too (see ``TransferModel.train``).
    """
    model.set_trainable(-1 if freeze else 0)
    return model


def fine_tune_resnet(model: TransferModel, freeze_early_layers: bool = True, lr: float = 1e-3,
                     backbone_lr_scale: float = 0.1) -> list[dict]:
    """Unfreezes ``layer3``, ``layer4`` and the head (keeping the stem, ``layer1`` and ``layer2`` frozen), or
    everything with ``freeze_early_layers=False``.

    Returns:
        Optimizer parameter groups: the head at ``lr``, the unfrozen backbone at ``lr * backbone_lr_scale``.
        Pass them to ``torch.optim.AdamW``.
    """
    names = model.group_names
    if "layer3" not in names:
        raise UsageError(f"fine_tune_resnet needs a ResNet (groups stem, layer1..layer4); this model has {names}.")
    enter_phase(model, Phase("fine-tune", epochs=1, lr=lr, train_from=names.index("layer3") if freeze_early_layers
                             else 0, backbone_lr_scale=backbone_lr_scale))
    head = list(model.head.parameters())
    head_ids = {id(p) for p in head}
    body = [p for p in model.backbone.parameters() if p.requires_grad and id(p) not in head_ids]
    return [{"params": body, "lr": lr * backbone_lr_scale}, {"params": head, "lr": lr}]
