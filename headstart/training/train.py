"""``headstart train``: from a folder of labelled images to a run directory with a trained model.

:func:`train` reads as the steps it takes: check the options, read and check the images (leak-proof splits),
build the model and strategy, record the run, fit, then calibrate, refit, test and summarise. The run directory
(:class:`headstart.data.rundir.RunDir`, whose docstring lists its files) holds everything ``predict``, ``evaluate``,
``export`` and ``serve`` need.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from headstart.core.distributed import EpochSampler, barrier, broadcast_from_main
from headstart.core.errors import DataError, HeadstartError
from headstart.core.hashing import KnownHashes
from headstart.core.preprocessing import Preprocessing
from headstart.core.runtime import Runtime, make_runtime, seed_everything
from headstart.data.balance import SKEW_HINT, BalancedSampler, class_weights, skew
from headstart.data.check import check_splits
from headstart.data.dataset import ImageFiles, broke_since_check, make_loader
from headstart.data.leakage import (
    LOUD_SHARE,
    drop_leaked,
    duplicate_groups,
    fingerprints,
    leak_proof_split,
    loud_classes,
)
from headstart.data.multilabel import is_multilabel_csv
from headstart.data.rundir import RunDir, shipped_backbone_is_frozen
from headstart.data.sources import DataSplits, discover, validate
from headstart.data.transforms import eval_transform, train_transform
from headstart.evaluation.metrics import classification_metrics
from headstart.features.extract import cache_key
from headstart.predict.calibration import calibration_summary, run_temperature
from headstart.predict.run import LoadedRun, cached_logits_of
from headstart.report import TensorBoardLogger, write_report
from headstart.training.auto import choose_strategy
from headstart.training.budget import Budget, check_fits, finish_seconds, observe_epochs
from headstart.training.budget import resolve as resolve_budget
from headstart.training.choose import choose_backbone
from headstart.training.config import TrainConfig
from headstart.training.loop import FitState, fit, predict_logits
from headstart.training.probe import ProbeOptions
from headstart.training.strategy import Strategy, get_strategy, make_strategy, uses_pretrained_weights
from headstart.zoo import get_spec
from headstart.zoo.model import TransferModel, build_model


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def check_and_split(splits: DataSplits, cfg: TrainConfig) -> tuple[DataSplits, list, dict, dict]:
    """Checks every image once (``headstart check``'s pass) and makes the splits leak-proof.

    Unusable files are named and left out. When headstart made the validation split, every group of copies goes to
    one side whole; validation and test images that are themselves a confirmed copy of a training image are left
    out of selection and scoring (unless ``cfg.keep_leaked``). Test images that copy a validation image are found
    too: they are left out once a refit fits the shipped head on the validation images (``refit_exclusion``).

    Returns the splits (holding the content hashes the check computed), ``(path, reason)`` of each unusable file,
    the leakage record (``leakage.json``) and the fingerprints of the train and val images, each with its split (for
    ``evaluate`` to find copies of the images the shipped weights were fitted on).
    """
    report = check_splits(splits, cfg.data, duplicates=cfg.duplicates,
                          **({"max_pixels": cfg.max_pixels} if cfg.max_pixels else {}))
    bad = report.bad_files()
    for path, reason in bad:
        log(f"skipping {path}: {reason}")
    dropped = {p for p, _ in bad}
    splits = replace(splits, **{n: [s for s in getattr(splits, n) if s[0] not in dropped]
                                for n in ("train", "val", "test")})
    if warnings := report.summary():
        log(f"data warnings: {warnings}; `headstart check {cfg.data}` lists them")
    groups = duplicate_groups(report.facts, cfg.duplicates)
    leakage = {"duplicates": cfg.duplicates, "duplicate_groups": len(groups), "regrouped": False,
               "kept": cfg.keep_leaked, "excluded": {"val": [], "test": []}, "test_copies_of_val": {}}
    if splits.val_made and groups:
        regrouped = leak_proof_split(splits, report.facts, cfg.val_fraction, cfg.seed, cfg.duplicates)
        leakage["regrouped"] = regrouped is not splits  # only when a group straddled train and val
        splits = regrouped
    if not cfg.keep_leaked:
        splits, record = drop_leaked(splits, report.facts, cfg.duplicates)
        leakage["excluded"] = {k: record[k] for k in ("val", "test")}
        leakage.update({k: record[k] for k in ("copy_of", "label_conflicts", "removed_share")})
        _say_excluded(record, "a training image")
        _, after_refit = drop_leaked(splits, report.facts, cfg.duplicates, reference=("val",), held_out=("test",))
        leakage["test_copies_of_val"] = after_refit["copy_of"]
    validate(splits, cfg.data)
    splits = replace(splits, hashes=report.known_hashes())  # extraction, calibration, refit, test and report use them
    prints = {**fingerprints(report.facts, [p for p, _ in splits.train], "train"),
              **fingerprints(report.facts, [p for p, _ in splits.val], "val")}
    return splits, bad, leakage, {"fitted_on": ["train"], "images": prints}


def _say_excluded(record: dict, what: str) -> None:
    """The log lines for a ``drop_leaked`` record: how many were left out, label conflicts, classes hit hard."""
    n = sum(len(record.get(k, [])) for k in ("val", "test"))
    if not n:
        return
    log(f"left out {n} validation/test image(s) that are copies of {what}, so they neither choose nor score the "
        "model (listed in leakage.json; --keep-leaked keeps them, --duplicates exact counts only identical files)")
    if conflicts := record.get("label_conflicts"):
        log(f"{len(conflicts)} of them are labelled differently from their copy (label conflicts, left out with the "
            "rest; `headstart check` lists them: one of each pair's labels is wrong)")
    if loud := loud_classes(record):
        log(f"WARNING: copies removed more than {LOUD_SHARE:.0%} of these classes' images: {', '.join(loud)}. If "
            "these are not real copies, pass --duplicates exact and look at `headstart check`'s pairs.")


def refit_exclusion(splits: DataSplits, leakage: dict) -> DataSplits:
    """``splits`` without the test images that copy a validation image, once a refit has fitted the shipped head
    on the validation images; recorded in ``leakage`` (``excluded_after_refit``)."""
    copies = leakage.get("test_copies_of_val", {})
    gone = [p for p, _ in splits.test if p in copies]
    leakage["excluded_after_refit"] = {"test": gone}
    if gone:
        log(f"left out {len(gone)} test image(s) that are copies of validation images the refitted head was fitted "
            "on (listed in leakage.json)")
    return replace(splits, test=[s for s in splits.test if s[0] not in copies])


def leakage_counts(leakage: dict) -> dict:
    """The leakage record in numbers, for ``summary.json``."""
    excluded = leakage.get("excluded", {})
    return {"duplicates": leakage.get("duplicates", "near"), "duplicate_groups": leakage.get("duplicate_groups", 0),
            "regrouped": leakage.get("regrouped", False), "kept_leaked": leakage.get("kept", False),
            **{f"excluded_{k}": len(excluded.get(k, [])) for k in ("val", "test")},
            "excluded_test_after_refit": len(leakage.get("excluded_after_refit", {}).get("test", [])),
            "label_conflicts": len(leakage.get("label_conflicts", [])),
            "removed_share": leakage.get("removed_share", {})}


def tiny_last_batch(images: int, batch_size: int) -> bool:
    """Whether an epoch's last batch is under a quarter of a full one (and not the only batch): while BatchNorm
    learns, its statistics from 4 images are noise, and its running statistics follow them."""
    last = images % batch_size
    return images > batch_size and 0 < last < batch_size / 4


def _loaders(splits: DataSplits, pre: Preprocessing, cfg: TrainConfig, runtime, bn_trains: bool = False) -> dict:
    """Train (augmented, shuffled per epoch), and eval-transform loaders; sharded across ranks under DDP.

    With ``bn_trains`` (a phase where BatchNorm statistics follow the batches: scratch, ``--bn train``) a tiny last
    training batch is dropped; the shuffle changes each epoch, so no image is left out for good."""
    r, w = runtime.rank, runtime.world_size

    def loader(samples, transform, shuffle, batch, shard=True, sampler=None):
        sampler = sampler or EpochSampler(len(samples), shuffle=shuffle, seed=cfg.seed, rank=r if shard else 0,
                                          world_size=w if shard else 1)
        drop = shuffle and bn_trains and tiny_last_batch(len(sampler), batch)
        return make_loader(ImageFiles(samples, transform), batch, shuffle=False, seed=cfg.seed,
                           workers=cfg.workers, sampler=sampler, drop_last=drop)

    balanced = BalancedSampler([y for _, y in splits.train], seed=cfg.seed, rank=r, world_size=w) \
        if cfg.balance == "sampler" else None
    return {
        "train": loader(splits.train, train_transform(pre, cfg.augment), True, cfg.batch_size, sampler=balanced),
        "val": loader(splits.val, eval_transform(pre), False, cfg.batch_size * 2),
        "train_eval": loader(splits.train, eval_transform(pre), False, cfg.batch_size * 2, shard=False),
        "val_all": loader(splits.val, eval_transform(pre), False, cfg.batch_size * 2, shard=False),
    }


def _pretrained_backbone(cfg: TrainConfig, num_classes: int) -> dict:
    """The pretrained backbone parameters L2-SP pulls towards (a resumed model holds trained ones)."""
    fresh = build_model(cfg.model, num_classes, pretrained=True, weights_file=cfg.weights)
    return {n: p.detach() for n, p in fresh.backbone.named_parameters()}


def _shipped_record(records: list[dict], state: FitState, strategy, run: RunDir) -> dict:
    """The metrics record of the epoch whose weights ship (with the phase's ``fit``), saying so when an earlier
    phase beat the last one."""
    record = next(r for r in records if r["global_epoch"] == state.best_global_epoch)
    phase = next(p for p in strategy.phases if p.name == record["phase"])
    last = strategy.phases[-1].name
    if record["phase"] != last:
        last_best = min((r["val_loss_calibrated"] for r in records if r["phase"] == last), default=math.inf)
        log(f"kept the weights from phase '{record['phase']}' (calibrated validation loss {state.best_val_loss:.4f},"
            f" accuracy {record['val_acc']:.4f}): phase '{last}' did not do better (its best {last_best:.4f}); its "
            f"own best weights are in {run / run.PHASE_BEST}.")
    return {**record, "fit": phase.fit}


def _phase_figures(records: list[dict]) -> dict:
    """Each phase's best epoch by the selection figure, with its raw and calibrated validation loss and accuracy:
    the figures the choice of the shipped phase was made on."""
    out = {}
    for r in records:
        best = out.get(r["phase"])
        if best is None or r["val_loss_calibrated"] < best["val_loss_calibrated"]:
            out[r["phase"]] = {k: r[k] for k in ("global_epoch", "val_loss", "val_loss_calibrated", "val_acc",
                                                 "val_temperature", "trainable_params")}
    return out


def _logits(model, loader, runtime, frozen: Preprocessing | None, desc: str, known_hashes: KnownHashes):
    """Logits and labels of a loader's images; through the feature cache when the shipped backbone is frozen
    (``frozen``: the preprocessing to look features up with), so those images cross the backbone once per run."""
    if frozen is None:
        return predict_logits(model, loader, runtime, desc=desc)
    logits, labels, bad = cached_logits_of(model, loader.dataset.samples, frozen, runtime, loader.batch_size or 64,
                                           loader.num_workers, desc=desc, known_hashes=known_hashes)
    if bad:
        raise broke_since_check(*bad[0])
    return logits, labels


def _calibrate(model, val_loader, runtime, summary: dict, frozen: Preprocessing | None,
               known_hashes: KnownHashes) -> tuple[float, dict]:
    """The temperature of the chosen weights, fitted on the validation images (before any refit sees them), and
    their calibration there before and after it; ``summary["temperature_source"]`` says how it was obtained."""
    logits, labels = _logits(model, val_loader, runtime, frozen, "calibrate", known_hashes)
    temperature = run_temperature(logits, labels)
    summary["val_acc"] = float((logits.argmax(1) == labels).float().mean()) if len(labels) else math.nan
    all_right = bool(len(labels)) and summary["val_acc"] == 1.0
    summary["temperature_source"] = (f"validation: every one of the {len(labels)} images is right, nothing to fit "
                                     "(T = 1)" if all_right else f"validation: fitted on the {len(labels)} images")
    return temperature, {"val": {**calibration_summary(logits.numpy(), labels.numpy(), temperature),
                                 "describes": "validation images: the shipped weights; T fitted here"}}


def _test(model, splits: DataSplits, pre: Preprocessing, cfg: TrainConfig, runtime, temperature: float, run: RunDir,
          summary: dict, frozen: bool) -> dict:
    """Test accuracy and calibration of the shipped model; ``test_metrics.json``. With a frozen backbone the test
    features go into the cache, so ``evaluate`` on the same images later costs the head only."""
    loader = make_loader(ImageFiles(splits.test, eval_transform(pre)), cfg.batch_size * 2, shuffle=False,
                         workers=cfg.workers)
    logits, labels = _logits(model, loader, runtime, pre if frozen else None, "test", splits.hashes)
    metrics = classification_metrics(labels.numpy(), logits.argmax(1).numpy(), splits.classes)
    metrics["calibration"] = summary["calibration"]["test"] = calibration_summary(logits.numpy(), labels.numpy(),
                                                                                  temperature)
    run.write_json(run.TEST_METRICS, metrics)
    return {"test_acc": metrics["accuracy"], "test_balanced_acc": metrics["balanced_accuracy"]}




@dataclass
class _Data:
    """The images a run trains on, and what was left out of them."""

    splits: DataSplits
    bad: list[tuple[str, str]]
    leakage: dict
    resume_state: dict | None = None


@dataclass
class _Plan:
    """What trains how: auto's choice (if any), the model, the strategy and the preprocessing."""

    model: TransferModel
    strategy: Strategy
    preprocessing: Preprocessing
    choice: object | None  # auto.Choice when the strategy was chosen


def _check_options(cfg: TrainConfig) -> None:
    """Every option, the strategy, head and model names checked before any image is read or folder made."""
    cfg.check()
    if cfg.strategy != "auto":
        get_strategy(cfg.strategy)
    get_spec(cfg.model)


def _new_data(run: RunDir, cfg: TrainConfig, runtime: Runtime, found=None, check=check_and_split) -> _Data:
    """Finds the images (``found``: splits another task discovered), makes the run folder, checks every image and
    splits leak-proof (``check``: that task's check); records what was left out."""
    splits = found if found is not None else discover(cfg.data, val_fraction=cfg.val_fraction, seed=cfg.seed)
    if runtime.is_main:  # checked before the images are: a wrong --out fails at once
        run.prepare(cfg.overwrite, inside=Path(cfg.data), dry_run=True)
    splits, bad, leakage, train_fingerprints = check(splits, cfg)
    if runtime.is_main:  # made only once the data is known to be usable
        run.prepare(cfg.overwrite, inside=Path(cfg.data))
    barrier()
    if runtime.is_main:
        run.write_skipped(bad)
        run.write_json(run.LEAKAGE, leakage)
        run.write_json(run.FINGERPRINTS, train_fingerprints)
        if bad:
            log(f"left out {len(bad)} unreadable file(s); the list is in {run / run.SKIPPED}")
    return _Data(splits, bad, leakage)


def _resumed_data(run: RunDir) -> _Data:
    return _Data(run.split(), run.skipped(), run.read_json(run.LEAKAGE, {}), run.resume_state())


def _plan(cfg: TrainConfig, data: _Data, runtime: Runtime) -> _Plan:
    """auto's choice (explicit --epochs/--lr/--lr-decay already folded in), the model and the strategy."""
    splits, resume = data.splits, data.resume_state is not None
    choice = choose_strategy(list(splits.counts("train").values()), cfg.batch_size, runtime.world_size,
                             epochs=cfg.epochs, lr=cfg.lr, lr_decay=cfg.lr_decay) if cfg.strategy == "auto" else None
    name = choice.strategy if choice else cfg.strategy
    model = build_model(cfg.model, len(splits.classes), pretrained=uses_pretrained_weights(name) and not resume,
                        weights_file=None if resume else cfg.weights)
    strategy = make_strategy(name, epochs=choice.epochs if choice else cfg.epochs or 10,
                             lr=choice.lr if choice else cfg.lr, groups=len(model.group_names),
                             lr_decay=choice.lr_decay if choice else cfg.lr_decay, l2sp=cfg.l2sp, bn=cfg.bn,
                             unfreeze_every=cfg.unfreeze_every)
    if resume:
        model.load_state_dict(data.resume_state["model"])
    runtime.prepare(model)
    return _Plan(model, strategy, model.spec.preprocessing(cfg.image_size), choice)


def _announce(cfg: TrainConfig, run: RunDir, plan: _Plan, data: _Data, runtime: Runtime) -> None:
    splits, resume = data.splits, data.resume_state
    weights = run.config().get("weights_source", "?") if resume else plan.model.weights_source
    log(f"{cfg.model} ({weights}) on {runtime.describe()}"
        f"{f' x {runtime.world_size} processes' if runtime.world_size > 1 else ''}; {len(splits.classes)} classes, "
        f"{len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test images; strategy "
        f"{plan.strategy.name}" + (f"; resuming after epoch {resume['fit_state']['global_epoch']}" if resume else ""))
    if plan.choice:
        log(f"auto: {plan.choice.reason}")
    labels = [y for _, y in splits.train]
    if cfg.balance == "none" and skew(labels, len(splits.classes)) > SKEW_HINT:
        log(f"classes are imbalanced (largest / smallest = {skew(labels, len(splits.classes)):.1f}); consider "
            "--balance weights (class-weighted loss) or --balance sampler (draw classes equally often)")


def _choose(cfg: TrainConfig, splits: DataSplits, runtime: Runtime, budget: Budget | None) -> tuple[TrainConfig,
                                                                                                    dict]:
    """The backbone and image size ``--choose`` picks on the train + validation images (never the test images),
    within what is left of ``budget`` less the run's finish: the config with them (and no ``--choose`` left, so a
    resume trains the same), and the evidence."""
    left = budget.left() if budget else None
    log(f"choosing the backbone ({cfg.choose}" + (f", {left:.0f} s left of the budget" if budget else "")
        + ") on the train + validation images:")
    finish = (lambda rate: finish_seconds(len(splits.val), len(splits.test), rate)) if budget else None
    choice = choose_backbone(splits, cfg.choose, runtime, cfg.head, left, cfg.seed, log=log, finish=finish)
    winner = choice["winner"]
    log(f"chose {winner['backbone']} at {winner['size']} px: {choice['reason']}")
    return replace(cfg, model=winner["backbone"], image_size=winner["size"], choose=None), choice


def _decide(cfg: TrainConfig, splits: DataSplits, runtime: Runtime, budget: Budget | None):
    """The backbone (``--choose``) and, under ``--budget``, what the rest of it buys: the config that trains, the
    choice's evidence and the budget's plan (None when not asked for). Under torchrun rank 0 decides alone (its
    clock, its measurements) and every rank takes its decision; the other ranks' loops ask no clock (rank 0's
    stops them all)."""
    if runtime.world_size == 1 or not (cfg.choose or budget):
        return _decide_here(cfg, splits, runtime, budget)
    decided = _decide_here(cfg, splits, replace(runtime, rank=0, world_size=1), budget) if runtime.is_main else None
    clock = decided[2].pop("clock") if decided and decided[2] else None
    cfg, choice, plan = broadcast_from_main(decided)
    if plan is not None:
        plan["clock"] = clock or _room_for_another_epoch
    return cfg, choice, plan


def _room_for_another_epoch(last_epoch_s: float) -> bool:
    """The clock of a rank that does not keep the budget: rank 0's decides."""
    return True


def _decide_here(cfg: TrainConfig, splits: DataSplits, runtime: Runtime, budget: Budget | None):
    counts = {k: len(getattr(splits, k)) for k in ("train", "val", "test")}
    if budget:
        check_fits(budget, cfg, counts, runtime)
    choice = plan = None
    if cfg.choose:
        cfg, choice = _choose(cfg, splits, runtime, budget)
    if budget:
        cfg, plan = resolve_budget(budget, cfg, counts, runtime, features_cached=choice is not None)
        log(f"budget {budget.seconds:.0f} s, {budget.spent():.0f} s spent: {plan['strategy']}, {plan['reason']}")
    return replace(cfg, budget=None), choice, plan


def _record_start(run: RunDir, cfg: TrainConfig, plan: _Plan, splits: DataSplits, runtime: Runtime,
                  choice: dict | None = None, budget: dict | None = None) -> None:
    """``config.yaml`` (every setting resolved), ``classes.json``, ``split.json`` and the backbone choice's
    evidence (``backbone_choice.json``) when ``--choose`` made one."""
    if choice is not None:
        run.write_json(run.BACKBONE_CHOICE, choice)
    run.write_config({**asdict(cfg), "strategy_resolved": plan.strategy.name,
                      "budget_plan": {k: v for k, v in budget.items() if k != "clock"} if budget else None,
                      "backbone_choice": {k: choice[k] for k in ("preset", "winner", "reason")} if choice else None,
                      "strategy_choice": plan.choice.to_dict() if plan.choice else None,
                      "strategy_phases": plan.strategy.to_dict()["phases"],
                      "strategy_description": plan.strategy.description,
                      "preprocessing": plan.preprocessing.to_dict(), "classes": splits.classes,
                      "weights_source": plan.model.weights_source, "weights_checksum": plan.model.weights_checksum,
                      "runtime": runtime.describe(), "world_size": runtime.world_size, "layout": splits.layout})
    run.write_classes(splits.classes)
    run.write_split(splits)


def _checkpointer(run: RunDir, model: TransferModel, meta: dict, tensorboard=None):
    """The ``on_epoch`` hook of :func:`fit`: the metrics line (and TensorBoard's), the best weights, then ``last.pt``
    (written last: whatever it records is already on disk)."""

    def on_epoch(record: dict, state: FitState, ckpt: dict) -> None:
        run.append_metrics(record)
        if tensorboard is not None:
            tensorboard.on_epoch(record)
        log(f"[{record['phase']} {record['epoch']}] " + ", ".join(
            f"{k} {record[k]:.4f}" for k in ("train_loss", "train_acc", "val_loss", "val_acc") if k in record)
            + (" *" if ckpt["improved"] else ""))
        if ckpt["improved"]:
            run.save_weights(run.BEST, model, {**meta, "epoch": record["global_epoch"]})
        if ckpt["phase_improved"]:
            run.save_weights(run.PHASE_BEST, model)
        run.save_state({**{k: v for k, v in ckpt.items() if k not in ("improved", "phase_improved")},
                        "fit_state": asdict(state), "record": record})

    return on_epoch


def _fit(cfg: TrainConfig, run: RunDir, plan: _Plan, data: _Data, loaders: dict, probe: ProbeOptions,
         weights, runtime: Runtime, meta: dict, tensorboard, budget) -> FitState:
    resume = data.resume_state
    try:
        return fit(plan.model, plan.strategy, loaders, runtime, patience=cfg.patience, seed=cfg.seed, resume=resume,
                   on_epoch=_checkpointer(run, plan.model, meta, tensorboard) if runtime.is_main else None,
                   probe=probe,
                   label_smoothing=cfg.label_smoothing, mixup=cfg.mixup, cutmix=cfg.cutmix,
                   class_weights=weights if cfg.balance == "weights" else None,
                   l2sp_reference=_pretrained_backbone(cfg, len(data.splits.classes)) if resume and cfg.l2sp
                   else None, budget=budget)
    except KeyboardInterrupt:
        if runtime.is_main:
            log(f"interrupted: the last finished epoch is saved; continue with `headstart train --resume {run.path}`.")
        raise


def _finish(cfg: TrainConfig, run: RunDir, plan: _Plan, data: _Data, state: FitState, loaders: dict,
            probe: ProbeOptions, runtime: Runtime, meta: dict) -> dict:
    """After training, on rank 0 alone: the shipped weights' temperature, the refit, the test, ``summary.json``."""
    # The other ranks have returned: no collective may run, the feature cache's included. The summary still
    # reports the world size training ran with.
    alone = replace(runtime, rank=0, world_size=1)
    model, splits = plan.model, data.splits
    model.load_state_dict(run.weights(run.BEST))
    records = run.metrics()
    shipped = _shipped_record(records, state, plan.strategy, run)
    summary = {"strategy": plan.strategy.name, "model": cfg.model, "best_epoch": state.best_global_epoch,
               "best_phase": shipped["phase"], "selection": "validation loss after temperature scaling",
               "best_val_loss": state.best_val_loss, "phases": _phase_figures(records),
               "trainable_params": shipped["trainable_params"], "train_images": len(splits.train),
               "val_images": len(splits.val), "skipped_files": len(data.bad), "world_size": runtime.world_size,
               "leakage": leakage_counts(data.leakage)}
    frozen = summary["frozen_backbone"] = shipped_backbone_is_frozen(run.config(), summary)
    if frozen:  # where the shipped head's features are: the cached engine reads this key, never recomputes it
        summary["feature_key"] = cache_key(model, plan.preprocessing, alone)
    temperature, summary["calibration"] = _calibrate(model, loaders["val_all"], alone, summary,
                                                     plan.preprocessing if frozen else None, splits.hashes)
    refit = None
    if cfg.refit and shipped.get("fit") == "features":
        refit = probe.refit(model, [loaders["train_eval"], loaders["val_all"]], alone, shipped)
        log(f"refitted the {refit['head']} head on all {refit['refit_images']} train + validation images with the "
            "settings validation chose" + (f" (C={refit['C']:g})" if "C" in refit else ""))
        # The validation images now train the head, so they cannot calibrate it, and validation's temperature,
        # fitted to the head before the refit, does not carry over (benchmarks/refit_calibration.py): the refit
        # cross-fits one, unless a class has a single image (no fold can hold it out), when validation's stays.
        cal = summary["calibration"]
        if "temperature" in refit:
            temperature, summary["temperature_source"] = refit.pop("temperature"), refit.pop("temperature_source")
            cal["cross_fitted"] = refit.pop("calibration")
        else:
            summary["temperature_source"] += " before the refit; kept: a class has one image, so no fold holds it out"
        cal["val"]["describes"] = ("validation images: the head before the refit; T fitted here, "
                                   + ("not shipped" if "cross_fitted" in cal else "shipped"))
        log(f"temperature {temperature:.3g}, {summary['temperature_source']}")
    summary["refit"] = refit
    summary["temperature"] = temperature
    if refit is not None:  # the shipped head has now been fitted on the validation labels too
        splits = refit_exclusion(splits, data.leakage)
        summary["leakage"] = leakage_counts(data.leakage)
        # Said in leakage.json, not by rewriting the fingerprints: 0.2 GB of JSON at 100,000 images, read and
        # written again at the end of the run, was its largest memory.
        data.leakage["fitted_on"] = ["train", "val"]
        run.write_json(run.LEAKAGE, data.leakage)
    run.save_weights(run.BEST, model, {**meta, "epoch": state.best_global_epoch, "temperature": temperature,
                                       "refit": refit is not None})
    if splits.test:
        summary.update(_test(model, splits, plan.preprocessing, cfg, alone, temperature, run, summary, frozen))
    return summary


def train(cfg: TrainConfig, resume: bool = False, started: float | None = None) -> dict:
    """Trains one model as ``cfg`` says and returns its summary (also written to ``summary.json``).

    Args:
        cfg: the run's settings.
        resume: continue the run in ``cfg.out`` from its ``last.pt`` (model, optimizer, scheduler, epoch, phase).
        started: when ``cfg.budget``'s clock started (``time.monotonic()``); default now. The command line passes
            its process's start, so the budget covers what its user waits for.
    """
    if (RunDir(cfg.out).config().get("task") if resume else "multilabel" * is_multilabel_csv(cfg.data)):
        from headstart.training.train_multilabel import train_multilabel  # it builds on this module

        return train_multilabel(cfg, resume, started)
    t_start = time.time()
    _check_options(cfg)
    budget = Budget(cfg.budget, started or time.monotonic()) if cfg.budget is not None and not resume else None
    seed_everything(cfg.seed)
    run = RunDir(cfg.out)
    runtime = make_runtime(cfg.device, cfg.precision)
    data = _resumed_data(run) if resume else _new_data(run, cfg, runtime)
    if not data.splits.val:
        raise DataError(f"no validation images in {cfg.data}: add a val/ folder or more images per class "
                        "(each class needs at least two images to hold one out).")
    choice = budget_plan = None
    if not resume:  # a resumed run's config already names the backbone chosen and the strategy
        cfg, choice, budget_plan = _decide(cfg, data.splits, runtime, budget)
    plan = _plan(cfg, data, runtime)
    loaders = _loaders(data.splits, plan.preprocessing, cfg, runtime,
                       bn_trains=any(p.bn == "train" and p.fit == "sgd" for p in plan.strategy.phases))
    meta = {"model": cfg.model, "classes": data.splits.classes, "preprocessing": plan.preprocessing.to_dict()}
    if runtime.is_main:
        _announce(cfg, run, plan, data, runtime)
        if resume:  # epochs after the checkpoint were lost with the crash; their metrics lines go too
            run.keep_metrics_until(data.resume_state["fit_state"]["global_epoch"])
        else:
            _record_start(run, cfg, plan, data.splits, runtime, choice, budget_plan)
    weights = class_weights([y for _, y in data.splits.train], len(data.splits.classes))
    # A head fitted on features sees every image once, not sampled: both --balance options weight its loss.
    probe = ProbeOptions(cfg.head, plan.preprocessing, class_weights=weights if cfg.balance != "none" else None,
                         known_hashes=data.splits.hashes)
    tensorboard = _tensorboard(cfg, run, data) if runtime.is_main else None
    state = _fit(cfg, run, plan, data, loaders, probe, weights, runtime, meta, tensorboard,
                 budget_plan["clock"] if budget_plan else None)
    barrier()
    if not runtime.is_main:
        return {}
    if runtime.world_size == 1:  # what an epoch took here, for the next --budget's plan
        observe_epochs(run.metrics(), cfg.model, plan.preprocessing.crop, runtime, len(data.splits.train),
                       [p for p in plan.strategy.phases if p.fit != "features"])
    summary = _finish(cfg, run, plan, data, state, loaders, probe, runtime, meta)
    summary["seconds"] = time.time() - t_start
    if budget_plan:
        summary["budget"] = _budget_outcome(budget_plan, state, summary)
    run.write_json(run.SUMMARY, summary)
    if tensorboard is not None:
        tensorboard.close(summary, run.read_json(run.TEST_METRICS))
    if cfg.report:
        _report(run, plan, summary, replace(runtime, rank=0, world_size=1), data.splits.hashes)
    if budget_plan:
        _budget_spent(run, summary, budget)
    return summary


def _budget_spent(run: RunDir, summary: dict, budget: Budget) -> None:
    """The whole command's time against ``--budget`` (its imports and the report included), in the summary."""
    summary["budget"]["spent_s"] = round(budget.spent(), 1)
    summary["budget"]["within"] = summary["budget"]["spent_s"] <= budget.seconds
    run.write_json(run.SUMMARY, summary)
    log(f"budget: {summary['budget']['spent_s']:.0f} s of {budget.seconds:.0f} s spent; shipped: "
        f"{summary['budget']['shipped']}")


def _budget_outcome(plan: dict, state: FitState, summary: dict) -> dict:
    """What ``--budget`` planned and what happened: which phase's weights ship (validation chose them), whether the
    deadline ended fine-tuning early."""
    return {**{k: v for k, v in plan.items() if k != "clock"}, "stopped_by_budget": state.stopped_by_budget,
            "shipped": f"the {summary['best_phase']} phase's weights (lowest calibrated validation loss)"}


def _tensorboard(cfg: TrainConfig, run: RunDir, data: _Data):
    """TensorBoard's writer when asked for; a resumed run drops the events of the epochs it trains again."""
    if not cfg.tensorboard:
        return None
    resumed = data.resume_state["fit_state"]["global_epoch"] if data.resume_state else None
    return TensorBoardLogger(run / run.TENSORBOARD, purge_step=resumed + 1 if resumed is not None else None)


def _report(run: RunDir, plan: _Plan, summary: dict, alone: Runtime, known_hashes: KnownHashes) -> None:
    """``report.html``; the trained model stands even if the page cannot be made (it says why, once). Its top
    losses take a frozen backbone's features from the cache; a trained backbone predicts at most 500 held-out
    images again for them (``headstart report RUN`` looks at up to 2,000). The model in memory is used, on rank 0
    alone (under torchrun the other ranks have returned)."""
    t0 = time.time()
    frozen, config = summary["frozen_backbone"], run.config()
    loaded = LoadedRun(plan.model, run.classes(), plan.preprocessing, config, alone, run.path,
                       summary["temperature"], frozen_backbone=frozen, known_hashes=known_hashes)
    try:
        path = write_report(run.path, max_images=2000 if frozen else 500, loaded=loaded,
                            heatmaps=config.get("heatmaps", True))
        log(f"report: {path} ({time.time() - t0:.0f} s)")
    except (HeadstartError, OSError) as exc:
        log(f"could not write the report ({exc}); the run is complete. Try `headstart report {run.path}`.")
