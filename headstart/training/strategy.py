"""Strategies are data: a strategy is a short list of phases, and one loop runs any list.

A phase says which layer groups train, at what learning rates, for how long, with which regulariser, and what
BatchNorm does. New recipes are new lists, not new loops. The recipes, and when to use each:

- ``linear-probe`` (feature extraction): only the head, fitted by logistic regression on features of the frozen
  backbone computed once. The strongest choice with a handful of labels per class, and by far the fastest
  (Kornblith et al. 2019, "Do Better ImageNet Models Transfer Better?").
- ``fine-tune``: the head is fitted on frozen features first (a random head would send large, meaningless
  gradients into the pretrained layers; fastai's ``fine_tune`` does one frozen epoch for the same reason), then
  the later half of the backbone trains with it at a 10x lower rate. Cheaper than ``full`` (no gradients for the
  early half), and the early layers cannot drift; measured below ``full`` on Fashion-MNIST with 100 labels per
  class (``benchmarks/recipes.py``).
- ``full``: every group trains, the backbone at a 10x lower rate than the head. With ``lr_decay`` D, group i
  learns at ``lr * D**(G - i)`` (G is the head's index): discriminative, layer-wise rates, lowest for the generic
  early layers (Howard & Ruder 2018, ULMFiT; timm's ``layer_decay``). From about 20 labelled images per class
  (``auto``'s choice there), and for domains far from ImageNet (Kornblith et al. 2019: fine-tuning every layer
  transfers best).
- ``gradual``: the head first, then one more group unfreezes every ``unfreeze_every`` epochs, from the output
  backwards (ULMFiT's gradual unfreezing, fastai). Each new group starts to learn only once the groups above it
  have adapted, so early layers are not disturbed by large gradients; useful with little data and a big domain gap.
- ``lp-ft``: a linear probe trained to convergence becomes the head, then everything is fine-tuned at a low rate
  (head lr/10, backbone lr/100). Fine-tuning from a good head distorts the pretrained features less than from a
  random one, which Kumar et al. 2022 ("Fine-Tuning can Distort Pretrained Features and Underperform
  Out-of-Distribution") show matters most out of distribution.
- ``scratch``: the same architecture from random weights, every BatchNorm learning: the baseline.

Options that apply to any pretrained strategy's training phases: ``lr_decay`` (above), ``l2sp`` (L2-SP, Li et al.
2018, "Explicit Inductive Bias for Transfer Learning with Convolutional Networks": the backbone is pulled towards
its pretrained weights by ``alpha/2 * ||w - w0||^2`` instead of decaying towards zero, keeping what it learned on
ImageNet; the head keeps plain weight decay), and ``bn``: ``frozen`` (the default: every BatchNorm keeps its
pretrained statistics), ``train`` (statistics of trainable groups follow the new data) or ``adabn`` (Li et al. 2016,
"Revisiting Batch Normalization for Practical Domain Adaptation": before the first phase the statistics are
recomputed on the run's training images, then kept frozen, so head and backbone train on features normalised for
this data rather than for ImageNet). Never on the validation images: they choose and score, so nothing fitted may
see them; only ``headstart adapt`` uses target images, and only when asked. Measured on Fashion-MNIST
(``benchmarks/recipes.py``, when the statistics still took the validation images too), ``adabn`` cost 9 points in
distribution: channels nearly silent on these images are scaled up to unit variance. To prepare for a domain
shift, train with the default and use ``headstart adapt`` (aligned AdaBN) on the new domain instead.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Callable

from headstart.core.choices import BN_POLICIES
from headstart.core.errors import UsageError

if TYPE_CHECKING:
    from headstart.zoo.model import TransferModel


@dataclass
class Phase:
    """One stretch of training with a fixed set of trainable groups.

    Args:
        name: shown in progress bars and metrics.
        epochs: maximum epochs (early stopping may end the phase sooner).
        lr: learning rate of the head.
        train_from: index of the first trainable layer group; ``-1`` is head only, ``-k`` the last k groups
            (head included; everything when the model has fewer), ``0`` everything. Fractions in (0, 1) mean
            "freeze that fraction of the backbone groups", resolved per backbone.
        backbone_lr_scale: backbone learning rate = ``lr * backbone_lr_scale`` (the head is new and needs more).
        lr_decay: layer-wise decay D: group i learns at ``lr * D**(G - i)``, G the head's index; replaces
            ``backbone_lr_scale`` when set.
        l2sp: L2-SP strength alpha: the penalty ``alpha/2 * ||w - w0||^2`` pulls trainable backbone weights
            towards their pretrained values w0 (and replaces their weight decay). 0 is off.
        bn: BatchNorm policy: ``frozen`` (every BatchNorm keeps its statistics; affine weights of trainable groups
            still learn), ``train`` (statistics of trainable groups adapt to the new data) or ``adabn`` (statistics
            recomputed on the training images alone when the phase starts, then frozen).
        fit: ``sgd`` (the training loop) or ``features`` (fit the head in closed form on frozen features).
        warmup_epochs: linear warm-up before the cosine decay.
    """

    name: str
    epochs: int
    lr: float
    train_from: float = -1
    backbone_lr_scale: float = 0.1
    lr_decay: float | None = None
    l2sp: float = 0.0
    bn: str = "frozen"
    fit: str = "sgd"
    warmup_epochs: float = 1.0


@dataclass
class Strategy:
    name: str
    phases: list[Phase]
    pretrained: bool = True
    description: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "pretrained": self.pretrained, "description": self.description,
                "phases": [asdict(p) for p in self.phases]}


def resolve_train_from(train_from: float, num_groups: int) -> int:
    """Turns a phase's ``train_from`` into a group index for a model with ``num_groups`` groups (head included)."""
    backbone_groups = num_groups - 1
    if 0 < train_from < 1:
        return max(1, min(backbone_groups, math.ceil(train_from * backbone_groups)))
    if train_from < 0:
        return max(0, num_groups + int(train_from))
    return int(train_from)


