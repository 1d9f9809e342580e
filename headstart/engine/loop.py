"""The training loop: ``train_one_epoch``, ``evaluate`` and ``fit``, readable top to bottom.

``fit`` runs a strategy's phases in order. Each phase freezes the groups it does not train, builds AdamW with a
lower learning rate for the backbone than for the head, warms up linearly and then decays by a cosine, and stops
early when the validation loss has not improved for ``patience`` epochs (restoring the phase's best weights).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from headstart.engine.runtime import Runtime
from headstart.model import TransferModel
from headstart.strategy import Phase, Strategy, resolve_train_from


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def param_groups(model: TransferModel, phase: Phase, weight_decay: float) -> list[dict]:
    """Head at ``phase.lr``, trainable backbone at ``phase.lr * backbone_lr_scale``; no decay on norms and biases."""
    head_ids = {id(p) for p in model.head.parameters()}
    groups: dict[tuple[bool, bool], list] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((id(p) in head_ids, p.ndim <= 1), []).append(p)
    return [{"params": ps, "lr": phase.lr if is_head else phase.lr * phase.backbone_lr_scale,
             "weight_decay": 0.0 if no_decay else weight_decay}
            for (is_head, no_decay), ps in sorted(groups.items())]


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def train_one_epoch(model, loader: DataLoader, optimizer, scheduler, runtime: Runtime, desc: str = "train",
                    label_smoothing: float = 0.0) -> dict:
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    bar = tqdm(loader, desc=desc, leave=False, disable=None if runtime.is_main else True)
    for images, labels in bar:
        images, labels = runtime.to_input(images), labels.to(runtime.device)
        with runtime.autocast():
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"the training loss became {loss.item()} in phase '{desc}'; the last good "
                                   "checkpoint is kept. Lower the learning rate (--lr) and run again.")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(labels)
        correct += (logits.argmax(1) == labels).sum().item()
        seen += len(labels)
        bar.set_postfix(loss=f"{total_loss / seen:.3f}")
    return {"train_loss": total_loss / max(1, seen), "train_acc": correct / max(1, seen)}


@torch.no_grad()
def predict_logits(model, loader: DataLoader, runtime: Runtime, desc: str = "eval") -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32, CPU) and labels for every image in ``loader``, in order."""
    model.eval()
    all_logits, all_labels = [], []
    for images, labels in tqdm(loader, desc=desc, leave=False, disable=None if runtime.is_main else True):
        with runtime.autocast():
            all_logits.append(model(runtime.to_input(images)).float().cpu())
        all_labels.append(torch.as_tensor(labels))
    return torch.cat(all_logits), torch.cat(all_labels)


def evaluate(model, loader: DataLoader, runtime: Runtime, desc: str = "val") -> dict:
    logits, labels = predict_logits(model, loader, runtime, desc)
    return {"loss": F.cross_entropy(logits, labels).item(), "acc": (logits.argmax(1) == labels).float().mean().item()}


@dataclass
class FitState:
    """Where training is; saved in ``last.pt`` so a run can resume."""

    phase: int = 0
    epoch: int = 0  # epochs completed within the phase
    global_epoch: int = 0
    best_val_loss: float = math.inf
    best_global_epoch: int = -1


def fit(
    model: TransferModel,
    strategy: Strategy,
    loaders: dict[str, DataLoader],
    runtime: Runtime,
    patience: int = 3,
    weight_decay: float = 0.05,
    on_epoch: Callable[[dict, bool, dict], None] | None = None,
    label_smoothing: float = 0.0,
) -> FitState:
    """Runs every phase of ``strategy``.

    Args:
        model: the transfer model (already on ``runtime.device``).
        strategy: the phases to run.
        loaders: ``train`` (augmented), ``val``; ``train_eval`` (train images, eval transform) for feature fits.
        runtime: device and precision.
        patience: epochs without a better validation loss before a phase stops.
        weight_decay: AdamW weight decay on weights (not on norms and biases).
        on_epoch: called after each epoch with (metrics record, improved?, training state) to write
            metrics and checkpoints.
    """
    state = FitState()
    for phase_index, phase in enumerate(strategy.phases):
        state.phase, state.epoch = phase_index, 0
        model.bn_policy = phase.bn
        model.set_trainable(resolve_train_from(phase.train_from, len(model.group_names)))
        if phase.fit == "features":
            from headstart.engine.probe import fit_linear_probe

            t0 = time.time()
            info = fit_linear_probe(model, loaders["train_eval"], loaders["val"], runtime)
            val = evaluate(model, loaders["val"], runtime)
            state.epoch, state.global_epoch = 1, state.global_epoch + 1
            improved = val["loss"] < state.best_val_loss
            if improved:
                state.best_val_loss, state.best_global_epoch = val["loss"], state.global_epoch
            record = {"phase": phase.name, "epoch": 1, "global_epoch": state.global_epoch, "val_loss": val["loss"],
                      "val_acc": val["acc"], "trainable_params": model.head.weight.numel() + model.head.bias.numel(),
                      "seconds": time.time() - t0, **info}
            if on_epoch:
                on_epoch(record, improved, {})
            continue

        optimizer = torch.optim.AdamW(param_groups(model, phase, weight_decay), betas=(0.9, 0.999))
        steps_per_epoch = max(1, len(loaders["train"]))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, warmup_cosine(phase.epochs * steps_per_epoch, int(phase.warmup_epochs * steps_per_epoch)))
        phase_best, phase_best_state, bad_epochs = math.inf, None, 0
        for epoch in range(phase.epochs):
            t0 = time.time()
            train = train_one_epoch(model, loaders["train"], optimizer, scheduler, runtime,
                                    desc=f"{phase.name} {epoch + 1}/{phase.epochs}", label_smoothing=label_smoothing)
            val = evaluate(model, loaders["val"], runtime)
            state.epoch, state.global_epoch = epoch + 1, state.global_epoch + 1
            improved = val["loss"] < state.best_val_loss
            if improved:
                state.best_val_loss, state.best_global_epoch = val["loss"], state.global_epoch
            if val["loss"] < phase_best:
                phase_best, bad_epochs = val["loss"], 0
                phase_best_state = copy.deepcopy(model.state_dict())
            else:
                bad_epochs += 1
            record = {"phase": phase.name, "epoch": epoch + 1, "global_epoch": state.global_epoch, **train,
                      "val_loss": val["loss"], "val_acc": val["acc"], "lr": optimizer.param_groups[-1]["lr"],
                      "trainable_params": model.trainable_parameters(), "seconds": time.time() - t0}
            if on_epoch:
                on_epoch(record, improved, {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()})
            if bad_epochs >= patience:
                break
        if phase_best_state is not None:
            model.load_state_dict(phase_best_state)  # the next phase starts from this phase's best weights
    return state
