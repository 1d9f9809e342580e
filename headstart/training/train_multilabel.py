"""``headstart train`` on a multi-label CSV: the steps of :func:`headstart.training.train.train`, with the multi-label
pieces in place of the single-label ones.

The same machinery runs: the file check and leak-proof splits (copies stay on one side; a copy whose label set
differs is a label conflict), the strategies and their phases, the loop (mixed precision, channels-last, DDP,
checkpoints, resume, early stopping), the feature cache. What differs is the task, recorded in ``config.yaml``
(``task: multilabel``), ``split.json``, ``summary.json`` and the shipped weights' header, which every later command
reads: the loss (:mod:`headstart.training.multilabel`), the decisions chosen on validation (a temperature and a
threshold per label, :mod:`headstart.predict.multilabel`) and the figures (:mod:`headstart.evaluation.multilabel`).
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from headstart.core.distributed import barrier
from headstart.core.errors import DataError, UsageError
from headstart.core.runtime import Runtime, make_runtime, seed_everything
from headstart.data.leakage import drop_leaked, duplicate_groups, fingerprints
from headstart.data.multilabel import (
    MultiLabelSplits,
    check_multilabel,
    discover_multilabel,
    iterative_split,
    label_findings,
)
from headstart.data.rundir import RunDir, shipped_backbone_is_frozen
from headstart.evaluation.multilabel import multilabel_metrics
from headstart.features.extract import cache_key
from headstart.predict.multilabel import Decision, choose_thresholds, fit_temperatures, sigmoid
from headstart.training.budget import Budget
from headstart.training.config import TrainConfig
from headstart.training.loop import FitState, fit
from headstart.training.multilabel import MultiLabelObjective, MultiLabelProbe, positive_weights
from headstart.training.train import (
    _budget_outcome,
    _budget_spent,
    _check_options,
    _checkpointer,
    _Data,
    _loaders,
    _logits,
    _phase_figures,
    _Plan,
    _plan,
    _pretrained_backbone,
    _record_start,
    _report,
    _shipped_record,
    leakage_counts,
    log,
)
from headstart.training.train import (
    _decide as _decide_backbone_and_budget,
)
from headstart.training.train import (
    _new_data as _new_run_data,
)

TASK = "multilabel"


def _refuse_single_label_options(cfg: TrainConfig) -> None:
    """Options that mean something for one label per image only, refused in one sentence each."""
    for name, on in (("--mixup", cfg.mixup), ("--cutmix", cfg.cutmix), ("--label-smoothing", cfg.label_smoothing)):
        if on:
            raise UsageError(f"{name} is for single-label data; leave it out for a multi-label CSV.")
    if cfg.balance == "sampler":
        raise UsageError("--balance sampler draws classes equally often, which an image with several labels cannot "
                         "be; use --balance weights (a positive weight per label) for a multi-label CSV.")
    if cfg.head != "logreg":
        raise UsageError(f"--head {cfg.head} is for single-label data; a multi-label probe fits one logistic "
                         "regression per label (leave out --head).")


def check_and_split_multilabel(splits: MultiLabelSplits, cfg: TrainConfig) -> tuple[MultiLabelSplits, list, dict,
                                                                                      dict]:
    """``train``'s check for multi-label data: unusable files and CSV rows left out (each said), copies kept on one
    side of a validation split headstart made, held-out copies of training images left out. Returns what
    :func:`headstart.training.train.check_and_split` returns."""
    report = check_multilabel(splits, cfg.data, duplicates=cfg.duplicates,
                              **({"max_pixels": cfg.max_pixels} if cfg.max_pixels else {}))
    bad = report.bad_files()
    for path, reason in bad:
        log(f"skipping {path}: {reason}")
    for issue in report.issues:
        if issue.severity == "warning" or issue.kind == "label-unused":
            log(f"data: {issue.message}")
    dropped = {p for p, _ in bad}
    splits = replace(splits, **{n: [s for s in getattr(splits, n) if s[0] not in dropped]
                                for n in ("train", "val", "test")})
    groups = duplicate_groups(report.facts, cfg.duplicates)
    leakage = {"duplicates": cfg.duplicates, "duplicate_groups": len(groups), "regrouped": False,
               "kept": cfg.keep_leaked, "excluded": {"val": [], "test": []}, "test_copies_of_val": {}}
    if splits.val_made and groups:
        ids = {p: k for k, g in enumerate(groups) for p in g}
        train, val = {p for p, _ in splits.train}, {p for p, _ in splits.val}
        if any(train.intersection(g) and val.intersection(g) for g in groups):
            keep, held = iterative_split(splits.train + splits.val, cfg.val_fraction, cfg.seed, ids)
            splits = replace(splits, train=keep, val=held, layout=f"{splits.layout}, {len(groups)} group(s) of "
                                                                  "duplicates kept on one side")
            leakage["regrouped"] = True
    if not cfg.keep_leaked:
        kept, record = drop_leaked(splits.as_sets(), report.facts, cfg.duplicates)
        splits = splits.keep(kept)
        leakage["excluded"] = {k: record[k] for k in ("val", "test")}
        leakage.update({k: record[k] for k in ("copy_of", "label_conflicts", "removed_share")})
        if n := sum(len(record[k]) for k in ("val", "test")):
            log(f"left out {n} validation/test image(s) that are copies of a training image (leakage.json)")
    if not splits.train:
        raise DataError(f"no usable training images in {cfg.data}; `headstart check {cfg.data}` says why.")
    splits = replace(splits, hashes=report.known_hashes())
    prints = {**fingerprints(report.facts, [p for p, _ in splits.train], "train"),
              **fingerprints(report.facts, [p for p, _ in splits.val], "val")}
    return splits, bad, leakage, {"fitted_on": ["train"], "images": prints}


def _new_data(run: RunDir, cfg: TrainConfig, runtime: Runtime) -> _Data:
    found = discover_multilabel(cfg.data, cfg.label_delimiter, cfg.val_fraction, cfg.seed)
    return _new_run_data(run, cfg, runtime, found, check_and_split_multilabel)


def _decide(logits: np.ndarray, y: np.ndarray, labels: list[str], fixed: float | None) -> tuple[Decision, dict]:
    """The temperatures and thresholds chosen on the validation images, and the record of how."""
    temperatures = fit_temperatures(logits, y)
    scores = sigmoid(logits / np.asarray(temperatures))
    thresholds, source = choose_thresholds(scores, y, fixed)
    decision = Decision(labels, temperatures, thresholds)
    missing = [labels[j] for j in np.flatnonzero(y.sum(0) == 0)]
    record = {**decision.to_dict(), "threshold_source": source,
              "temperature_source": f"one per label, fitted on the {len(y)} validation images",
              "labels_without_validation_positives": missing}
    if missing and fixed is None:
        log(f"no validation image shows {', '.join(missing)}: their thresholds stay at 0.5 (add validation images "
            "that show them)")
    return decision, record


def _finish(cfg: TrainConfig, run: RunDir, plan: _Plan, data: _Data, state: FitState, loaders: dict,
            runtime: Runtime, meta: dict) -> dict:
    alone = replace(runtime, rank=0, world_size=1)
    model, splits = plan.model, data.splits
    model.load_state_dict(run.weights(run.BEST))
    records = run.metrics()
    shipped = _shipped_record(records, state, plan.strategy, run)
    summary = {"task": TASK, "strategy": plan.strategy.name, "model": cfg.model, "best_epoch": state.best_global_epoch,
               "best_phase": shipped["phase"], "selection": "validation loss after a temperature per label",
               "best_val_loss": state.best_val_loss, "phases": _phase_figures(records),
               "trainable_params": shipped["trainable_params"], "train_images": len(splits.train),
               "val_images": len(splits.val), "skipped_files": len(data.bad), "world_size": runtime.world_size,
               "leakage": leakage_counts(data.leakage),
               "refit": None, "refit_note": "multi-label heads are not refitted: validation chose their thresholds"}
    frozen = summary["frozen_backbone"] = shipped_backbone_is_frozen(run.config(), summary)
    if frozen:
        summary["feature_key"] = cache_key(model, plan.preprocessing, alone)
    pre = plan.preprocessing if frozen else None
    logits, y = _logits(model, loaders["val_all"], alone, pre, "calibrate", splits.hashes)
    decision, summary["decision"] = _decide(logits.numpy(), y.numpy(), splits.labels, cfg.threshold)
    val = multilabel_metrics(y.numpy(), decision.scores(logits.numpy()[None]), decision.thresholds, splits.labels)
    summary.update({"val_map": val["map"], "val_exact_match": val["exact_match"], "val_f1_micro": val["f1_micro"],
                    "temperature": 1.0})
    run.save_weights(run.BEST, model, {**meta, "epoch": state.best_global_epoch, "decision": decision.to_dict()})
    if splits.test:
        summary.update(_test(model, splits, plan, cfg, alone, decision, run, frozen))
    return summary


def _test(model, splits: MultiLabelSplits, plan: _Plan, cfg: TrainConfig, runtime: Runtime, decision: Decision,
          run: RunDir, frozen: bool) -> dict:
    from headstart.data.dataset import ImageFiles, make_loader
    from headstart.data.transforms import eval_transform

    loader = make_loader(ImageFiles(splits.test, eval_transform(plan.preprocessing)), cfg.batch_size * 2,
                         shuffle=False, workers=cfg.workers)
    logits, y = _logits(model, loader, runtime, plan.preprocessing if frozen else None, "test", splits.hashes)
    metrics = multilabel_metrics(y.numpy(), decision.scores(logits.numpy()[None]), decision.thresholds, splits.labels)
    run.write_json(run.TEST_METRICS, metrics)
    return {f"test_{k}": metrics[k] for k in ("map", "map_micro", "exact_match", "hamming_loss", "f1_micro")}


def train_multilabel(cfg: TrainConfig, resume: bool = False, started: float | None = None) -> dict:
    """Trains one multi-label model as ``cfg`` says (``cfg.data``: a multi-label CSV) and returns its summary.
    ``--choose`` picks the backbone (:func:`headstart.training.choose.choose_backbone`, scored with the per-label
    probe) and ``--budget`` plans and stops the run, as for a single-label run
    (:func:`headstart.training.train.train`)."""
    t_start = time.time()
    _check_options(cfg)
    _refuse_single_label_options(cfg)
    budget = Budget(cfg.budget, started or time.monotonic()) if cfg.budget is not None and not resume else None
    seed_everything(cfg.seed)
    run = RunDir(cfg.out)
    runtime = make_runtime(cfg.device, cfg.precision)
    data = _Data(run.split(), run.skipped(), run.read_json(run.LEAKAGE, {}), run.resume_state()) if resume \
        else _new_data(run, cfg, runtime)
    if not data.splits.val:
        raise DataError(f"no validation images in {cfg.data}: add rows with split 'val', or more rows.")
    choice = budget_plan = None
    if (budget is not None or cfg.choose) and not resume:  # the backbone; the strategy and epochs the budget buys
        cfg, choice, budget_plan = _decide_backbone_and_budget(cfg, data.splits, runtime, budget)
    plan = _plan(cfg, data, runtime)
    loaders = _loaders(data.splits, plan.preprocessing, cfg, runtime,
                       bn_trains=any(p.bn == "train" and p.fit == "sgd" for p in plan.strategy.phases))
    meta = {"model": cfg.model, "classes": data.splits.labels, "preprocessing": plan.preprocessing.to_dict(),
            "task": TASK}
    if runtime.is_main:
        _announce(cfg, plan, data, runtime)
        if resume:
            run.keep_metrics_until(data.resume_state["fit_state"]["global_epoch"])
        else:
            _record_start(run, cfg, plan, data.splits, runtime, choice=choice, budget=budget_plan)
            run.write_config({**run.config(), "task": TASK})
    y_train = np.array([y for _, y in data.splits.train])
    objective = MultiLabelObjective(positive_weights(y_train, cfg.balance == "weights"))
    probe = MultiLabelProbe(plan.preprocessing, data.splits.hashes)
    state = fit(plan.model, plan.strategy, loaders, runtime, patience=cfg.patience, seed=cfg.seed,
                resume=data.resume_state, on_epoch=_checkpointer(run, plan.model, meta) if runtime.is_main else None,
                probe=probe, objective=objective, budget=budget_plan["clock"] if budget_plan else None,
                l2sp_reference=_pretrained_backbone(cfg, len(data.splits.labels)) if resume and cfg.l2sp else None)
    barrier()
    if not runtime.is_main:
        return {}
    summary = _finish(cfg, run, plan, data, state, loaders, runtime, meta)
    summary["pos_weight"] = objective.pos_weight.tolist() if objective.pos_weight is not None else None
    summary["seconds"] = time.time() - t_start
    if budget_plan:
        summary["budget"] = _budget_outcome(budget_plan, state, summary)
    run.write_json(run.SUMMARY, summary)
    if cfg.report:
        _report(run, plan, summary, replace(runtime, rank=0, world_size=1), data.splits.hashes)
    if budget_plan:
        _budget_spent(run, summary, budget)
    return summary


def _announce(cfg: TrainConfig, plan: _Plan, data: _Data, runtime: Runtime) -> None:
    splits = data.splits
    log(f"{cfg.model} ({plan.model.weights_source}) on {runtime.describe()}"
        f"{f' x {runtime.world_size} processes' if runtime.world_size > 1 else ''}; multi-label: {len(splits.labels)} "
        f"labels, {len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test images; strategy "
        f"{plan.strategy.name}")
    if plan.choice:
        log(f"auto: {plan.choice.reason}")
    for severity, _, message in label_findings(splits):
        if severity != "error":
            log(f"data: {message}")
