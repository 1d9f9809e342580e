"""Calibrated scores: one temperature fitted on validation, expected calibration error, a reliability diagram.

Modern networks are over-confident: a fine-tuned model that says 0.99 is right far less than 99% of the time
(Guo et al. 2017, "On Calibration of Modern Neural Networks"). Users in medicine and industry threshold these
scores, so every run fits a temperature T on its validation images (the softmax of ``logits / T``; one number, so
the predicted class never changes) and ``predict`` and ``evaluate`` use it. A head refitted on train + validation
(:func:`headstart.training.probe.refit_linear_probe`) gets a cross-fitted T instead: fitted the same way, on the
out-of-fold logits of heads refitted without each fold.

The same fit puts phases on equal footing when a run chooses which weights to ship: a logistic-regression probe is
calibrated by construction, a fine-tuned network is not, so comparing their raw validation losses favours the probe
even when the network is more accurate. Comparing the losses after each has had its own best temperature
(:func:`calibrated_nll`) compares what they know, not how confidently they say it.

The temperature is found on a grid of log T followed by a finer grid around the best point, which needs only sums
of per-image losses: under DDP each rank sums its shard and one all-reduce per grid gives every rank the same T.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch  # torch: a cached evaluate scores without it

# torch is imported by the functions that fit: the scores of an evaluation (ECE, reliability) are numpy, and an
# ``evaluate`` answered from cached features never imports torch (four seconds on a small machine).

T_MIN, T_MAX = 0.05, 20.0
BINS = 15


def _nll_sums(logits: torch.Tensor, labels: torch.Tensor, temperatures: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of ``logits / T`` for each T (float64)."""
    import torch  # torch: a cached evaluate scores without it
    import torch.nn.functional as F  # torch: a cached evaluate scores without it

    z = logits.double()
    y = labels.long()
    out = torch.empty(len(temperatures), dtype=torch.float64)
    for i, t in enumerate(temperatures.tolist()):
        out[i] = F.cross_entropy(z / t, y, reduction="sum") if len(y) else 0.0
    return out


