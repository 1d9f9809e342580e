"""``headstart train``: from a folder of labelled images to a run directory with a trained model.

The run directory holds everything ``predict``, ``evaluate`` and ``export`` need: ``config.yaml`` (fully
resolved), ``classes.json``, ``split.json`` (which file went where), ``skipped.json`` (files left out and why),
``metrics.jsonl`` (one line per epoch), ``best.safetensors`` (weights with the lowest validation loss) and
``last.pt`` (training state).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from headstart.auto import choose_strategy
from headstart.data.balance import BALANCE, SKEW_HINT, BalancedSampler, class_weights, skew
from headstart.data.check import check_splits
from headstart.data.dataset import ImageDataset, make_loader
from headstart.data.sources import DataSplits, discover, validate
from headstart.data.transforms import eval_transform, train_transform
from headstart.engine.checkpoint import atomic_write, load_state, load_weights, save_state, save_weights, write_json
from headstart.engine.distributed import EpochSampler, barrier
from headstart.engine.loop import FitState, evaluate, fit, predict_logits
from headstart.evaluation.metrics import classification_metrics
from headstart.engine.runtime import make_runtime, seed_everything
from headstart.model import build_model
from headstart.strategy import make_strategy, uses_pretrained_weights
from headstart.zoo import DEFAULT_MODEL, get_spec


@dataclass
class TrainConfig:
    """Every setting of a training run; saved, resolved, as the run's ``config.yaml``."""

    data: str
    out: str
    model: str = DEFAULT_MODEL
    strategy: str = "auto"  # a name in strategy.STRATEGIES, or auto (headstart.auto)
    epochs: int | None = None  # None: auto's choice, or 10
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
    lr_decay: float | None = None  # layer-wise learning-rate decay (strategy.Phase.lr_decay)
    l2sp: float = 0.0  # L2-SP strength towards the pretrained backbone (engine.losses.L2SP)
    bn: str | None = None  # BatchNorm policy: frozen, train or adabn (None: the strategy's default)
    unfreeze_every: int = 1  # gradual: epochs between unfreezing one more group
    label_smoothing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    balance: str = "none"  # none, weights (class-weighted loss) or sampler (data.balance)
    head: str = "logreg"  # how phases with fit="features" fit the head: logreg, ncm or sgd (features.heads.HEADS)
    extra: dict = field(default_factory=dict)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def prepare_run_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; pass a folder for the run.")
    if (out / "config.yaml").exists() and not overwrite:
        raise ValueError(f"{out} already holds a run; pass another --out, or --overwrite to replace it.")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise PermissionError(f"cannot write to {out} ({exc.strerror}); pass an --out folder you can write to.") \
            from None
    for stale in ("metrics.jsonl", "best.safetensors", "phase_best.safetensors", "last.pt", "summary.json"):
        (out / stale).unlink(missing_ok=True)


def drop_bad_files(splits: DataSplits, data: str) -> list[tuple[str, str]]:
    """Checks every image once (``headstart check``'s pass): unusable ones are named and removed from the splits,
    duplicates, leakage across splits and imbalance get one line, and training goes on."""
    report = check_splits(splits, data)
    bad = report.bad_files()
    for path, reason in bad:
        log(f"skipping {path}: {reason}")
    dropped = {p for p, _ in bad}
    for name in ("train", "val", "test"):
        setattr(splits, name, [s for s in getattr(splits, name) if s[0] not in dropped])
    if warnings := report.summary():
        log(f"data warnings: {warnings}; `headstart check {data}` lists them")
    validate(splits, data)
    return bad


def _loaders(splits: DataSplits, pre: dict, cfg: TrainConfig, runtime) -> dict:
    """Train (augmented, shuffled per epoch), and eval-transform loaders; sharded across ranks under DDP."""
    r, w = runtime.rank, runtime.world_size

    def loader(samples, transform, shuffle, batch, shard=True, sampler=None):
        sampler = sampler or EpochSampler(len(samples), shuffle=shuffle, seed=cfg.seed, rank=r if shard else 0,
                                          world_size=w if shard else 1)
        return make_loader(ImageDataset(samples, transform), batch, shuffle=False, seed=cfg.seed,
                           workers=cfg.workers, sampler=sampler)

    balanced = BalancedSampler([y for _, y in splits.train], seed=cfg.seed, rank=r, world_size=w) \
        if cfg.balance == "sampler" else None
    return {
        "train": loader(splits.train, train_transform(pre, cfg.augment), True, cfg.batch_size, sampler=balanced),
        "val": loader(splits.val, eval_transform(pre), False, cfg.batch_size * 2),
        "train_eval": loader(splits.train, eval_transform(pre), False, cfg.batch_size * 2, shard=False),
        "val_all": loader(splits.val, eval_transform(pre), False, cfg.batch_size * 2, shard=False),
    }