@dataclass(frozen=True)
class StrategyDef:
    """A registered strategy: its name, one line for ``--help``, and the builder of its phases.

    The builder takes ``(epochs, head_lr, groups, unfreeze_every)`` and returns the phases; ``make_strategy``
    applies the options every pretrained strategy shares (``lr_decay``, ``l2sp``, ``bn``).
    """

    name: str
    description: str
    build: Callable[..., list[Phase]]
    pretrained: bool = True
    default_lr: float = 1e-3


_REGISTRY: dict[str, StrategyDef] = {}


def register_strategy(name: str, description: str, *, pretrained: bool = True, default_lr: float = 1e-3):
    """Decorator: registers a function ``(epochs, head_lr, groups, unfreeze_every) -> list[Phase]`` as a
    strategy. Registering is all a new recipe needs: ``--strategy``, ``auto`` and ``compare`` find it here."""

    def register(build: Callable[..., list[Phase]]) -> Callable[..., list[Phase]]:
        assert name not in _REGISTRY, f"strategy {name} registered twice"
        _REGISTRY[name] = StrategyDef(name, description, build, pretrained, default_lr)
        return build

    return register


@register_strategy("linear-probe", "frozen backbone; the head is fitted on features computed once (logistic "
                   "regression)")
def _linear_probe(epochs: int, lr: float, groups: int | None, unfreeze_every: int) -> list[Phase]:
    return [Phase("probe", epochs=1, lr=lr, train_from=-1, fit="features")]


@register_strategy("fine-tune", "head fitted on frozen features first, then the later half of the backbone trains "
                   "with it at a 10x lower learning rate")
def _fine_tune(epochs: int, lr: float, groups: int | None, unfreeze_every: int) -> list[Phase]:
    # Then the later half of the backbone adapts at a 10x lower rate than the head (fastai halves the rate after
    # the frozen phase).
    return [Phase("head", epochs=1, lr=lr, train_from=-1, fit="features"),
            Phase("fine-tune", epochs=epochs, lr=lr / 2, train_from=0.5, backbone_lr_scale=0.1)]


@register_strategy("full", "every layer trains; the backbone at a 10x lower learning rate than the head, or "
                   "layer-wise rates with --lr-decay")
def _full(epochs: int, lr: float, groups: int | None, unfreeze_every: int) -> list[Phase]:
    return [Phase("full", epochs=epochs, lr=lr, train_from=0, backbone_lr_scale=0.1)]


@register_strategy("gradual", "head first, then one more layer group unfreezes every --unfreeze-every epochs "
                   "(ULMFiT)")
def _gradual(epochs: int, lr: float, groups: int | None, unfreeze_every: int) -> list[Phase]:
    phases = [Phase("head", epochs=1, lr=lr, train_from=-1, fit="features")]
    steps = math.ceil(epochs / unfreeze_every)
    if groups is not None:
        steps = min(steps, groups - 1)
    for k in range(1, steps + 1):
        # Each phase restarts warm-up and cosine: a short warm-up, then the newly thawed group settles.
        n = unfreeze_every if k < steps else epochs - unfreeze_every * (steps - 1)
        phases.append(Phase(f"unfreeze-{k}", epochs=n, lr=lr / 2, train_from=-(k + 1), backbone_lr_scale=0.1,
                            warmup_epochs=min(1.0, 0.25 * n)))
    return phases


@register_strategy("lp-ft", "linear probe to convergence, then everything fine-tuned at a low rate (Kumar et al. "
                   "2022: better out of distribution)")
def _lp_ft(epochs: int, lr: float, groups: int | None, unfreeze_every: int) -> list[Phase]:
    return [Phase("probe", epochs=1, lr=lr, train_from=-1, fit="features"),
            Phase("ft", epochs=epochs, lr=lr / 10, train_from=0, backbone_lr_scale=0.1)]


