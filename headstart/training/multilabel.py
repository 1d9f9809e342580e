"""What training optimises when an image has several labels: the objective the loop takes, and the head fitted on
cached features.

- Loss: binary cross-entropy on each label's logit (``BCEWithLogits``), with a per-label positive weight
  ``min(n_neg / n_pos, 10)`` when ``--balance weights`` is asked for or a label is rare (under a tenth of the images
  hold it), so a rare label's few positives are not drowned by its negatives; capped, since a weight of 100 makes the
  scores of that label useless as probabilities. (fastai and Keras use the plain loss by default.)
- Selection: every epoch is judged by its validation loss after one temperature per label is fitted to it, as the
  single-label loop judges its epochs after one temperature, so a calibrated probe and an over-confident network
  are compared on the same footing. Under DDP the ranks' validation logits are gathered first, so the temperatures
  and the figure are those of one process.
- Accuracy in the epoch lines is the share of right yes/no decisions at a score of 0.5 (1 - Hamming loss).
- Probe: one logistic regression per label on the standardised frozen features, each label's C chosen by its own
  validation loss (a rare label wants stronger regularisation than a common one); the heads stack into the model's
  ``nn.Linear``. No refit on train + validation: the thresholds and temperatures chosen on validation belong to the
  head validation saw.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from headstart.core.distributed import gather_objects
from headstart.core.hashing import KnownHashes
from headstart.core.preprocessing import Preprocessing
from headstart.core.runtime import Runtime
from headstart.data.multilabel import iterative_split
from headstart.predict.multilabel import bce, fit_temperatures
from headstart.training.heads import _standardiser, _threads_for, _unstandardise
from headstart.training.loop import predict_logits
from headstart.training.probe import _features

C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
RARE_SHARE = 0.1  # a label held by fewer images than this share gets a positive weight even without --balance
MAX_POS_WEIGHT = 10.0


def positive_weights(y: np.ndarray, balance: bool) -> torch.Tensor | None:
    """``n_neg / n_pos`` per label (at most 10; 1 for a label with no positive), for every label with ``balance``,
    else only for rare ones; None when no label needs one."""
    y = np.asarray(y, np.float64)
    pos = y.sum(0)
    ratio = np.where(pos > 0, (len(y) - pos) / np.maximum(pos, 1), 1.0)
    weight = np.clip(ratio, 1.0, MAX_POS_WEIGHT)
    if not balance:
        weight = np.where(pos < RARE_SHARE * len(y), weight, 1.0)
    return None if np.allclose(weight, 1.0) else torch.as_tensor(weight, dtype=torch.float32)


def calibrated_bce(logits: np.ndarray, y: np.ndarray) -> tuple[float, list[float]]:
    """Validation loss after one temperature per label, and the temperatures."""
    temperatures = fit_temperatures(logits, y)
    return bce(logits / np.asarray(temperatures), y), temperatures


@dataclass(frozen=True)
class MultiLabelObjective:
    """The loop's objective for multi-label runs: ``criterion``, ``correct`` and ``evaluate`` (the same figures
    under the same keys as the single-label ones)."""

    pos_weight: torch.Tensor | None = None

    def criterion(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        weight = self.pos_weight.to(logits.device) if self.pos_weight is not None else None
        return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), pos_weight=weight)

    def correct(self, logits: torch.Tensor, targets: torch.Tensor) -> float:
        """Images' shares of right decisions at 0.5, summed over the batch."""
        return ((logits.detach() > 0) == (targets > 0.5)).float().mean(1).sum().item()

    def evaluate(self, model, loader, runtime: Runtime, desc: str = "val") -> dict:
        logits, labels = predict_logits(model, loader, runtime, desc)
        # Every rank's validation logits together (n x labels floats: small), so that the temperatures, and with
        # them the figure that picks the best epoch, are the ones a single process would fit.
        shards = [s for s in gather_objects((logits.numpy(), labels.numpy())) if len(s[1])]
        if not shards:
            return {"loss": 0.0, "acc": 0.0, "loss_calibrated": 0.0, "temperature": 1.0, "all_correct": False}
        z = np.concatenate([s[0] for s in shards]).astype(np.float64)
        y = np.concatenate([s[1] for s in shards]).astype(np.float64)
        calibrated, temperatures = calibrated_bce(z, y)
        return {"loss": bce(z, y), "acc": float(((z > 0) == (y > 0.5)).mean()), "loss_calibrated": calibrated,
                "temperature": float(np.mean(temperatures)), "all_correct": False}


