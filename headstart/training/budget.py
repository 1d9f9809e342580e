"""A time limit for the whole ``train`` command (``--budget``): what fits is planned before anything starts.

The clock starts with the command. What the budget pays for, in order:

1. the backbone choice when ``--choose`` asks for one (:mod:`headstart.training.choose`: candidates cheapest
   first, as many as fit);
2. the linear probe of the backbone (its features are cached already when the choice scored it);
3. fine-tuning, with what is left: the later half of the backbone trains (``fine-tune``: the probe's head first,
   then the later stages at a 10x lower rate than the head) for as many epochs as fit, at most the number
   ``auto``'s rule gives. Every epoch is scored on validation with the probe, and the weights with the lowest
   calibrated validation loss ship: when fine-tuning does not pay on validation, the probe ships (and is refitted
   on train + validation as a probe always is). When not even one epoch fits, the run is the probe alone;
4. the finish, reserved up front: calibration, the test pass and the report's top losses, each a pass over its
   images at the measured extraction speed, plus :data:`FINISH_SLACK_S`.

Every estimate is images over a speed measured on this machine and remembered
(:func:`headstart.features.speed.throughput` for the eval forward, :func:`training_throughput` for a training
step of the phase), never a table from another machine. The loop ends a phase early when another epoch as long as
the last would end past the deadline (:func:`headstart.training.loop.fit`'s ``deadline``), so a slow epoch (a
busy machine, slower decoding than the random-image measurement) cannot carry the run far past the budget. A
budget too short for the cheapest plan (one candidate's features + the finish) is refused before any image is read
twice, in one sentence that says how long the cheapest plan needs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from headstart.core.errors import UsageError
from headstart.core.runtime import Runtime
from headstart.features.speed import BATCH, conditions, observe, planning_rate, rate_to_plan, remember, remembered
from headstart.training.auto import full_epochs
from headstart.training.choose import candidates
from headstart.training.config import TrainConfig
from headstart.training.strategy import Phase, enter_phase, make_strategy
from headstart.zoo.model import build_model
from headstart.zoo.registry import get_spec

FINISH_SLACK_S = 10.0  # writing the summary, the figures and the page, beyond the passes counted
REPORT_IMAGES = 500  # a trained backbone's report predicts up to this many held-out images again (train._report)
FINE_TUNE = "fine-tune"  # the strategy the leftover budget buys


@dataclass
class Budget:
    """``seconds`` for the whole command, counted from ``started`` (``time.monotonic()``; default now)."""

    seconds: float
    started: float = field(default_factory=time.monotonic)

    @property
    def deadline(self) -> float:
        return self.started + self.seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def spent(self) -> float:
        return time.monotonic() - self.started


@dataclass
class TrainingClock:
    """What the loop asks before each epoch (:func:`headstart.training.loop.fit`'s ``budget``): does another
    epoch as long as the last, and then the finish, fit in the budget? The finish was estimated at the speeds
    measured when the machine was as it was then; an epoch slower than planned (a busy machine, decoding the
    measurement leaves out) scales the finish's estimate by the same ratio."""

    budget: Budget
    epoch_s: float  # one epoch, as planned
    finish_s: float  # the finish, as planned

    def __call__(self, last_epoch_s: float) -> bool:
        slower = max(1.0, last_epoch_s / self.epoch_s) if self.epoch_s > 0 else 1.0
        return last_epoch_s + self.finish_s * slower <= self.budget.left()


def finish_seconds(val_images: int, test_images: int, eval_rate: float) -> float:
    """The finish after training, as if the backbone trained (its passes are not cached): validation once to
    calibrate, the test images once, up to :data:`REPORT_IMAGES` held-out images again for the report."""
    held_out = val_images + test_images
    return (held_out + min(REPORT_IMAGES, held_out)) / eval_rate + FINISH_SLACK_S


def training_throughput(backbone: str, resolution: int, runtime: Runtime, phase: Phase,
                        root: str | Path | None = None, seconds: float = 3.0) -> float:
    """Images per second of a training step of ``phase`` (forward, backward through what it trains, AdamW step)
    at ``resolution`` on this machine, batch 32 of random images in the runtime's precision: remembered, or
    measured (a warm-up step, then at least two timed steps, about ``seconds``) and remembered. Decoding and
    augmentation are not in it (the loader's workers do them beside the step); the loop's deadline absorbs the
    difference."""
    measured = conditions(backbone, resolution, runtime, work=f"train:{phase.train_from}")
    if (rate := remembered(measured, root)) is not None:
        return rate
    model = build_model(backbone, 10, pretrained=False)
    enter_phase(model, phase)
    model = runtime.prepare(model).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    x = runtime.to_input(torch.randn(BATCH, 3, resolution, resolution))
    y = torch.zeros(BATCH, dtype=torch.long, device=runtime.device)

    def step() -> None:
        with runtime.autocast():
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up
    done, start = 0, time.perf_counter()
    while done < 2 * BATCH or time.perf_counter() - start < seconds:
        step()
        done += BATCH
    return remember(measured, done / (time.perf_counter() - start), root)


def plan_fine_tuning(left_s: float, train_images: int, val_images: int, train_rate: float, eval_rate: float,
                     max_epochs: int) -> tuple[int, float]:
    """Whole epochs of fine-tuning that fit in ``left_s`` (at most ``max_epochs``) and one epoch's estimate: a
    training pass over the training images and a validation pass."""
    epoch_s = train_images / train_rate + val_images / eval_rate
    return max(0, min(max_epochs, math.floor(left_s / epoch_s))), epoch_s


def fine_tune_phase() -> Phase:
    """The gradient-descent phase of the strategy a budget buys (its later half of the backbone)."""
    return make_strategy(FINE_TUNE, epochs=1).phases[-1]


def plan_strategy(budget: Budget, model: str, resolution: int, counts: dict[str, int], runtime: Runtime,
                  features_cached: bool, batch_size: int, epochs: int | None) -> dict:
    """What the rest of ``budget`` buys for ``model`` at ``resolution``: ``strategy`` (``fine-tune`` or
    ``linear-probe``), ``epochs`` and the sentence saying why, with the estimates (seconds)."""
    eval_rate = rate_to_plan(model, resolution, runtime)
    finish = finish_seconds(counts["val"], counts["test"], eval_rate)
    probe = 0.0 if features_cached else (counts["train"] + counts["val"]) / eval_rate
    left = budget.left() - finish - probe
    phase = fine_tune_phase()
    cap = epochs or full_epochs(counts["train"], batch_size)
    # a real epoch's rate holds its decoding, augmentation and validation pass; a measured step's holds neither
    seen = planning_rate(model, resolution, runtime, work=f"train:{phase.train_from}:epoch")
    train_rate = seen or training_throughput(model, resolution, runtime, phase)
    n, epoch_s = plan_fine_tuning(left, counts["train"], 0 if seen else counts["val"], train_rate, eval_rate, cap)
    plan = {"budget_s": budget.seconds, "spent_before_training_s": round(budget.spent(), 1),
            "finish_reserved_s": round(finish, 1), "probe_s": round(probe, 1), "fine_tune_epoch_s": round(epoch_s, 1),
            "train_img_per_s": round(train_rate, 1), "eval_img_per_s": round(eval_rate, 1)}
    if n >= 1:
        why = (f"{left:.0f} s of the budget are left after the probe and the finish ({finish:.0f} s reserved): "
               f"{n} epoch(s) of fine-tuning at about {epoch_s:.0f} s each" + (f" (the rule's {cap})" if n == cap
                                                                              else "")
               + "; validation decides whether the fine-tuned weights or the probe ship")
        return {**plan, "strategy": FINE_TUNE, "epochs": n, "reason": why}
    why = (f"{max(left, 0):.0f} s of the budget are left after the probe and the finish ({finish:.0f} s reserved), "
           f"less than one epoch of fine-tuning (about {epoch_s:.0f} s): the linear probe alone")
    return {**plan, "strategy": "linear-probe", "epochs": 1, "reason": why}


def observe_epochs(records: list[dict], model: str, resolution: int, runtime: Runtime, train_images: int,
                   phases) -> None:
    """Remembers the rate the gradient-descent epochs of ``phases`` just ran at (training images over an epoch's
    seconds, its validation pass included), for the next budget's plan."""
    for phase in phases:
        seconds = [r["seconds"] for r in records if r.get("phase") == phase.name and "train_loss" in r]
        if seconds:
            observe(model, resolution, runtime, train_images * len(seconds), sum(seconds),
                    work=f"train:{phase.train_from}:epoch")


def _pool(cfg: TrainConfig) -> list[tuple[str, int]]:
    """The backbones (at their sizes) this run may train: ``--choose``'s candidates, or the one named."""
    if cfg.choose:
        return [(c.backbone, c.size) for c in candidates(cfg.choose)]
    return [(cfg.model, cfg.image_size or get_spec(cfg.model).input_size)]


def check_fits(budget: Budget, cfg: TrainConfig, counts: dict[str, int], runtime: Runtime) -> None:
    """Refuses a budget too short for the cheapest plan (one candidate's train + validation features, then the
    finish), before any image is read again."""
    rates = {m: rate_to_plan(*m, runtime) for m in _pool(cfg)}
    cheapest = max(rates, key=rates.get)  # the fastest
    need = (counts["train"] + counts["val"]) / rates[cheapest] + finish_seconds(counts["val"], counts["test"],
                                                                                 rates[cheapest])
    if need > budget.left():
        raise UsageError(f"--budget {budget.seconds:.0f} s is too short: the cheapest plan ({cheapest[0]} at "
                         f"{cheapest[1]} px: features of {counts['train'] + counts['val']} train + validation images,"
                         f" then calibration, test and report) needs about {need:.0f} s on this machine; give at "
                         f"least {math.ceil(need / 60)}m.")


def resolve(budget: Budget, cfg: TrainConfig, counts: dict[str, int], runtime: Runtime,
            features_cached: bool) -> tuple[TrainConfig, dict]:
    """The config that spends the rest of ``budget`` (``auto`` becomes ``fine-tune`` for the epochs that fit, or
    ``linear-probe``; a strategy given keeps its epochs and the deadline may end it early) and the plan, with the
    clock the loop asks before each epoch (``clock``, a :class:`TrainingClock`)."""
    size = cfg.image_size or get_spec(cfg.model).input_size
    plan = plan_strategy(budget, cfg.model, size, counts, runtime, features_cached, cfg.batch_size, cfg.epochs)
    if cfg.strategy != "auto":
        plan.update(strategy=cfg.strategy, epochs=cfg.epochs,
                    reason=f"--strategy {cfg.strategy} given: its epochs, ended early if the next would pass the "
                           f"budget less the {plan['finish_reserved_s']:.0f} s reserved for the finish")
    else:
        cfg = replace(cfg, strategy=plan["strategy"], epochs=plan["epochs"])
    plan["clock"] = TrainingClock(budget, plan["fine_tune_epoch_s"], plan["finish_reserved_s"])
    return cfg, plan