def fit_temperature(logits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray,
                    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[float, float]:
    """The temperature that minimises the mean validation cross-entropy, and that mean.

    Args:
        logits: (n, classes) raw logits of the validation images (this rank's shard under DDP).
        labels: (n,) class indices.
        reduce: sums a tensor across ranks (``all_reduce``), or None on one process.

    Returns:
        ``(T, mean loss at T)``; ``(1.0, nan)`` when there are no images.
    """
    import torch  # torch: a cached evaluate scores without it

    logits, labels = torch.as_tensor(logits), torch.as_tensor(labels)
    reduce = reduce or (lambda t: t)
    n = float(reduce(torch.tensor([float(len(labels))], dtype=torch.float64))[0])
    if n == 0:
        return 1.0, math.nan
    bounds = lo, hi = math.log(T_MIN), math.log(T_MAX)
    best = 0.0
    for points in (61, 41):  # 0.1 apart in log T, then 0.005 apart around the best
        grid = torch.linspace(lo, hi, points, dtype=torch.float64)
        sums = reduce(_nll_sums(logits, labels, grid.exp()))
        k = int(torch.argmin(sums))
        best, loss = float(grid[k]), float(sums[k]) / n
        step = float(grid[1] - grid[0])
        lo, hi = max(bounds[0], best - step), min(bounds[1], best + step)
    return math.exp(best), loss


def run_temperature(logits, labels) -> float:
    """The temperature a run ships: :func:`fit_temperature`'s, except when every validation image is classified
    correctly. Then any sharper temperature lowers the loss, the fit runs to its bound and would make every score
    1.0; nothing can be estimated from such a validation set, so the scores stay as the model gives them (T = 1)."""
    import torch  # torch: a cached evaluate scores without it

    logits, labels = torch.as_tensor(logits), torch.as_tensor(labels)
    if len(labels) == 0 or bool((logits.argmax(1) == labels).all()):
        return 1.0
    return fit_temperature(logits, labels)[0]


def calibrated_nll(logits, labels, reduce=None) -> float:
    """Validation cross-entropy after the best temperature: the fair figure for choosing between models."""
    return fit_temperature(logits, labels, reduce)[1]


def selection_loss(logits, labels, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) \
        -> tuple[float, float, bool]:
    """The figure that chooses between epochs and phases: ``(T, loss, every image right)``.

    The validation loss after the best temperature (:func:`fit_temperature`), except when every validation image is
    classified correctly: then the fit runs to its bound ``T_MIN`` and the loss is the margins times 1 / T_MIN, a
    figure of how sharp the model is, not of what it knows. Then it is the raw loss (T = 1), as for
    :func:`run_temperature`. ``reduce`` sums across ranks (DDP), so every rank takes the same branch.
    """
    import torch  # torch: a cached evaluate scores without it

    logits, labels = torch.as_tensor(logits), torch.as_tensor(labels)
    reduce = reduce or (lambda t: t)
    wrong = int(logits.argmax(1).ne(labels).sum()) if len(labels) else 0
    n, wrong = (int(v) for v in reduce(torch.tensor([float(len(labels)), float(wrong)], dtype=torch.float64)))
    if n and not wrong:
        loss = reduce(torch.tensor([float(_nll_sums(logits, labels, torch.ones(1))[0])], dtype=torch.float64))
        return 1.0, float(loss[0]) / n, True
    return (*fit_temperature(logits, labels, reduce), False)


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> dict:
    """Confidence against accuracy in equal-width bins of top-1 confidence (a reliability diagram's data).

    Returns ``{"edges", "confidence", "accuracy", "count", "ece"}``; bins without images hold None.
    ECE (expected calibration error, Naeini et al. 2015) is ``sum_b n_b / n * |acc_b - conf_b|``.
    """
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    conf, pred = probs.max(1), probs.argmax(1)
    correct = (pred == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Right-closed bins, the first also holding 0: a confidence of exactly 1.0 lands in the last bin.
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    out = {"edges": edges.round(6).tolist(), "confidence": [], "accuracy": [], "count": []}
    ece = 0.0
    for b in range(bins):
        mask = which == b
        k = int(mask.sum())
        out["count"].append(k)
        if k:
            c, a = float(conf[mask].mean()), float(correct[mask].mean())
            out["confidence"].append(round(c, 6))
            out["accuracy"].append(round(a, 6))
            ece += k / len(labels) * abs(a - c)
        else:
            out["confidence"].append(None)
            out["accuracy"].append(None)
    out["ece"] = float(ece) if len(labels) else math.nan
    return out


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    return reliability(probs, labels, bins)["ece"]


def softmax(logits, temperature: float = 1.0) -> np.ndarray:
    """The softmax of ``logits / temperature`` over the last axis, in float64 (numpy; a tensor is accepted)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = np.exp(z - z.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def calibration_summary(logits, labels, temperature: float, bins: int = BINS) -> dict:
    """ECE and cross-entropy before (T = 1) and after the run's temperature, with both reliability diagrams."""
    return compare_calibration(softmax(logits), softmax(logits, temperature), labels, temperature, bins)


def compare_calibration(probs_before, probs_after, labels, temperature: float, bins: int = BINS) -> dict:
    """:func:`calibration_summary` from probabilities (e.g. averaged over test-time augmentation views)."""
    labels = np.asarray(labels)
    before, after = reliability(probs_before, labels, bins), reliability(probs_after, labels, bins)

    def nll(p) -> float:
        p = np.asarray(p, dtype=np.float64)
        return float(-np.log(np.clip(p[np.arange(len(labels)), labels], 1e-12, None)).mean()) if len(labels) \
            else math.nan

    return {"temperature": temperature, "images": int(len(labels)),
            "ece_before": before["ece"], "ece_after": after["ece"],
            "nll_before": nll(probs_before), "nll_after": nll(probs_after),
            "reliability_before": before, "reliability_after": after}
