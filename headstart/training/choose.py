"""The backbone for the data, chosen on the labelled images within a time budget (``train --choose``).

Every candidate is a backbone at a resolution. Each gets the same evidence: its frozen features of the training
and validation images (through the feature cache, so a second run costs nothing), the run's head fitted on them
(its settings chosen on validation as in a linear probe), then scored by **cross-validation over train +
validation**: each image scored by a head fitted without it (:func:`~headstart.training.heads.cross_fitted_logits`).
With ten validation images per class a single validation split cannot tell candidates 1-2 points apart
(docs/measurements, "Backbone candidates alone"); the folds use every label. The lowest
cross-validated log loss wins: ``--choose`` asks for accuracy. Beside each loss the table records how far it lies
above the lowest and the standard error of that paired difference (every candidate scores the same images in the
same folds), so a reader sees which differences are within the noise of so few labels. The test images are never
looked at.

Multi-label data (``train`` on a multi-label CSV) gets the same evidence with its own head and figures: one
logistic regression per label (:func:`~headstart.training.multilabel.fit_label_heads`, each label's C chosen on
validation), cross-fitted over train + validation with those Cs in folds stratified per label
(:func:`~headstart.training.multilabel.label_folds`); the criterion is each image's binary
cross-entropy, mean over its labels (lowest wins), with the macro mAP of the out-of-fold scores beside it.

A budget (seconds) is spent in order of estimated cost: each candidate's cost is its images over the extraction
speed measured on this machine (:func:`headstart.features.speed.throughput`, measured once and remembered). A
candidate whose estimate, with the run's finish after it (``finish``: calibration, test, report at that
candidate's speed), would pass the budget is skipped, and said so; when not even the cheapest fits, the command
says so before extracting anything. What the choice leaves of ``train --budget`` fine-tunes the winner
(:mod:`headstart.training.budget`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from headstart.core.errors import UsageError
from headstart.core.runtime import Runtime
from headstart.data.multilabel import TASK as MULTILABEL
from headstart.data.multilabel import MultiLabelSplits
from headstart.data.sources import DataSplits
from headstart.evaluation.multilabel import multilabel_metrics
from headstart.features.extract import extract_features
from headstart.features.speed import rate_to_plan
from headstart.predict.multilabel import bce, sigmoid
from headstart.training.heads import _threads_for, cross_fitted_logits, fit_head
from headstart.training.multilabel import cross_fitted_label_logits, fit_label_heads
from headstart.zoo.model import build_model
from headstart.zoo.registry import get_spec, list_specs
from headstart.zoo.weights import weights_available

LITES = [("efficientnet_lite0", 224), ("efficientnet_lite1", 240), ("efficientnet_lite2", 260)]
PRESETS = {  # the names are core.choices.CHOICE_PRESETS
    "fast": [("efficientnet_lite0", 128), ("efficientnet_lite0", 224)],
    "balanced": [("efficientnet_lite0", 128), *LITES],
    "best": [("efficientnet_lite0", 128), *LITES, ("efficientnet_lite1", 320), ("efficientnet_lite2", 320)],
}


@dataclass(frozen=True)
class Candidate:
    backbone: str
    size: int

    def __str__(self) -> str:
        return f"{self.backbone} @ {self.size} px"


def candidates(preset: str) -> list[Candidate]:
    """The preset's candidates whose weights are on this machine now, plus (``best``) every other registered
    backbone whose weights are already here (a torchvision or timm download in the cache), at its own size."""
    if preset not in PRESETS:
        raise UsageError(f"--choose must be one of {', '.join(PRESETS)}, got '{preset}'.")
    chosen = [Candidate(b, s) for b, s in PRESETS[preset] if weights_available(get_spec(b))]
    if preset == "best":
        named = {c.backbone for c in chosen}
        # headstart's own ResNets load torchvision's files into the same network: scored once, as torchvision's
        chosen += [Candidate(s.name, s.input_size) for s in list_specs()
                   if s.name not in named and s.sources and not s.name.startswith("hs_") and weights_available(s)]
    return chosen


def choose_backbone(splits: DataSplits | MultiLabelSplits, preset: str, runtime: Runtime, head: str = "logreg",
                    budget: float | None = None, seed: int = 0, log=print,
                    finish: Callable[[float], float] | None = None) -> dict:
    """Scores the preset's candidates on ``splits``' train + validation images and returns the choice: ``winner``
    (backbone, size), ``reason`` and ``candidates`` (one row each: cross-validated accuracy and loss, validation
    accuracy, seconds spent, or why it was skipped). Multi-label splits: the per-label probe, its loss the binary
    cross-entropy (mean over labels) and mAP in place of accuracy (``cv_map``, ``val_map``, ``val_loss``).

    ``finish(img_per_s)``: the seconds the run needs after training with a backbone of that speed (``--budget``
    reserves them): a candidate is scored only while, after it, the slowest finish among those scored still fits.

    Raises:
        UsageError: no candidate has its weights here, or none fits the budget.
    """
    multilabel = isinstance(splits, MultiLabelSplits)
    pool = candidates(preset)
    if not pool:
        raise UsageError(f"no candidate of --choose {preset} has its weights on this machine; see `headstart models`.")
    paths = [p for p, _ in splits.train] + [p for p, _ in splits.val]
    started, rows, losses = time.perf_counter(), [], {}
    rates = {c: rate_to_plan(c.backbone, c.size, runtime) for c in pool}
    costs = {c: len(paths) / rates[c] for c in pool}
    reserve = {c: finish(rates[c]) if finish else 0.0 for c in pool}
    if budget is not None and min(costs[c] + reserve[c] for c in pool) > budget:
        cheapest = min(pool, key=lambda c: costs[c] + reserve[c])
        raise UsageError(f"--budget is too short: {budget:.0f} s are left, and the cheapest candidate ({cheapest}) "
                         f"needs about {costs[cheapest] + reserve[cheapest]:.0f} s for {len(paths)} images and the "
                         "rest of the run on this machine; give more.")
    kept = 0.0  # the slowest finish among the candidates scored: the winner's is at most this
    for c in sorted(pool, key=costs.get):
        spent = time.perf_counter() - started
        if budget is not None and spent + costs[c] + max(kept, reserve[c]) > budget:
            rows.append({"backbone": c.backbone, "size": c.size, "estimated_s": round(costs[c], 1),
                         "skipped": f"over the budget ({spent:.0f} s spent, about {costs[c]:.0f} s more needed)"})
            log(f"  {c}: skipped, over the budget")
            continue
        t0, kept = time.perf_counter(), max(kept, reserve[c])
        scores, losses[(c.backbone, c.size)] = _score(c, splits, runtime, head, seed)
        row = {"backbone": c.backbone, "size": c.size, "estimated_s": round(costs[c], 1), **scores,
               "seconds": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        figure = f"mAP {_num(row['cv_map'])}" if "cv_map" in row else f"accuracy {row['cv_acc']:.3f}"
        log(f"  {c}: cross-validated {figure}, loss {row['cv_loss']:.3f} ({row['seconds']:.0f} s)")
    scored = [r for r in rows if "cv_loss" in r]
    lowest = min(scored, key=lambda r: r["cv_loss"])
    for r in scored:  # the paired difference to the lowest, and its standard error
        d = losses[(r["backbone"], r["size"])] - losses[(lowest["backbone"], lowest["size"])] \
            if len(losses[(r["backbone"], r["size"])]) == len(losses[(lowest["backbone"], lowest["size"])]) else None
        r["cv_loss_above_lowest"] = round(float(d.mean()), 4) if d is not None else None
        r["difference_se"] = round(float(d.std(ddof=1) / np.sqrt(len(d))), 4) if d is not None and len(d) > 1 else None
    best = lowest
    tied = [f"{r['backbone']} @ {r['size']} px" for r in scored
            if r is not best and r["difference_se"] is not None and r["cv_loss_above_lowest"] <= r["difference_se"]]
    loss = "log loss" if not multilabel else "log loss (binary cross-entropy, mean over labels)"
    reason = (f"the lowest cross-validated {loss}, {best['cv_loss']:.3f} ({best['folds']} folds over "
              f"{best['images']} train + validation images), of {len(scored)} candidate(s) scored"
              + (f"; within one standard error of it: {', '.join(tied)}" if tied else ""))
    return {"preset": preset, "budget_s": budget, "winner": {"backbone": best["backbone"], "size": best["size"]},
            "reason": reason, "candidates": rows, "seconds": round(time.perf_counter() - started, 1),
            **({"task": MULTILABEL} if multilabel else {})}


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _frozen_features(c: Candidate, splits: DataSplits | MultiLabelSplits,
                     runtime: Runtime) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The candidate's frozen features of the train and validation images (through the feature cache) and their
    labels (class indices, or 0/1 rows for multi-label splits)."""
    model = build_model(c.backbone, len(splits.classes), pretrained=True)
    pre = model.spec.preprocessing(image_size=c.size)
    parts = {}
    for name in ("train", "val"):
        samples = getattr(splits, name)
        feats = extract_features(model, [p for p, _ in samples], pre, runtime, desc=f"{c} {name}", verbose=False,
                                 known_hashes=splits.hashes)
        parts[name] = feats.array(), np.array([samples[i][1] for i in feats.positions], dtype=np.int64)
    return parts


