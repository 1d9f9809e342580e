"""``headstart train``: from a folder of labelled images to a run directory with a trained model.

The run directory holds everything ``predict``, ``evaluate`` and ``export`` need: ``config.yaml`` (fully
resolved), ``classes.json``, ``split.json`` (which file went where), ``skipped.json`` (files left out and why),
``metrics.jsonl`` (one line per epoch), ``best.safetensors`` (weights with the lowest validation loss) and
``last.pt`` (training state).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from headstart.data.dataset import ImageDataset, make_loader, scan
from headstart.data.sources import DataSplits, discover, validate
from headstart.data.transforms import eval_transform, train_transform
from headstart.engine.checkpoint import save_state, save_weights, write_json
from headstart.engine.loop import evaluate, fit, predict_logits
from headstart.evaluation.metrics import classification_metrics
from headstart.engine.runtime import make_runtime, seed_everything
from headstart.model import build_model
from headstart.strategy import make_strategy
from headstart.zoo import DEFAULT_MODEL


@dataclass
class TrainConfig:
    """Every setting of a training run; saved, resolved, as the run's ``config.yaml``."""

    data: str
    out: str
    model: str = DEFAULT_MODEL
    strategy: str = "fine-tune"
    epochs: int = 10
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
    for stale in ("metrics.jsonl", "best.safetensors", "last.pt", "summary.json"):
        (out / stale).unlink(missing_ok=True)


def drop_bad_files(splits: DataSplits, data: str) -> list[tuple[str, str]]:
    """Decodes every image once; broken ones are named and removed from the splits, the rest go on."""
    bad_all = []
    for name in ("train", "val", "test"):
        good, bad = scan(getattr(splits, name))
        setattr(splits, name, good)
        bad_all += bad
    for path, reason in bad_all:
        log(f"skipping {path}: {reason}")
    validate(splits, data)
    return bad_all


def train(cfg: TrainConfig) -> dict:
    """Trains one model as ``cfg`` says and returns its summary (also written to ``summary.json``)."""
    t_start = time.time()
    seed_everything(cfg.seed)
    out = Path(cfg.out)
    strategy = make_strategy(cfg.strategy, epochs=cfg.epochs, lr=cfg.lr)
    splits = discover(cfg.data, val_fraction=cfg.val_fraction, seed=cfg.seed)
    prepare_run_dir(out, cfg.overwrite)
    bad = drop_bad_files(splits, cfg.data)
    write_json(out / "skipped.json", [{"path": p, "reason": r} for p, r in bad])
    if bad:
        log(f"left out {len(bad)} unreadable file(s); the list is in {out / 'skipped.json'}")
    if not splits.val:
        raise ValueError(f"no validation images in {cfg.data}: add a val/ folder or more images per class "
                         "(each class needs at least two images to hold one out).")

    runtime = make_runtime(cfg.device, cfg.precision)
    model = build_model(cfg.model, len(splits.classes), pretrained=strategy.pretrained, weights_file=cfg.weights)
    pre = model.spec.preprocessing(cfg.image_size)
    runtime.prepare(model)
    log(f"{cfg.model} ({model.weights_source}) on {runtime.describe()}; {len(splits.classes)} classes, "
        f"{len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test images; strategy "
        f"{strategy.name}")

    loaders = {
        "train": make_loader(ImageDataset(splits.train, train_transform(pre, cfg.augment)), cfg.batch_size,
                             shuffle=True, seed=cfg.seed, workers=cfg.workers),
        "train_eval": make_loader(ImageDataset(splits.train, eval_transform(pre)), cfg.batch_size * 2,
                                  shuffle=False, workers=cfg.workers),
        "val": make_loader(ImageDataset(splits.val, eval_transform(pre)), cfg.batch_size * 2, shuffle=False,
                           workers=cfg.workers),
    }

    meta = {"model": cfg.model, "classes": splits.classes, "preprocessing": pre}
    config = {**asdict(cfg), "strategy_phases": strategy.to_dict()["phases"], "preprocessing": pre,
              "classes": splits.classes, "weights_source": model.weights_source,
              "weights_checksum": model.weights_checksum, "runtime": runtime.describe(), "layout": splits.layout}
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    write_json(out / "classes.json", splits.classes)
    write_json(out / "split.json", splits.to_json())

    def on_epoch(record: dict, improved: bool, train_state: dict) -> None:
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        log(f"[{record['phase']} {record['epoch']}] " + ", ".join(
            f"{k} {record[k]:.4f}" for k in ("train_loss", "train_acc", "val_loss", "val_acc") if k in record)
            + (" *" if improved else ""))
        if improved:
            save_weights(out / "best.safetensors", model, {**meta, "epoch": record["global_epoch"]})
        save_state(out / "last.pt", {"model": model.state_dict(), **train_state, "record": record})

    state = fit(model, strategy, loaders, runtime, patience=cfg.patience, on_epoch=on_epoch)

    from headstart.engine.checkpoint import load_weights

    model.load_state_dict(load_weights(out / "best.safetensors"))
    summary = {"strategy": strategy.name, "model": cfg.model, "best_epoch": state.best_global_epoch,
               "best_val_loss": state.best_val_loss, "val_acc": evaluate(model, loaders["val"], runtime)["acc"],
               "trainable_params": model.trainable_parameters(), "train_images": len(splits.train),
               "skipped_files": len(bad), "seconds": time.time() - t_start}
    if splits.test:
        test_loader = make_loader(ImageDataset(splits.test, eval_transform(pre)), cfg.batch_size * 2, shuffle=False,
                                  workers=cfg.workers)
        logits, labels = predict_logits(model, test_loader, runtime, desc="test")
        test = classification_metrics(labels.numpy(), logits.argmax(1).numpy(), splits.classes)
        summary.update(test_acc=test["accuracy"], test_balanced_acc=test["balanced_accuracy"])
        write_json(out / "test_metrics.json", test)
    write_json(out / "summary.json", summary)
    return summary