def fit_label_heads(x_train, y_train, x_val, y_val, grid=C_GRID,
                    fixed: list[float | None] | None = None) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """One standardised logistic regression per label, its C chosen by that label's validation loss (or ``fixed``,
    one C per label as this function chose them, None read as 1); a label with a single value in training gets a
    constant logit (its training log-odds, clipped). Returns the stacked weight, bias (on raw features) and the
    chosen Cs."""
    from sklearn.linear_model import LogisticRegression  # sklearn: 1.5 s to import, paid only by the runs that fit it

    mean, std = _standardiser(x_train)
    xt, xv = (x_train - mean) / std, (x_val - mean) / std
    coef, intercept, chosen = np.zeros((y_train.shape[1], xt.shape[1])), np.zeros(y_train.shape[1]), []
    for j in range(y_train.shape[1]):
        yt = y_train[:, j]
        if yt.min() == yt.max():
            p = np.clip(yt.mean(), 1e-3, 1 - 1e-3)
            intercept[j], chosen = np.log(p / (1 - p)), chosen + [None]
            continue
        clf, best = LogisticRegression(max_iter=1000, tol=1e-3, warm_start=True), None
        for c in [fixed[j] or 1.0] if fixed is not None else grid if len(y_val) else [1.0]:
            clf.set_params(C=c).fit(xt, yt)
            loss = bce(xv @ clf.coef_[0] + clf.intercept_[0], y_val[:, j]) if len(y_val) else 0.0
            if best is None or loss < best[0]:
                best = (loss, c, clf.coef_[0].copy(), clf.intercept_[0])
        _, c, coef[j], intercept[j] = best
        chosen.append(c)
    weight, bias = _unstandardise(coef, intercept, mean, std)
    return weight, bias, chosen


def label_folds(y: np.ndarray, folds: int, seed: int = 0) -> list[np.ndarray]:
    """``folds`` groups of row indices of ``y`` (0/1 per label), each label spread over them as evenly as its
    images allow: iterative stratification (:func:`headstart.data.multilabel.iterative_split`) takes a
    ``1 / (folds left)`` share of the rows left, fold after fold. Empty folds are dropped."""
    left = [(i, tuple(int(v) for v in row)) for i, row in enumerate(np.asarray(y))]
    out = []
    for f in range(folds - 1):
        left, held = iterative_split(left, 1 / (folds - f), seed + f)
        out.append(np.array([i for i, _ in held], dtype=np.int64))
    out.append(np.array([i for i, _ in left], dtype=np.int64))
    return [fold for fold in out if len(fold)]


def cross_fitted_label_logits(x, y, cs: list[float | None], folds: int = 5, seed: int = 0,
                              parts: list[np.ndarray] | None = None) -> tuple[np.ndarray | None, int]:
    """Out-of-fold logits of the per-label heads: each image scored by heads fitted on the other folds, each label
    at the C validation chose for it (``cs``, from :func:`fit_label_heads`). The folds are stratified per label
    (:func:`label_folds`, as single-label folds are per class; ``parts``: those folds, made already); a label absent
    from a fold's training part gets its constant logit there. ``(None, 0)`` with fewer than two images."""
    x, y = np.asarray(x, np.float32), np.asarray(y, np.float64)
    if parts is None:
        parts = label_folds(y, min(folds, len(y)), seed) if len(y) >= 2 else []
    if len(parts) < 2:
        return None, 0
    out = np.zeros(y.shape)
    for held in parts:
        train = np.setdiff1d(np.arange(len(y)), held)
        weight, bias, _ = fit_label_heads(x[train], y[train], x[:0], y[:0], fixed=cs)
        out[held] = x[held] @ weight.T + bias
    return out, len(parts)


@dataclass(frozen=True)
class MultiLabelProbe:
    """The ``probe`` of a ``fit="features"`` phase for multi-label runs (the loop calls it as
    ``probe(model, train_loader, val_loader, runtime)``); features come from the cache as single-label probes'."""

    preprocessing: Preprocessing | None = None
    known_hashes: KnownHashes | None = None
    cache_dir: str | None = None

    def __call__(self, model, train_loader, val_loader, runtime: Runtime) -> dict:
        t0 = time.time()
        x_train, y_train, n_train = _features(model, train_loader, runtime, self.preprocessing, self.cache_dir,
                                              "features (train)", self.known_hashes)
        x_val, y_val, n_val = _features(model, val_loader, runtime, self.preprocessing, self.cache_dir,
                                        "features (val)", self.known_hashes)
        t1 = time.time()
        with _threads_for(x_train.size):
            weight, bias, cs = fit_label_heads(x_train, y_train, x_val, y_val)
        with torch.no_grad():
            model.head.weight.copy_(torch.as_tensor(weight, dtype=model.head.weight.dtype))
            model.head.bias.copy_(torch.as_tensor(bias, dtype=model.head.bias.dtype))
        logits = x_val @ weight.T + bias
        calibrated, temperatures = calibrated_bce(logits, y_val)
        return {"head": "logreg-per-label", "C": cs, "probe_val_loss": bce(logits, y_val),
                "probe_val_acc": float(((logits > 0) == (y_val > 0.5)).mean()),
                "probe_val_loss_calibrated": calibrated, "probe_temperature": float(np.mean(temperatures)),
                "probe_val_all_correct": False, "features_computed": n_train + n_val,
                "features_cached": len(y_train) + len(y_val) - n_train - n_val,
                "feature_seconds": round(t1 - t0, 3), "head_seconds": round(time.time() - t1, 3)}