def _score(c: Candidate, splits: DataSplits | MultiLabelSplits, runtime: Runtime, head: str,
           seed: int) -> tuple[dict, np.ndarray]:
    """The candidate's cross-validated accuracy and log loss and its validation accuracy, from frozen features; and
    each image's out-of-fold log loss (train then validation images, in order). Multi-label splits:
    :func:`_score_multilabel`."""
    if isinstance(splits, MultiLabelSplits):
        return _score_multilabel(c, splits, runtime, seed)
    (xt, yt), (xv, yv) = _frozen_features(c, splits, runtime).values()
    fitted = fit_head(head, xt, yt, xv, yv, len(splits.classes))
    x, y = np.concatenate([xt, xv]), np.concatenate([yt, yv])
    logits, folds = cross_fitted_logits(head, x, y, len(splits.classes), fitted.info, seed=seed)
    if logits is None:  # a class with one image: no fold can hold it out; validation alone decides
        logits, y, folds = fitted.logits(xv), yv, 0
    z = logits - logits.max(1, keepdims=True)
    nll = np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y]  # each image's log loss
    return {"cv_acc": round(float((logits.argmax(1) == y).mean()), 4), "cv_loss": round(float(nll.mean()), 4),
            "val_acc": round(float((fitted.logits(xv).argmax(1) == yv).mean()), 4), "folds": folds,
            "images": int(len(y))}, nll