@register_strategy("scratch", "same architecture, random initialisation: the baseline transfer learning is measured "
                   "against", pretrained=False, default_lr=2e-3)
def _scratch(epochs: int, lr: float, groups: int | None, unfreeze_every: int) -> list[Phase]:
    return [Phase("scratch", epochs=epochs, lr=lr, train_from=0, backbone_lr_scale=1.0, bn="train")]


# name -> one-line description, in registration order (for --help and error messages).
STRATEGIES = {name: d.description for name, d in _REGISTRY.items()}


def get_strategy(name: str) -> StrategyDef:
    if name not in _REGISTRY:
        raise UsageError(f"unknown strategy '{name}'; choose one of: auto, {', '.join(_REGISTRY)} "
                         f"(e.g. --strategy fine-tune).")
    return _REGISTRY[name]


def uses_pretrained_weights(name: str) -> bool:
    """Whether strategy ``name`` starts from pretrained weights (everything but ``scratch``)."""
    return get_strategy(name).pretrained


def make_strategy(name: str, epochs: int = 10, lr: float | None = None, *, groups: int | None = None,
                  lr_decay: float | None = None, l2sp: float = 0.0, bn: str | None = None,
                  unfreeze_every: int = 1) -> Strategy:
    """Builds a named strategy.

    Args:
        name: one of :data:`STRATEGIES`.
        epochs: epochs of the main phase (for ``gradual``: of all its unfreezing phases together).
        lr: head learning rate; defaults per strategy (1e-3 for the new head, 10x lower for pretrained layers).
        groups: the model's number of layer groups (``len(model.group_names)``); ``gradual`` stops adding
            phases once everything is unfrozen. Without it, its later phases may all train everything.
        lr_decay: layer-wise learning-rate decay for every phase that trains the backbone (e.g. 0.75).
        l2sp: L2-SP strength for every phase that trains the backbone (e.g. 0.01); 0 is off.
        bn: BatchNorm policy (:data:`BN_POLICIES`); default ``frozen`` (``train`` for ``scratch``). ``adabn``
            adapts the statistics once, at the start of the first phase.
        unfreeze_every: ``gradual``: epochs between unfreezing one more group.
    """
    definition = get_strategy(name)
    if epochs < 1:
        raise UsageError(f"--epochs must be at least 1, got {epochs}.")
    if lr is not None and not lr > 0:
        raise UsageError(f"--lr must be positive (fine-tuning works from 1e-5 to 1e-3), got {lr}.")
    if bn is not None and bn not in BN_POLICIES:
        raise UsageError(f"--bn must be one of {', '.join(BN_POLICIES)}, got '{bn}'.")
    if lr_decay is not None and not 0 < lr_decay <= 1:
        raise UsageError(f"--lr-decay must be in (0, 1], e.g. 0.75, got {lr_decay}.")
    if l2sp < 0:
        raise UsageError(f"--l2sp must be 0 (off) or positive, e.g. 0.01, got {l2sp}.")
    if unfreeze_every < 1:
        raise UsageError(f"--unfreeze-every must be at least 1 epoch, got {unfreeze_every}.")
    if not definition.pretrained:
        if bn not in (None, "train"):
            raise UsageError(f"--bn {bn} keeps or recomputes pretrained statistics; {name} has none and always "
                             "trains BatchNorm (drop --bn, or pick a pretrained strategy).")
        if lr_decay is not None or l2sp:
            raise UsageError(f"--lr-decay and --l2sp refer to pretrained layers; {name} has none (drop them, or "
                             "pick a pretrained strategy).")
    phases = definition.build(epochs, lr if lr is not None else definition.default_lr, groups, unfreeze_every)
    if not definition.pretrained:
        return Strategy(name, phases, pretrained=False, description=definition.description)
    for i, phase in enumerate(phases):
        if bn == "adabn":
            phase.bn = "adabn" if i == 0 else "frozen"
        elif bn is not None:
            phase.bn = bn
        if phase.fit == "sgd" and phase.train_from != -1:
            phase.lr_decay, phase.l2sp = lr_decay, l2sp
    return Strategy(name, phases, pretrained=True, description=definition.description)


def enter_phase(model: TransferModel, phase: Phase) -> None:
    """Makes ``model`` train what ``phase`` trains: the groups from ``phase.train_from`` on, and BatchNorm
    statistics following the batches only under ``bn="train"`` (``adabn`` recomputes them once, then they stay
    frozen like ``frozen``). The loop, the learning-rate finder and :func:`headstart.fine_tune_resnet` all enter a
    phase through here."""
    model.bn_policy = "train" if phase.bn == "train" else "frozen"
    model.set_trainable(resolve_train_from(phase.train_from, len(model.group_names)))