def load_resume_state(out: Path) -> dict:
    """``last.pt`` plus the current phase's best weights, to continue a run where it stopped."""
    if not (out / "last.pt").is_file():
        raise FileNotFoundError(f"{out} has no last.pt to resume from; start it again without --resume.")
    state = load_state(out / "last.pt")
    if (out / "phase_best.safetensors").is_file():
        state["phase_best_state"] = load_weights(out / "phase_best.safetensors")
    return state


def _pretrained_backbone(cfg: TrainConfig, num_classes: int) -> dict:
    """The pretrained backbone parameters L2-SP pulls towards (a resumed model holds trained ones)."""
    fresh = build_model(cfg.model, num_classes, pretrained=True, weights_file=cfg.weights)
    return {n: p.detach() for n, p in fresh.backbone.named_parameters()}


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    """Trains one model as ``cfg`` says and returns its summary (also written to ``summary.json``).

    Args:
        cfg: the run's settings.
        resume: continue the run in ``cfg.out`` from its ``last.pt`` (model, optimizer, scheduler, epoch, phase).
    """
    t_start = time.time()
    seed_everything(cfg.seed)
    out = Path(cfg.out)
    runtime = make_runtime(cfg.device, cfg.precision)
    main = runtime.is_main
    if cfg.strategy != "auto":
        uses_pretrained_weights(cfg.strategy)  # a wrong name fails before any image is read
    if cfg.balance not in BALANCE:
        raise ValueError(f"--balance must be one of {', '.join(BALANCE)}, got '{cfg.balance}'.")
    get_spec(cfg.model)  # a mistyped --model fails before the data is read
    if resume:
        splits = DataSplits.from_json(json.loads((out / "split.json").read_text()))
        resume_state = load_resume_state(out)
        bad = [(s["path"], s["reason"]) for s in json.loads((out / "skipped.json").read_text())]
    else:
        splits = discover(cfg.data, val_fraction=cfg.val_fraction, seed=cfg.seed)
        if main:
            prepare_run_dir(out, cfg.overwrite)
        barrier()
        bad = drop_bad_files(splits, cfg.data)
        resume_state = None
        if main:
            write_json(out / "skipped.json", [{"path": p, "reason": r} for p, r in bad])
            if bad:
                log(f"left out {len(bad)} unreadable file(s); the list is in {out / 'skipped.json'}")
    if not splits.val:
        raise ValueError(f"no validation images in {cfg.data}: add a val/ folder or more images per class "
                         "(each class needs at least two images to hold one out).")

    labels = [y for _, y in splits.train]
    choice = choose_strategy(len(splits.train), len(splits.classes), cfg.batch_size) if cfg.strategy == "auto" \
        else None
    name = choice.strategy if choice else cfg.strategy
    model = build_model(cfg.model, len(splits.classes), pretrained=uses_pretrained_weights(name) and not resume,
                        weights_file=None if resume else cfg.weights)
    # Settings given explicitly win over auto's choice.
    epochs = cfg.epochs or (choice.epochs if choice else 10)
    lr_decay = cfg.lr_decay if cfg.lr_decay is not None else (choice.lr_decay if choice else None)
    lr = cfg.lr if cfg.lr is not None else (choice.lr if choice and choice.strategy != "linear-probe" else None)
    strategy = make_strategy(name, epochs=epochs, lr=lr, groups=len(model.group_names), lr_decay=lr_decay,
                             l2sp=cfg.l2sp, bn=cfg.bn, unfreeze_every=cfg.unfreeze_every)
    if resume:
        model.load_state_dict(resume_state["model"])
    pre = model.spec.preprocessing(cfg.image_size)
    runtime.prepare(model)
    loaders = _loaders(splits, pre, cfg, runtime)
    if main:
        log(f"{cfg.model} ({model.weights_source}) on {runtime.describe()}"
            f"{f' x {runtime.world_size} processes' if runtime.world_size > 1 else ''}; {len(splits.classes)} classes, "
            f"{len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test images; strategy "
            f"{strategy.name}" + (f"; resuming after epoch {resume_state['fit_state']['global_epoch']}" if resume
                                  else ""))
        if choice:
            log(f"auto: {choice.reason}")
        if cfg.balance == "none" and skew(labels, len(splits.classes)) > SKEW_HINT:
            log(f"classes are imbalanced (largest / smallest = {skew(labels, len(splits.classes)):.1f}); consider "
                "--balance weights (class-weighted loss) or --balance sampler (draw classes equally often)")

    meta = {"model": cfg.model, "classes": splits.classes, "preprocessing": pre}
    if main and not resume:
        config = {**asdict(cfg), "strategy_resolved": strategy.name,
                  "strategy_choice": choice.to_dict() if choice else None,
                  "strategy_phases": strategy.to_dict()["phases"], "preprocessing": pre,
                  "classes": splits.classes, "weights_source": model.weights_source,
                  "weights_checksum": model.weights_checksum, "runtime": runtime.describe(),
                  "world_size": runtime.world_size, "layout": splits.layout}
        (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        write_json(out / "classes.json", splits.classes)
        write_json(out / "split.json", splits.to_json())
    if main and resume:
        # Epochs after the checkpoint were lost with the crash; their metrics lines go too.
        done = resume_state["fit_state"]["global_epoch"]
        lines = (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").exists() else []
        kept = [line for line in lines if json.loads(line)["global_epoch"] <= done]
        atomic_write(out / "metrics.jsonl", lambda tmp: Path(tmp).write_text("".join(f"{x}\n" for x in kept)))

    def on_epoch(record: dict, state: FitState, ckpt: dict) -> None:
        if not main:
            return
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        log(f"[{record['phase']} {record['epoch']}] " + ", ".join(
            f"{k} {record[k]:.4f}" for k in ("train_loss", "train_acc", "val_loss", "val_acc") if k in record)
            + (" *" if ckpt["improved"] else ""))
        if ckpt["improved"]:
            save_weights(out / "best.safetensors", model, {**meta, "epoch": record["global_epoch"]})
        if ckpt["phase_improved"]:
            save_weights(out / "phase_best.safetensors", model)
        # last.pt is written last: whatever it records is already on disk.
        save_state(out / "last.pt", {**{k: v for k, v in ckpt.items() if k not in ("improved", "phase_improved")},
                                     "fit_state": asdict(state), "record": record})

    weights = class_weights(labels, len(splits.classes))
    try:
        # A head fitted on features sees every image once, not sampled: both --balance options weight its loss.
        state = fit(model, strategy, loaders, runtime, patience=cfg.patience, on_epoch=on_epoch, seed=cfg.seed,
                    resume=resume_state, probe={"head": cfg.head, "preprocessing": pre,
                                                "class_weights": weights if cfg.balance != "none" else None},
                    label_smoothing=cfg.label_smoothing, mixup=cfg.mixup, cutmix=cfg.cutmix,
                    class_weights=weights if cfg.balance == "weights" else None,
                    l2sp_reference=_pretrained_backbone(cfg, len(splits.classes)) if resume and cfg.l2sp else None)
    except KeyboardInterrupt:
        if main:
            log(f"interrupted: the last finished epoch is saved; continue with `headstart train --resume {out}`.")
        raise
    barrier()

    model.load_state_dict(load_weights(out / "best.safetensors"))
    best_phase = None
    if main and (out / "metrics.jsonl").is_file():
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        best_phase = next((r["phase"] for r in records if r["global_epoch"] == state.best_global_epoch), None)
        last = strategy.phases[-1].name
        if best_phase is not None and best_phase != last:
            last_best = min((r["val_loss"] for r in records if r["phase"] == last), default=math.inf)
            log(f"kept the weights from phase '{best_phase}' (validation loss {state.best_val_loss:.4f}): phase "
                f"'{last}' did not do better (its best {last_best:.4f}); its own best weights are in "
                f"{out / 'phase_best.safetensors'}.")
    summary = {"strategy": strategy.name, "model": cfg.model, "best_epoch": state.best_global_epoch,
               "best_phase": best_phase,
               "best_val_loss": state.best_val_loss, "val_acc": evaluate(model, loaders["val"], runtime)["acc"],
               "trainable_params": model.trainable_parameters(), "train_images": len(splits.train),
               "skipped_files": len(bad), "seconds": time.time() - t_start, "world_size": runtime.world_size}
    if splits.test and main:
        test_loader = make_loader(ImageDataset(splits.test, eval_transform(pre)), cfg.batch_size * 2, shuffle=False,
                                  workers=cfg.workers)
        logits, labels = predict_logits(model, test_loader, runtime, desc="test")
        test = classification_metrics(labels.numpy(), logits.argmax(1).numpy(), splits.classes)
        summary.update(test_acc=test["accuracy"], test_balanced_acc=test["balanced_accuracy"])
        write_json(out / "test_metrics.json", test)
    if main:
        write_json(out / "summary.json", summary)
    return summary
