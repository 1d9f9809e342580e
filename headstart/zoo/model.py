"""The transfer model: a pretrained backbone, a new head for the task, and layer groups to freeze or unfreeze.

Layer groups run from input to output (stem, stages..., head). Freezing works on whole groups because early layers
learn generic edges and textures that transfer to almost any image task, while later layers are specific to
ImageNet's classes: the usual recipe keeps the early groups fixed and adapts the later ones.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from headstart.core.choices import BN_POLICIES  # noqa: F401 (re-exported)
from headstart.core.errors import UsageError
from headstart.zoo import BackboneSpec, create_backbone


class TransferModel(nn.Module):
    """Backbone (images -> pooled features) followed by a new head (features -> logits).

    Args:
        backbone: a headless backbone from :func:`headstart.zoo.create_backbone`.
        spec: its registry spec (layer groups, preprocessing).
        num_classes: classes of the new task.
        dropout: dropout before the head; a little helps when fine-tuning on few images.
    """

    def __init__(self, backbone: nn.Module, spec: BackboneSpec, num_classes: int, dropout: float = 0.0):
        super().__init__()
        if num_classes < 2:
            raise UsageError(f"a classifier needs at least 2 classes, got {num_classes}.")
        self.backbone = backbone
        self.spec = spec
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(spec.num_features, num_classes)
        self.bn_policy = "frozen"
        self._groups = [(name, [f"backbone.{p}" for p in prefixes]) for name, prefixes in spec.groups(backbone)]
        self._groups.append(("head", ["head"]))

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.backbone(x)))

    # Layer groups -------------------------------------------------------------------------------------------------

    @property
    def group_names(self) -> list[str]:
        return [name for name, _ in self._groups]

    def group_modules(self, index: int) -> list[nn.Module]:
        return [self.get_submodule(p) for p in self._groups[index][1]]

    def group_parameters(self, index: int) -> list[nn.Parameter]:
        return [p for m in self.group_modules(index) for p in m.parameters()]

    def set_trainable(self, first_trainable: int) -> None:
        """Freezes groups ``[0, first_trainable)`` and unfreezes the rest (the head is always the last group).

        Args:
            first_trainable: index of the first group that trains; 0 trains everything, ``len(groups) - 1`` only
                the head. Negative values count from the end, so ``-1`` is "head only".
        """
        n = len(self._groups)
        first = first_trainable % n if first_trainable < 0 else first_trainable
        if not 0 <= first < n:
            raise UsageError(f"first trainable group must be between 0 and {n - 1} (head), got {first_trainable}.")
        for i in range(n):
            for p in self.group_parameters(i):
                p.requires_grad_(i >= first)
        self.train(self.training)  # re-apply the BatchNorm policy to the new frozen set

    def frozen_groups(self) -> list[int]:
        return [i for i in range(len(self._groups)) if not any(p.requires_grad for p in self.group_parameters(i))]

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def train(self, mode: bool = True) -> "TransferModel":
        """Like ``nn.Module.train``, but BatchNorm layers keep their pretrained statistics where the policy says.

        BatchNorm in a frozen group always stays in eval mode: a layer whose statistics still move is not frozen,
        its output drifts towards the new data's batch statistics, which with small batches is mostly noise.
        Policy ``frozen`` (the default for pretrained models, as Keras' transfer-learning guide recommends) keeps
        every BatchNorm layer in eval mode while its affine weights still train; ``train`` lets the statistics of
        trainable groups adapt (what training from scratch needs).
        """
        super().train(mode)
        if not mode:
            return self
        frozen = set(self.frozen_groups()) if self.bn_policy == "train" else set(range(len(self._groups)))
        for i in frozen:
            for module in self.group_modules(i):
                for m in module.modules():
                    if isinstance(m, _BatchNorm):
                        m.eval()
        return self


def build_model(
    name: str,
    num_classes: int,
    pretrained: bool = True,
    weights_file: str | Path | None = None,
    dropout: float = 0.0,
) -> TransferModel:
    """A backbone from the zoo with a new head for ``num_classes``.

    Args:
        name: backbone name (``headstart models``).
        num_classes: classes of the new task.
        pretrained: start from ImageNet weights; False is training from scratch.
        weights_file: explicit weights file, tried before any other source.
        dropout: dropout before the new head.
    """
    backbone, spec, resolved = create_backbone(name, pretrained=pretrained, weights_file=weights_file)
    model = TransferModel(backbone, spec, num_classes, dropout=dropout)
    model.weights_source = resolved.source if resolved else "random initialisation"
    model.weights_checksum = resolved.checksum if resolved else None
    return model
