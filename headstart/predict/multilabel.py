"""Multi-label decisions: a calibrated score per label (sigmoid of the logit over that label's temperature) and a
threshold per label, both chosen on the validation images, never on the test images.

A softmax shares one unit of probability among the classes; with several labels per image each label is its own
yes/no question, so each gets its own sigmoid. Its temperature (one per label, fitted by minimising the binary
cross-entropy on validation) fixes over- or under-confidence without changing which images rank higher. The
threshold that turns a score into a "yes" is the one with the best F1 on validation (Lipton et al. 2014: a fixed 0.5
is rarely F1-optimal for rare labels), or the one the user names (``--threshold 0.5``). The pair travels with the
weights (``best.safetensors``' header), into ``summary.json`` and an export's metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

TASK = "multilabel"
T_BOUNDS = (0.05, 20.0)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


def bce(logits: np.ndarray, y: np.ndarray, axis: int | None = None):
    """Mean binary cross-entropy over every image and label (numerically stable); ``axis=1``: each image's, mean
    over its labels."""
    z = np.asarray(logits, np.float64)
    loss = np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z))), axis=axis)
    return float(loss) if axis is None else loss


def fit_temperatures(logits: np.ndarray, y: np.ndarray) -> list[float]:
    """One temperature per label minimising its validation binary cross-entropy; 1 where a label has no positive
    or no negative image there (nothing to calibrate against)."""
    from scipy.optimize import minimize_scalar

    out = []
    for j in range(logits.shape[1]):
        if y[:, j].min() == y[:, j].max():
            out.append(1.0)
            continue
        res = minimize_scalar(lambda t: bce(logits[:, j] / t, y[:, j]), bounds=T_BOUNDS, method="bounded")
        out.append(float(res.x))
    return out


def best_f1_threshold(scores: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """``(threshold, F1)`` maximising F1 for one label: each candidate is the midpoint between two neighbouring
    distinct scores; 0.5 with F1 0 when the label has no positive image."""
    if y.sum() == 0:
        return 0.5, 0.0
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], y[order]
    tp = np.cumsum(t)
    k = np.arange(1, len(s) + 1)
    f1 = 2 * tp / (k + t.sum())
    last = np.r_[s[1:] != s[:-1], True]  # only cut between distinct scores
    f1 = np.where(last, f1, -1)
    i = int(np.argmax(f1))
    below = s[i + 1] if i + 1 < len(s) else 0.0
    return float((s[i] + below) / 2), float(f1[i])


def choose_thresholds(scores: np.ndarray, y: np.ndarray, fixed: float | None = None) -> tuple[list[float], str]:
    """A threshold per label: ``fixed`` for every label, or each label's F1-optimal one on these (validation)
    scores. Returns them and how they were chosen."""
    if fixed is not None:
        return [float(fixed)] * scores.shape[1], f"named by the user: {fixed:g} for every label"
    chosen = [best_f1_threshold(scores[:, j], y[:, j])[0] for j in range(scores.shape[1])]
    return chosen, f"F1-optimal per label on the {len(y)} validation images"


@dataclass(frozen=True)
class Decision:
    """How a multi-label run turns logits into labels: ``scores`` are sigmoid(logit / temperature) per label
    (averaged over views), a label is given when its score reaches its threshold."""

    labels: list[str]
    temperatures: list[float]
    thresholds: list[float]

    task = TASK

    def scores(self, view_logits: np.ndarray) -> np.ndarray:
        """``(views, n, labels)`` logits -> ``(n, labels)`` calibrated scores."""
        return sigmoid(np.asarray(view_logits, np.float64) / np.asarray(self.temperatures)).mean(0)

    def given(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) >= np.asarray(self.thresholds)

    def record(self, row: Sequence[float]) -> dict[str, Any]:
        """One image's answer: ``labels`` (those at or above their thresholds, best first), with their ``scores``,
        and every label's score (``all_scores``)."""
        row = np.asarray(row, np.float64)
        chosen = [j for j in np.argsort(-row, kind="stable") if row[j] >= self.thresholds[j]]
        return {"labels": [self.labels[j] for j in chosen], "scores": [round(float(row[j]), 6) for j in chosen],
                "all_scores": {name: round(float(v), 6) for name, v in zip(self.labels, row)}}

    def to_dict(self) -> dict:
        return {"task": TASK, "temperatures": self.temperatures, "thresholds": self.thresholds}

    @classmethod
    def of(cls, labels: list[str], record: dict | None) -> "Decision | None":
        """The decision a record (weights header, export metadata) holds, or None for a single-label one."""
        if not record or record.get("task") != TASK:
            return None
        return cls(list(labels), [float(t) for t in record["temperatures"]], [float(t) for t in record["thresholds"]])