def _score_multilabel(c: Candidate, splits: MultiLabelSplits, runtime: Runtime, seed: int) -> tuple[dict, np.ndarray]:
    """A multi-label candidate: the run's probe (one logistic regression per label, each C chosen on validation)
    cross-validated over train + validation. Its log loss is each image's binary cross-entropy, mean over the
    labels; mAP (macro) beside it, and both on validation for the head fitted on train."""
    (xt, yt), (xv, yv) = _frozen_features(c, splits, runtime).values()
    with _threads_for(xt.size):
        weight, bias, cs = fit_label_heads(xt, yt, xv, yv)
        x, y = np.concatenate([xt, xv]), np.concatenate([yt, yv])
        logits, folds = cross_fitted_label_logits(x, y, cs, seed=seed)
    val_logits = xv @ weight.T + bias
    if logits is None:  # fewer than two images: validation alone decides
        logits, y, folds = val_logits, yv, 0
    per_image = bce(logits, y, axis=1)

    def mean_ap(truth, z) -> float | None:
        found = multilabel_metrics(truth, sigmoid(z), [0.5] * len(splits.labels), splits.labels)["map"]
        return round(found, 4) if found is not None else None

    return {"cv_map": mean_ap(y, logits), "cv_loss": round(float(per_image.mean()), 4),
            "val_map": mean_ap(yv, val_logits), "val_loss": round(bce(val_logits, yv), 4), "folds": folds,
            "images": int(len(y))}, per_image
