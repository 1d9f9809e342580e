"""The training loop: ``train_one_epoch``, ``evaluate`` and ``fit``, readable top to bottom.

``fit`` runs a strategy's phases in order. Each phase freezes the groups it does not train, builds AdamW with one
parameter group per layer group (the backbone at a lower learning rate than the head, or layer-wise rates), warms
up linearly and then decays by a cosine, and stops early when the validation loss has not improved for
``patience`` epochs (restoring the phase's best weights). The loss is built once (:mod:`headstart.training.losses`).

Every epoch, and every phase, is judged by one figure: the validation cross-entropy after temperature scaling
(:func:`headstart.predict.calibration.selection_loss`). A head fitted by logistic regression is calibrated by
construction and a fine-tuned network is over-confident, so their raw losses would favour the probe even at lower
accuracy (measured: ``fine-tune`` shipped its probe in 2 of 3 seeds). The raw loss is recorded beside it. When every
validation image is right no temperature can be fitted (it runs to its bound and the figure becomes the margins
times 20), so that epoch is judged on its raw loss; its record says so (``val_all_correct``) and so does a line.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from headstart.core.distributed import all_reduce_sum
from headstart.core.errors import TrainingDiverged, UsageError
from headstart.core.progress import progress
from headstart.core.runtime import Runtime
from headstart.features.forward import model_forward
from headstart.predict.calibration import T_MIN, selection_loss
from headstart.training.batchnorm import adapt_batchnorm
from headstart.training.losses import L2SP, make_criterion, make_mixer
from headstart.training.strategy import Phase, Strategy, enter_phase
from headstart.zoo.model import TransferModel


def group_lr_scales(model: TransferModel, phase: Phase) -> list[float]:
    """Learning rate of each layer group relative to the head's: ``lr_decay ** (G - i)`` with G the head's index
    (discriminative rates, ULMFiT / timm's layer decay), else ``backbone_lr_scale`` for every backbone group."""
    head = len(model.group_names) - 1
    if phase.lr_decay is not None:
        return [phase.lr_decay ** (head - i) for i in range(head + 1)]
    return [phase.backbone_lr_scale] * head + [1.0]


def param_groups(model: TransferModel, phase: Phase, weight_decay: float) -> list[dict]:
    """One optimizer group per layer group that trains (``name`` says which), split into weights and the norms and
    biases, which get no decay. Group i learns at ``phase.lr * group_lr_scales(...)[i]``. With L2-SP the backbone
    gets no weight decay: its penalty pulls towards the pretrained weights instead of towards zero."""
    head = len(model.group_names) - 1
    groups = []
    for i, (name, scale) in enumerate(zip(model.group_names, group_lr_scales(model, phase))):
        trainable = [p for p in model.group_parameters(i) if p.requires_grad]
        for no_decay in (False, True):
            ps = [p for p in trainable if (p.ndim <= 1) == no_decay]
            if ps:
                decay = 0.0 if no_decay or (phase.l2sp and i != head) else weight_decay
                groups.append({"params": ps, "lr": phase.lr * scale, "weight_decay": decay, "name": name})
    return groups


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def train_one_epoch(model, loader: DataLoader, optimizer, scheduler, runtime: Runtime, desc: str = "train",
                    criterion: Callable | None = None, mix: Callable | None = None,
                    penalty: Callable[[], torch.Tensor] | None = None,
                    correct: Callable[[torch.Tensor, torch.Tensor], float] | None = None) -> dict:
    """One pass over ``loader``; ``model`` may be DDP-wrapped. Returns loss and accuracy summed over all ranks.

    Args:
        criterion: ``(logits, targets) -> loss``; default plain cross-entropy.
        mix: ``(images, labels) -> (images, soft targets)`` applied to each batch (MixUp / CutMix), or None.
        penalty: a regulariser added to the loss (L2-SP), or None. ``train_loss`` reports the data term only.
        correct: ``(logits, targets) -> right decisions in the batch`` for ``train_acc``; default top-1.
    """
    criterion = criterion or make_criterion()
    correct_in = correct or _correct
    scaler = runtime.grad_scaler()  # fp16 on CUDA; does nothing for bf16 and fp32
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    bar = progress(loader, desc, runtime.is_main)
    for images, labels in bar:
        targets = labels
        if mix is not None:
            images, targets = mix(images, labels)
        images, labels, targets = runtime.to_input(images), labels.to(runtime.device), targets.to(runtime.device)
        with runtime.autocast():
            logits = model(images)
        data_loss = criterion(logits.float(), targets)
        loss = data_loss + penalty() if penalty is not None else data_loss
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"the training loss became {loss.item()} in phase '{desc}'; the last good "
                                   "checkpoint is kept. Lower the learning rate (--lr) and run again.")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        total_loss += data_loss.item() * len(labels)
        correct += correct_in(logits, targets)
        seen += len(labels)
        bar.set_postfix(loss=f"{total_loss / seen:.3f}")
    total_loss, correct, seen = all_reduce_sum([total_loss, correct, seen], runtime.device)
    return {"train_loss": total_loss / max(1, seen), "train_acc": correct / max(1, seen)}


