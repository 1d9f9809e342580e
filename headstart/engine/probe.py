"""Linear probe: frozen features computed once, a logistic-regression head fitted on them in seconds.

Passing every image through a frozen backbone at every epoch (the tutorial way) repeats the same computation;
computing the features once and fitting multinomial logistic regression by L-BFGS reaches the optimum directly.
The regularisation strength is chosen on the validation split, and the fitted weights become the model's head, so
nothing downstream needs to know how the head was trained.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from headstart.engine.runtime import Runtime
from headstart.model import TransferModel

C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


@torch.no_grad()
def extract_features(model: TransferModel, loader: DataLoader, runtime: Runtime, desc: str = "features"):
    """Pooled backbone features (float32 numpy) and labels for every image in ``loader``."""
    model.eval()
    feats, labels = [], []
    for images, y in tqdm(loader, desc=desc, leave=False, disable=None if runtime.is_main else True):
        with runtime.autocast():
            feats.append(model.forward_features(runtime.to_input(images)).float().cpu())
        labels.append(torch.as_tensor(y))
    return torch.cat(feats).numpy(), torch.cat(labels).numpy()


def fit_logistic_head(x_train, y_train, x_val, y_val, num_classes: int, grid=C_GRID):
    """Standardised multinomial logistic regression; C picked by validation log-loss. Returns (W, b, info)."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    xt, xv = (x_train - mean) / std, (x_val - mean) / std
    best = None
    for c in grid:
        clf = LogisticRegression(C=c, max_iter=2000, tol=1e-4)
        clf.fit(xt, y_train)
        proba = np.full((len(xv), num_classes), 1e-12)
        proba[:, clf.classes_] = np.clip(clf.predict_proba(xv), 1e-12, 1.0)
        loss = float(-np.log(proba[np.arange(len(y_val)), y_val]).mean()) if len(y_val) else 0.0
        acc = float((proba.argmax(1) == y_val).mean()) if len(y_val) else 0.0
        if best is None or loss < best[0]:
            best = (loss, acc, c, clf)
    loss, acc, c, clf = best
    coef = np.zeros((num_classes, xt.shape[1]))
    intercept = np.full(num_classes, -1e4)  # a class absent from training can never win
    w, b = clf.coef_, clf.intercept_
    if len(clf.classes_) == 2:  # sklearn keeps one row for two classes: softmax(0, z) equals sigmoid(z)
        w, b = np.vstack([np.zeros_like(w), w]), np.concatenate([[0.0], b])
    coef[clf.classes_], intercept[clf.classes_] = w, b
    # Fold the standardisation into the linear layer: W (x - m) / s + b = (W / s) x + (b - W m / s).
    weight = coef / std
    bias = intercept - (coef * (mean / std)).sum(1)
    return weight, bias, {"C": c, "probe_val_loss": loss, "probe_val_acc": acc}


def fit_linear_probe(model: TransferModel, train_loader: DataLoader, val_loader: DataLoader, runtime: Runtime) -> dict:
    """Fits ``model.head`` on frozen features of the train images; returns what was chosen."""
    x_train, y_train = extract_features(model, train_loader, runtime, "features (train)")
    x_val, y_val = extract_features(model, val_loader, runtime, "features (val)")
    weight, bias, info = fit_logistic_head(x_train, y_train, x_val, y_val, model.num_classes)
    with torch.no_grad():
        model.head.weight.copy_(torch.as_tensor(weight, dtype=model.head.weight.dtype))
        model.head.bias.copy_(torch.as_tensor(bias, dtype=model.head.bias.dtype))
    return info
