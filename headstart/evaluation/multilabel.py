"""Multi-label figures: mAP (macro and micro), per-label precision/recall/F1/AP at the run's thresholds, the
exact-match ratio, Hamming loss and label cardinality; and ``evaluate`` of a multi-label run on a labelled CSV.

mAP ranks images per label and needs no threshold (scikit-learn's ``average_precision_score``); the macro mean is
over labels with at least one positive image among those scored (a label with none has no AP). The thresholded
figures use the thresholds the run chose on validation: nothing here is tuned on the images it scores.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from headstart.core.errors import DataError, PathNotFoundError, UsageError
from headstart.data.check import inspect_files, known_hashes
from headstart.data.multilabel import discover_multilabel, is_multilabel_csv, multi_hot
from headstart.data.rundir import RunDir
from headstart.evaluation.metrics import _copies_of_fitted_images
from headstart.predict.base import Predictor

TOP_CONFUSED = 10


def multilabel_metrics(y: np.ndarray, scores: np.ndarray, thresholds, labels: list[str]) -> dict:
    """Every figure of a multi-label evaluation, JSON-ready.

    Args:
        y: ``(n, labels)`` 0/1 truth.
        scores: ``(n, labels)`` calibrated scores.
        thresholds: one per label; a label is given when its score reaches it.
        labels: the label names.
    """
    from sklearn.metrics import average_precision_score, precision_recall_fscore_support

    y = np.asarray(y, np.int64)
    scores = np.asarray(scores, np.float64)
    pred = (scores >= np.asarray(thresholds)).astype(np.int64)
    scored = y.sum(0) > 0
    ap = np.full(len(labels), np.nan)
    for j in np.flatnonzero(scored):
        ap[j] = average_precision_score(y[:, j], scores[:, j])
    p, r, f, support = precision_recall_fscore_support(y, pred, average=None, zero_division=0,
                                                       labels=list(range(len(labels))))
    per_label = {name: {"precision": float(p[j]), "recall": float(r[j]), "f1": float(f[j]), "support": int(support[j]),
                        "ap": None if np.isnan(ap[j]) else float(ap[j]), "threshold": float(thresholds[j]),
                        "predicted": int(pred[:, j].sum())}
                 for j, name in enumerate(labels)}
    micro = float(average_precision_score(y[:, scored], scores[:, scored], average="micro")) if scored.any() else None
    return {"task": "multilabel", "num_images": int(len(y)),
            "map": float(np.nanmean(ap)) if scored.any() else None, "map_micro": micro,
            "labels_without_positives": [labels[j] for j in np.flatnonzero(~scored)],
            "exact_match": float((pred == y).all(1).mean()) if len(y) else None,
            "hamming_loss": float((pred != y).mean()) if len(y) else None,
            "label_cardinality": float(y.sum(1).mean()) if len(y) else None,
            "predicted_cardinality": float(pred.sum(1).mean()) if len(y) else None,
            "f1_macro": float(f.mean()), "f1_micro": _micro_f1(y, pred),
            "per_class": per_label, "most_missed": _most_missed(per_label),
            "confused": _confused(y, pred, labels)}


def _micro_f1(y: np.ndarray, pred: np.ndarray) -> float:
    tp, fp, fn = (pred & y).sum(), (pred & (1 - y)).sum(), ((1 - pred) & y).sum()
    return float(2 * tp / max(1, 2 * tp + fp + fn))


def _most_missed(per_label: dict) -> list[dict]:
    """Labels with positives, lowest recall first: the ones the model most often fails to give."""
    rows = [{"label": k, "recall": v["recall"], "missed": round(v["support"] * (1 - v["recall"])),
             "support": v["support"]} for k, v in per_label.items() if v["support"]]
    return sorted(rows, key=lambda r: (r["recall"], -r["support"]))[:TOP_CONFUSED]


def _confused(y: np.ndarray, pred: np.ndarray, labels: list[str]) -> list[dict]:
    """Pairs (a label missed, a label given wrongly) seen together in the same image, most frequent first: the
    labels the model takes for one another."""
    pairs = Counter()
    for truth, guess in zip(y, pred):
        missed, wrong = np.flatnonzero(truth & (1 - guess)), np.flatnonzero(guess & (1 - truth))
        pairs.update((labels[a], labels[b]) for a in missed for b in wrong)
    return [{"missed": a, "given_instead": b, "images": n} for (a, b), n in pairs.most_common(TOP_CONFUSED)]


def evaluate_multilabel_run(run: Predictor, data: str | Path, batch_size: int = 64, workers: int | None = None,
                            tta: bool = False, keep_leaked: bool = False, duplicates: str = "near",
                            delimiter: str = ";") -> dict:
    """Scores a multi-label run on every image of a multi-label CSV (all its rows, whatever their ``split``), at
    the run's thresholds; images that copy one the run was fitted on are left out (``keep_leaked`` scores them).
    Writes ``RUN/evaluation.json``."""
    if not is_multilabel_csv(data):
        raise PathNotFoundError(f"{data} is not a multi-label CSV; pass a CSV with path and labels columns (or one "
                                f"0/1 column per label) for the run's labels ({', '.join(run.classes[:5])}...).")
    found = discover_multilabel(data, delimiter, val_fraction=0)
    unknown = sorted(set(found.labels) - set(run.classes))
    if unknown:
        raise DataError(f"{data} has labels the run was not trained on: {', '.join(unknown)}. The run knows: "
                        f"{', '.join(run.classes)}.")
    for problem in found.problems:
        print(f"skipping: {problem.message}" if problem.skip else problem.message, file=sys.stderr)
    samples = [(p, multi_hot(run.classes, [found.labels[j] for j, v in enumerate(y) if v]))
               for p, y in found.train + found.val + found.test]
    facts = inspect_files([p for p, _ in samples])
    bad = [(p, f.error.reason) for p, f in facts.items() if f.error is not None]
    samples = [s for s in samples if facts[s[0]].error is None]
    copies = _copies_of_fitted_images(run.path, {p: facts[p] for p, _ in samples}, duplicates)
    if copies and not keep_leaked:
        print(f"left out {len(copies)} image(s) that are copies of images {run.path} was fitted on (--keep-leaked "
              "scores them)", file=sys.stderr)
        samples = [s for s in samples if s[0] not in copies]
    if not samples:
        raise UsageError(f"no readable images in {data}" + (" that are not copies of training images." if copies
                                                            else "."))
    logits, positions, unreadable = run.view_logits([p for p, _ in samples], known_hashes(facts), tta, batch_size,
                                                    workers)
    y = np.array([samples[i][1] for i in positions], dtype=np.int64)
    metrics = multilabel_metrics(y, run.scores(logits), run.decision.thresholds, run.classes)
    metrics.update({"data": str(data), "tta": tta, "engine": run.engine, "duplicates": duplicates,
                    "skipped": [{"path": p, "reason": r} for p, r in bad + unreadable],
                    "leaked_excluded": 0 if keep_leaked else len(copies), "leaked": sorted(copies)})
    rundir = RunDir(run.path)
    if rundir.is_run():
        rundir.write_json(rundir.EVALUATION, json.loads(json.dumps(metrics)))
    return metrics