def _correct(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Correct predictions in a batch. Against MixUp/CutMix's soft targets, the share of each image's label mass
    that its predicted class holds: a mixed image is half right when it names either of its two classes."""
    pred = logits.detach().argmax(1)
    if targets.ndim == 2:
        return targets.gather(1, pred[:, None]).sum().item()
    return (pred == targets).sum().item()


@torch.no_grad()
def predict_logits(model, loader: DataLoader, runtime: Runtime,
                   desc: str = "eval") -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32, CPU) and labels for every image in ``loader``, in order (this rank's shard under DDP), by
    the fastest eval forward for a pass of this size (:func:`headstart.features.forward.model_forward`)."""
    model.eval()
    all_logits, all_labels, forward = [], [], None
    for images, labels in progress(loader, desc, runtime.is_main):
        x = runtime.to_input(images)
        forward = forward or model_forward(model, runtime, x[:1], len(loader.dataset))
        with runtime.autocast():
            all_logits.append(forward(x).float().cpu())
        all_labels.append(torch.as_tensor(labels))
    if not all_logits:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    return torch.cat(all_logits), torch.cat(all_labels)


def evaluate(model, loader: DataLoader, runtime: Runtime, desc: str = "val") -> dict:
    """Loss, accuracy, and the selection figure over the whole loader, summed across ranks when distributed: the loss
    after the best temperature (``loss_calibrated``, with that ``temperature``), or the raw loss at T = 1 when every
    image is right (``all_correct``; :func:`headstart.predict.calibration.selection_loss`)."""
    logits, labels = predict_logits(model, loader, runtime, desc)
    loss_sum = F.cross_entropy(logits, labels, reduction="sum").item() if len(labels) else 0.0
    correct = (logits.argmax(1) == labels).sum().item() if len(labels) else 0
    loss_sum, correct, n = all_reduce_sum([loss_sum, correct, len(labels)], runtime.device)
    temperature, calibrated, all_correct = selection_loss(
        logits, labels, reduce=lambda t: torch.tensor(all_reduce_sum(t.tolist(), runtime.device), dtype=t.dtype))
    return {"loss": loss_sum / max(1, n), "acc": correct / max(1, n), "loss_calibrated": calibrated,
            "temperature": temperature, "all_correct": all_correct}


@dataclass
class FitState:
    """Where training is; saved in ``last.pt`` so a run can resume exactly where it stopped."""

    phase: int = 0
    epoch: int = 0  # epochs completed within the phase
    global_epoch: int = 0
    best_val_loss: float = math.inf  # the selection figure: validation loss after temperature scaling
    best_global_epoch: int = -1
    phase_best_val_loss: float = math.inf
    bad_epochs: int = 0
    phase_done: bool = False
    stopped_by_budget: str | None = None  # the phase --budget ended before its last epoch

    def start_phase(self, index: int) -> None:
        """Counts from the start of phase ``index``; the run's best so far is kept."""
        self.phase, self.epoch, self.phase_best_val_loss = index, 0, math.inf
        self.bad_epochs, self.phase_done = 0, False


@dataclass
class _Training:
    """What every gradient-descent phase of one :func:`fit` shares: the loss and its batch mixing, the regularisers,
    early stopping and the seed."""

    criterion: Callable
    mix: Callable | None
    l2sp_reference: dict[str, torch.Tensor] | None
    weight_decay: float
    patience: int
    seed: int
    budget: Callable[[float], bool] | None = None  # another epoch as long as the last fits? (train --budget)
    evaluate: Callable = evaluate
    correct: Callable | None = None


def _seed_epoch(seed: int, global_epoch: int, rank: int) -> None:
    """Augmentation and dropout depend only on (seed, epoch, rank), so a resumed run replays the same epochs."""
    torch.manual_seed(seed * 1_000_003 + global_epoch * 101 + rank)


def fit(model: TransferModel, strategy: Strategy, loaders: dict[str, DataLoader], runtime: Runtime,
        patience: int = 3, weight_decay: float = 0.05, on_epoch: Callable[[dict, FitState, dict], None] | None = None,
        label_smoothing: float = 0.0, seed: int = 0, resume: dict | None = None,
        probe: Callable[[TransferModel, DataLoader, DataLoader, Runtime], dict] | None = None, mixup: float = 0.0,
        cutmix: float = 0.0, class_weights: torch.Tensor | None = None,
        l2sp_reference: dict[str, torch.Tensor] | None = None, budget: Callable[[float], bool] | None = None,
        objective=None) -> FitState:
    """Runs every phase of ``strategy``.

    Args:
        model: the transfer model (already on ``runtime.device``).
        strategy: the phases to run.
        loaders: ``train`` (augmented; its sampler has ``set_epoch``), ``val``; ``train_eval`` (train images, eval
            transform, unsharded) for phases that fit the head on features and for ``bn="adabn"``, which measures
            its statistics on these alone.
        runtime: device, precision and rank.
        patience: epochs without a better validation loss (after temperature scaling) before a phase stops.
        weight_decay: AdamW weight decay on weights (not on norms and biases).
        on_epoch: called after each epoch with (metrics record, state, checkpoint dict) to write metrics and
            checkpoints; ``checkpoint`` holds what ``resume`` needs, plus ``improved`` / ``phase_improved`` flags.
        seed: seeds each epoch's shuffling and augmentation.
        resume: the contents of a ``last.pt`` (and ``phase_best_state``) to continue from.
        probe: fits the head of a phase with ``fit="features"``: ``probe(model, train_loader, val_loader,
            runtime)`` returns what it chose, with its validation figures (``probe_val_loss``, ``probe_val_acc``,
            ``probe_val_loss_calibrated``, ``probe_temperature``); :class:`headstart.training.probe.ProbeOptions`
            is headstart's. The loop only calls it, so it needs nothing from the feature machinery.
        label_smoothing, mixup, cutmix, class_weights: the training loss (:mod:`headstart.training.losses`); the
            validation loss that picks the best epoch stays plain cross-entropy (temperature-scaled).
        l2sp_reference: pretrained backbone parameters by name, for phases with ``l2sp``; default the backbone's
            weights when ``fit`` starts (pass them when resuming: the model then holds trained weights).
        budget: ``train --budget``'s clock (:class:`headstart.training.budget.TrainingClock`), asked before each
            gradient-descent epoch after a phase's first with the last epoch's seconds; when no other fits, the
            phase ends as early stopping ends it and ``FitState.stopped_by_budget`` names it (every rank agrees).
        objective: what another task optimises and how its epochs are judged: an object with ``criterion``,
            ``correct`` and ``evaluate`` (:class:`headstart.training.multilabel.MultiLabelObjective`); it replaces
            the cross-entropy, the top-1 accuracy and :func:`evaluate`. None: single-label classification.
    """
    state = FitState(**resume["fit_state"]) if resume else FitState()
    phase_best_state = resume.get("phase_best_state") if resume else None
    if l2sp_reference is None and any(p.l2sp for p in strategy.phases):
        l2sp_reference = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    training = _Training(make_criterion(label_smoothing, class_weights), make_mixer(model.num_classes, mixup, cutmix),
                         l2sp_reference, weight_decay, patience, seed, budget)
    training = _for_objective(training, objective)
    for phase_index, phase in enumerate(strategy.phases):
        if phase_index < state.phase:
            continue  # finished before the run was interrupted
        resuming_here = resume is not None and phase_index == state.phase
        if not resuming_here:
            state.start_phase(phase_index)
            phase_best_state = None
        phase_best_state = _run_phase(model, phase, loaders, runtime, state, training, probe, on_epoch,
                                      phase_best_state, resume if resuming_here else None)
        if phase_best_state is not None:
            model.load_state_dict(phase_best_state)  # the next phase starts from this phase's best weights
    return state


def _for_objective(training: _Training, objective) -> _Training:
    """``training`` for another task (``fit``'s ``objective``): its loss, its accuracy, its validation figures."""
    if objective is None:
        return training
    return replace(training, criterion=objective.criterion, mix=None, evaluate=objective.evaluate,
                   correct=objective.correct)


def _run_phase(model, phase: Phase, loaders, runtime: Runtime, state: FitState, training: _Training, probe,
               on_epoch, phase_best_state, resume: dict | None):
    """One phase from where ``state`` stands (``resume``: the checkpoint it was interrupted in); returns its best
    weights, ``phase_best_state`` when it had finished already."""
    enter_phase(model, phase)
    if state.phase_done:
        return phase_best_state
    if phase.bn == "adabn" and resume is None:
        # The training images only: validation chooses and scores, so nothing fitted may see it. Unsharded
        # loader: every rank computes the same statistics.
        adapt_batchnorm(model, [loaders["train_eval"]], runtime)
    if phase.fit == "features":
        return _run_features_phase(model, phase, loaders, runtime, state, probe, on_epoch)
    return _run_sgd_phase(model, phase, loaders, runtime, state, training, on_epoch, phase_best_state, resume)


def _run_features_phase(model, phase: Phase, loaders, runtime: Runtime, state: FitState, probe, on_epoch) -> dict:
    """A phase whose head is fitted on frozen features (one "epoch"); returns its weights."""
    if probe is None:
        raise UsageError(f"phase '{phase.name}' fits the head on features: pass fit(..., probe=...), e.g. "
                         "headstart.training.probe.ProbeOptions().")
    t0 = time.time()
    # Every rank fits the same head on all the features (the loaders for this are not sharded).
    info = probe(model, loaders["train_eval"], loaders.get("val_all", loaders["val"]), runtime)
    # The head was scored on the validation features already: no second pass through the backbone.
    val = {"loss": info["probe_val_loss"], "acc": info["probe_val_acc"],
           "loss_calibrated": info["probe_val_loss_calibrated"], "temperature": info["probe_temperature"],
           "all_correct": info.get("probe_val_all_correct", False)}
    improved, phase_improved = _end_epoch(state, val["loss_calibrated"], patience=0)
    record = {"phase": phase.name, "epoch": 1, "global_epoch": state.global_epoch,
              **_val_record(val, phase.name, runtime),
              "trainable_params": model.head.weight.numel() + model.head.bias.numel(),
              "seconds": time.time() - t0, **info}
    if on_epoch:
        on_epoch(record, state, {"model": model.state_dict(), "improved": improved, "phase_improved": phase_improved})
    return copy.deepcopy(model.state_dict())


def _val_record(val: dict, where: str, runtime: Runtime) -> dict:
    """The validation figures of an epoch's record; says so when the epoch is ranked on its raw loss."""
    if val["all_correct"] and runtime.is_main:
        print(f"note: every validation image is right after {where}: a temperature fitted on them would run to its "
              f"bound ({T_MIN}), so this epoch is ranked on its raw validation loss (T = 1, {val['loss']:.4g})",
              file=sys.stderr, flush=True)
    return {"val_loss": val["loss"], "val_loss_calibrated": val["loss_calibrated"], "val_acc": val["acc"],
            "val_temperature": val["temperature"], "val_all_correct": val["all_correct"]}


def _end_epoch(state: FitState, val_loss: float, patience: int, max_epochs: int = 1) -> tuple[bool, bool]:
    """Counts an epoch; ``val_loss`` is the selection figure (validation loss after temperature scaling)."""
    state.epoch += 1
    state.global_epoch += 1
    improved = val_loss < state.best_val_loss
    if improved:
        state.best_val_loss, state.best_global_epoch = val_loss, state.global_epoch
    phase_improved = val_loss < state.phase_best_val_loss
    if phase_improved:
        state.phase_best_val_loss, state.bad_epochs = val_loss, 0
    else:
        state.bad_epochs += 1
    state.phase_done = state.epoch >= max_epochs or (patience > 0 and state.bad_epochs >= patience)
    return improved, phase_improved


def _out_of_time(budget: Callable[[float], bool] | None, last_epoch_s: float | None, runtime: Runtime) -> bool:
    """Whether ``budget`` has no room for another epoch as long as the last; the first epoch of a phase always
    runs (the budget planned it). Under DDP the ranks' clocks differ: one rank out of time stops them all."""
    if budget is None or last_epoch_s is None:
        return False
    late = float(not budget(last_epoch_s))
    if runtime.world_size > 1:
        late = all_reduce_sum([late], runtime.device)[0]
    return late > 0


def _run_sgd_phase(model, phase: Phase, loaders, runtime: Runtime, state: FitState, training: _Training, on_epoch,
                   phase_best_state, resume: dict | None):
    """The epochs of a gradient-descent phase, until its last or early stopping; returns its best weights."""
    seed = training.seed
    penalty = L2SP(model, training.l2sp_reference, phase.l2sp) if phase.l2sp else None
    train_model = model
    if runtime.world_size > 1:
        # Wrapped per phase: DDP records which parameters need gradients when it is built.
        train_model = DistributedDataParallel(model, device_ids=[runtime.device] if runtime.device.type == "cuda"
                                              else None)
    optimizer = torch.optim.AdamW(param_groups(model, phase, training.weight_decay), betas=(0.9, 0.999))
    steps_per_epoch = max(1, len(loaders["train"]))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(phase.epochs * steps_per_epoch, int(phase.warmup_epochs * steps_per_epoch)))
    if resume is not None and "optimizer" in resume:
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
    last_epoch_s = None
    while not state.phase_done and state.epoch < phase.epochs:
        if _out_of_time(training.budget, last_epoch_s, runtime):
            state.phase_done, state.stopped_by_budget = True, phase.name
            if runtime.is_main:
                print(f"stopped {phase.name} after epoch {state.epoch}: another epoch (about {last_epoch_s:.0f} s) "
                      "would end past the --budget", file=sys.stderr, flush=True)
            break
        t0 = time.time()
        _seed_epoch(seed, state.global_epoch, runtime.rank)
        if (generator := getattr(loaders["train"], "generator", None)) is not None:
            # Loader workers draw their seeds from it: per epoch, not per process, so a resumed run's workers
            # augment exactly as the uninterrupted run's did.
            generator.manual_seed(seed * 1_000_003 + state.global_epoch * 101 + runtime.rank + 7)
        sampler = getattr(loaders["train"], "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(state.global_epoch)
        train = train_one_epoch(train_model, loaders["train"], optimizer, scheduler, runtime,
                                desc=f"{phase.name} {state.epoch + 1}/{phase.epochs}", criterion=training.criterion,
                                mix=training.mix, penalty=penalty, correct=training.correct)
        val = training.evaluate(model, loaders["val"], runtime)
        improved, phase_improved = _end_epoch(state, val["loss_calibrated"], training.patience, phase.epochs)
        if phase_improved:
            phase_best_state = copy.deepcopy(model.state_dict())
        record = {"phase": phase.name, "epoch": state.epoch, "global_epoch": state.global_epoch, **train,
                  **_val_record(val, f"{phase.name} epoch {state.epoch}", runtime),
                  "lr": optimizer.param_groups[-1]["lr"],
                  "lrs": {g["name"]: g["lr"] for g in optimizer.param_groups},
                  "trainable_params": model.trainable_parameters(), "seconds": time.time() - t0}
        last_epoch_s = record["seconds"]
        if on_epoch:
            on_epoch(record, state, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                     "scheduler": scheduler.state_dict(), "improved": improved,
                                     "phase_improved": phase_improved})
    return phase_best_state
