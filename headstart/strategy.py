"""Strategies are data: a strategy is a short list of phases, and one loop runs any list.

A phase says which layer groups train, at what learning rate, for how long, and what BatchNorm does. New recipes
are new lists, not new loops.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


@dataclass
class Phase:
    """One stretch of training with a fixed set of trainable groups.

    Args:
        name: shown in progress bars and metrics.
        epochs: maximum epochs (early stopping may end the phase sooner).
        lr: learning rate of the head.
        train_from: index of the first trainable layer group; ``-1`` is head only, ``0`` everything. Fractions
            in (0, 1) mean "freeze that fraction of the backbone groups", resolved per backbone.
        backbone_lr_scale: backbone learning rate = ``lr * backbone_lr_scale`` (the head is new and needs more).
        bn: BatchNorm policy: ``frozen`` (every BatchNorm keeps its pretrained statistics; affine weights of
            trainable groups still learn) or ``train`` (statistics of trainable groups adapt to the new data).
        fit: ``sgd`` (the training loop) or ``features`` (fit the head in closed form on frozen features).
        warmup_epochs: linear warm-up before the cosine decay.
    """

    name: str
    epochs: int
    lr: float
    train_from: float = -1
    backbone_lr_scale: float = 0.1
    bn: str = "frozen"
    fit: str = "sgd"
    warmup_epochs: float = 1.0


@dataclass
class Strategy:
    name: str
    phases: list[Phase]
    pretrained: bool = True
    description: str = ""
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "pretrained": self.pretrained, "description": self.description,
                "phases": [asdict(p) for p in self.phases]}


def resolve_train_from(train_from: float, num_groups: int) -> int:
    """Turns a phase's ``train_from`` into a group index for a model with ``num_groups`` groups (head included)."""
    backbone_groups = num_groups - 1
    if 0 < train_from < 1:
        return max(1, min(backbone_groups, math.ceil(train_from * backbone_groups)))
    return int(train_from)


STRATEGIES = {
    "linear-probe": "frozen backbone; the head is fitted on features computed once (logistic regression)",
    "fine-tune": "head fitted on frozen features first, then the later half of the backbone trains with it at a "
                 "10x lower learning rate",
    "full": "every layer trains; the backbone at a 10x lower learning rate than the head",
    "scratch": "same architecture, random initialisation: the baseline transfer learning is measured against",
}


def make_strategy(name: str, epochs: int = 10, lr: float | None = None) -> Strategy:
    """Builds a named strategy.

    Args:
        name: one of :data:`STRATEGIES`.
        epochs: epochs of the main phase.
        lr: head learning rate; defaults per strategy (1e-3 for the new head, 10x lower for pretrained layers).
    """
    if epochs < 1:
        raise ValueError(f"--epochs must be at least 1, got {epochs}.")
    head_lr = lr if lr is not None else 1e-3
    if name == "linear-probe":
        phases = [Phase("probe", epochs=1, lr=head_lr, train_from=-1, fit="features")]
    elif name == "fine-tune":
        # Head first (fastai's fine_tune does one frozen epoch): a random head would send large, meaningless
        # gradients into the pretrained layers. Fitting it on frozen features is the fastest way to a good head.
        # Then the later half of the backbone adapts at a 10x lower rate than the head.
        phases = [Phase("head", epochs=1, lr=head_lr, train_from=-1, fit="features"),
                  Phase("fine-tune", epochs=epochs, lr=head_lr / 2, train_from=0.5, backbone_lr_scale=0.1)]
    elif name == "full":
        phases = [Phase("full", epochs=epochs, lr=head_lr, train_from=0, backbone_lr_scale=0.1)]
    elif name == "scratch":
        phases = [Phase("scratch", epochs=epochs, lr=lr if lr is not None else 2e-3, train_from=0,
                        backbone_lr_scale=1.0, bn="train")]
        return Strategy(name, phases, pretrained=False, description=STRATEGIES[name])
    else:
        raise ValueError(f"unknown strategy '{name}'; choose one of: {', '.join(STRATEGIES)} "
                         f"(e.g. --strategy fine-tune).")
    return Strategy(name, phases, pretrained=True, description=STRATEGIES[name])
